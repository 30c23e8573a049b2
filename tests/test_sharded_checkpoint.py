"""train.checkpoint_format = "sharded" (objkit/train/sharded_checkpoint.py) in one process: the
checkpoint holds a DCP shard directory covered by the manifest, a resumed run ends bit for bit
where an uninterrupted one ends, a damaged shard is detected and the previous checkpoint used,
and a sharded checkpoint refuses another number of ranks. ``train.checkpoint_async``: training
goes on while a checkpoint is written, which counts only once complete, and resumes exactly. The 2-rank case (every rank writes
its shard) is in tests/test_distributed.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from objkit.train import checkpoint as ckpt
from objkit.contract.errors import UserError
from objkit.contract.interfaces import WorldInfo
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.runner import run_recipe
from objkit.train.trainer import Trainer
from tiny_recipes import tiny_recipe

RECIPE = tiny_recipe("sharded", dropout=0.0) + """
[objectives.mlm]
data = "mono"
[objectives.xlco]
data = "parallel"
layer = 1
pooling = "mean"
momentum = 0.9
[objectives.xlco.negatives.momentum_queue]
size = 16
[train]
steps = 6
batch_size = 8
lr = 2e-3
warmup_steps = 2
seed = 3
log_every = 1
checkpoint_every = 3
keep_checkpoints = 3
checkpoint_format = "sharded"
"""


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sharded")
    (root / "recipe.toml").write_text(RECIPE)
    run_recipe(load_recipe(root / "recipe.toml"), root / "run", default_registry(), progress=False)
    return root


def _interrupted(straight: Path, target: Path) -> Path:
    shutil.copytree(straight / "run", target)
    shutil.rmtree(target / "checkpoints" / "step_0000006")
    shutil.rmtree(target / "export")
    lines = (target / "metrics.jsonl").read_text().splitlines()[:3]
    (target / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return target


def _same_export(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "export" / "model.safetensors")), load_file(str(b / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_layout_and_manifest(straight):
    step = straight / "run" / "checkpoints" / "step_0000006"
    files = json.loads((step / "manifest.json").read_text())["files"]
    shards = sorted(name for name in files if name.startswith("shards/"))
    assert "shards/.metadata" in shards and any(name.endswith(".distcp") for name in shards)
    assert not (step / "model.safetensors").exists() and json.loads((step / "trainer.json").read_text())[
        "checkpoint_format"] == "sharded"
    data = ckpt.read_checkpoint(step)
    assert data.sharded and data.step == 6 and data.model == {}
    assert data.objectives["xlco/stores/momentum_queue/filled"] > 0  # JSON leaves beside the shards


def test_resume_from_a_sharded_checkpoint_is_exact(straight, tmp_path):
    resumed = _interrupted(straight, tmp_path / "run")
    run_recipe(load_recipe(straight / "recipe.toml"), resumed, default_registry(), progress=False)
    _same_export(straight / "run", resumed)
    assert (resumed / "metrics.jsonl").read_text().count("\n") == 6


def test_a_damaged_shard_falls_back_to_the_previous_checkpoint(straight, tmp_path, capsys):
    damaged = tmp_path / "run"
    shutil.copytree(straight / "run", damaged)
    shutil.rmtree(damaged / "export")
    shard = next((damaged / "checkpoints" / "step_0000006" / "shards").glob("*.distcp"))
    with shard.open("r+b") as handle:
        handle.seek(8)
        handle.write(b"\x00\xff\x00\xff")
    run_recipe(load_recipe(straight / "recipe.toml"), damaged, default_registry(), progress=False)
    err = capsys.readouterr().err
    assert "step_0000006: shards/" in err and "does not match its SHA-256" in err
    assert "resumed from" in err and "step_0000003" in err
    _same_export(straight / "run", damaged)


def test_another_number_of_ranks_is_refused(straight, tmp_path):
    trainer = Trainer(load_recipe(straight / "recipe.toml"), tmp_path / "run", default_registry(), progress=False)
    data = ckpt.read_checkpoint(straight / "run" / "checkpoints" / "step_0000003")
    data.trainer["world_size"] = 2
    data.rng_states = data.rng_states * 2
    trainer.world = WorldInfo(rank=0, world_size=1)
    with pytest.raises(UserError, match=r"sharded checkpoint written by 2 rank\(s\) resumes on 2.*--nproc 2"):
        trainer.resume(data)


ASYNC = RECIPE.replace('checkpoint_format = "sharded"', 'checkpoint_format = "sharded"\ncheckpoint_async = true')


def test_async_saves_train_on_while_writing_and_resume_bit_identically(straight, tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(ASYNC)
    # 1. the writer of checkpoint 3 parked by the test hook after its shards, before its manifest:
    #    steps 4-6 train meanwhile; step 6's checkpoint waits for it; nothing counts as saved yet
    parked, marker, log = tmp_path / "parked", tmp_path / "marker", tmp_path / "parked.log"
    env = dict(os.environ, OBJKIT_TEST_PAUSE="save-mid@3", OBJKIT_TEST_PAUSE_MARKER=str(marker))
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "objkit", "run", str(recipe), "-o", str(parked), "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 300
        metrics = parked / "metrics.jsonl"
        while not (marker.exists() and metrics.exists() and metrics.read_text().count("\n") >= 6):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
        assert ckpt.list_checkpoints(parked) == []  # step 3 is not complete: no manifest, not in place
        assert (parked / "checkpoints" / "step_0000003.tmp" / "shards" / ".metadata").is_file()
        assert not (parked / "checkpoints" / "step_0000003").exists()
    finally:
        proc.kill()
        proc.wait()
    # 2. uninterrupted: complete checkpoints, and the weights of the synchronous run to the bit
    run = tmp_path / "run"
    run_recipe(load_recipe(recipe), run, default_registry(), progress=False)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_0000003", "step_0000006"]
    assert not list((run / "checkpoints").glob("*.tmp"))
    _same_export(straight / "run", run)
    # 3. resumed from checkpoint 3, written while step 4 trained: the same weights again
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    shutil.rmtree(resumed / "export")
    lines = (resumed / "metrics.jsonl").read_text().splitlines()[:3]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    run_recipe(load_recipe(recipe), resumed, default_registry(), progress=False)
    _same_export(straight / "run", resumed)


def test_async_needs_sharded_checkpoints(tmp_path):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.replace('checkpoint_format = "sharded"', "checkpoint_async = true"))
    with pytest.raises(UserError, match=r'train\.checkpoint_async: needs train\.checkpoint_format = "sharded"'):
        load_recipe(recipe)
