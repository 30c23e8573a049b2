"""The ``moses`` source (Moses/OPUS downloads) as installed: objkit's source conformance kit, its
one-line errors, and a short ``objkit run`` that trains this distribution's objective on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from objkit.testing import SourceConformance, word_tokenizer

EN = [f"the {c} cat number {i} sat on the mat" for i, c in enumerate(["red", "big", "old", "small"] * 6)]
DE = [f"die {c} katze nummer {i} sass auf der matte" for i, c in enumerate(["rote", "grosse", "alte", "kleine"] * 6)]
FR = [f"le {c} chat numero {i} sur le tapis" for i, c in enumerate(["rouge", "grand", "vieux", "petit"] * 6)]
CORPORA = {
    "corpora/OpenSubtitles.de-en.de": "\n".join(DE) + "\n",
    "corpora/OpenSubtitles.de-en.en": "\n".join(EN) + "\n",
    "corpora/Europarl.en-fr.en": "\n".join(EN[:12]) + "\n",
    "corpora/Europarl.en-fr.fr": "\n".join(FR[:12]) + "\n",
}


class TestMosesConformance(SourceConformance):
    plugin = "moses"
    distribution = "objkit-translation-ranking"
    files = CORPORA
    configs = [
        {"type": "moses", "prefix": "corpora/OpenSubtitles", "pairs": ["en-de"]},
        {"type": "moses", "prefix": "corpora/*", "pairs": ["de-en", "fr-en"], "max_lines": 10},
    ]
    bad_configs = [
        {"type": "moses", "prefix": "corpora/OpenSubtitles", "pairs": ["en"]},
        {"type": "moses", "prefix": "corpora/OpenSubtitles", "pairs": ["en-en"]},
        {"type": "moses", "prefix": "corpora/OpenSubtitles", "pairs": []},
        {"type": "moses", "pairs": ["en-de"]},
    ]


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


RECIPE = """
requires = ["objkit-translation-ranking>=0.1"]
[model]
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
max_length = 32
tokenizer = "tok"
[data.opus]
type = "moses"
prefix = "corpora/*"
pairs = ["en-de", "en-fr"]
sampling_alpha = 0.5
[objectives.translation_ranking]
data = "opus"
layer = 2
pooling = "mean"
[train]
steps = 3
batch_size = 8
lr = 2e-3
warmup_steps = 1
log_every = 1
checkpoint_every = 3
"""


def run(argv: list[str]) -> tuple[int, str]:
    """``objkit ARGV`` as a user runs it (the installed command, not objkit's internals), in the
    working directory; its exit code and stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-m", "objkit", *argv], capture_output=True, text=True, env=env,
                          timeout=300)
    return done.returncode, done.stderr


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, CORPORA)
    word_tokenizer(EN + DE + FR).save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "opus.toml").write_text(RECIPE)
    return tmp_path


def test_objkit_run_trains_on_a_moses_corpus(workdir: Path):
    code, err = run(["run", "opus.toml", "-o", "run", "--no-progress"])
    assert code == 0, err
    records = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["translation_ranking/loss"] for r in records if "translation_ranking/loss" in r]
    assert len(losses) == 3 and all(loss == loss and loss > 0 for loss in losses)
    kept = tomllib.loads((workdir / "run" / "run-recipe.toml").read_text())["data"]["opus"]
    assert kept["type"] == "moses" and kept["pairs"] == ["en-de", "en-fr"]


@pytest.mark.parametrize("files, override, expected", [
    ({}, "data.opus.pairs=[\"en-it\"]",
     "data.opus.pairs[0]: no Moses/OPUS files corpora/*.en-it.en / .it (nor corpora/*.it-en.*)"),
    ({"corpora/Europarl.en-fr.fr": "\n".join(FR[:11]) + "\n"}, None,
     "data.opus.pairs[1]: corpora/Europarl.en-fr.en has 12 lines but corpora/Europarl.en-fr.fr has 11 "
     "(src and tgt must be line-aligned)"),
    ({"corpora/OpenSubtitles.de-en.de": ("\n".join(DE[:3]) + "\nK\xe4se\n").encode("latin-1")}, None,
     "data.opus.pairs[0]: "),
    ({}, "data.opus.pairs=[\"en\"]", 'data.opus.pairs: Value error, expected "src-tgt"'),
])
def test_bad_input_is_one_line_naming_the_key(workdir, files, override, expected):
    write(workdir, files)
    argv = ["run", "opus.toml", "-o", "run", "--no-progress"] + (["--set", override] if override else [])
    code, err = run(argv)
    assert code == 2, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert expected.replace("Value error, ", "") in message, err
    if isinstance(files.get("corpora/OpenSubtitles.de-en.de"), bytes):
        assert "line 4" in message and "UTF-8" in message, message
    assert not (workdir / "run" / "metrics.jsonl").exists()
