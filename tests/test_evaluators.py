"""The evaluator plugin kind: the built-ins registered from objkit_plugins, ``[eval.NAME]`` tables
(and the deprecated ``[eval.sets]`` / ``[eval.transfer]`` forms, which log the same numbers under
the same names), ``objkit eval NAME`` resolved through the registry, ``FitState.full_weights``."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from objkit import EvalContext, Evaluator, FitState, WorldInfo
from objkit.cli import main
from objkit.recipe.loader import RecipeError, load_recipe
from objkit.contract.registry import default_registry
from tiny_recipes import tiny_recipe

PAIRS = [("Die Katze schläft.", "The cat sleeps."), ("Ich trinke Kaffee.", "I drink coffee."),
         ("Der Zug fährt ab.", "The train leaves."), ("Das Buch liegt da.", "The book lies there.")]
BODY = tiny_recipe("evaluators", dropout=0.1, parallel=False) + (
    '[objectives.mlm]\ndata = "mono"\n[train]\nsteps = 4\nbatch_size = 4\nlr = 2e-3\nseed = 5\nlog_every = 1\n'
    "checkpoint_every = 4\n")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    src, tgt = tmp_path / "val.de", tmp_path / "val.en"
    src.write_text("\n".join(p[0] for p in PAIRS) + "\n", encoding="utf-8")
    tgt.write_text("\n".join(p[1] for p in PAIRS) + "\n", encoding="utf-8")
    return src, tgt


def _recipe(tmp_path: Path, eval_text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(BODY + eval_text, encoding="utf-8")
    return path


def test_the_builtin_evaluators_are_plugins_of_objkit_plugins():
    registry = default_registry()
    for name in ("retrieval", "tatoeba", "transfer", "align"):
        info = registry.get(name, kind="evaluator")
        assert info.distribution == "objkit" and info.module == f"objkit_plugins.{name}"
        assert issubclass(info.cls, Evaluator)
    assert registry.get("transfer").cls.weights == "main" and not registry.get("transfer").cls.periodic
    assert not registry.get("align").cls.during_training


def test_eval_tables_validate_through_the_plugins(tmp_path):
    src, tgt = _files(tmp_path)
    resolved = load_recipe(_recipe(tmp_path, f'[eval]\nevery = 2\n[eval.de_en]\nplugin = "retrieval"\nsrc = "{src}"\n'
                                             f'tgt = "{tgt}"\nlayer = 1\n[eval.retrieval]\nsrc = "{src}"\ntgt = "{tgt}"\n'
                                             "every = 3\n"))
    entries = resolved.recipe.eval.entries()
    assert list(entries) == ["de_en", "retrieval"] and entries["retrieval"][1].every == 3
    assert resolved.eval_configs["de_en"].layer == 1 and resolved.eval_configs["retrieval"].pooling == "mean"
    # the resolved recipe is a recipe again, the plugins' defaults filled in
    again = tomllib.loads(resolved.to_toml())["eval"]
    assert again["de_en"] == {"plugin": "retrieval", "src": str(src), "tgt": str(tgt), "layer": 1, "pooling": "mean",
                              "batch_size": 64}
    assert again["retrieval"]["every"] == 3
    (tmp_path / "again.toml").write_text(resolved.to_toml(), encoding="utf-8")
    assert load_recipe(tmp_path / "again.toml").eval_configs.keys() == {"de_en", "retrieval"}


@pytest.mark.parametrize(("table", "problem"), [
    ('[eval.x]\nplugin = "retrievl"\nsrc = "a"\ntgt = "b"\n',
     'eval.x.plugin: unknown evaluator plugin "retrievl": did you mean "retrieval"?'),
    ('[eval.x]\nplugin = "retrieval"\nsrc = "a"\ntgt = "b"\npooling = "max"\n', "eval.x.pooling: "),
    ('[eval.x]\nplugin = "retrieval"\nsrc = "a"\ntgt = "b"\nlayers = 2\n', 'eval.x.layers: unknown key; did you mean "layer"?'),
    ('[eval.x]\nplugin = "retrieval"\nsrc = "a"\ntgt = "b"\nevery = 0\n', "eval.x.every: "),
    ('[eval.x]\nplugin = "align"\nsrc = "a"\ntgt = "b"\ngold = "g"\n', "eval.x: evaluator 'align' runs only as objkit eval"),
    ('[eval]\nevry = 3\n', 'eval: evry: unknown key; did you mean "every"?'),
    ('[eval.sets.x]\nsrc = "a"\ntgt = "b"\n[eval.x]\nplugin = "retrieval"\nsrc = "a"\ntgt = "b"\n',
     "'x' names both [eval.sets.x] and [eval.x]"),
])
def test_bad_eval_tables_are_one_line_naming_the_key(tmp_path, table, problem):
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, table))
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and problem in lines[0], lines


def test_the_deprecated_tables_are_the_builtin_evaluators(tmp_path):
    src, tgt = _files(tmp_path)
    resolved = load_recipe(_recipe(tmp_path, f'[eval]\nevery = 2\nlayer = 1\npooling = "cls"\n[eval.sets.de_en]\n'
                                             f'src = "{src}"\ntgt = "{tgt}"\nmax_lines = 3\n'))
    key, entry = resolved.recipe.eval.entries()["de_en"]
    assert (key, entry.plugin, entry.every) == ("eval.sets.de_en", "retrieval", None)
    cfg = resolved.eval_configs["de_en"]
    assert (cfg.layer, cfg.pooling, cfg.batch_size, cfg.max_lines) == (1, "cls", 64, 3)


def test_a_bad_file_stops_the_run_before_training_naming_the_table(tmp_path):
    from objkit.eval.periodic import build_evaluators

    resolved = load_recipe(_recipe(tmp_path, f'[eval.de_en]\nplugin = "retrieval"\nsrc = "{tmp_path}/no.de"\n'
                                             f'tgt = "{tmp_path}/no.en"\n'))
    with pytest.raises(Exception, match=r"^eval.de_en: .*no.de: no such file$"):
        build_evaluators(resolved.recipe.eval, resolved.eval_configs, default_registry())


def test_unknown_eval_command_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", "retrievl", "model"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1, err
    assert 'unknown evaluator plugin "retrievl": did you mean "retrieval"?' in err[0]


def test_full_weights_without_a_trainer_is_the_encoder_on_rank_0_only():
    encoder = object()
    state = FitState(run_dir=Path("."), total_steps=1, world=WorldInfo(1, 2), encoder=encoder, tokenizer=None)  # type: ignore[arg-type]
    with state.full_weights("every_rank") as every, state.full_weights("main") as main_copy:
        assert every is encoder and main_copy is None


def test_context_counts_layers_of_either_model():
    class Config:
        num_hidden_layers = 6

    class HF:
        config = Config()

    assert EvalContext(model=HF(), tokenizer=None, device=None, name="m").num_layers == 6  # type: ignore[arg-type]


@pytest.mark.slow
def test_old_and_new_tables_log_the_same_numbers(tmp_path):
    """[eval.sets.NAME] (deprecated) and [eval.NAME] with plugin = "retrieval": the same metrics,
    the same steps, the same weights as a run without evaluation."""
    from safetensors.torch import load_file

    from objkit.train.reporting import read_metrics
    from objkit.train.runner import run_recipe

    src, tgt = _files(tmp_path)
    old = _recipe(tmp_path, f'[eval]\nevery = 2\nlayer = 1\n[eval.sets.de_en]\nsrc = "{src}"\ntgt = "{tgt}"\n', "old.toml")
    new = _recipe(tmp_path, f'[eval]\nevery = 2\n[eval.de_en]\nplugin = "retrieval"\nlayer = 1\nsrc = "{src}"\n'
                            f'tgt = "{tgt}"\n', "new.toml")
    plain = _recipe(tmp_path, "", "plain.toml")
    for recipe in (old, new, plain):
        run_recipe(load_recipe(recipe), tmp_path / recipe.stem, default_registry(), progress=False)
    logged = {}
    for name in ("old", "new"):
        records = [m for m in read_metrics(tmp_path / name / "metrics.jsonl") if "eval/de_en/acc" in m]
        logged[name] = [{k: v for k, v in m.items() if k.startswith("eval/") or k == "step"} for m in records]
    assert [m["step"] for m in logged["old"]] == [2, 4]
    assert logged["old"] == logged["new"]
    assert set(logged["old"][0]) == {"step", "eval/de_en/acc", "eval/de_en/src2tgt", "eval/de_en/tgt2src"}
    weights = {n: load_file(str(tmp_path / n / "export" / "model.safetensors")) for n in ("old", "new", "plain")}
    for key, value in weights["plain"].items():
        assert weights["old"][key].equal(value) and weights["new"][key].equal(value), key
