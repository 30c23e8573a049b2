"""Rank processes die with their launcher.

torchrun starts each rank in a session of its own, so a ``kill -9`` of torchrun (or of its
process group) does not reach them: orphaned, they would sit in a collective until the
process-group timeout, holding memory and the run directory. :func:`die_with_launcher` asks
Linux to SIGKILL the process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
daemon thread watches the parent PID and does the same.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_armed = False


def _watch_parent(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_launcher(interval: float = 1.0) -> None:
    """From now on, SIGKILL this process when its parent (the launcher) exits. Idempotent."""
    global _armed
    if _armed:
        return
    parent = os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent, interval), name="objkit-parent-watch", daemon=True).start()
    _armed = True
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def launched_by_torchrun() -> bool:
    """torchrun (torch.distributed.run) sets these in every rank's environment."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
