"""Where a ``from_pretrained`` spec lives: a local directory, the local HF cache, or the hub.

transformers retries an unreachable hub for about a minute, printing a warning per try,
before it fails. :func:`offline_unless_reachable` decides once, quickly, whether the hub can
be reached; when it cannot, loads use ``local_files_only=True`` and a missing checkpoint is
one clear line at once.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse


@functools.cache
def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the hub endpoint opens within ``timeout`` s, else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host, port = parsed.hostname or "huggingface.co", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{host} unreachable: {exc.strerror or exc}"


def offline_unless_reachable(spec: str) -> bool:
    """``local_files_only`` for loading ``spec``: True for local directories and when the hub
    cannot be reached (so only the local HF cache is tried)."""
    if Path(spec).is_dir():
        return True
    return hub_unreachable_reason() is not None



def meant_as_local_path(spec: str) -> bool:
    """``spec`` does not exist here and cannot be a hub id (huggingface_hub's own rule: ``name`` or
    ``namespace/name``), or its first part is a local directory (``runs/nope`` beside ``runs/``):
    the user meant a local path, so a missing one is "does not exist", not hub talk."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(spec).expanduser()
    if path.exists():
        return False
    if spec.startswith((".", "/", "~")) or len(path.parts) > 1 and Path(path.parts[0]).is_dir():
        return True
    try:
        validate_repo_id(spec)
    except HFValidationError:
        return True
    return False
