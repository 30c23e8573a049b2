"""``objkit tokenizer train/extend -o DIR`` write DIR whole (a temporary folder renamed): a DIR
holding a user's file is refused in one line with nothing touched, one objkit wrote is replaced
whole (so tokenizer.json always matches sentencepiece.bpe.model), and ``extend`` refuses ``-o``
that is, is inside or contains BASE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from objkit.cli import main
from objkit.data.ownership import MANIFEST
from tests.test_vocab import CZECH, ENGLISH


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return int(info.value.code or 0), captured.err.strip().splitlines()


@pytest.fixture
def corpora(tmp_path: Path) -> Path:
    (tmp_path / "en.txt").write_text("\n".join(ENGLISH * 40) + "\n", encoding="utf-8")
    (tmp_path / "cs.txt").write_text("\n".join(CZECH * 40) + "\n", encoding="utf-8")
    return tmp_path


def test_extend_over_an_earlier_objkit_tokenizer_is_consistent(capsys, corpora):
    base, out = str(corpora / "base"), str(corpora / "out")
    assert cli(capsys, "tokenizer", "train", str(corpora / "en.txt"), "-o", base, "--vocab-size", "100")[0] == 0
    assert cli(capsys, "tokenizer", "train", str(corpora / "cs.txt"), "-o", out, "--vocab-size", "120")[0] == 0
    for add in ("20", "7"):  # DIR holds a tokenizer objkit wrote (trained, then extended): replaced whole
        code, _ = cli(capsys, "tokenizer", "extend", base, str(corpora / "cs.txt"), "-o", out, "--add", add)
        assert code == 0
        record = json.loads((corpora / "out" / "objkit_extension.json").read_text())
        loaded = AutoTokenizer.from_pretrained(out)
        pieces = spm.SentencePieceProcessor(model_file=str(corpora / "out" / "sentencepiece.bpe.model"))
        assert len(loaded) == len(AutoTokenizer.from_pretrained(base)) + record["added"] == len(pieces) + 2
        assert record["added"] == int(add)
    assert (corpora / "out" / MANIFEST).is_file()


@pytest.mark.parametrize("where", ["base", "base/sub", "."])
def test_extend_refuses_an_output_that_is_inside_or_holds_the_base(capsys, corpora, where):
    base = corpora / "base"
    cli(capsys, "tokenizer", "train", str(corpora / "en.txt"), "-o", str(base), "--vocab-size", "100")
    model = (base / "sentencepiece.bpe.model").read_bytes()
    code, lines = cli(capsys, "tokenizer", "extend", str(base), str(corpora / "cs.txt"), "-o", str(corpora / where),
                      "--add", "5")
    assert code == 2 and len(lines) == 1 and "BASE" in lines[0]
    assert (base / "sentencepiece.bpe.model").read_bytes() == model and not (base / "sub").exists()


@pytest.mark.parametrize("command", ["train", "extend"])
def test_a_folder_holding_a_users_file_is_refused_and_left_alone(capsys, corpora, command):
    base = corpora / "base"
    cli(capsys, "tokenizer", "train", str(corpora / "en.txt"), "-o", str(base), "--vocab-size", "100")
    mine = corpora / "mine"
    mine.mkdir()
    (mine / "tokenizer.json").write_text("my own")
    argv = ["train", str(corpora / "cs.txt"), "-o", str(mine), "--vocab-size", "100"] if command == "train" else \
        ["extend", str(base), str(corpora / "cs.txt"), "-o", str(mine), "--add", "5"]
    code, lines = cli(capsys, "tokenizer", *argv)
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"{mine}: exists and objkit did not write it")
    assert sorted(p.name for p in mine.iterdir()) == ["tokenizer.json"]
    assert (mine / "tokenizer.json").read_text() == "my own"
    assert sorted(p.name for p in corpora.iterdir() if p.name.startswith("."))  == []  # no temporary left
