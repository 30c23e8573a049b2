"""Runs that survive faults: SIGKILL at any instant (also mid-checkpoint) and a re-run of the
same command ends bit-identical to an uninterrupted run; SIGTERM saves and exits 75; a corrupt
newest checkpoint falls back to the previous one; non-finite steps are skipped, then abort;
a failed checkpoint write is a clear error that leaves the previous checkpoint valid; a run
directory refuses a different recipe unless --fresh.

The kills are real (``Popen.kill()`` sends SIGKILL to an ``objkit run`` subprocess). They are
made deterministic by the ``OBJKIT_TEST_PAUSE`` hook (:func:`objkit.distributed.faults.pause_for_test`),
which parks the process at a named point and touches a marker file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from objkit.train import checkpoint as ckpt
from objkit.cli import main
from objkit.contract.errors import UserError
from objkit.distributed.faults import EXIT_STOPPED, BadSteps, RunAborted, StopRequest
from objkit.contract.interfaces import ObjectiveOutput
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.reporting import read_metrics
from objkit.train.runner import run_recipe
from objkit.train.trainer import Trainer
from tiny_recipes import tiny_recipe

# The tiny model of test_trainer.py with every kind of state: dropout (torch RNG), MLM/TLM
# masks, XLCO with a momentum encoder, a queue and in-batch negatives, mixup bits.
RECIPE = tiny_recipe("faults-test", dropout=0.1) + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[objectives.xlco]
data = "parallel"
layer = 2
momentum = 0.9
[objectives.xlco.negatives.in_batch]
[objectives.xlco.negatives.momentum_queue]
size = 16
[objectives.xlco.augment.mixup]
[train]
steps = 8
batch_size = 8
micro_batch_size = 4
lr = 2e-3
warmup_steps = 2
seed = 5
log_every = 1
checkpoint_every = 2
keep_checkpoints = 2
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "faults.toml"
    path.write_text(RECIPE)
    return path


def _run(recipe_path: Path, out: Path, *overrides: str, fresh: bool = False) -> Path | None:
    return run_recipe(load_recipe(recipe_path, list(overrides)), out, default_registry(), progress=False, fresh=fresh)


@pytest.fixture(scope="module")
def reference(recipe_path, tmp_path_factory) -> Path:
    """An uninterrupted run: the weights every interrupted run must end with, bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(recipe_path, out)
    return out


def assert_same_export(a: Path, b: Path) -> None:
    wa = load_file(str(a / "export" / "model.safetensors"))
    wb = load_file(str(b / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def assert_same_losses(a: Path, b: Path) -> None:
    ma, mb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [m["step"] for m in mb] == [m["step"] for m in ma]
    for x, y in zip(ma, mb, strict=True):
        assert {k: v for k, v in x.items() if k.endswith("loss")} == {k: v for k, v in y.items() if k.endswith("loss")}


class Run:
    """``objkit run`` in a subprocess, parked by the test hook at ``pause``."""

    def __init__(self, recipe: Path, out: Path, pause: str, tmp: Path) -> None:
        self.marker = tmp / f"paused-{pause}"
        self.marker.unlink(missing_ok=True)
        self.log = tmp / f"stderr-{pause}.txt"
        env = dict(os.environ, OBJKIT_TEST_PAUSE=pause, OBJKIT_TEST_PAUSE_MARKER=str(self.marker))
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "objkit", "run", str(recipe), "-o", str(out), "--no-progress"],
                stdout=subprocess.DEVNULL, stderr=err, env=env,
            )

    def wait_paused(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"objkit run exited {self.proc.returncode} before pausing:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"objkit run did not reach the pause point:\n{self.stderr}")
            time.sleep(0.05)

    @property
    def stderr(self) -> str:
        return self.log.read_text()


def test_sigkill_after_a_checkpoint_and_during_one_then_rerun_is_bit_identical(recipe_path, reference, tmp_path):
    out = tmp_path / "run"
    # 1. SIGKILL right after the second checkpoint (step 4) is in place
    first = Run(recipe_path, out, "save-done@4", tmp_path)
    first.wait_paused()
    first.proc.kill()
    assert first.proc.wait() == -signal.SIGKILL
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000002", "step_0000004"]
    assert not (out / "export").exists()

    # 2. the same command resumes from step 4; SIGKILL it in the middle of writing step 6
    second = Run(recipe_path, out, "save-mid@6", tmp_path)
    second.wait_paused()
    second.proc.kill()
    assert second.proc.wait() == -signal.SIGKILL
    assert "resumed from" in second.stderr and "step_0000004 (step 4)" in second.stderr
    partial = out / "checkpoints" / "step_0000006.tmp"
    assert (partial / "model.safetensors").exists() and not (partial / ckpt.MANIFEST).exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000002", "step_0000004"]

    # 3. the same command again: the half-written checkpoint is ignored, the run ends where
    #    the uninterrupted one ended -- same weights to the bit, same losses at every step
    code, err = _main_run(recipe_path, out)
    assert code == 0, err
    assert "step_0000004 (step 4)" in err
    assert not partial.exists()
    assert_same_export(reference, out)
    assert_same_losses(reference, out)


def processes_running(text: str) -> list[int]:
    """PIDs of the processes whose command line mentions ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_rank_dies_with_its_launcher(tmp_path):
    """die_with_launcher (PR_SET_PDEATHSIG): the child of a SIGKILLed parent goes with it."""
    child = ("from objkit.distributed.processes import die_with_launcher; die_with_launcher(); "
             "import time; print('armed', flush=True); time.sleep(600)")
    parent = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); "
              "print(p.pid, flush=True); time.sleep(600)")
    launcher = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        rank = int(launcher.stdout.readline())
        assert launcher.stdout.readline() == "armed\n"
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()
    deadline = time.monotonic() + 30
    while _alive(rank):
        assert time.monotonic() < deadline, "the child outlived its parent"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _main_run(recipe_path: Path, out: Path, *extra: str) -> tuple[int, str]:
    """``objkit run`` in this process (saves the subprocess start-up); returns (code, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(["run", str(recipe_path), "-o", str(out), "--no-progress", *extra])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def test_sigterm_finishes_the_step_checkpoints_and_exits_75_saying_how_to_resume(recipe_path, reference, tmp_path):
    out = tmp_path / "run"
    run = Run(recipe_path, out, "step@3", tmp_path)  # parked before step 3
    run.wait_paused()
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=600) == EXIT_STOPPED == 75, run.stderr  # stopped, resumable: not 0
    assert "received SIGTERM" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at step 3 of 8: checkpoint {out}/checkpoints/step_0000003 written; "
        f"resume with: objkit run {recipe_path} -o {out} --no-progress")
    assert "Traceback" not in run.stderr
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000002", "step_0000003"]
    assert not (out / "export").exists()
    code, err = _main_run(recipe_path, out)
    assert code == 0 and "step_0000003 (step 3)" in err
    assert_same_export(reference, out)


def test_corrupt_newest_checkpoint_is_reported_and_the_previous_one_used(recipe_path, reference, tmp_path):
    out = tmp_path / "run"
    _run(recipe_path, out)
    newest = out / "checkpoints" / "step_0000008"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    code, err = _main_run(recipe_path, out)
    assert code == 0
    assert f"warning: checkpoint {newest}: model.safetensors has" in err and "(truncated?)" in err
    assert "step_0000006 (step 6)" in err
    assert_same_export(reference, out)
    ckpt.read_checkpoint(out / "checkpoints" / "step_0000008")  # rewritten whole

    for path in ckpt.list_checkpoints(out):  # nothing usable left: refuse, point at --fresh
        (path / "trainer.json").write_text("{")
    code, err = _main_run(recipe_path, out)
    assert code == 2 and "no checkpoint is usable" in err and "--fresh" in err


def test_checkpoint_verification_names_the_damage(recipe_path, reference, tmp_path):
    source = ckpt.list_checkpoints(reference)[-1]
    for damage, expected in [
        (lambda d: (d / "optimizer.json").unlink(), "optimizer.json is missing"),
        (lambda d: (d / ckpt.MANIFEST).unlink(), "manifest.json is missing"),
        (lambda d: (d / "rng.json").write_text((d / "rng.json").read_text().replace("1", "2", 1)),
         "rng.json does not match its SHA-256"),
    ]:
        import shutil

        copy = tmp_path / f"c{len(list(tmp_path.iterdir()))}"
        shutil.copytree(source, copy)
        damage(copy)
        with pytest.raises(ckpt.CheckpointError, match=expected):
            ckpt.read_checkpoint(copy)


def test_checkpoint_holds_rng_versions_recipe_and_instance_keyed_state(reference):
    data = ckpt.read_checkpoint(ckpt.list_checkpoints(reference)[-1])
    assert set(data.rng_states[0]) == {"python", "numpy", "torch", "cuda"}
    assert data.versions and "xlco" in data.versions["plugins"]
    assert data.recipe_toml and 'name = "faults-test"' in data.recipe_toml
    assert set(data.objectives) == {"mlm", "tlm", "xlco"}  # keyed by the recipe's instance names
    queue = data.objectives["xlco"]["stores"]["momentum_queue"]
    assert {"buffer", "pointer", "filled"} <= set(queue)
    assert data.trainer["streams"].keys() == {"mlm", "tlm", "xlco"}  # map-style: one global position each
    assert len(data.trainer["rank_streams"]) == 1  # per-rank positions (streamed sources only)
    files = set(os.listdir(data.path))
    assert not any(f.endswith((".pt", ".pkl", ".bin")) for f in files)  # nothing to unpickle


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    json.dumps(state)
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(json.loads(json.dumps(state)))
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


# ----------------------------------------------------------------------------- non-finite steps
def _poison(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the MLM loss NaN on the given (0-based) steps."""
    mlm = next(b.objective for b in trainer.objectives if b.name == "mlm")
    compute = mlm.compute

    def poisoned(batch, ctx):  # noqa: ANN001, ANN202
        out = compute(batch, ctx)
        if ctx.step in bad_steps:
            return ObjectiveOutput(out.loss * float("nan"), out.sample_size, out.metrics)
        return out

    mlm.compute = poisoned  # type: ignore[method-assign]


NAN_OVERRIDES = ["objectives.xlco.enabled=false", "train.checkpoint_every=100"]


def test_non_finite_steps_are_skipped_counted_and_logged(recipe_path, tmp_path, capsys):
    resolved = load_recipe(recipe_path, NAN_OVERRIDES)
    trainer = Trainer(resolved, tmp_path / "run", default_registry(), progress=False)
    _poison(trainer, {2, 3})
    snapshots = []
    step = trainer.train_step

    def recording_step(*args, **kwargs):  # noqa: ANN202
        stats = step(*args, **kwargs)
        snapshots.append([p.detach().clone() for p in trainer.params])
        return stats

    trainer.train_step = recording_step  # type: ignore[method-assign]
    trainer.fit()
    assert trainer.step == 8
    same = [all(torch.equal(a, b) for a, b in zip(snapshots[i - 1], snapshots[i])) for i in range(1, 8)]
    assert same == [False, True, True, False, False, False, False]  # steps 3 and 4 (1-based) skipped
    err = capsys.readouterr().err
    assert "step 3: non-finite mlm/loss=nan" in err and "update skipped (1 in a row, 1 in total" in err
    assert "step 4: non-finite" in err and "(2 in a row, 2 in total" in err
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m.get("skipped_steps", 0) for m in metrics] == [0, 0, 1, 2, 2, 2, 2, 2]


def test_consecutive_non_finite_steps_abort(recipe_path, tmp_path):
    resolved = load_recipe(recipe_path, [*NAN_OVERRIDES, "train.max_bad_steps=3"])
    trainer = Trainer(resolved, tmp_path / "run", default_registry(), progress=False)
    _poison(trainer, {1, 2, 3, 4, 5})
    with pytest.raises(RunAborted) as info:
        trainer.fit()
    message = str(info.value)
    assert info.value.exit_code == 1 and len(message.splitlines()) == 1
    assert "3 consecutive steps with non-finite loss or gradients (steps 2-4" in message
    assert "train.max_bad_steps = 3" in message and trainer.step == 4  # raised once step 4 is counted
    assert message.endswith("lower train.lr or check the data; no checkpoint was written")  # none exists
    assert [m["step"] for m in read_metrics(tmp_path / "run" / "metrics.jsonl")][-1] == 4  # the steps it names
    resolved = load_recipe(recipe_path, ["objectives.xlco.enabled=false", "train.max_bad_steps=2",
                                         "train.checkpoint_every=2"])
    trainer = Trainer(resolved, tmp_path / "run2", default_registry(), progress=False)
    _poison(trainer, {3, 4, 5})
    with pytest.raises(RunAborted) as info:
        trainer.fit()
    assert str(info.value).endswith(f"the last checkpoint, {tmp_path}/run2/checkpoints/step_0000004, is intact")


def test_bad_step_counter_resets_on_a_good_step():
    bad = BadSteps(limit=2)
    assert bad.record(0, "loss=nan") and bad.record(1, None) is None and bad.record(2, "loss=inf")
    with pytest.raises(RunAborted):
        bad.record(3, "grad_norm=inf")
    assert bad.total == 3


# ----------------------------------------------------------------------------- failed writes
def test_disk_full_during_a_checkpoint_is_a_clear_error_and_keeps_the_previous(recipe_path, tmp_path, monkeypatch):
    resolved = load_recipe(recipe_path, ["objectives.xlco.enabled=false", "train.steps=4"])
    trainer = Trainer(resolved, tmp_path / "run", default_registry(), progress=False)
    real = ckpt.save_file

    def failing_save_file(tensors, filename, *args, **kwargs):  # noqa: ANN001, ANN202
        if "step_0000004" in str(filename):
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(RunAborted) as info:
        trainer.fit()
    message = str(info.value)
    assert message.startswith("cannot write checkpoint step 4 ") and "No space left on device" in message
    assert "step_0000002, is intact" in message and len(message.splitlines()) == 1
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == ["step_0000002"]
    assert not (tmp_path / "run" / "checkpoints" / "step_0000004.tmp").exists()
    ckpt.read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002")


def test_unwritable_output_is_refused(recipe_path, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    code, err = _main_run(recipe_path, target)
    assert code == 2 and "is a file" in err and "Traceback" not in err
    code, err = _main_run(recipe_path, target / "sub")
    assert code == 2 and err.strip() == f"-o {target / 'sub'}: cannot create the run directory: Not a directory"


# ----------------------------------------------------------------------------- the run directory
def test_a_different_recipe_is_refused_unless_fresh(recipe_path, tmp_path):
    out = tmp_path / "run"
    short = ["objectives.xlco.enabled=false", "train.steps=2"]
    _run(recipe_path, out, *short)
    with pytest.raises(UserError) as info:
        _run(recipe_path, out, *short, "train.lr=1e-3")
    message = str(info.value)
    assert "holds a run of a different recipe (train.lr: 0.002 in the run directory, 0.001 now)" in message
    assert "--fresh" in message and len(message.splitlines()) == 1
    _run(recipe_path, out, *short, "train.log_every=5", "train.keep_checkpoints=1")  # neutral keys: resumes
    _run(recipe_path, out, *short, "train.lr=1e-3", fresh=True)
    assert "lr = 0.001" in (out / "run-recipe.toml").read_text()
    assert [m["lr"] for m in read_metrics(out / "metrics.jsonl")][-1] == 0.0
    assert len(read_metrics(out / "metrics.jsonl")) == 2  # the old run's metrics went with --fresh


def test_second_sigint_stops_at_once():
    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.requested and stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_two_ranks_sigkill_resume_is_bit_identical(recipe_path, tmp_path):
    """torchrun, 2 CPU ranks (gloo): each rank's RNG and data position is checkpointed by rank 0
    and restored to its rank, so a killed and resumed 2-rank run equals an uninterrupted one."""
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "objkit", "run", str(recipe_path), "-o", str(out), "--no-progress", "--set", "train.steps=6"]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(command(straight), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    rng = json.loads((straight / "checkpoints" / "step_0000006" / "rng.json").read_text())["ranks"]
    assert len(rng) == 2 and rng[0]["torch"] != rng[1]["torch"]

    marker = tmp_path / "paused"
    env = dict(os.environ, OBJKIT_TEST_PAUSE="save-done@4", OBJKIT_TEST_PAUSE_MARKER=str(marker))
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen(command(killed), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun (the ranks run in sessions of their own)
    proc.wait()
    deadline = time.monotonic() + 30  # the ranks die with their launcher
    while ranks := processes_running(str(killed)):
        assert time.monotonic() < deadline, f"rank processes outlived torchrun: {ranks}"
        time.sleep(0.1)
    again = subprocess.run(command(killed), capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stderr and "step_0000004 (step 4)" in again.stderr
    assert "warning" not in again.stderr
    assert_same_export(straight, killed)


# ----------------------------------------------------------------------------- one run per directory
def test_a_locked_run_directory_is_refused_naming_the_holder(recipe_path, tmp_path):
    import socket

    from objkit.data.runlock import RunLock

    out = tmp_path / "run"
    (out / "checkpoints" / "step_0000002").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    with RunLock(out):  # another process's open file description, as far as flock is concerned
        for extra in ((), ("--fresh",)):
            code, err = _main_run(recipe_path, out, *extra)
            assert code == 2, err
            assert err.strip() == (f"-o {out}: another objkit run is using this directory (pid {os.getpid()} on "
                                   f"{socket.gethostname()}); wait for it to finish or stop it, or choose another -o")
    # --fresh removed nothing while the directory was held
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n' and (out / "checkpoints" / "step_0000002").is_dir()


def test_two_concurrent_runs_and_fresh_are_refused_while_the_first_trains(recipe_path, reference, tmp_path):
    out = tmp_path / "run"
    first = Run(recipe_path, out, "save-done@2", tmp_path)
    first.wait_paused()
    metrics = (out / "metrics.jsonl").read_text()
    for extra in ((), ("--fresh",)):
        code, err = _main_run(recipe_path, out, *extra)
        assert code == 2 and f"another objkit run is using this directory (pid {first.proc.pid} on " in err, err
    assert (out / "metrics.jsonl").read_text() == metrics  # written once, not deleted by --fresh
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_0000002"]
    first.proc.kill()  # kill -9 leaves no stale lock: the same command resumes at once
    assert first.proc.wait() == -signal.SIGKILL
    code, err = _main_run(recipe_path, out)
    assert code == 0 and "step_0000002 (step 2)" in err, err
    assert_same_export(reference, out)


# ----------------------------------------------------------------------------- real write faults
@contextlib.contextmanager
def file_size_limit(limit: int):
    """``ulimit -f``: writes past ``limit`` bytes fail with EFBIG (Python ignores SIGXFSZ)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_file_too_large_in_a_checkpoint_and_in_the_export_is_one_line_and_leaves_nothing(recipe_path, tmp_path):
    """safetensors and tokenizers (Rust) report the OS error in their own exception types."""
    overrides = ["objectives.xlco.enabled=false", "objectives.tlm.enabled=false", "train.steps=2"]
    run = tmp_path / "run"
    trainer = Trainer(load_recipe(recipe_path, overrides), run, default_registry(), progress=False)
    with file_size_limit(100_000), pytest.raises(RunAborted) as info:
        trainer.fit()  # model.safetensors of the checkpoint is larger
    assert str(info.value) == (f"cannot write checkpoint step 2 {run}/checkpoints/step_0000002.tmp/model.safetensors: "
                               "File too large; no checkpoint yet")
    assert os.listdir(run / "checkpoints") == []

    trainer = Trainer(load_recipe(recipe_path, overrides), tmp_path / "run2", default_registry(), progress=False)
    trainer.fit()
    for limit in (100_000, 200_000):  # the model's weights, then the tokenizer's file are too large
        with file_size_limit(limit), pytest.raises(RunAborted) as info:
            trainer.export()
        assert str(info.value) == (f"cannot write the export {tmp_path}/run2/export: File too large; "
                                   "checkpoints already written are intact")
        assert not [p for p in os.listdir(tmp_path / "run2") if "export" in p]  # no export, no temporary folder


def test_an_unwritable_run_directory_is_one_line_exit_2_new_or_existing(recipe_path, tmp_path):
    """One rule for an -o that cannot be written (issue 26: an existing one was exit 1, a new one 2)."""
    out = tmp_path / "run"
    out.mkdir()
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True, check=False).returncode != 0:
        pytest.skip("chattr +i needs root on a filesystem that supports it")
    try:
        code, err = _main_run(recipe_path, out)
        assert (code, err) == (2, f"-o {out}: cannot write in the run directory: Operation not permitted\n")
        code, err = _main_run(recipe_path, out / "sub")
        assert (code, err) == (2, f"-o {out}/sub: cannot create the run directory: Operation not permitted\n")
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=True)
    assert os.listdir(out) == []


def test_non_finite_metrics_are_written_as_null(tmp_path):
    from objkit.train.reporting import MetricsWriter

    writer = MetricsWriter(tmp_path, ["jsonl"])
    writer.write({"step": 3, "mlm/loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5, "skipped_steps": 1})
    writer.close()
    line = (tmp_path / "metrics.jsonl").read_text()

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    record = json.loads(line, parse_constant=refuse)  # what strict parsers (jq, JavaScript) accept
    assert record == {"step": 3, "mlm/loss": None, "grad_norm": None, "lr": 0.5, "skipped_steps": 1}


def test_thread_count_is_recorded_and_a_resume_with_another_warns(recipe_path, reference, tmp_path):
    """On CPU the number of torch threads splits reductions differently (the cause of exports that
    differed "by launcher": OMP_NUM_THREADS, not the SIGINT disposition); it is recorded and compared."""
    import shutil

    threads = torch.get_num_threads()
    assert json.loads((reference / "versions.json").read_text())["threads"] == {"torch": threads}
    data = ckpt.read_checkpoint(ckpt.list_checkpoints(reference)[-1])
    assert data.trainer["threads"] == {"torch": threads} and data.versions["threads"] == {"torch": threads}
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    torch.set_num_threads(threads + 1)
    try:
        code, err = _main_run(recipe_path, out)
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "step_0000008 (step 8)" in err
    assert (f"step_0000008 was written with {threads} torch CPU thread(s) per rank, this run has {threads + 1} "
            "(OMP_NUM_THREADS, torch.set_num_threads)") in err
    code, err = _main_run(recipe_path, out)
    assert code == 0 and "thread(s)" not in err
