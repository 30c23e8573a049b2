"""torch.distributed on CPU: 2 gloo processes started by torchrun from pytest (each run bounded
by a timeout) against 1 process, on a tiny MLM + TLM + XLCO recipe (in-batch negatives, a
momentum queue, accumulation over 2 micro-batches).

1 rank × micro-batch 8 and 2 ranks × 4 see the same global batch: losses match within 1e-5
relative at every step (DDP and FSDP), the queue and the momentum encoder are identical on
both ranks, gradients are synchronised once per step, rank 0 alone writes checkpoints and
metrics, and a checkpoint resumes under torchrun with the same or another number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from objkit.train.reporting import read_metrics
from tiny_recipes import tiny_recipe

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 300  # seconds per run; a run takes 10-25 s on 2 CPU cores

RECIPE = tiny_recipe("tiny-distributed", dropout=0.0) + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[objectives.xlco]
data = "parallel"
layer = 1                  # truncated: XLCO leaves block 2 and the LM head unused
pooling = "mean"
normalize = true
temperature = 0.05
symmetric = true
momentum = 0.9
[objectives.xlco.negatives.in_batch]
[objectives.xlco.negatives.momentum_queue]
size = 32                  # 16 pairs x 2 directions: full after step 0, so XLCO starts at step 1
[train]
steps = 6
batch_size = 16
micro_batch_size = 8       # 1 rank: 2 micro-batches of 8; 2 ranks: 2 micro-batches of 4 each
lr = 2e-3
warmup_steps = 2
seed = 3
log_every = 1
checkpoint_every = 3
keep_checkpoints = 3
"""
LOSSES = ("mlm/loss", "tlm/loss", "xlco/loss")


def _launch(nproc: int, recipe: Path, out: Path, *overrides: str, env: dict[str, str] | None = None) -> Path:
    """Run the worker (under torchrun when nproc > 1); returns the run directory."""
    prefix = [sys.executable]
    if nproc > 1:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    done = subprocess.run(
        [*prefix, str(WORKER), str(recipe), str(out / "run"), str(out / "dump"), *overrides],
        env=env, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out / "run"


def _info(out: Path, rank: int) -> dict:
    return json.loads((out / "dump" / f"rank{rank}.json").read_text())


def _assert_losses_close(a: list[dict], b: list[dict], rel: float) -> None:
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a, b, strict=True):
        for key in LOSSES:
            if key in x or key in y:
                assert abs(x[key] - y[key]) <= rel * abs(x[key]), (x["step"], key, x[key], y[key])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(RECIPE)
    return path


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distributed")
    return {
        "single": _launch(1, recipe, root / "single").parent,
        "ddp": _launch(2, recipe, root / "ddp", "train.micro_batch_size=4").parent,
        "fsdp": _launch(2, recipe, root / "fsdp", "train.micro_batch_size=4", "train.parallelism=fsdp").parent,
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_log_the_losses_of_one(runs, mode):
    single = read_metrics(runs["single"] / "run" / "metrics.jsonl")
    multi = read_metrics(runs[mode] / "run" / "metrics.jsonl")
    assert [m["step"] for m in multi] == [1, 2, 3, 4, 5, 6]  # one line per step: rank 0 alone writes
    assert "xlco/loss" not in single[0] and all("xlco/loss" in m for m in single[1:])  # the queue filled at step 0
    _assert_losses_close(single, multi, rel=1e-5)
    assert _info(runs[mode], 0)["mode"] == mode and _info(runs[mode], 1)["world_size"] == 2


@pytest.mark.slow
def test_ddp_with_master_weights_trains_the_same_bits(runs, recipe, tmp_path):
    """``train.param_dtype``'s path under DDP (master copies made before DDP wraps the encoder,
    DDP's reduced gradients moved into them at ``synced``), run with fp32 "low-precision"
    weights: the same losses, export and momentum encoder as plain DDP, bit for bit."""
    mastered = _launch(2, recipe, tmp_path, "train.micro_batch_size=4", env={"OBJKIT_TEST_FP32_MASTERS": "1"})
    assert _info(tmp_path, 0)["master_weights"] and not _info(runs["ddp"], 0)["master_weights"]

    def losses(run: Path) -> list[dict]:
        return [{k: v for k, v in m.items() if k.endswith("loss")} for m in read_metrics(run / "metrics.jsonl")]

    assert losses(mastered) == losses(runs["ddp"] / "run") and len(losses(mastered)) == 6
    for name in ("run/export/model.safetensors", "dump/rank0.safetensors", "dump/rank1.safetensors"):
        got, want = load_file(str(tmp_path / name)), load_file(str(runs["ddp"] / name))
        assert got.keys() == want.keys()
        for key in got:
            assert torch.equal(got[key], want[key]), (name, key)


@pytest.mark.slow
def test_bf16_weights_under_ddp_and_fsdp_train_alike(recipe, tmp_path):
    """``train.param_dtype = "bf16"`` on two ranks under CPU autocast: DDP with fp32 master
    copies, FSDP2 gathering its fp32 shards in bf16 (``MixedPrecisionPolicy``); the losses follow
    each other, both write fp32 checkpoints and exports."""
    runs = {}
    for mode in ("ddp", "fsdp"):
        runs[mode] = _launch(2, recipe, tmp_path / mode, "train.micro_batch_size=4", f"train.parallelism={mode}",
                             "train.param_dtype=bf16", env={"OBJKIT_TEST_CPU_BF16": "1"})
    ddp, fsdp = _info(tmp_path / "ddp", 0), _info(tmp_path / "fsdp", 0)
    assert ddp["master_weights"] and ddp["encoder_dtypes"] == ["torch.bfloat16"]
    assert not fsdp["master_weights"] and fsdp["mode"] == "fsdp" and fsdp["encoder_dtypes"] == ["torch.float32"]
    assert ddp["block_dtype_in_forward"] == fsdp["block_dtype_in_forward"] == "torch.bfloat16"  # no autocast casts
    _assert_losses_close(read_metrics(runs["ddp"] / "metrics.jsonl"), read_metrics(runs["fsdp"] / "metrics.jsonl"),
                         rel=0.02)
    for mode in ("ddp", "fsdp"):
        exported = load_file(str(runs[mode] / "export" / "model.safetensors"))
        assert all(t.dtype == torch.float32 for t in exported.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_queue_and_momentum_encoder_identical_on_every_rank(runs, mode):
    rank0 = load_file(str(runs[mode] / "dump" / "rank0.safetensors"))
    rank1 = load_file(str(runs[mode] / "dump" / "rank1.safetensors"))
    single = load_file(str(runs["single"] / "dump" / "rank0.safetensors"))
    queue = "xlco/stores/momentum_queue/buffer"
    assert queue in rank0 and any(k.startswith("xlco/key_encoder/") for k in rank0)
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key  # bitwise: same gathered keys, same EMA
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_gradients_are_synchronised_once_per_step(runs):
    for rank in (0, 1):
        info = _info(runs["ddp"], rank)
        assert info["find_unused_parameters"]  # XLCO declares that it leaves parameters unused
        steps = info["steps"]
        assert len(steps) == 6
        assert steps["0"]["backwards"] == 4  # 2 micro-batches x (MLM, TLM); XLCO still filling its queue
        assert all(s["backwards"] == 6 and s["synced"] == 1 for k, s in steps.items() if k != "0")
        # DDP's all-reduce ran once per bucket per step, not once per backward pass
        assert info["sync_calls"] == {str(step): info["buckets"] for step in range(6)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_rank_zero_alone_writes_checkpoints_and_export(runs, mode):
    assert _info(runs[mode], 0)["saves"] == [3, 6]
    assert _info(runs[mode], 1)["saves"] == []
    run = runs[mode] / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000003", "step_0000006"]
    trainer_state = json.loads((run / "checkpoints" / "step_0000006" / "trainer.json").read_text())
    assert trainer_state["world_size"] == 2 and trainer_state["parallelism"] == mode
    exported = load_file(str(run / "export" / "model.safetensors"))
    reference = load_file(str(runs["single"] / "run" / "export" / "model.safetensors"))
    assert exported.keys() == reference.keys()
    for key in exported:
        torch.testing.assert_close(exported[key], reference[key], rtol=1e-4, atol=1e-5, msg=key)
    assert AutoModel.from_pretrained(run / "export").config.hidden_size == 32


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_checkpointing_and_chunked_head_under_torchrun_give_the_losses_of_one(runs, recipe, tmp_path, mode):
    """Activation checkpointing (MLM and XLCO's truncated pass, not TLM: switched per objective)
    and the chunked LM head on 2 ranks, DDP and FSDP2: the losses of the plain single-process run."""
    options = ["train.activation_checkpointing=['mlm', 'xlco']", "train.lm_head_chunk_rows=5"]
    multi = _launch(2, recipe, tmp_path / mode, "train.micro_batch_size=4", f"train.parallelism={mode}", *options)
    single = read_metrics(runs["single"] / "run" / "metrics.jsonl")
    _assert_losses_close(single, read_metrics(multi / "metrics.jsonl"), rel=1e-5)


@pytest.mark.slow
def test_joint_backward_and_reference_normalisation_match_too(recipe, tmp_path):
    """One backward per micro-batch (all objectives summed) and fairseq's single normaliser
    (all units of all objectives) give the same losses on 1 and 2 ranks as well."""
    options = ["train.backward=joint", "train.normalization=reference"]
    single = _launch(1, recipe, tmp_path / "single", *options)
    multi = _launch(2, recipe, tmp_path / "ddp", "train.micro_batch_size=4", *options)
    _assert_losses_close(read_metrics(single / "metrics.jsonl"), read_metrics(multi / "metrics.jsonl"), rel=1e-5)
    steps = _info(tmp_path / "ddp", 0)["steps"]
    assert all(s["backwards"] == 2 and s["synced"] == 1 for s in steps.values())  # 2 micro-batches


def _interrupted_copy(run: Path, target: Path) -> Path:
    """``run`` as it was right after its step-3 checkpoint."""
    shutil.copytree(run.parent, target, ignore=shutil.ignore_patterns("dump"))
    copy = target / "run"
    shutil.rmtree(copy / "checkpoints" / "step_0000006")
    shutil.rmtree(copy / "export")
    lines = (copy / "metrics.jsonl").read_text().splitlines()[:3]
    (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return target


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "nproc", "overrides"),
    [("ddp", 2, ["train.micro_batch_size=4"]), ("ddp", 1, []),
     ("fsdp", 2, ["train.micro_batch_size=4", "train.parallelism=fsdp"])],
    ids=["ddp-2-ranks", "ddp-then-1-rank", "fsdp-2-ranks"],
)
def test_resume_under_torchrun(runs, recipe, tmp_path, mode, nproc, overrides):
    """A 2-rank checkpoint resumes on 2 ranks (exactly) or on 1 rank (the global batches do
    not depend on the number of ranks)."""
    resumed = _interrupted_copy(runs[mode] / "run", tmp_path / "resumed")
    _launch(nproc, recipe, resumed, *overrides)
    straight = read_metrics(runs[mode] / "run" / "metrics.jsonl")
    again = read_metrics(resumed / "run" / "metrics.jsonl")
    if nproc == 2 and mode == "ddp":
        assert again == [{**m, "tok/s": a["tok/s"]} for m, a in zip(straight, again, strict=True)]
    else:
        _assert_losses_close(straight, again, rel=1e-5)
    assert _info(resumed, 0)["saves"] == [6]
    if nproc == 2:  # rank 0 verified and chose the checkpoint; the other rank resumed from its choice
        assert _info(resumed, 0)["verified"] == ["step_0000003"] and _info(resumed, 1)["verified"] == []
        assert _info(resumed, 0)["resumed_from"] == _info(resumed, 1)["resumed_from"] == ["step_0000003"]


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_sharded_checkpoints_under_torchrun(runs, recipe, tmp_path, asynchronous):
    """train.checkpoint_format = "sharded" on 2 DDP ranks: each rank writes its shard (the
    manifest covers them), training is unchanged, and a resume from the step-3 sharded
    checkpoint ends exactly where the uninterrupted run ends. Also with
    ``train.checkpoint_async``: the shards written by a background thread on each rank, whose
    collectives run on a process group of their own while the ranks train."""
    overrides = ["train.micro_batch_size=4", "train.checkpoint_format=sharded",
                 *(["train.checkpoint_async=true"] if asynchronous else [])]
    run = _launch(2, recipe, tmp_path / "sharded", *overrides)
    manifest = json.loads((run / "checkpoints" / "step_0000006" / "manifest.json").read_text())
    assert {"shards/.metadata", "trainer.json", "rng.json", "optimizer.json"} <= set(manifest["files"])
    assert not (run / "checkpoints" / "step_0000006" / "model.safetensors").exists()
    straight = read_metrics(runs["ddp"] / "run" / "metrics.jsonl")
    sharded = read_metrics(run / "metrics.jsonl")
    assert sharded == [{**m, "tok/s": a["tok/s"]} for m, a in zip(straight, sharded, strict=True)]
    resumed = _interrupted_copy(run, tmp_path / "resumed")
    _launch(2, recipe, resumed, *overrides)
    again = read_metrics(resumed / "run" / "metrics.jsonl")
    assert again == [{**m, "tok/s": a["tok/s"]} for m, a in zip(straight, again, strict=True)]
    assert _info(resumed, 0)["resumed_from"] == _info(resumed, 1)["resumed_from"] == ["step_0000003"]
    assert _info(resumed, 0)["saves"] == [6] and _info(resumed, 1)["saves"] == []


STREAMED = RECIPE.split("[objectives.xlco]")[0].replace(
    '[data.parallel]\ntype = "cldr"', '[data.parallel]\nstreaming = true\ntype = "cldr"'
) + "[train]\nsteps = 2\nbatch_size = 8\nlr = 1e-3\ncheckpoint_every = 2\n"


@pytest.mark.slow
def test_resuming_streamed_data_on_another_number_of_ranks_is_refused(tmp_path):
    """Streamed sources are read per rank (split_dataset_by_node); their positions cannot move
    to another number of ranks, and the message says what to do."""
    from objkit.contract.errors import UserError
    from objkit.recipe.loader import load_recipe
    from objkit.contract.registry import default_registry
    from objkit.train.runner import run_recipe

    recipe = tmp_path / "streamed.toml"
    recipe.write_text(STREAMED)
    run_recipe(load_recipe(recipe), tmp_path / "run", default_registry(), progress=False)
    from objkit.train.checkpoint import read_checkpoint
    from objkit.distributed import check_resumable
    from objkit.contract.interfaces import WorldInfo

    data = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000002")
    assert data.trainer["world_size"] == 1 and data.trainer["rank_streams"][0].keys() == {"tlm"}
    as_if_two_ranks = {**data.trainer, "world_size": 2}
    with pytest.raises(UserError, match=r"written by 2 rank\(s\), resumed by 1.*tlm.*--nproc_per_node 2"):
        check_resumable(data.path, as_if_two_ranks, WorldInfo(), "single", ["tlm"])
    check_resumable(data.path, data.trainer, WorldInfo(), "single", ["tlm"])  # same layout: fine


def test_find_unused_parameters_only_when_declared():
    from objkit.distributed import needs_find_unused

    class Stub:
        def __init__(self, full: bool = True, heads: dict | None = None) -> None:
            self.uses_all_parameters, self.heads = full, heads or {}

        def trainable_modules(self) -> dict:
            return self.heads

    assert not needs_find_unused([Stub(), Stub()])  # MLM + TLM: every backward reaches everything
    assert needs_find_unused([Stub(), Stub(full=False)])  # + XLCO: truncated encoder, no LM head
    assert not needs_find_unused([Stub(heads={"projection": torch.nn.Linear(2, 2)})])  # its own head, always used
    assert needs_find_unused([Stub(), Stub(heads={"projection": torch.nn.Linear(2, 2)})])  # MLM leaves it unused


# ----------------------------------------------------------------------------- objkit run --nproc: one line
def _objkit_nproc(recipe: Path, out: Path, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "objkit", "run", str(recipe), "-o", str(out), "--nproc", "2", "--no-progress"]
    argv += [arg for override in overrides for arg in ("--set", override)]
    return subprocess.Popen(argv, env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_nproc_user_error_is_the_first_ranks_line_and_code(recipe, tmp_path):
    """A user error found by rank 0 under ``--nproc 2``: its line and exit code 2, no torchrun report."""
    proc = _objkit_nproc(recipe, tmp_path / "run", f'data.mono={{type="text",files=[{{path="{tmp_path}/no.txt",lang="en"}}]}}')
    _, err = proc.communicate(timeout=TIMEOUT)
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err
    assert lines[0].startswith("torchrun (in this process): 2 ranks of ") and len(lines) == 2, err
    assert lines[1] == f"data.mono.files[0].path: no file matches '{tmp_path}/no.txt'"
    assert not list(tmp_path.glob("**/error.json")) and not (tmp_path / "run").exists()


def _rank_pids(out: Path) -> dict[int, int]:
    """{rank: pid} of the rank processes running ``objkit run ... -o OUT``."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"-o\0{out}\0".encode() in (entry / "cmdline").read_bytes():
                env = dict(x.split(b"=", 1) for x in (entry / "environ").read_bytes().split(b"\0") if b"=" in x)
                if b"RANK" in env and b"LOCAL_RANK" in env:
                    ranks[int(env[b"RANK"])] = int(entry.name)
        except OSError:
            continue
    return ranks


def test_nproc_sigterm_exits_75_and_a_killed_rank_is_one_line(recipe, tmp_path):
    """SIGTERM to the launcher: the ranks checkpoint, one line with the command that resumes, exit 75.
    Resumed, then kill -9 of rank 1: one line naming it and the intact checkpoint, exit 137, no gloo
    traceback of the rank left behind."""
    import signal
    import time

    out, marker = tmp_path / "run", tmp_path / "paused"
    for pause, stop in (("step@2", "sigterm"), ("step@5", "kill")):
        marker.unlink(missing_ok=True)
        proc = _objkit_nproc(recipe, out, "train.micro_batch_size=4",
                             env={"OBJKIT_TEST_PAUSE": pause, "OBJKIT_TEST_PAUSE_MARKER": str(marker)})
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.kill(_rank_pids(out)[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=TIMEOUT)
        assert "Traceback" not in err and "ChildFailedError" not in err and "gloo" not in err.lower(), err
        last = err.strip().splitlines()[-1]
        resume = f"resume with: objkit run {recipe} -o {out} --set train.micro_batch_size=4 --no-progress --nproc 2"
        if stop == "sigterm":
            assert proc.returncode == 75, err
            assert last == f"stopped by SIGTERM at step 2 of 6: checkpoint {out}/checkpoints/step_0000002 written; {resume}"
        else:
            assert proc.returncode == 128 + signal.SIGKILL, err
            assert "resumed from" in err and "(step 2)" in err
            assert last == f"rank 1 was killed by SIGKILL; the last complete checkpoint, {out}/checkpoints/step_0000003, is intact; {resume}"
            assert "received SIGTERM" not in err  # the launcher's stopping of rank 0 is not news


def test_the_launcher_reports_the_failure_that_came_first():
    """:func:`objkit.distributed.processes.first_failure` on what torchelastic and the ranks' error files say."""
    from objkit.distributed.processes import first_failure

    def record(line: str, code: int, t: float, internal: bool = False) -> dict:
        return {"line": line, "exit_code": code, "internal": internal, "stack": "Traceback ..." if internal else "",
                "time": t}

    gloo = record("", 1, 5.0, internal=True)  # the rank left behind, failing in a collective
    killed = first_failure({0: 1, 1: -9}, {0: gloo})
    assert (killed.rank, killed.exit_code, killed.signal_name, killed.line) == (1, 137, "SIGKILL", "")
    assert "rank 1 was killed by SIGKILL; X; resume with: C" == str(killed.error("X", "C"))
    user = first_failure({0: 2, 1: -15}, {0: record("data.mono: no file", 2, 3.0), 1: record("late", 2, 4.0)})
    assert (user.rank, user.exit_code, user.line) == (0, 2, "data.mono: no file")
    assert user.error("X", "C").exit_code == 2
    stopped = first_failure({}, {1: record("", 75, 1.0), 0: record("stopped by SIGTERM at step 2", 75, 2.0)})
    assert (stopped.rank, stopped.exit_code, stopped.line) == (0, 75, "stopped by SIGTERM at step 2")
    internal = first_failure({0: 1, 1: -15}, {0: gloo})
    assert internal.error("X", "C").args[0] == "Traceback ...\nrank 0 exited with status 1; X; resume with: C"
