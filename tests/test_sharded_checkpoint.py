"""train.checkpoint_format = "sharded" (objkit/sharded_checkpoint.py) in one process: the
checkpoint holds a DCP shard directory covered by the manifest, a resumed run ends bit for bit
where an uninterrupted one ends, a damaged shard is detected and the previous checkpoint used,
and a sharded checkpoint refuses another number of ranks. The 2-rank case (every rank writes
its shard) is in tests/test_distributed.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from objkit import checkpoint as ckpt
from objkit.errors import UserError
from objkit.interfaces import WorldInfo
from objkit.recipe import load_recipe
from objkit.registry import default_registry
from objkit.runner import run_recipe
from objkit.trainer import Trainer
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
