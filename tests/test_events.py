"""Trainer events (objkit.contract.events): a third party's callback installed from a distribution fires
in a real run; optimizers and schedules are registry entries a recipe names."""

from __future__ import annotations

import json

import pytest
import torch

from objkit.contract.errors import UserError
from objkit.data.ownership import claim
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import Registry
from test_plugin_ecosystem import TINY_RECIPE, fake_distribution, objkit

CALLBACK_MODULE = """
    import json
    from typing import ClassVar
    from objkit import Callback, PluginConfig, hookimpl

    class RecordConfig(PluginConfig):
        path: str

    class Record(Callback):
        name: ClassVar[str] = "record_events"
        plugin_api: ClassVar[str] = "1.2"
        Config: ClassVar[type] = RecordConfig

        def _note(self, event, state, **extra):
            suffix = f".rank{state.world.rank}" if state.world.world_size > 1 else ""
            with open(self.config.path + suffix, "a") as out:
                out.write(json.dumps({"event": event, "step": state.step, **extra}) + "\\n")

        def on_fit_start(self, state):
            self._note("fit_start", state, layers=state.encoder.num_layers)
        def on_log(self, state, record):
            self._note("log", state, keys=sorted(record))
        def on_step_end(self, state, stats):
            self._note("step_end", state)
        def on_eval(self, state, results):
            self._note("eval", state, keys=sorted(results))
        def on_checkpoint(self, state, path):
            self._note("checkpoint", state, path=str(path))
        def on_fit_end(self, state):
            self._note("fit_end", state, error=state.error is not None)

    @hookimpl
    def objkit_plugins():
        return [Record]
"""


@pytest.fixture(scope="module")
def callback_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site-callback")
    fake_distribution(site, "objkit-record-events", "0.3", {"objkit_record_events": CALLBACK_MODULE},
                      {"record_events": "objkit_record_events"})
    return site


def test_a_third_party_callback_is_listed_and_fires_in_order(callback_site, tmp_path):
    listed = objkit("list-plugins", "--json", site=callback_site)
    row = {r["name"]: r for r in json.loads(listed.stdout)}["record_events"]
    assert (row["kind"], row["distribution"], row["status"]) == ("callback", "objkit-record-events", "ok")

    log = tmp_path / "events.jsonl"
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.replace("log_every = 1", "log_every = 2\ncheckpoint_every = 2")
                      + f'[callbacks.record_events]\npath = "{log}"\n')
    result = objkit("run", str(recipe), "-o", str(tmp_path / "run"), "--no-progress", site=callback_site)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["event"], e["step"]) for e in events] == [
        ("fit_start", 0), ("step_end", 1), ("log", 2), ("step_end", 2), ("checkpoint", 2), ("fit_end", 2)]
    assert events[0]["layers"] == 2 and not events[-1]["error"]
    assert "mlm/loss" in events[2]["keys"] and events[4]["path"].endswith("step_0000002")
    # the recipe's callbacks are recorded with the run, and may change on resume (they only observe)
    assert "[callbacks.record_events]" in (tmp_path / "run" / "run-recipe.toml").read_text()


def test_a_callback_table_is_validated_by_its_plugin(callback_site, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE + '[callbacks.record_events]\npaht = "x"\n')
    result = objkit("validate", str(recipe), site=callback_site)
    assert result.returncode == 2
    assert "callbacks.record_events.paht: unknown key; did you mean \"path\"?" in result.stderr
    assert "callbacks.record_events.path: required key missing" in result.stderr


def tiny(tmp_path, extra: str = "") -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE + extra)
    return str(path)


def test_the_recipe_names_the_optimizer_and_schedule_from_the_registry(tmp_path):
    from objkit.train.build import build_optimizer, build_schedule

    registry = Registry.from_entry_points()
    assert {"adamw"} <= set(registry.names("optimizer"))
    assert {"linear", "constant", "cosine"} <= set(registry.names("schedule"))
    resolved = load_recipe(tiny(tmp_path),
                           ["train.schedule=cosine", "train.warmup_steps=0", "train.optimizer.weight_decay=0.05"],
                           registry=registry)
    params = [torch.nn.Parameter(torch.ones(3))]
    optimizer = build_optimizer(resolved, registry, params)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["weight_decay"] == 0.05
    schedule = build_schedule(resolved, registry, optimizer)
    optimizer.step()
    schedule.step()  # half a cosine over 2 steps: half the peak after one
    assert schedule.get_last_lr()[0] == pytest.approx(0.5e-3)


def test_an_unknown_optimizer_or_schedule_is_one_line_each(tmp_path):
    with pytest.raises(UserError) as err:
        load_recipe(tiny(tmp_path), ["train.schedule=cosin", "train.optimizer.name=adam"])
    message = str(err.value)
    assert 'train.schedule: unknown schedule plugin "cosin": did you mean "cosine"?' in message
    assert 'train.optimizer.name: unknown optimizer plugin "adam": did you mean "adamw"?' in message


@pytest.mark.slow
def test_nproc_passes_the_plugin_selection_to_the_workers_and_fresh_clears_once(callback_site, tmp_path):
    """With autoload off, only ``--plugin record_events`` loads the callback: both torchrun workers
    must get it (else they refuse the recipe). ``--fresh`` clears the old run before they start."""
    log = tmp_path / "events.jsonl"
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE.replace("batch_size = 4", "batch_size = 4\nmicro_batch_size = 2")
                      + f'[callbacks.record_events]\npath = "{log}"\n')
    out = tmp_path / "run"
    (out / "checkpoints" / "step_0000009").mkdir(parents=True)  # a previous run's leftovers
    (out / "metrics.jsonl").write_text('{"step": 9}\n')
    claim(out, ["checkpoints", "metrics.jsonl"], "objkit run")  # objkit's (--fresh removes only what it wrote)
    env = {"OBJKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    refused = objkit("run", str(recipe), "-o", str(out), "--nproc", "2", site=callback_site, env=env)
    assert refused.returncode == 2 and "record_events" in refused.stderr and "disabled" in refused.stderr
    result = objkit("--plugin", "record_events", "run", str(recipe), "-o", str(out), "--nproc", "2", "--fresh",
                    "--no-progress", site=callback_site, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--plugin record_events run" in result.stderr  # the exec'd torchrun command line
    assert result.stderr.count("--fresh: removed") == 1  # once, by the launcher
    for rank in (0, 1):
        events = [json.loads(line) for line in (tmp_path / f"events.jsonl.rank{rank}").read_text().splitlines()]
        assert events[0]["event"] == "fit_start" and events[-1]["event"] == "fit_end" and events[-1]["step"] == 2
    assert not (out / "checkpoints" / "step_0000009").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
