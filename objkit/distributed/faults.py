"""Faults during a run: preemption signals, non-finite steps, failed writes, and test hooks.

Kept out of the training loop so that :mod:`objkit.train.trainer` only asks three questions per
step: was a stop requested (:class:`StopRequest`), was this step finite
(:func:`nonfinite_reason`, :class:`BadSteps`); all ranks agree on it through
:meth:`objkit.distributed.ParallelStrategy.agree`.

* **SIGTERM / SIGINT** (:class:`StopRequest`): the handler only records the signal; the
  loop finishes the step it is in, writes a checkpoint and returns, and ``objkit run`` exits
  :data:`EXIT_STOPPED` (75) with a message giving the command that resumes. A second SIGINT
  stops at once (exit 130). SIGKILL
  cannot be caught: only the last complete checkpoint counts (see :mod:`objkit.train.checkpoint`).
* **Non-finite loss or gradients** (:class:`BadSteps`): the update is skipped (optimizer,
  momentum encoders untouched; the step counter and LR schedule move on), counted, logged,
  and after ``train.max_bad_steps`` consecutive ones the run aborts (:class:`RunAborted`).
* **Failed writes** (:func:`write_error`): disk full, read-only or unwritable output become
  one line naming the path; the previous checkpoint stays valid because a checkpoint is only
  ever renamed into place once complete.
* **Test hook** (:func:`pause_for_test`): ``OBJKIT_TEST_PAUSE=POINT@STEP[,POINT@STEP...]`` makes
  the process stop at a named point (``step``: before training step STEP; ``save-mid``: in
  the middle of writing checkpoint STEP, after ``model.safetensors``; ``save-done``: just
  after checkpoint STEP is in place), touch the file ``OBJKIT_TEST_PAUSE_MARKER`` if set, and
  wait until it is killed or receives SIGTERM/SIGINT. Tests use it to kill a run at an exact
  point (for instance in the middle of a checkpoint write) instead of racing a timer. The hook
  is bound when this module is imported: without the variable, ``pause_for_test`` is a function
  that does nothing (no environment lookup on the training path).
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objkit.contract.errors import UserError

PAUSE_ENV = "OBJKIT_TEST_PAUSE"
PAUSE_MARKER_ENV = "OBJKIT_TEST_PAUSE_MARKER"


EXIT_STOPPED = 75
"""Exit status of a run stopped before its last step (SIGTERM, SIGINT, preemption) after writing
a checkpoint: ``EX_TEMPFAIL`` of sysexits.h, "a temporary failure; the user is invited to retry",
which is what it is: the same command resumes. Not 0, so ``objkit run R -o d && upload d/export``
does not go on without an export; not 1 (a failure to look at) and not 128+N (killed by signal N,
nothing saved). torchelastic counts any non-zero exit as a failed attempt (and restarts it when
``--max-restarts`` allows, which resumes); a SLURM job (``--requeue``) or a wrapper script can requeue
on exactly this status. ``objkit run`` and ``objkit run --nproc N`` exit with it alike."""


class RunStopped(UserError):
    """A run stopped by a signal after writing its checkpoint: exit :data:`EXIT_STOPPED`; the
    message (empty on ranks other than 0) says how to resume."""

    exit_code = EXIT_STOPPED


class RunAborted(UserError):
    """A run that cannot go on (too many non-finite steps, a checkpoint that cannot be
    written). One line, exit code 1; checkpoints already written stay valid."""

    exit_code = 1


# ----------------------------------------------------------------------------- signals
class StopRequest:
    """Turns SIGTERM / SIGINT into a flag the training loop polls between steps.

    Use as a context manager around the loop; outside the main thread (where Python cannot
    install handlers) it is inert and signals keep their default behaviour.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, announce: bool = True) -> None:
        self.signal_name: str | None = None
        self.announce = announce
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal API
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name
            if self.announce:
                print(f"received {self.signal_name}: finishing the current step, then writing a checkpoint "
                      "(Ctrl-C again stops at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        global _ACTIVE
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        _ACTIVE = None


_ACTIVE: StopRequest | None = None


# ----------------------------------------------------------------------------- non-finite steps
def nonfinite_reason(values: Mapping[str, float], grad_norm: float | None) -> str | None:
    """``None`` if every loss and the gradient norm are finite, else what was not."""
    bad = [f"{key}={value}" for key, value in sorted(values.items())
           if key.endswith("loss") and not math.isfinite(value)]
    if grad_norm is not None and not math.isfinite(grad_norm):
        bad.append(f"grad_norm={grad_norm}")
    return ", ".join(bad) if bad else None


class BadSteps:
    """Counts steps whose update was skipped; raises after ``limit`` consecutive ones."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0
        self.total = 0
        self.first_of_run: int | None = None

    def record(self, step: int, reason: str | None) -> str | None:
        """Account for the step just computed (0-based ``step``); returns a log line for a
        bad one and raises :class:`RunAborted` when the limit is reached."""
        if reason is None:
            self.consecutive = 0
            self.first_of_run = None
            return None
        self.consecutive += 1
        self.total += 1
        if self.first_of_run is None:
            self.first_of_run = step + 1
        if self.consecutive >= self.limit:
            raise RunAborted(
                f"aborting: {self.consecutive} consecutive steps with non-finite loss or gradients "
                f"(steps {self.first_of_run}-{step + 1}, train.max_bad_steps = {self.limit}; last: {reason}); "
                "lower train.lr or check the data"
            )
        return (f"step {step + 1}: non-finite {reason}: update skipped "
                f"({self.consecutive} in a row, {self.total} in total, abort at {self.limit} in a row)")

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "total": self.total, "first_of_run": self.first_of_run}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
        first = state.get("first_of_run")
        self.first_of_run = None if first is None else int(first)


# ----------------------------------------------------------------------------- failed writes
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT}


_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def os_error_of(exc: BaseException, filename: str | Path) -> OSError | None:
    """``exc`` as an ``OSError`` naming ``filename``: itself, or for the Rust writers
    (safetensors, tokenizers), which report the OS's error only in their message
    (``I/O error: File too large (os error 27)``), a new one; ``None`` for anything else."""
    if isinstance(exc, OSError):
        return exc
    match = _RUST_OS_ERROR.search(str(exc))
    if match is None:
        return None
    code = int(match.group(1))
    return OSError(code, os.strerror(code), str(filename))


def write_error(exc: OSError, what: str, hint: str = "") -> RunAborted:
    """One line for a write that failed: what, where, the OS's reason, and what is still valid."""
    where = " ".join(str(part) for part in (what, exc.filename) if part)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return RunAborted(f"cannot write {where}: {reason}" + (f"; {hint}" if hint else ""))


# ----------------------------------------------------------------------------- test hook
def _pause_points() -> set[tuple[str, int]]:
    spec = os.environ.get(PAUSE_ENV, "")
    points = set()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, step = item.partition("@")
        if step.isdigit():
            points.add((name, int(step)))
    return points


def _pause_when_asked(point: str, step: int) -> None:
    """Block at ``point`` of ``step`` when ``OBJKIT_TEST_PAUSE`` names it (see module doc);
    return when a stop is requested."""
    if (point, step) not in _pause_points():
        return
    marker = os.environ.get(PAUSE_MARKER_ENV)
    print(f"test hook: paused at {point}@{step}", file=sys.stderr, flush=True)
    if marker:
        Path(marker).write_text(f"{point}@{step}\n")
    while not (_ACTIVE is not None and _ACTIVE.requested):
        time.sleep(0.02)


def _no_pause(point: str, step: int) -> None:
    """:func:`pause_for_test` in a process started without ``OBJKIT_TEST_PAUSE``."""


pause_for_test = _pause_when_asked if PAUSE_ENV in os.environ else _no_pause
"""Called at the named points of the trainer and the checkpoint writer; chosen once, at import."""
