"""Real-corpus sources: ``type = "hf"`` (save_to_disk folders, local parquet, loading scripts
refused, the hub offline) and bitext files (.tsv with scores, .tmx), with their one-line errors."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import datasets
import pytest

from objkit.data import ExampleStream, load_source
from objkit.data.sources import check_source_files, iter_source_texts, locate_stream_error
from objkit.contract.errors import UserError
from objkit.recipe.schema import HfSource, ParallelSource, TextSource
from tests.tiny_models import tiny_encoder

PAIRS = [("the cat sat", "die Katze sass"), ("a big dog", "ein grosser Hund"), ("the red house", "das rote Haus")]


@pytest.fixture(scope="module")
def tok():
    return tiny_encoder(layers=1)[1]


def words(tok, ids) -> str:
    return tok.decode(ids)


def hf(**keys) -> HfSource:
    return HfSource(type="hf", **keys)


def bitext(path: Path | str, **keys) -> ParallelSource:
    return ParallelSource(type="parallel", pairs=[{"path": str(path), "src_lang": "en", "tgt_lang": "de", **keys}])


def test_save_to_disk_folder_with_a_translation_column(tok, tmp_path):
    rows = [{"en": a, "de": b, "fr": "x"} for a, b in PAIRS]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": rows, "id": [1, 2, 3]})}).save_to_disk(
        str(tmp_path / "saved"))
    source = hf(path=str(tmp_path / "saved"), translation_column="translation", src_lang="en", tgt_lang="de")
    check_source_files("par", source)
    ds = load_source("par", source, tok, max_tokens=16)
    assert set(ds.column_names) == {"src_ids", "tgt_ids", "src_lang", "tgt_lang", "group"}
    assert [words(tok, r) for r in ds["src_ids"]] == ["the cat sat", "a big dog", "the red house"]
    assert ds["group"] == ["en-de"] * 3 and len(ds["tgt_ids"][0]) == 3  # 'die Katze sass' is 3 unknown words
    with pytest.raises(UserError, match=r"^data.par.tgt_lang: 'translation' of .*saved has no language 'sw' "
                                        r"\(languages: en, de, fr\)$"):
        check_source_files("par", hf(path=str(tmp_path / "saved"), translation_column="translation",
                                     src_lang="en", tgt_lang="sw"))
    with pytest.raises(UserError, match=r"^data.par.split: .*saved has no split 'test' \(splits: train\)$"):
        check_source_files("par", hf(path=str(tmp_path / "saved"), split="test", translation_column="translation",
                                     src_lang="en", tgt_lang="de"))
    streamed = load_source("par", source.model_copy(update={"streaming": True}), tok, max_tokens=16)
    assert isinstance(streamed, datasets.IterableDataset)
    assert [words(tok, r["src_ids"]) for r in streamed] == ["the cat sat", "a big dog", "the red house"]


def test_local_parquet_folder_with_a_language_column(tok, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    datasets.Dataset.from_dict({"sentence": ["the cat", "a dog", "big tree"], "language": ["en", "en", "xx"]}
                               ).to_parquet(str(folder / "part-0.parquet"))
    source = hf(path=str(folder), text_column="sentence", lang_column="language")
    ds = load_source("mono", source, tok, max_tokens=16)
    assert ds["group"] == ["en", "en", "xx"] and ds["lang"] == ds["group"]
    stream = ExampleStream(ds, alpha=1.0, seed=0)
    assert stream.group_sizes == {"en": 2, "xx": 1}
    assert list(iter_source_texts(source, 10)) == ["the cat", "a dog", "big tree"]
    with pytest.raises(UserError, match=r"^data.mono.text_column: .*pq has no column 'text' "
                                        r"\(columns: sentence, language\)$"):
        check_source_files("mono", hf(path=str(folder), text_column="text", lang="en"))


def test_loading_scripts_are_refused_and_an_unreachable_hub_is_one_line(tmp_path, monkeypatch):
    script = tmp_path / "my_corpus.py"
    script.write_text("raise SystemExit('a recipe must never run this')\n")
    with pytest.raises(UserError, match=r"^data.mono.path: .*my_corpus.py is a dataset loading script; datasets "
                                        r".* no longer runs them"):
        check_source_files("mono", hf(path=str(script), text_column="text", lang="en"))
    from objkit.blocks.hub import hub_unreachable_reason

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_unreachable_reason.cache_clear()
    try:
        with pytest.raises(UserError) as info:
            check_source_files("par", hf(path="objkit-tests/no-such-corpus", name="de-en",
                                         translation_column="translation", src_lang="en", tgt_lang="de"))
    finally:
        hub_unreachable_reason.cache_clear()
    assert str(info.value) == ("data.par.path: 'objkit-tests/no-such-corpus' is not a local dataset and not in the "
                               "datasets cache, and the hub cannot be reached (HF_HUB_OFFLINE is set)")


def test_hf_recipe_keys_are_validated():
    from pydantic import ValidationError

    for keys, expected in [
        ({"path": "x"}, "give text_column"),
        ({"path": "x", "text_column": "t"}, "exactly one of lang"),
        ({"path": "x", "src_column": "a", "src_lang": "en", "tgt_lang": "de"}, "both src_column and tgt_column"),
        ({"path": "x", "translation_column": "t"}, "needs src_lang and tgt_lang"),
        ({"path": "x", "text_column": "t", "lang_column": "l", "streaming": True}, "lang_column needs streaming"),
    ]:
        with pytest.raises(ValidationError, match=expected):
            hf(**keys)


@pytest.mark.parametrize("opener", [open, gzip.open, lzma.open, bz2.open], ids=["plain", "gz", "xz", "bz2"])
def test_tsv_scores_columns_and_compression(tok, tmp_path, opener):
    suffix = {open: "", gzip.open: ".gz", lzma.open: ".xz", bz2.open: ".bz2"}[opener]
    path = tmp_path / f"cc.en-de.tsv{suffix}"
    with opener(path, "wt", encoding="utf-8") as f:
        for (a, b), score in zip(PAIRS, [1.2, 1.01, 1.07]):
            f.write(f"{a}\t{b}\t{score}\n")
    ds = load_source("par", bitext(path, min_score=1.06), tok, max_tokens=16, cache_dir=str(tmp_path / "hf"))
    assert [words(tok, r) for r in ds["src_ids"]] == ["the cat sat", "the red house"]  # 1.01 dropped
    check_source_files("par", bitext(path, min_score=1.06))
    # CCMatrix puts the score first; '-' skips a column
    ccm = tmp_path / "ccm.tsv"
    ccm.write_text("".join(f"1.1\t{b}\t{a}\n" for a, b in PAIRS))
    ds = load_source("par", bitext(ccm, columns=["score", "tgt", "src"]), tok, max_tokens=16,
                     cache_dir=str(tmp_path / "hf"))
    assert [words(tok, r) for r in ds["src_ids"]] == ["the cat sat", "a big dog", "the red house"]


def test_tsv_bad_input_names_file_and_line(tmp_path):
    cases = {
        "fields.tsv": (b"a\tb\n" * 3 + b"only one field\n",
                       "line 4: 1 tab-separated field(s), expected 2 (src, tgt)"),
        "score.tsv": (b"a\tb\t1.0\nc\td\thigh\n", "line 2: score 'high' is not a number (columns: src, tgt, score)"),
        "latin1.tsv": (b"a\tb\ncaf\xe9\tx\n", "line 2: byte 0xe9 at column 4 is not valid UTF-8 (expected UTF-8 text)"),
        "noscore.tsv": (b"a\tb\n", "line 1: no score column for min_score"),
    }
    for name, (data, expected) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError) as info:
            check_source_files("par", bitext(path, min_score=0.5) if name == "noscore.tsv" else bitext(path))
        assert str(info.value).startswith(f"data.par.pairs[0].path: {path}: {expected}"), str(info.value)
    empty = tmp_path / "low.tsv"
    empty.write_text("a\tb\t0.1\n")
    with pytest.raises(UserError, match=r"^data.par.pairs\[0\].path: .*low.tsv holds no pair with score >= 1.0$"):
        check_source_files("par", bitext(empty, min_score=1.0))
    csv = tmp_path / "x.csv"
    csv.write_text("a,b\n")
    with pytest.raises(UserError, match=r"^data.par.pairs\[0\].path: .*x.csv is not a bitext file \(expected .tsv or .tmx"):
        check_source_files("par", bitext(csv))


TMX_HEAD = '<?xml version="1.0" encoding="utf-8"?>\n<tmx version="1.4">\n<header srclang="en"/>\n<body>\n'


def tmx(units: list[dict[str, str]]) -> str:
    body = "".join("<tu>" + "".join(f'<tuv xml:lang="{lang}"><seg>{text}</seg></tuv>' for lang, text in u.items())
                   + "</tu>\n" for u in units)
    return TMX_HEAD + body + "</body>\n</tmx>\n"


def test_tmx_pairs_regional_codes_and_errors(tok, tmp_path):
    path = tmp_path / "opus.tmx.gz"
    units = [{"en-US": a, "de_DE": b} for a, b in PAIRS]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(tmx(units))
    ds = load_source("par", bitext(path), tok, max_tokens=16, cache_dir=str(tmp_path / "hf"))
    assert [words(tok, r) for r in ds["src_ids"]] == ["the cat sat", "a big dog", "the red house"]
    assert list(iter_source_texts(bitext(path), 2)) == ["the cat sat", "die Katze sass"]

    missing = tmp_path / "missing.tmx"
    missing.write_text(tmx([{"en": "a", "de": "b"}, {"en": "c", "fr": "d"}]))
    with pytest.raises(UserError) as info:
        check_source_files("par", bitext(missing))
    assert str(info.value) == (f"data.par.pairs[0].path: {missing}: line 6: <tu> has no 'de' segment (languages: en, "
                               "fr; expected both 'en' and 'de')")
    broken = tmp_path / "broken.tmx"
    broken.write_text(TMX_HEAD + "<tu><tuv xml:lang='en'><seg>a</tuv></tu>\n</body></tmx>\n")
    with pytest.raises(UserError, match=r"^data.par.pairs\[0\].path: .*broken.tmx: line 5: mismatched tag at column "):
        check_source_files("par", bitext(broken))


def test_streamed_bitext_and_a_late_bad_byte_located(tok, tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("the cat\n" * 50)
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"a dog\n" * 7 + b"the caf\xe9\n")
    source = TextSource(type="text", files=[{"path": str(tmp_path / "*.txt"), "lang": "en"}], streaming=True)
    check_source_files("mono", source)  # existence and size only: read lazily
    rows = load_source("mono", source, tok, max_tokens=16)
    stream = ExampleStream({"en": rows}, alpha=1.0, seed=0,
                           on_error=lambda exc: locate_stream_error("mono", source, exc))
    with pytest.raises(UserError) as info:
        stream.next_examples(100)
    assert str(info.value) == (f"data.mono.files[0].path: {bad}: line 8: byte 0xe9 at column 8 is not valid UTF-8 "
                               "(expected UTF-8 text)")
    tsv = tmp_path / "s.tsv"
    tsv.write_text("the cat\tdie Katze\n" * 5 + "broken line\n")
    streamed = bitext(tsv).model_copy(update={"streaming": True})
    rows = load_source("par", streamed, tok, max_tokens=16)
    stream = ExampleStream({"en-de": rows}, alpha=1.0, seed=0,
                           on_error=lambda exc: locate_stream_error("par", streamed, exc))
    with pytest.raises(UserError, match=r"^data.par.pairs\[0\].path: .*s.tsv: line 6: 1 tab-separated field"):
        stream.next_examples(20)


def test_sentencepiece_fast_path_gives_the_hf_tokenizers_ids(tmp_path, monkeypatch):
    """objkit tokenizes with SentencePiece's own encode when the model file is there: the ids
    are the HF tokenizer's (mapped per piece), also in worker processes (pickled)."""
    import pickle

    from transformers import AutoTokenizer

    from objkit.data.encode import TextEncoder
    from objkit.data.tokenizer import train_tokenizer

    texts = ["Germany and France", "Deutschland und Frankreich", "Россия", "日本語のテキスト", "x  y   z", "café"]
    train_tokenizer(texts * 30, tmp_path / "tok", vocab_size=80)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    encoder = pickle.loads(pickle.dumps(TextEncoder(hf_tok)))
    assert encoder.id_map is not None
    unseen = ["Frankreich und Deutschland", "Zürich ☃ 2024", "   leading and trailing   "]
    from objkit.data import encode

    monkeypatch.setattr(encode, "CHECKED", 0)  # SentencePiece's ids alone, no spot check to fall back on
    monkeypatch.setattr(encode, "SPOT_CHECKED", 0)
    assert encoder(texts + unseen) == hf_tok(texts + unseen, add_special_tokens=False)["input_ids"]
    word_level = tiny_encoder(layers=1)[1]  # no SentencePiece model: the HF tokenizer itself
    assert TextEncoder(word_level).id_map is None
    assert TextEncoder(word_level)(["the cat"]) == [word_level("the cat", add_special_tokens=False)["input_ids"]]


def test_text_encoder_takes_a_wordpiece_tokenizer_as_it_is(tmp_path):
    """A WordPiece tokenizer (the bert encoder's: ``vocab_file`` is ``vocab.txt``) has no
    SentencePiece model: the HF tokenizer tokenizes (it used to parse vocab.txt as one and fail)."""
    from transformers import AutoTokenizer

    from objkit.data.encode import TextEncoder
    from objkit.data.tokenizer import train_wordpiece

    texts = ["Germany and France", "Deutschland und Frankreich", "Россия", "café au lait"]
    train_wordpiece(texts * 30, tmp_path / "wp", vocab_size=120)
    hf_tok = AutoTokenizer.from_pretrained(str(tmp_path / "wp"))
    assert str(getattr(hf_tok, "vocab_file", "")).endswith("vocab.txt")
    encoder = TextEncoder(hf_tok)
    assert encoder.id_map is None
    assert encoder(texts) == hf_tok(texts, add_special_tokens=False)["input_ids"]
