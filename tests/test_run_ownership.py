"""``objkit run`` writes, replaces and (``--fresh``) removes only what it wrote: a user's
``recipe.toml`` in ``-o .`` stays theirs, a user's file where the run writes stops it in one
line (exit 2) with nothing touched, and a run directory from before manifests is recognised by
its objkit checkpoints. Checkpoints follow the umask."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from objkit.cli import main
from objkit.data.ownership import MANIFEST, owned_entries
from tests.tiny_models import WORDS, tiny_encoder

USER_RECIPE = """# my own recipe, with my comments
[model]
hidden_size = 32
num_layers = 1
num_heads = 4
intermediate_size = 64
max_length = 32
tokenizer = "tok"
[data.mono]
type = "text"
files = [{ path = "mono.txt", lang = "en" }]
[objectives.mlm]
data = "mono"
[train]
steps = 2
batch_size = 4
lr = 1e-3
checkpoint_every = 1
"""


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(info.value.code or 0), err.strip().splitlines()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    tiny_encoder(layers=1)[1].save_pretrained(str(tmp_path / "tok"))
    lines = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3 + i % 4)) for i in range(40)]
    (tmp_path / "mono.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "recipe.toml").write_text(USER_RECIPE)
    return tmp_path


def test_a_run_into_the_folder_of_the_users_recipe_leaves_it_and_fresh_removes_only_objkits(capsys, workdir):
    code, lines = run_cli(capsys, "run", "recipe.toml", "-o", ".", "--no-progress")
    assert code == 0 and lines[-1].startswith("done: 2 steps")
    assert (workdir / "recipe.toml").read_text() == USER_RECIPE
    assert "lr = 0.001" in (workdir / "run-recipe.toml").read_text()
    owned = owned_entries(workdir)
    assert {"checkpoints", "export", "metrics.jsonl", "run-recipe.toml", "versions.json"} <= set(owned)
    assert not {"recipe.toml", "mono.txt", "tok"} & set(owned)
    logged = (workdir / "metrics.jsonl").read_text()
    code, lines = run_cli(capsys, "run", "recipe.toml", "-o", ".", "--no-progress")  # the same recipe: resumes
    assert code == 0 and not any("different recipe" in line for line in lines), lines
    code, lines = run_cli(capsys, "run", "recipe.toml", "-o", ".", "--no-progress", "--fresh")
    assert code == 0 and lines[0].startswith("--fresh: removed the previous run's ")
    assert " recipe.toml" not in lines[0] and "tok" not in lines[0]
    assert (workdir / "recipe.toml").read_text() == USER_RECIPE
    assert (workdir / "mono.txt").is_file() and (workdir / "tok" / "tokenizer.json").is_file()
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(logged.splitlines())  # old ones went


@pytest.mark.parametrize("name", ["metrics.jsonl", "versions.json", "run-recipe.toml", "checkpoints", "export"])
def test_a_users_file_where_the_run_writes_stops_it_in_one_line(capsys, workdir, name):
    out = workdir / "out"
    out.mkdir()
    target = out / name
    if name in ("checkpoints", "export"):
        target.mkdir()
        (target / "mine.txt").write_text("mine")
    else:
        target.write_text("mine")
    for extra in ([], ["--fresh"]):
        code, lines = run_cli(capsys, "run", "recipe.toml", "-o", "out", "--no-progress", *extra)
        assert code == 2 and len(lines) == 1
        assert lines[0].startswith(f"out/{name}: exists and objkit did not write it; objkit run writes its {name}")
    assert (target / "mine.txt" if target.is_dir() else target).read_text() == "mine"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [name]  # nothing else written


def test_a_run_directory_from_before_manifests(capsys, workdir):
    code, _ = run_cli(capsys, "run", "recipe.toml", "-o", "old", "--no-progress")
    assert code == 0
    old = workdir / "old"
    (old / MANIFEST).unlink()  # as an earlier objkit left it: no manifest, the resolved recipe as recipe.toml
    (old / "run-recipe.toml").rename(old / "recipe.toml")
    code, lines = run_cli(capsys, "run", "recipe.toml", "-o", "old", "--no-progress")  # resumes, records
    assert code == 0 and not any("different recipe" in line for line in lines), lines
    assert {"checkpoints", "metrics.jsonl", "recipe.toml", "versions.json"} <= set(owned_entries(old))

    # a user's recipe.toml beside objkit's checkpoints (not a checkpoint's recipe) is theirs
    (old / MANIFEST).unlink()
    (old / "recipe.toml").write_text(USER_RECIPE)
    code, lines = run_cli(capsys, "run", "recipe.toml", "-o", "old", "--no-progress", "--fresh")
    assert code == 0 and "checkpoints" in lines[0] and " recipe.toml" not in lines[0]
    assert (old / "recipe.toml").read_text() == USER_RECIPE


def test_checkpoints_follow_the_umask(capsys, workdir):
    previous = os.umask(0o027)
    try:
        code, _ = run_cli(capsys, "run", "recipe.toml", "-o", "out", "--no-progress")
    finally:
        os.umask(previous)
    assert code == 0
    step = workdir / "out" / "checkpoints" / "step_0000002"
    modes = {p.name: p.stat().st_mode & 0o777 for p in step.iterdir()}
    assert modes["model.safetensors"] == 0o640 and modes["optimizer.safetensors"] == 0o640, modes
    assert set(modes.values()) == {0o640}
    assert json.loads((workdir / "out" / MANIFEST).read_text())["written_by"] == "objkit"
