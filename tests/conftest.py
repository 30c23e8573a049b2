"""Shared test set-up: keep objkit's caches inside pytest's temporary directory, and fail the
session if a process the tests started outlives it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

SESSION_ENV = "OBJKIT_TEST_SESSION"


@pytest.fixture(autouse=True, scope="session")
def _isolated_objkit_cache(tmp_path_factory):
    previous = os.environ.get("OBJKIT_CACHE")
    os.environ["OBJKIT_CACHE"] = str(tmp_path_factory.mktemp("objkit-cache"))
    yield
    if previous is None:
        os.environ.pop("OBJKIT_CACHE", None)
    else:
        os.environ["OBJKIT_CACHE"] = previous


def session_processes(token: str) -> dict[int, str]:
    """pid -> command line of every other process whose environment carries ``token`` (inherited
    from this session: every process a test started, and theirs, orphans included)."""
    needle = f"{SESSION_ENV}={token}".encode() + b"\0"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes() + b"\0":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours
            continue
        if cmd and not (parent == os.getpid() and "multiprocessing" in cmd):  # this process's own helpers
            found[int(entry.name)] = cmd
    return found


@pytest.fixture(autouse=True, scope="session")
def _no_process_left_behind():
    """Every process started by a test carries a session token in its environment; at the end
    of the session none may be left (they are killed, and the session fails, naming them)."""
    if not Path("/proc/self/environ").exists():
        yield
        return
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    os.environ[SESSION_ENV] = token
    yield
    deadline = time.monotonic() + 15  # processes still exiting
    while (left := session_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes started by the tests outlived them (killed now): {left}"


@pytest.fixture(autouse=True)
def _sigint_handler_restored():
    """Every test starts with Python's own SIGINT handler and leaves it so: a handler one test
    leaves behind (SIG_IGN is inherited by every subprocess a later test starts, which then
    ignores Ctrl-C) cannot change what a later test sees."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
