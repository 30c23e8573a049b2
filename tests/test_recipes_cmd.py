"""Recipes by name: `objkit recipes` (ls, cp), `run`/`validate` NAME, `extends = "NAME"`, and the
full-size recipes' unset data keys ("???"): shown by validate and --dry-run, refused by run."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from objkit.cli import main
from objkit.recipe.loader import load_recipe
from objkit.recipe.files import packaged_names

ROOT = Path(__file__).parent.parent
RECIPES = ROOT / "recipes"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0, err
    return err.strip()


def test_recipes_lists_every_packaged_recipe_one_line_each(capsys):
    code, out, _ = run_main(capsys, "recipes")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["name", "size", "reference", "trains"]
    names = sorted(p.stem for p in RECIPES.glob("*.toml"))
    assert [line.split()[0] for line in lines] == names == packaged_names()
    base = next(line for line in lines if line.startswith("infoxlm_base "))
    assert "base (12 layers), from xlm-roberta-base" in base
    assert "InfoXLM (Chi et al., NAACL 2021): the InfoXLM-base row" in base
    assert base.endswith("InfoXLM-base: XLM-R base continued with MLM + TLM + XLCO (momentum queue, mixup)")
    large = next(line for line in lines if line.startswith("infoxlm_large "))
    assert "large (24 layers), from xlm-roberta-large" in large and "InfoXLM-large row" in large
    assert "tiny (4 layers), from scratch" in next(line for line in lines if line.startswith("quickstart "))
    code, out_ls, _ = run_main(capsys, "recipes", "ls")
    assert code == 0 and out_ls == out


def test_recipes_json_and_every_recipe_has_a_reference_and_description(capsys):
    code, out, _ = run_main(capsys, "recipes", "ls", "--json")
    assert code == 0
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(packaged_names())
    for row in rows:
        assert row["reference"] != "-" and row["trains"] != "-", row


def test_preset_sizes_match_the_encoder():
    from objkit.blocks.encoder import PRESETS
    from objkit.cli.recipes import PRESET_LAYERS

    assert PRESET_LAYERS == {k: v["num_hidden_layers"] for k, v in PRESETS.items()}


def test_cp_writes_a_copy_and_never_replaces_a_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "recipes", "cp", "infoxlm_base", "my.toml")
    assert code == 0 and "wrote my.toml" in out
    assert (tmp_path / "my.toml").read_bytes() == (RECIPES / "infoxlm_base.toml").read_bytes()
    (tmp_path / "my.toml").write_text("# edited\n")
    err = one_line_error(*run_main(capsys, "recipes", "cp", "quickstart", "my.toml")[::2])
    assert err == "my.toml: already exists; not replaced (choose another FILE or remove it first)"
    assert (tmp_path / "my.toml").read_text() == "# edited\n"
    (tmp_path / "sub").mkdir()
    code, _, _ = run_main(capsys, "recipes", "cp", "quickstart", "sub")
    assert code == 0 and (tmp_path / "sub" / "quickstart.toml").is_file()
    err = one_line_error(*run_main(capsys, "recipes", "cp", "infoxlm_bse", "x.toml")[::2])
    assert 'did you mean "infoxlm_base"' in err and not (tmp_path / "x.toml").exists()
    err = one_line_error(*run_main(capsys, "recipes", "cp", "quickstart", "no/such/dir.toml")[::2])
    assert "does not exist" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["my.toml", "quickstart.toml", "sub"]  # no temp file left


def test_a_copy_of_a_derived_recipe_still_finds_its_base(capsys, tmp_path, monkeypatch):
    """infoxlm_large's `extends = "infoxlm_base.toml"` is no file beside the copy: the packaged one."""
    monkeypatch.chdir(tmp_path)
    assert run_main(capsys, "recipes", "cp", "infoxlm_large", "large.toml")[0] == 0
    code, out, _ = run_main(capsys, "validate", "large.toml")
    assert code == 0
    resolved = tomllib.loads(out)
    assert resolved["name"] == "infoxlm_large" and resolved["train"]["steps"] == 200000
    assert resolved["objectives"]["xlco"]["temperature"] == 0.25  # from infoxlm_base


def test_validate_and_run_by_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(capsys, "validate", "quickstart", "--set", "train.steps=7")
    assert code == 0 and tomllib.loads(out)["train"]["steps"] == 7
    assert load_recipe("quickstart").source == "quickstart"
    code, out, _ = run_main(capsys, "run", "quickstart.toml", "--dry-run")
    assert code == 0 and "plan for quickstart.toml" in out
    err = one_line_error(*run_main(capsys, "validate", "infoxlm_bas")[::2])
    assert err.startswith("infoxlm_bas: no such file and no packaged recipe of that name; did you mean")
    assert '"infoxlm_base"' in err and "objkit recipes lists" in err
    err = one_line_error(*run_main(capsys, "run", "recipes/quickstart.toml", "-o", "r")[::2])
    assert "file not found" in err and "give the name alone (quickstart)" in err
    assert not (tmp_path / "r").exists()


def test_a_file_of_that_name_wins(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (RECIPES / "quickstart.toml").read_text().replace('name = "quickstart"', 'name = "mine"')
    (tmp_path / "quickstart").write_text(text)
    code, out, _ = run_main(capsys, "validate", "quickstart")
    assert code == 0 and tomllib.loads(out)["name"] == "mine"


def test_extends_names_a_packaged_recipe(tmp_path):
    child = tmp_path / "child.toml"
    child.write_text('extends = "quickstart"\nname = "child"\n[train]\nsteps = 3\n')
    resolved = load_recipe(child)
    assert resolved.recipe.name == "child" and resolved.recipe.train.steps == 3
    assert resolved.recipe.model.max_length == 64  # quickstart's
    child.write_text('extends = "quickstrat"\n')
    with pytest.raises(Exception) as err:
        load_recipe(child)
    message = str(err.value)
    assert message.count("\n") == 0 and "a bare name is a packaged recipe" in message and '"quickstart"' in message


def test_unset_data_keys_validate_and_plan_but_run_names_them(capsys, tmp_path):
    code, out, _ = run_main(capsys, "validate", "infoxlm_base")
    assert code == 0 and tomllib.loads(out)["data"]["mono"]["files"][0]["path"] == "???"
    assert load_recipe("infoxlm_base").unset == [
        "data.mono.files[0].path", "data.parallel.pairs[0].src", "data.parallel.pairs[0].tgt"]
    err = one_line_error(*run_main(capsys, "run", "infoxlm_base", "-o", str(tmp_path / "r"))[::2])
    assert err.startswith("infoxlm_base: data.mono.files[0].path, data.parallel.pairs[0].src, "
                          "data.parallel.pairs[0].tgt: not set ('???' in the recipe)")
    assert err.endswith("fill in with --set 'data.mono.files=[...]' (a list is set whole) or in a copy "
                        "(objkit recipes cp infoxlm_base FILE)")
    assert not (tmp_path / "r").exists()
    # filled in through --set: only what is still unset is named
    err = one_line_error(*run_main(capsys, "run", "infoxlm_base", "-o", str(tmp_path / "r"),
                                   "--set", 'data.mono.files=[{path="en.txt",lang="en"}]')[::2])
    assert err.startswith("infoxlm_base: data.parallel.pairs[0].src, data.parallel.pairs[0].tgt: not set")
    assert "--set 'data.parallel.pairs=[...]'" in err
    # a user's copy: fill it in there
    (tmp_path / "mine.toml").write_text('extends = "xlmr_mlm"\n[model]\ninit = "???"\n')
    err = one_line_error(*run_main(capsys, "run", str(tmp_path / "mine.toml"), "-o", str(tmp_path / "r"))[::2])
    assert err == (f"{tmp_path / 'mine.toml'}: model.init, data.mono.files[0].path: not set ('???' in the recipe); "
                   f"fill in with --set model.init=VALUE or in {tmp_path / 'mine.toml'}")
    # objkit prepare refuses too (before reading any data)
    err = one_line_error(*run_main(capsys, "prepare", "xlmr_mlm", "-o", str(tmp_path / "c"))[::2])
    assert err.startswith("xlmr_mlm: data.mono.files[0].path: not set")


def test_no_recipe_keeps_a_path_placeholder():
    for recipe in RECIPES.glob("*.toml"):
        assert "/path/to" not in recipe.read_text(encoding="utf-8"), recipe.name
