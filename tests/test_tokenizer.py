"""SentencePiece unigram training, the XLM-R id layout, the CLI and the recipe cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer

import objkit.data.tokenizer as tokmod
from objkit.data import iter_source_texts
from objkit.contract.errors import UserError
from objkit.recipe.schema import CldrSource, TextSource, TokenizerTraining
from objkit.cli.tokenizer import tokenizer_group
from objkit.data.tokenizer import ensure_tokenizer, train_tokenizer

SAMPLES = ["Grüße aus Österreich", "Россия и Германия", "日本 中国", "Deutsch Französisch"]
CLDR = CldrSource(type="cldr", kind="text", locales=["en", "de", "ru", "zh", "ja"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(iter_source_texts(CLDR, 50_000), out, vocab_size=1000)
    return out


def test_saved_and_reloaded_with_xlmr_layout(trained):
    tok = AutoTokenizer.from_pretrained(str(trained))
    assert type(tok).__name__ == "XLMRobertaTokenizer"  # transformers 5: tokenizers-backed ("fast")
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1 == 1001  # 1000 spm pieces - 3 specials + 4 fairseq + <mask>
    assert tok.cls_token_id == 0 and tok.sep_token_id == 2
    assert (trained / tokmod.SPM_FILE).exists()
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(trained / tokmod.SPM_FILE))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    text = "Deutschland Frankreich"
    assert tok.encode(text, add_special_tokens=False) == [i + 1 for i in sp.encode(text)]  # fairseq offset


def test_round_trip_multilingual(trained):
    tok = AutoTokenizer.from_pretrained(str(trained))
    for text in SAMPLES:
        ids = tok.encode(text)
        assert ids[0] == 0 and ids[-1] == 2 and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_deterministic(trained, tmp_path):
    again = train_tokenizer(iter_source_texts(CLDR, 50_000), tmp_path, vocab_size=1000)
    assert (tmp_path / "tokenizer.json").read_text() == (trained / "tokenizer.json").read_text()
    assert len(again) == 1002


def test_small_corpus_does_not_crash(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="objkit.data.tokenizer"):
        tok = train_tokenizer(["hallo welt", "guten tag", "hello world"] * 5, tmp_path, vocab_size=8000)
    assert "soft vocabulary limit" in caplog.text
    assert 5 < len(tok) < 100
    assert tok.decode(tok.encode("hallo welt"), skip_special_tokens=True) == "hallo welt"
    with pytest.raises(UserError, match="no non-empty text"):
        train_tokenizer(["", "  "], tmp_path / "none", vocab_size=100)


def test_cli_train(tmp_path):
    (tmp_path / "de.txt").write_text("\n".join(["Guten Morgen", "Grüße aus München"] * 20), encoding="utf-8")
    (tmp_path / "ru.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["Привет мир", "Москва"] * 20))
    runner = CliRunner()
    out = tmp_path / "tok"
    result = runner.invoke(tokenizer_group, ["train", str(tmp_path / "*.txt"), str(tmp_path / "ru.jsonl"),
                                             "-o", str(out), "--vocab-size", "100", "--max-sentences", "1000"])
    assert result.exit_code == 0, result.output
    assert "wrote tokenizer" in result.output
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.decode(tok.encode("Москва"), skip_special_tokens=True) == "Москва"
    missing = runner.invoke(tokenizer_group, ["train", str(tmp_path / "nope.txt"), "-o", str(out)])
    assert isinstance(missing.exception, UserError) and "no file matches" in str(missing.exception)
    help_text = runner.invoke(tokenizer_group, ["train", "--help"]).output
    assert "Examples:" in help_text and "objkit tokenizer train corpus/*.txt" in help_text


def test_ensure_tokenizer_caches(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("\n".join(["Hallo Welt", "Guten Tag", "Auf Wiedersehen"] * 30), encoding="utf-8")
    sources = {"mono": TextSource(type="text", files=[{"path": "a.txt", "lang": "de"}]),
               "names": CldrSource(type="cldr", locales=["en", "de"], categories=["days", "months"])}
    config = TokenizerTraining(vocab_size=100, max_sentences=500)
    calls = []
    real = tokmod.train_tokenizer

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokmod, "train_tokenizer", counting)
    first = ensure_tokenizer(config, sources, tmp_path / "cache", base_dir=tmp_path)
    second = ensure_tokenizer(config, sources, tmp_path / "cache", base_dir=tmp_path)
    assert first == second and len(calls) == 1
    assert (first / "tokenizer.json").exists() and not list((tmp_path / "cache").glob(".*"))  # no temp dirs left
    tok = AutoTokenizer.from_pretrained(str(first))
    assert tok.decode(tok.encode("Montag"), skip_special_tokens=True) == "Montag"  # CLDR source was used
    only_mono = ensure_tokenizer(TokenizerTraining(vocab_size=100, max_sentences=500, sources=["mono"]), sources,
                                 tmp_path / "cache", base_dir=tmp_path)
    assert only_mono != first and len(calls) == 2
    with pytest.raises(UserError, match=r"model.tokenizer.sources\[0\]: no data source named 'mnoo'"):
        ensure_tokenizer(TokenizerTraining(sources=["mnoo"]), sources, tmp_path / "cache", base_dir=tmp_path)


def test_wordpiece_training_gives_a_cased_bert_tokenizer(tmp_path):
    """``algorithm = "wordpiece"`` (the bert encoder's default): a cased WordPiece vocabulary of
    the requested size in BERT's layout, loadable with AutoTokenizer, continuation pieces marked ##."""
    from transformers import AutoTokenizer

    from objkit.data.tokenizer import train_wordpiece

    texts = [f"Wörterbuch Straße Haus {i} maison été Übersetzung" for i in range(200)] + ["日本語 テスト"] * 20
    train_wordpiece(texts, tmp_path / "wp", vocab_size=120)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert 60 < len(tok) <= 120, len(tok)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    pieces = tok.convert_ids_to_tokens(tok("Straße Übersetzung")["input_ids"])
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]" and "[UNK]" not in pieces, pieces
    assert "Straße" in pieces or any(p.startswith("##") for p in pieces), pieces  # cased, accents kept
    assert tok.tokenize("STRASSE") != tok.tokenize("strasse")  # not lower-cased


def test_wordpiece_alphabet_covers_every_character_of_a_han_text(tmp_path):
    """A WordPiece vocabulary trained on text with more than 1,000 distinct characters (Chinese)
    keeps the characters ``character_coverage`` asks for: with 1.0 none of the training text is
    [UNK]. The trainer's default alphabet (the 1,000 most frequent characters) left 22.8% of
    SIB-200's Chinese dev pieces [UNK] for a 24,000-piece vocabulary (objkit 0.6)."""
    from transformers import AutoTokenizer

    from objkit.data.tokenizer import train_wordpiece, wordpiece_alphabet

    han = [chr(0x4E00 + i) for i in range(1500)]
    texts = ["".join(han[(i * 7 + k) % 1500] for k in range(12)) + " Haus" for i in range(400)]
    assert len(wordpiece_alphabet(texts, 1.0)) == 1500 + 4
    assert len(wordpiece_alphabet(texts, 0.5)) < 1000  # the rarest characters go first
    train_wordpiece(texts, tmp_path / "wp", vocab_size=3000, character_coverage=1.0)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    ids = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]]
    assert tok.unk_token_id not in ids
