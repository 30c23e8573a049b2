"""``objkit prepare`` and ``data.cache_dir``: runs start from the cache, a cache built from other
inputs is refused in one line, a streamed source that goes bad late ends the run in one line
with its checkpoints intact; runs from an hf ``save_to_disk`` folder, a .tsv and a .tmx."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

from objkit.cli import main
from tests.tiny_models import WORDS, tiny_encoder


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(info.value.code or 0), err.strip().splitlines()


def sentences(n: int, offset: int = 0) -> list[str]:
    return [" ".join(WORDS[(i + j + offset) % len(WORDS)] for j in range(3 + i % 4)) for i in range(n)]


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    tiny_encoder(layers=1)[1].save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "mono.txt").write_text("\n".join(sentences(60)) + "\n")
    pairs = list(zip(sentences(40), sentences(40, offset=3)))
    datasets.Dataset.from_dict({"translation": [{"en": a, "de": b} for a, b in pairs]}).save_to_disk("saved")
    with gzip.open("bi.tsv.gz", "wt") as f:
        f.writelines(f"{a}\t{b}\t{1.0 + (i % 2) * 0.1}\n" for i, (a, b) in enumerate(pairs))
    units = "".join(f'<tu><tuv xml:lang="en"><seg>{a}</seg></tuv><tuv xml:lang="de"><seg>{b}</seg></tuv></tu>\n'
                    for a, b in pairs)
    Path("c.tmx").write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<tmx version="1.4"><header/><body>\n{units}'
                             "</body></tmx>\n")
    Path("r.toml").write_text("""
[model]
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
max_length = 32
tokenizer = "tok"
[data.mono]
type = "text"
files = [{ path = "mono.txt", lang = "en" }]
[data.parallel]
type = "hf"
path = "saved"
translation_column = "translation"
src_lang = "en"
tgt_lang = "de"
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[train]
steps = 2
batch_size = 4
lr = 1e-3
""")
    return tmp_path


def test_prepare_then_runs_use_the_cache_and_refuse_a_stale_one(capsys, workdir, monkeypatch):
    code, lines = run_cli(capsys, "prepare", "r.toml", "-o", "cache")
    assert code == 0
    key = json.loads((workdir / "cache" / "mlm" / "key.json").read_text())
    assert key["max_length"] == 32 and key["prepare"]["plugin"] == "mlm" and key["files"][0][1] > 0
    assert (workdir / "cache" / "tlm" / "rows").is_dir()

    import objkit.train.prepare

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("a run with a valid cache tokenized its data")

    monkeypatch.setattr(objkit.train.prepare, "_tokenize", no_tokenizing)
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run1", "--cache-dir", "cache", "--no-progress")
    assert code == 0 and lines[-1].startswith("done: 2 steps")

    with open("mono.txt", "a") as f:  # the corpus changed after the cache was built
        f.write("the new line\n")
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run2", "--cache-dir", "cache", "--no-progress")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"data.cache_dir: cache/mlm was built from other inputs (data file {workdir / 'mono.txt'} "
                               "changed since the cache was built (its content differs, ")
    assert lines[0].endswith("run `objkit prepare RECIPE -o cache` again, or remove cache/mlm to let the run rebuild it")
    assert not (workdir / "run2" / "checkpoints").exists()


def test_a_run_without_a_cache_entry_builds_it_once(capsys, workdir):
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run", "--no-progress", "--set", 'data.cache_dir="c2"')
    assert code == 0
    assert sorted(p.name for p in (workdir / "c2").iterdir() if not p.name.startswith(".")) == ["mlm", "tlm"]
    assert "cache_dir" in (workdir / "run" / "run-recipe.toml").read_text()
    # the cache directory is not part of what the weights depend on: another one resumes the run
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run", "--no-progress", "--cache-dir", "c3",
                          "--set", "train.steps=3")
    assert code == 2 and "train.steps" in lines[0] and "cache_dir" not in lines[0]


@pytest.mark.parametrize("parallel", [
    '{type="parallel",pairs=[{path="bi.tsv.gz",src_lang="en",tgt_lang="de",min_score=1.05}]}',
    '{type="parallel",pairs=[{path="c.tmx",src_lang="en",tgt_lang="de"}]}',
], ids=["tsv", "tmx"])
def test_runs_from_bitext_files(capsys, workdir, parallel):
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run", "--no-progress", "--set", f"data.parallel={parallel}")
    assert code == 0 and lines[-1].startswith("done: 2 steps")


def test_a_late_bad_byte_in_a_stream_ends_the_run_in_one_line(capsys, workdir):
    from objkit.train import checkpoint as ckpt

    Path("a.txt").write_text("\n".join(sentences(1000)) + "\n")  # one map batch: read before b.txt
    Path("b.txt").write_bytes(b"the cat\nthe dog\nthe caf\xe9 sat\n")
    code, lines = run_cli(
        capsys, "run", "r.toml", "-o", "run", "--no-progress",
        "--set", 'data.mono={type="text",streaming=true,files=[{path="*.txt",lang="en"}]}',
        "--set", "objectives.tlm.enabled=false", "--set", "train.steps=200", "--set", "train.checkpoint_every=2",
        "--set", "train.batch_size=32")
    assert code == 2 and lines[-1] == ("data.mono.files[0].path: b.txt: line 3: byte 0xe9 at column 8 "
                                       "is not valid UTF-8 (expected UTF-8 text)")
    data, problems = ckpt.newest_readable(workdir / "run")
    assert data is not None and not problems and data.trainer["step"] >= 2


@pytest.mark.slow
def test_two_ranks_without_a_cache_tokenize_once(workdir):
    """``objkit run --nproc 2`` (torchrun, gloo) with ``data.cache_dir`` and no cache: rank 0
    tokenizes and writes each entry while rank 1 waits, then rank 1 reads what it wrote."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "objkit", "run", "r.toml", "-o", "run", "--nproc", "2", "--no-progress",
         "--set", 'data.cache_dir="shared-cache"'],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = sorted(line for line in done.stderr.splitlines() if line.startswith("data.cache_dir: rank"))
    assert [line.split(" (")[0] for line in reports] == [
        "data.cache_dir: rank 0 of 2: mlm: 12 rows tokenized and cached",
        "data.cache_dir: rank 0 of 2: tlm: 40 rows tokenized and cached",
        "data.cache_dir: rank 1 of 2: mlm: 12 rows read from the cache",
        "data.cache_dir: rank 1 of 2: tlm: 40 rows read from the cache",
    ]
    assert sorted(p.name for p in (workdir / "shared-cache").iterdir() if not p.name.startswith(".")) == ["mlm", "tlm"]
    assert (workdir / "run" / "export" / "config.json").is_file()


def test_prepare_json(capsys, workdir):
    with pytest.raises(SystemExit) as info:
        main(["prepare", "r.toml", "-o", "cache", "--json", "--no-progress"])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert info.value.code in (0, None) and len(out.splitlines()) == 1
    report = json.loads(out)
    assert report["cache_dir"] == "cache"
    assert [(e["name"], e["how"]) for e in report["entries"]] == [("mlm", "built"), ("tlm", "built")]
    assert all(e["rows"] > 0 and e["tokens"] > 0 and e["path"] == f"cache/{e['name']}" for e in report["entries"])
