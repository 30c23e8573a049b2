"""End-to-end tiny runs: metrics, checkpoints, export, and exact resumption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.reporting import read_metrics
from objkit.train.runner import run_recipe
from tiny_recipes import tiny_recipe

TINY = tiny_recipe("tiny-test") + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[train]
steps = 6
batch_size = 8
micro_batch_size = 4
lr = 2e-3
warmup_steps = 2
seed = 3
log_every = 1
checkpoint_every = 3
keep_checkpoints = 3
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(TINY)
    return path


def _run(recipe_path: Path, out: Path, *overrides: str) -> Path:
    resolved = load_recipe(recipe_path, list(overrides))
    return run_recipe(resolved, out, default_registry(), progress=False)


@pytest.mark.slow
def test_tiny_run_writes_metrics_checkpoints_and_a_loadable_export(recipe_path, tmp_path):
    export = _run(recipe_path, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    for record in metrics:
        assert {"step", "lr", "mlm/loss", "tlm/loss", "mlm/accuracy"} <= set(record)
    assert metrics[1]["lr"] == pytest.approx(2e-3)  # end of warmup: peak
    assert metrics[-1]["lr"] == pytest.approx(0.0)  # linear decay to zero
    model = AutoModel.from_pretrained(export)
    tokenizer = AutoTokenizer.from_pretrained(export)
    out = model(**tokenizer(["Deutschland", "Germany"], return_tensors="pt", padding=True))
    assert out.last_hidden_state.shape[-1] == 32
    assert (tmp_path / "run" / "run-recipe.toml").exists()
    versions = json.loads((tmp_path / "run" / "versions.json").read_text())
    assert "mlm" in versions["plugins"]
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step_0000003", "step_0000006"]
    _fine_tune_like_run_xnli(export)


def _fine_tune_like_run_xnli(export: Path) -> None:
    """What HF's run_glue / run_xnli do with an export: AutoTokenizer with truncation at
    min(max_seq_length, tokenizer.model_max_length) and one training step of
    AutoModelForSequenceClassification. The tiny model has 32 positions; the script asks for 128."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(export)
    assert tokenizer.model_max_length == 32
    model = AutoModelForSequenceClassification.from_pretrained(export, num_labels=3)
    long_text = " ".join(["Deutschland Germany France Frankreich"] * 40)
    max_seq_length = min(128, tokenizer.model_max_length)
    batch = tokenizer([long_text, "Germany"], [long_text, "Deutschland"], truncation=True,
                      max_length=max_seq_length, padding=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = model(**batch, labels=torch.tensor([0, 2])).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(recipe_path, tmp_path):
    _run(recipe_path, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    _run(recipe_path, interrupted)
    # simulate a crash right after the step-3 checkpoint: drop everything later
    shutil.rmtree(interrupted / "checkpoints" / "step_0000006")
    shutil.rmtree(interrupted / "export")
    lines = (interrupted / "metrics.jsonl").read_text().splitlines()[:3]
    (interrupted / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _run(recipe_path, interrupted)
    a = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    b = read_metrics(interrupted / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b, strict=True):
        assert x["mlm/loss"] == y["mlm/loss"] and x["tlm/loss"] == y["tlm/loss"]
    wa = load_file(str(tmp_path / "straight" / "export" / "model.safetensors"))
    wb = load_file(str(interrupted / "export" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


@pytest.mark.slow
def test_losses_fall(recipe_path, tmp_path):
    _run(recipe_path, tmp_path / "run", "train.steps=40", "train.log_every=10", "train.checkpoint_every=100", "train.lr=3e-3")
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for key in ("mlm/loss", "tlm/loss"):
        assert metrics[-1][key] < metrics[0][key] - 0.5, key


XLCO = """
[objectives.xlco]
data = "parallel"
layer = 2
pooling = "mean"
normalize = true
temperature = 0.05
projection = false
mask_inputs = false
symmetric = true
momentum = 0.99
[objectives.xlco.negatives.in_batch]
[objectives.xlco.negatives.momentum_queue]
size = 32
"""


@pytest.mark.slow
def test_xlco_run_logs_loss_and_rising_accuracy(tmp_path):
    """The quickstart_infoxlm settings on the tiny model: XLCO's accuracy rises within 60 steps,
    and a run resumed from a mid-run checkpoint (queue and momentum encoder restored) matches."""
    path = tmp_path / "xlco.toml"
    path.write_text(TINY.replace("[train]", XLCO + "[train]"))
    overrides = ["train.steps=60", "train.batch_size=16", "train.micro_batch_size=16", "train.lr=3e-3",
                 "train.warmup_steps=5", "train.log_every=5", "train.checkpoint_every=30", "model.dropout=0.0"]
    _run(path, tmp_path / "run", *overrides)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all({"xlco/loss", "xlco/accuracy"} <= set(m) for m in metrics)
    def mean(key: str, rows: list[dict]) -> float:
        return sum(r[key] for r in rows) / len(rows)

    # CLDR names often share subwords across locales, so accuracy starts well above chance
    # (about 1/47 here); it must still rise, and the loss fall, over 60 steps.
    assert mean("xlco/accuracy", metrics[-3:]) > mean("xlco/accuracy", metrics[:3]) + 0.08
    assert mean("xlco/loss", metrics[-3:]) < mean("xlco/loss", metrics[:3]) - 0.5

    resumed = tmp_path / "resumed"
    _run(path, resumed, *overrides)
    shutil.rmtree(resumed / "checkpoints" / "step_0000060")
    shutil.rmtree(resumed / "export")
    lines = (resumed / "metrics.jsonl").read_text().splitlines()[:6]
    (resumed / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    _run(path, resumed, *overrides)
    wa = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    wb = load_file(str(resumed / "export" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def _export_record(run: Path) -> dict:
    return json.loads((run / "export" / "objkit.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("clock", ["wall", "process"])
def test_time_budget_ends_the_run_like_its_last_step_and_a_rerun_trains_no_further(recipe_path, tmp_path, clock):
    run = tmp_path / "run"
    budget = ["train.time_budget=1e-6", f'train.time_budget_clock="{clock}"']
    _run(recipe_path, run, *budget)  # spent before the first step ends: that step is the last
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000001"]
    record = _export_record(run)
    assert record["step"] == 1 and record["total_steps"] == 6
    assert record["ended_by"] == "train.time_budget" and record["time_budget_clock"] == clock
    assert record["train_seconds"] > 0
    before = (run / "export" / "model.safetensors").read_bytes()
    _run(recipe_path, run, *budget)  # resumed with the budget spent: finished, no step taken
    assert [m["step"] for m in read_metrics(run / "metrics.jsonl")] == [1]
    assert (run / "export" / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_time_budget_counts_across_resumes_and_may_be_raised(recipe_path, tmp_path):
    run = tmp_path / "run"
    _run(recipe_path, run, "train.time_budget=1e6")  # never spent: train.steps ends it
    assert _export_record(run)["ended_by"] == "train.steps"
    spent = [json.loads((run / "checkpoints" / f"step_000000{k}" / "trainer.json").read_text())["train_seconds"]
             for k in (3, 6)]
    assert 0 < spent[0] < spent[1]
    # back to step 3 with a budget that its checkpoint has already spent: nothing more is trained
    shutil.rmtree(run / "checkpoints" / "step_0000006")
    _run(recipe_path, run, f"train.time_budget={spent[0]}")
    assert _export_record(run)["step"] == 3 and _export_record(run)["ended_by"] == "train.time_budget"
    _run(recipe_path, run, "train.time_budget=1e6")  # raised: the run goes on to train.steps
    assert _export_record(run)["step"] == 6
