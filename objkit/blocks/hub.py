"""Where a ``from_pretrained`` spec lives: a local directory, the local HF cache, or the hub.

transformers retries an unreachable hub for about a minute, printing a warning per try,
before it fails. :func:`offline_unless_reachable` decides once, quickly, whether the hub can
be reached; when it cannot, loads use ``local_files_only=True`` and a missing checkpoint is
one clear line at once. The check is a HEAD request through huggingface_hub's own HTTP
session, so it goes where the downloads would go: ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, the
proxy variables (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and a client
factory set with ``huggingface_hub.set_client_factory`` all apply.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """None if the hub endpoint answers a HEAD request within ``timeout`` s (any HTTP status:
    it is reachable), else why not, in a few words."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session  # requests' Session (hub < 1.0) or httpx's Client

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    endpoint = constants.ENDPOINT
    try:
        get_session().head(endpoint, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any transport failure (DNS, refused, proxy, TLS, timeout)
        proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                              "ALL_PROXY", "all_proxy") if os.environ.get(k)), None)
        via = f" (through proxy {_without_credentials(proxy)})" if proxy else ""
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return f"{endpoint} unreachable{via}: {reason}"
    return None


def _without_credentials(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else f"http://{url}")
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


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


class hub_offline:
    """Cache-only loading while the hub is unreachable (no minute of retries)."""

    def __init__(self, offline: bool) -> None:
        self.offline = offline

    def __enter__(self) -> None:
        import datasets
        import huggingface_hub.constants as hub

        self.before = (datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
        if self.offline:
            datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True

    def __exit__(self, *exc: object) -> None:
        import datasets
        import huggingface_hub.constants as hub

        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = self.before
