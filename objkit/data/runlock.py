"""One run per directory: an exclusive OS lock on ``RUN/.lock`` held for the whole run.

``fcntl.flock`` locks belong to the open file, so the kernel drops the lock when the process
that holds it exits in any way (kill -9 included): there is never a stale lock to remove. The
file itself stays and says who held it last (``pid PID on HOST``); it is rewritten by each
holder right after it takes the lock. With several ranks, rank 0 holds it (``-o`` on a shared
filesystem for multi-node runs; Linux NFS maps ``flock`` to byte-range locks across nodes).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from objkit.contract.errors import UserError

LOCK_FILE = ".lock"


class RunDirLocked(UserError):
    """Another process is running in this directory (exit code 2)."""


class RunLock:
    """``with RunLock(run_dir):`` -- exclusive, non-blocking; :class:`RunDirLocked` naming the
    holder's PID and host when another process holds it. An ``OSError`` (the directory cannot
    be written) propagates."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirLocked(
                f"-o {self.path.parent}: another objkit run is using this directory ({holder}); "
                "wait for it to finish or stop it, or choose another -o"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # releases the lock
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the (only) descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


@contextmanager
def hold_lock(path: Path, waiting: str) -> Iterator[None]:
    """``with hold_lock(path, "... {holder} ..."):`` -- an exclusive lock on ``path`` (created),
    waited for when another process holds it: ``waiting`` (``{holder}``: ``pid PID on HOST``)
    is printed once to stderr first. Released on exit, and by the kernel if the process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            print(waiting.format(holder=holder), file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
