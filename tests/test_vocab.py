"""``objkit tokenizer extend``: pieces appended, every existing id unchanged, fewer tokens per
word on the new language, an HF tokenizer AutoTokenizer loads."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from objkit.cli import main
from objkit.tokenizer import train_tokenizer

ENGLISH = ["the house is red and the cat sleeps", "good morning to all of you", "we like green tea in the garden"]
CZECH = ["dům je červený a kočka spí", "dobré ráno všem", "rádi pijeme zelený čaj v zahradě",
         "muž v modrém tričku hraje na kytaru", "děti si hrají na ulici před školou"]


def test_extend_appends_pieces_and_keeps_every_id(capsys, tmp_path):
    train_tokenizer(ENGLISH * 40, tmp_path / "base", vocab_size=60)
    corpus = tmp_path / "cs.txt"
    corpus.write_text("\n".join(CZECH * 40) + "\n", encoding="utf-8")
    main(["tokenizer", "extend", str(tmp_path / "base"), str(corpus), "-o", str(tmp_path / "ext"), "--add", "20",
          "--lang", "cs"])
    assert "appended 20 pieces" in capsys.readouterr().out
    base, ext = AutoTokenizer.from_pretrained(tmp_path / "base"), AutoTokenizer.from_pretrained(tmp_path / "ext")
    assert len(ext) == len(base) + 20
    kept = [i for i in range(len(base)) if i != base.mask_token_id]
    assert base.convert_ids_to_tokens(kept) == ext.convert_ids_to_tokens(kept)  # every existing id unchanged
    assert ext.mask_token_id == len(ext) - 1  # <mask> moves to the end (XLM-R layout)
    words = sum(len(s.split()) for s in CZECH)
    before = sum(len(base(s, add_special_tokens=False)["input_ids"]) for s in CZECH) / words
    after = sum(len(ext(s, add_special_tokens=False)["input_ids"]) for s in CZECH) / words
    assert after < 0.95 * before
    assert ext.decode(ext(CZECH[1], add_special_tokens=False)["input_ids"]) == CZECH[1]


def test_extend_refuses_a_base_without_a_sentencepiece_model(capsys, tmp_path):
    (tmp_path / "notok").mkdir()
    (tmp_path / "t.txt").write_text("text\n")
    with pytest.raises(SystemExit) as info:
        main(["tokenizer", "extend", str(tmp_path / "notok"), str(tmp_path / "t.txt"), "-o", str(tmp_path / "o"),
              "--add", "5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and "has no sentencepiece.bpe.model" in err[0]
