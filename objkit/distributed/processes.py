"""Rank processes: they die with their launcher, and ``objkit run --nproc N`` launches them.

torchrun starts each rank in a session of its own, so a ``kill -9`` of torchrun (or of its
process group) does not reach them: orphaned, they would sit in a collective until the
process-group timeout, holding memory and the run directory. :func:`die_with_launcher` asks
Linux to SIGKILL the process when its parent dies (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
daemon thread watches the parent PID and does the same.

:func:`launch_ranks` is ``torchrun --standalone --nproc_per_node N`` run in this process
(torchelastic's agent, :func:`torch.distributed.launcher.api.elastic_launch`), reporting like a
single process: each rank records why it failed in torchelastic's error file
(``TORCHELASTIC_ERROR_FILE``, :func:`record_failure`) and, launched this way, prints nothing
about it; the launcher picks the rank whose failure came first (a rank killed by a signal before
the others failed without it, a user error before an internal one) and its caller prints that
one line and exits with that rank's code, with no ``ChildFailedError`` report or traceback of
the others.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from objkit.contract.errors import UserError

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


# ----------------------------------------------------------------------------- objkit run --nproc
QUIET_RANKS_ENV = "OBJKIT_LAUNCHER"
"""Set in the ranks :func:`launch_ranks` starts: they record failures for it instead of printing them."""
RESUME_ENV = "OBJKIT_RESUME_COMMAND"
"""The command the user typed (``objkit run ... --nproc N``), for the line that says how to resume."""


def record_failure(exit_code: int, line: str, internal: BaseException | None = None) -> None:
    """In a rank (``TORCHELASTIC_ERROR_FILE`` set by torchelastic): write why it exits, in
    torchelastic's error-file format (what ``@record`` writes: torchrun's report then shows the
    message) plus ``objkit``: the line, the exit code and the exact time, for :func:`launch_ranks`."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    stack = "".join(traceback.format_exception(internal)) if internal is not None else ""
    now = time.time()
    data = {"message": {"message": line or f"exit {exit_code}",
                        "extraInfo": {"py_callstack": stack, "timestamp": str(int(now))}},
            "objkit": {"line": line, "exit_code": exit_code, "internal": internal is not None, "stack": stack, "time": now}}
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data), encoding="utf-8")
    except OSError:
        pass  # the launcher then reports the exit code alone


def quiet_rank() -> bool:
    """A rank of :func:`launch_ranks`: its launcher prints the one line of the run's failure."""
    return launched_by_torchrun() and os.environ.get(QUIET_RANKS_ENV) == "1"


@dataclass(frozen=True)
class RankFailure:
    """What :func:`launch_ranks` reports: the rank whose failure came first."""

    rank: int
    exit_code: int  # the rank's exit status; 128 + N for a rank killed by signal N (as a shell says)
    line: str  # its one-line message; empty when it recorded none (killed, or died before it could)
    stack: str = ""  # the traceback of an internal error (not a UserError)
    signal_name: str = ""  # the signal that killed it

    def error(self, intact: str, resume: str) -> UserError:
        """The launcher's error: the rank's own line (or, for an internal error, its traceback
        and a line), or what happened to it, what is intact and how to resume; its exit code."""
        if self.line:
            message = self.line
        elif self.signal_name:
            message = f"rank {self.rank} was killed by {self.signal_name}; {intact}; resume with: {resume}"
        else:
            message = f"rank {self.rank} exited with status {self.exit_code}; {intact}; resume with: {resume}"
        error = UserError(f"{self.stack.rstrip()}\n{message}" if self.stack else message)
        error.exit_code = self.exit_code
        return error


def launch_ranks(nproc: int, args: list[str], resume_command: str) -> RankFailure | None:
    """Run ``python -u ARGS`` as ``nproc`` ranks on this machine, as ``torchrun --standalone
    --nproc_per_node NPROC -m ...`` does (c10d rendezvous on a free local port, no restarts), and
    wait for them. ``None`` when every rank exits 0; else the failure to report. SIGTERM / SIGINT to
    this process reach the ranks (torchelastic forwards them), which checkpoint and exit 75."""
    import logging
    import tempfile
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    saved = {key: os.environ.get(key) for key in ("OMP_NUM_THREADS", QUIET_RANKS_ENV, RESUME_ENV)}
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several ranks on one machine
    os.environ[QUIET_RANKS_ENV] = "1"  # the ranks inherit this process's environment
    os.environ[RESUME_ENV] = resume_command
    exit_codes: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="objkit-ranks-") as logs, _restored(saved):
        config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
            rdzv_endpoint="localhost:0", max_restarts=0, logs_specs=DefaultLogsSpecs(log_dir=logs),
            # the ranks finish their step and write a checkpoint before they exit
            shutdown_timeout=int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")),
        )
        logging.disable(logging.CRITICAL)  # the agent's own log lines ("failed (exitcode: 2)", ...)
        try:
            elastic_launch(config, entrypoint=sys.executable)("-u", *args)
            return None
        except ChildFailedError as exc:
            exit_codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        except SignalException:
            pass  # the ranks had the signal forwarded and were waited for: their error files say how they ended
        finally:
            logging.disable(logging.NOTSET)
        records = _read_records(Path(logs))
    return first_failure(exit_codes, records)


@contextlib.contextmanager
def _restored(saved: dict[str, str | None]) -> Iterator[None]:
    """Put these environment variables back as they were on the way out."""
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _read_records(logs: Path) -> dict[int, dict]:
    records = {}
    for path in logs.glob("*/attempt_*/*/error.json"):
        try:
            records[int(path.parent.name)] = json.loads(path.read_text(encoding="utf-8"))["objkit"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return records


def first_failure(exit_codes: dict[int, int], records: dict[int, dict]) -> RankFailure:
    """The failure to report among the ranks' exit codes (negative: killed by that signal) and
    the :func:`record_failure` records: a rank killed by a signal other than the SIGTERM / SIGINT
    the launcher forwards (the others then fail for want of it), else the first user error, else
    a stop (exit 75, rank 0's line), else the first internal error, else the first exit code."""
    for rank, code in sorted(exit_codes.items()):
        if code < 0 and rank not in records and -code not in (signal.SIGTERM, signal.SIGINT):
            return RankFailure(rank, 128 - code, "", signal_name=_signal_name(-code))
    by_time = sorted(records.items(), key=lambda item: (item[1].get("time", 0.0), item[0]))
    from objkit.distributed.faults import EXIT_STOPPED

    user = [(r, x) for r, x in by_time if not x.get("internal") and x.get("exit_code") != EXIT_STOPPED]
    stopped = sorted((r, x) for r, x in by_time if x.get("exit_code") == EXIT_STOPPED)
    internal = [(r, x) for r, x in by_time if x.get("internal")]
    for group in (user, stopped, internal):
        if group:
            rank, record = group[0]
            return RankFailure(rank, int(record["exit_code"]), str(record.get("line", "")), str(record.get("stack", "")))
    if exit_codes:
        rank, code = min(exit_codes.items(), key=lambda item: (item[1] < 0, item[0]))
        return RankFailure(rank, code if code > 0 else 128 - code, "", signal_name=_signal_name(-code) if code < 0 else "")
    return RankFailure(0, 1, "")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
