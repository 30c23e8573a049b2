"""Reading data sources: formats, globs, parallel alignment, errors, the embedded CLDR corpus."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import datasets
import pytest

from objkit.data import iter_source_texts, load_source, load_source_groups, source_group_sizes, source_groups
from objkit.data.cldr import cldr_dataset
from objkit.contract.errors import UserError
from objkit.recipe.schema import CldrSource, ParallelSource, TextSource
from objkit.data.tokenizer import train_tokenizer

LOCALES = ["en", "de", "fr", "ru", "zh"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    texts = iter_source_texts(CldrSource(type="cldr", kind="text", locales=LOCALES), 50_000)
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=800)


def text_source(*files: dict, **common) -> TextSource:
    return TextSource(type="text", files=list(files), **common)


def load(source, tok, tmp_path: Path, name: str = "mono"):
    return load_source(name, source, tok, max_tokens=64, base_dir=tmp_path, cache_dir=str(tmp_path / "hf"))


def decode(tok, ids) -> str:
    return tok.decode(ids)


def test_txt_loading_drops_empty_lines(tok, tmp_path):
    (tmp_path / "a.txt").write_text("Guten Tag\n\n   \nDeutschland\n", encoding="utf-8")
    ds = load(text_source({"path": "a.txt", "lang": "de"}), tok, tmp_path)
    assert isinstance(ds, datasets.Dataset)
    assert set(ds.column_names) == {"input_ids", "lang", "group"}
    assert [decode(tok, r["input_ids"]) for r in ds] == ["Guten Tag", "Deutschland"]
    assert ds["lang"] == ds["group"] == ["de", "de"]
    assert tok.bos_token_id not in ds[0]["input_ids"]  # no special tokens


def test_jsonl_parquet_and_gz(tok, tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"sent": s}) for s in ["Frankreich", "Italien"]) + "\n")
    datasets.Dataset.from_dict({"text": ["Россия", "Германия"]}).to_parquet(str(tmp_path / "b.parquet"))
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("France\nItaly\n")
    source = text_source({"path": "a.jsonl", "lang": "de", "field": "sent"}, {"path": "b.parquet", "lang": "ru"},
                         {"path": "c.txt.gz", "lang": "en"})
    ds = load(source, tok, tmp_path)
    expected = ["Frankreich", "Italien", "Россия", "Германия", "France", "Italy"]
    assert [decode(tok, i) for i in ds["input_ids"]] == expected
    assert ds["group"] == ["de", "de", "ru", "ru", "en", "en"]
    with pytest.raises(UserError, match=r"data.mono.files\[0\].path: .*a.jsonl has no column 'text'"):
        load(text_source({"path": "a.jsonl", "lang": "de"}), tok, tmp_path)


def test_glob_expansion_sorted_and_max_lines(tok, tmp_path):
    (tmp_path / "corpus").mkdir()
    for i, word in enumerate(["Spanien", "Polen", "Japan"]):
        (tmp_path / "corpus" / f"part{2 - i}.txt").write_text(f"{word}\n{word} und Europa\n{word} und Asien\n")
    ds = load(text_source({"path": "corpus/*.txt", "lang": "de"}), tok, tmp_path)
    assert len(ds) == 9
    assert decode(tok, ds[0]["input_ids"]) == "Japan"  # part0.txt first
    limited = load(text_source({"path": "corpus/*.txt", "lang": "de"}, max_lines=2), tok, tmp_path)
    assert [decode(tok, i) for i in limited["input_ids"]] == [
        "Japan", "Japan und Europa", "Polen", "Polen und Europa", "Spanien", "Spanien und Europa"]


def test_no_match_and_unsupported_type(tok, tmp_path):
    with pytest.raises(UserError, match=r"^data.mono.files\[0\].path: no file matches 'corpus/\*.txt'$"):
        load(text_source({"path": "corpus/*.txt", "lang": "en"}), tok, tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"unsupported file type 'x.csv'"):
        load(text_source({"path": "x.csv", "lang": "en"}), tok, tmp_path)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def test_parallel_alignment_drops_pairs_with_an_empty_side(tok, tmp_path):
    write_lines(tmp_path / "train.en", ["Germany", "France", "", "Italy"])
    write_lines(tmp_path / "train.de", ["Deutschland", "", "Spanien", "Italien"])
    source = ParallelSource(type="parallel", pairs=[
        {"src": "train.en", "tgt": "train.de", "src_lang": "en", "tgt_lang": "de"}])
    ds = load(source, tok, tmp_path, name="par")
    assert set(ds.column_names) == {"src_ids", "tgt_ids", "src_lang", "tgt_lang", "group"}
    pairs = [(decode(tok, r["src_ids"]), decode(tok, r["tgt_ids"])) for r in ds]
    assert pairs == [("Germany", "Deutschland"), ("Italy", "Italien")]
    assert ds["group"] == ["en-de", "en-de"]
    assert source_groups(source) == ["en-de"]
    assert source_group_sizes("par", source, tmp_path)["en-de"] > 0


def test_parallel_line_count_mismatch(tok, tmp_path):
    write_lines(tmp_path / "ok.en", ["a"])
    write_lines(tmp_path / "ok.de", ["b"])
    write_lines(tmp_path / "train.en", ["x"] * 5)
    write_lines(tmp_path / "train.de", ["y"] * 4)
    source = ParallelSource(type="parallel", pairs=[
        {"src": "ok.en", "tgt": "ok.de", "src_lang": "en", "tgt_lang": "de"},
        {"src": "train.en", "tgt": "train.de", "src_lang": "en", "tgt_lang": "de"}])
    with pytest.raises(UserError, match=r"^data.par.pairs\[1\]: train.en has 5 lines but train.de has 4$"):
        load(source, tok, tmp_path, name="par")
    source = ParallelSource(type="parallel", pairs=[
        {"src": "*.en", "tgt": "ok.de", "src_lang": "en", "tgt_lang": "de"}])
    with pytest.raises(UserError, match=r"data.par.pairs\[0\]: src '\*.en' matches 2 files but tgt 'ok.de' matches 1"):
        load(source, tok, tmp_path, name="par")


def test_streaming_text_and_parallel(tok, tmp_path):
    write_lines(tmp_path / "a.en", ["Germany", "", "France"])
    write_lines(tmp_path / "a.de", ["Deutschland", "Polen", "Frankreich"])
    mono = text_source({"path": "a.de", "lang": "de"}, streaming=True)
    ds = load(mono, tok, tmp_path)
    assert isinstance(ds, datasets.IterableDataset)
    assert [decode(tok, r["input_ids"]) for r in ds] == ["Deutschland", "Polen", "Frankreich"]
    par = ParallelSource(type="parallel", streaming=True, max_lines=3, pairs=[
        {"src": "a.en", "tgt": "a.de", "src_lang": "en", "tgt_lang": "de"}])
    pairs = [(decode(tok, r["src_ids"]), decode(tok, r["tgt_ids"])) for r in load(par, tok, tmp_path, name="p")]
    assert pairs == [("Germany", "Deutschland"), ("France", "Frankreich")]
    write_lines(tmp_path / "b.de", ["Deutschland"])
    bad = ParallelSource(type="parallel", streaming=True, pairs=[
        {"src": "a.en", "tgt": "b.de", "src_lang": "en", "tgt_lang": "de"}])
    with pytest.raises(UserError, match="a.en and b.de have different line counts"):
        list(load(bad, tok, tmp_path, name="p"))


def test_iter_source_texts_round_robin(tmp_path):
    write_lines(tmp_path / "a.en", ["one", "two", "three"])
    write_lines(tmp_path / "a.de", ["eins", "", "zwei"])
    write_lines(tmp_path / "b.txt", ["uno", "dos"])
    par = ParallelSource(type="parallel", pairs=[{"src": "a.en", "tgt": "a.de", "src_lang": "en", "tgt_lang": "de"}])
    assert list(iter_source_texts(par, 10, base_dir=tmp_path)) == ["one", "eins", "two", "zwei", "three"]
    mixed = text_source({"path": "a.en", "lang": "en"}, {"path": "b.txt", "lang": "es"})
    assert list(iter_source_texts(mixed, 3, base_dir=tmp_path)) == ["one", "uno", "two"]


def test_cldr_parallel_pairs_are_real_translations(tok):
    source = CldrSource(type="cldr", locales=LOCALES, categories=["languages", "territories", "months"])
    raw = cldr_dataset("cldr", source)
    pairs = set(zip(raw["src_text"], raw["tgt_text"], raw["tgt_lang"]))
    assert ("German", "Deutsch", "de") in pairs
    assert ("Germany", "Deutschland", "de") in pairs
    assert ("January", "январь", "ru") in pairs
    assert set(raw["src_lang"]) == {"en"} and set(raw["tgt_lang"]) == set(LOCALES) - {"en"}
    assert all(s != t and s and t for s, t, _ in pairs)
    ds = load_source("cldr", source, tok, max_tokens=32)
    assert len(ds) == len(raw)
    assert ds[0]["group"] == f"{ds[0]['src_lang']}-{ds[0]['tgt_lang']}"
    groups = load_source_groups("cldr", source, tok, max_tokens=32)
    assert list(groups) == ["en-de", "en-fr", "en-ru", "en-zh"]
    assert sum(len(g) for g in groups.values()) == len(ds)
    assert cldr_dataset("cldr", source)["tgt_text"] == raw["tgt_text"]  # deterministic order
    all_pairs = cldr_dataset("cldr", CldrSource(type="cldr", locales=["de", "fr", "ru"], pivot=None))
    assert sorted(set(zip(all_pairs["src_lang"], all_pairs["tgt_lang"]))) == [("de", "fr"), ("de", "ru"), ("fr", "ru")]


def test_cldr_text(tok):
    source = CldrSource(type="cldr", kind="text", locales=["de", "ja"], categories=["languages", "days"])
    ds = load_source("names", source, tok, max_tokens=32)
    texts = {decode(tok, r["input_ids"]) for r in ds if r["lang"] == "de"}
    assert {"Deutsch", "Montag"} <= texts
    assert set(ds["group"]) == {"de", "ja"}
    limited = load_source("names", source.model_copy(update={"max_lines": 3}), tok, max_tokens=32)
    assert limited["lang"] == ["de"] * 3 + ["ja"] * 3  # max_lines: per locale


def test_cldr_unknown_locale(tok):
    source = CldrSource(type="cldr", locales=["en", "dee"])
    with pytest.raises(UserError, match=r"^data.cldr.locales\[1\]: unknown CLDR locale 'dee'; did you mean .*'de'"):
        load_source("cldr", source, tok, max_tokens=32)


def test_text_files_are_tokenized_in_one_pass_as_datasets_text_reader_and_the_hf_tokenizer_would(tok, tmp_path):
    """Plain and compressed text files are read, tokenized and written in one pass (no raw-text
    dataset, no ``map``): the rows are those of ``datasets``' ``text`` reader (universal
    newlines, split on ``\\n`` only) tokenized by the HF tokenizer, stripped, blank lines
    dropped, cut to ``max_tokens`` -- across read batches -- and ``max_lines`` counts raw lines."""
    from objkit.data import tokenize

    words = ["Guten", "Tag", "Россия", "日本", "café", "Zürich", " ", "\t", "\u00a0", "x"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(i % 40)) for i in range(900)]
    raw = "\r\n".join(f"  {line} " if i % 5 == 0 else line for i, line in enumerate(lines)) + "\rend\n"
    (tmp_path / "a.txt").write_bytes(raw.encode("utf-8"))
    with gzip.open(tmp_path / "b.txt.gz", "wb") as f:
        f.write(raw.encode("utf-8"))
    reference = datasets.load_dataset("text", data_files=[str(tmp_path / "a.txt")], split="train",
                                      cache_dir=str(tmp_path / "ref"))["text"]

    def expected(limit=None):
        texts = [t.strip() for t in reference[:limit] if t.strip()]
        ids = [i[:20] for i in tok(texts, add_special_tokens=False)["input_ids"]]
        return [i for i in ids if i]

    old_chars = tokenize._READ_CHARS
    tokenize._READ_CHARS = 500  # many read batches
    try:
        for name in ("a.txt", "b.txt.gz"):
            ds = load_source("mono", text_source({"path": name, "lang": "de"}), tok, max_tokens=20, base_dir=tmp_path,
                             cache_dir=str(tmp_path / "hf"))
            assert ds["input_ids"] == expected()
            assert set(ds["group"]) == {"de"}
            some = load_source("mono", text_source({"path": name, "lang": "de"}, max_lines=333), tok, max_tokens=20,
                               base_dir=tmp_path, cache_dir=str(tmp_path / "hf"))
            assert some["input_ids"] == expected(333)
    finally:
        tokenize._READ_CHARS = old_chars


def test_tokenized_text_files_are_cached_by_content_stamp(tok, tmp_path):
    """A second read of an unchanged file opens the Arrow rows the first wrote; a changed file
    (size / mtime) is tokenized again; with ``datasets`` caching off nothing lands in the cache."""
    path = tmp_path / "a.txt"
    path.write_text("Guten Tag\nDeutschland\n", encoding="utf-8")
    source = text_source({"path": "a.txt", "lang": "de"})
    first = load(source, tok, tmp_path)
    again = load(source, tok, tmp_path)
    assert [f["filename"] for f in again.cache_files] == [f["filename"] for f in first.cache_files]
    assert Path(first.cache_files[0]["filename"]).is_relative_to(tmp_path / "hf")
    path.write_text("Frankreich\n", encoding="utf-8")
    changed = load(source, tok, tmp_path)
    assert [decode(tok, i) for i in changed["input_ids"]] == ["Frankreich"]
    assert not list((tmp_path / "hf").rglob("*.tmp"))  # written whole, then renamed
    datasets.disable_caching()
    try:
        path.write_text("Italien\n", encoding="utf-8")
        before = set((tmp_path / "hf").rglob("*.arrow"))
        assert [decode(tok, i) for i in load(source, tok, tmp_path)["input_ids"]] == ["Italien"]
        assert set((tmp_path / "hf").rglob("*.arrow")) == before
    finally:
        datasets.enable_caching()


def test_list_array_cuts_and_keeps_rows_like_python_slicing():
    import numpy as np

    from objkit.data.encode import flatten, list_array

    rows = [[1, 2, 3, 4, 5], [], [6], [7, 8, 9], [10, 11]]
    values, lengths = flatten(rows)
    keep = np.array([True, False, True, True, False])
    assert list_array(values, lengths, 2, keep=keep).to_pylist() == [[1, 2], [6], [7, 8]]
    assert list_array(values, lengths, 10).to_pylist() == rows
    assert list_array(values, lengths).type.value_type == "int32"
