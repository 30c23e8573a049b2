"""Bad input is refused cleanly: exit code 2, one line naming the file (and line) or the
recipe key and what was expected, no traceback, and nothing written (the run directory is
not even created). Over-long lines are not an error: they are truncated and counted."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from objkit.cli import main
from objkit.data.sources import check_source_files, iter_source_texts, load_source
from objkit.contract.errors import UserError
from objkit.recipe.schema import ParallelSource, TextSource

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "recipes" / "quickstart.toml"


def run_cli(capsys, *argv: str) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
        raise SystemExit(0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return int(info.value.code or 0), err.strip().splitlines()


def text_source(path: Path, lang: str = "en") -> str:
    return f'data.mono={{type="text",files=[{{path="{path}",lang="{lang}"}}]}}'


def parallel_source(src: Path, tgt: Path) -> str:
    return (f'data.parallel={{type="parallel",pairs=[{{src="{src}",tgt="{tgt}",'
            'src_lang="en",tgt_lang="de"}]}')


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "en": tmp_path / "a.en", "de": tmp_path / "a.de", "latin1": tmp_path / "latin1.txt",
        "empty": tmp_path / "empty.txt", "blank": tmp_path / "blank.txt", "good": tmp_path / "good.txt",
        "gz": tmp_path / "latin1.txt.gz",
    }
    out["en"].write_text("Germany\nFrance\nSpain\n")
    out["de"].write_text("Deutschland\nFrankreich\n")
    out["latin1"].write_bytes("first line\nsecond line\ncaf\u00e9 au lait\n".encode("latin-1"))
    out["gz"].write_bytes(gzip.compress(out["latin1"].read_bytes()))
    out["empty"].write_bytes(b"")
    out["blank"].write_text("\n   \n\t\n")
    out["good"].write_text("hello world\n")
    return out


def refused(capsys, tmp_path: Path, *overrides: str) -> str:
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "-o", str(out), "--no-progress"]
    for override in overrides:
        args += ["--set", override]
    code, lines = run_cli(capsys, *args)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert not out.exists(), "nothing may be written for bad input"
    return lines[0]


def test_missing_file(capsys, tmp_path, files):
    line = refused(capsys, tmp_path, text_source(tmp_path / "nope.txt"))
    assert line == f"data.mono.files[0].path: no file matches '{tmp_path / 'nope.txt'}'"


def test_parallel_files_with_different_line_counts_name_both(capsys, tmp_path, files):
    line = refused(capsys, tmp_path, parallel_source(files["en"], files["de"]))
    assert line == (f"data.parallel.pairs[0]: {files['en']} has 3 lines but {files['de']} has 2 "
                    "(src and tgt must be line-aligned)")


def test_non_utf8_names_file_and_line(capsys, tmp_path, files):
    line = refused(capsys, tmp_path, text_source(files["latin1"]))
    assert line == (f"data.mono.files[0].path: {files['latin1']}: line 3: byte 0xe9 at column 4 is not valid "
                    "UTF-8 (expected UTF-8 text)")
    line = refused(capsys, tmp_path, text_source(files["gz"]))  # compressed files are checked too
    assert f"{files['gz']}: line 3: byte 0xe9" in line


def test_empty_and_blank_files(capsys, tmp_path, files):
    line = refused(capsys, tmp_path, text_source(files["empty"]))
    assert line == f"data.mono.files[0].path: {files['empty']} is empty (expected one sentence or record a line)"
    line = refused(capsys, tmp_path, parallel_source(files["good"], files["blank"]))
    assert line.startswith(f"data.parallel.pairs[0].tgt: {files['blank']} has only blank lines")


def test_negative_weight_and_unknown_language(capsys, tmp_path):
    line = refused(capsys, tmp_path, "objectives.mlm.weight=-1")
    assert line == f"{QUICKSTART}: objectives.mlm.weight: Input should be greater than or equal to 0 (got -1)"
    # a language code matters to TLM's language embeddings: every language needs an id
    line = refused(capsys, tmp_path, "objectives.tlm.language_embeddings=true",
                   'objectives.tlm.languages=["en","de"]', 'data.parallel.locales=["en","de","fr"]')
    assert line == (f"{QUICKSTART}: objectives.tlm.languages: data.parallel has language 'fr', not in ['en', 'de'] "
                    "(language_embeddings needs an id for every language it reads)")


def test_unknown_cldr_locale(capsys, tmp_path):
    line = refused(capsys, tmp_path, 'data.mono.locales=["en","klingon"]')
    assert line.startswith("data.mono.locales[1]: unknown CLDR locale 'klingon'")


def test_streamed_non_utf8_is_located_when_read(files):
    """Streamed sources are read lazily (no up-front scan); the error still names file and line."""
    source = TextSource(type="text", files=[{"path": str(files["latin1"]), "lang": "en"}], streaming=True)
    check_source_files("mono", source)  # existence and size only
    with pytest.raises(UserError, match=r"latin1.txt: line 3: byte 0xe9 at column 4 is not valid UTF-8"):
        list(iter_source_texts(source, 100, name="mono"))


def test_over_long_lines_are_truncated_and_counted(tmp_path, caplog):
    from transformers import AutoTokenizer

    from objkit.data.tokenizer import train_tokenizer

    tok_dir = tmp_path / "tok"
    train_tokenizer(["short line", "another short one", "words and more words"] * 20, tok_dir, vocab_size=60)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    corpus = tmp_path / "c.txt"
    corpus.write_text("short\n" + "word " * 200 + "\nalso short\n" + "more words " * 100 + "\n")
    with caplog.at_level(logging.WARNING, logger="objkit.data.sources"):
        ds = load_source("mono", TextSource(type="text", files=[{"path": str(corpus), "lang": "en"}]), tokenizer,
                         max_tokens=30, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 4 and max(len(r) for r in ds["input_ids"]) == 30
    assert f"data.mono.files[0].path: {corpus}: 2 of 4 lines longer than 30 tokens" in caplog.text

    src, tgt = tmp_path / "p.en", tmp_path / "p.de"
    src.write_text("a b c\n" + "word " * 80 + "\n")
    tgt.write_text("x y z\nshort\n")
    pair = ParallelSource(type="parallel", pairs=[{"src": str(src), "tgt": str(tgt), "src_lang": "en",
                                                    "tgt_lang": "de"}])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="objkit.data.sources"):
        ds = load_source("par", pair, tokenizer, max_tokens=30, cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 2 and "1 of 2 lines longer than 30 tokens" in caplog.text


def test_line_counts_follow_the_reader(tmp_path):
    """CRLF and a last line without a break count as the text reader counts them."""
    from objkit.data.sources import scan_text_file

    cases = {b"a\r\nb\r\n": 2, b"a\nb": 2, b"a\rb\r": 2, b"\n\n": 2, b"x": 1, b"a\r\n\r\nb": 3}
    for i, (data, lines) in enumerate(cases.items()):
        path = tmp_path / f"{i}.txt"
        path.write_bytes(data)
        assert scan_text_file(path, "k")[0] == lines, data


def test_seed_and_steps_out_of_range_are_refused_by_the_schema(capsys, tmp_path):
    for value, expected in [("-1", "greater than or equal to 0 (got -1)"),
                            (str(2**64), "less than or equal to 9223372036854775807 (got 18446744073709551616)")]:
        line = refused(capsys, tmp_path, f"train.seed={value}")
        assert line == f"{QUICKSTART}: train.seed: Input should be {expected}"
    line = refused(capsys, tmp_path, "train.steps=1e23")
    assert line == f"{QUICKSTART}: train.steps: expected at most 1000000000 steps (got 1e+23)"
    code, lines = run_cli(capsys, "validate", str(QUICKSTART), "--set", "train.seed=-1")  # validate agrees with run
    assert code == 2 and lines == [f"{QUICKSTART}: train.seed: Input should be greater than or equal to 0 (got -1)"]


def test_an_empty_output_path_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, lines = run_cli(capsys, "run", str(QUICKSTART), "-o", "", "--no-progress")
    assert code == 2 and lines == ["-o: empty path (expected a run directory; use -o . for the current directory)"]
    assert list(tmp_path.iterdir()) == []


def test_invalid_json_names_file_and_1_based_line(capsys, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(f'{{"text": "sentence {i}"}}\n' for i in range(4)) + '{"text": "five" "x"}\n')
    line = refused(capsys, tmp_path, text_source(path))
    assert line == (f"data.mono.files[0].path: {path}: line 5: not valid JSON (Expecting ',' delimiter at column 17; "
                    "expected one JSON object a line)")
    source = TextSource(type="text", files=[{"path": str(path), "lang": "en"}], streaming=True)
    with pytest.raises(UserError, match=r"c.jsonl: line 5: not valid JSON"):  # streamed: found when read
        list(iter_source_texts(source, 100, name="mono"))


def test_nul_byte_names_file_line_and_column(capsys, tmp_path):
    path = tmp_path / "nul.txt"
    path.write_bytes(b"one\r\ntwo\nth\x00ree\n")
    line = refused(capsys, tmp_path, text_source(path))
    assert line == (f"data.mono.files[0].path: {path}: line 3: NUL byte at column 3 (expected text; "
                    "is it a binary file?)")


# ----------------------------------------------------------------------------- issue 26
def test_a_jsonl_line_that_is_not_an_object_names_its_line(capsys, tmp_path, caplog):
    path = tmp_path / "arr.jsonl"
    path.write_text('{"text": "hello world"}\n[1,2,3]\n{"text": "x"}\n')
    with caplog.at_level(logging.WARNING):
        line = refused(capsys, tmp_path, text_source(path))
    assert line == (f"data.mono.files[0].path: {path}: line 2: a JSON array, not an object "
                    "(expected one JSON object a line)")
    assert not [r for r in caplog.records if str(tmp_path) in r.getMessage()]  # no extra log line


def test_an_unloadable_plugin_option_exits_2_with_one_line(capsys):
    for command in (["validate", str(QUICKSTART)], ["run", str(QUICKSTART), "--dry-run"]):
        code, lines = run_cli(capsys, "--plugin", "nosuch", *command)
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("--plugin nosuch: no objkit entry point, distribution or importable module")
        assert "objkit-translation-ranking" in lines[0] and "translation_ranking" in lines[0]  # both kinds of name
    code, _ = run_cli(capsys, "--plugin", "nosuch", "list-plugins")  # still listed there, as broken
    assert code == 0


def test_validate_checks_what_run_checks_before_training(capsys, tmp_path):
    code, lines = run_cli(capsys, "validate", str(QUICKSTART), "--set", "train.micro_batch_size=5")
    assert code == 2 and lines == ["train.batch_size: 32 is not a multiple of micro_batch_size × ranks = 5 × 1 (got 32)"]
    code, lines = run_cli(capsys, "validate", str(QUICKSTART), "--set", text_source(tmp_path / "nosuch.txt"))
    assert code == 2 and len(lines) == 1 and "no file matches" in lines[0]


def test_malformed_toml_in_set_names_the_set_value(capsys):
    code, lines = run_cli(capsys, "validate", str(QUICKSTART), "--set", 'data.mono={type="text"')
    assert code == 2 and lines == ['--set data.mono={type="text": the value is not valid TOML '
                                   "(Unclosed inline table (at end of document))"]
    code, lines = run_cli(capsys, "validate", str(QUICKSTART), "--set", "train.lr=[1,")
    assert code == 2 and lines[0].startswith("--set train.lr=[1,: the value is not valid TOML (")
    code, _ = run_cli(capsys, "validate", str(QUICKSTART), "--set", "train.schedule=cosine")  # a bare word: a string
    assert code == 0


def test_a_split_on_a_saved_dataset_without_splits_is_refused(capsys, tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["hello world", "good morning"]}).save_to_disk(str(saved))
    capsys.readouterr()  # datasets' progress bar
    source = f'type="hf",path="{saved}",text_column="text",lang="en"'
    line = refused(capsys, tmp_path, f'data.mono={{{source},split="validation"}}')
    assert line == (f"data.mono.split: {saved} is a single saved dataset with no splits, not 'validation' "
                    "(remove split to use all its rows, or save a DatasetDict)")


def test_eval_transfer_names_a_missing_local_model_or_data_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "download").mkdir()
    code, lines = run_cli(capsys, "eval", "transfer", "runs/nope", "--task", "xnli", "--data-dir", "download/xnlii",
                          "--langs", "en", "--train-langs", "en")
    assert code == 2 and lines == ["--data-dir download/xnlii: no such directory"]
    (tmp_path / "sib").mkdir()
    (tmp_path / "sib" / "eng_Latn").mkdir()
    from objkit.eval.transfer import ModelSpec, check_model

    with pytest.raises(UserError) as info:
        check_model(ModelSpec.parse("runs/nope"))
    assert str(info.value) == ("runs/nope: no such model directory (expected an objkit export, a transformers "
                               "model directory or a hub id)")


def test_a_read_only_output_is_exit_2_whether_new_or_existing(capsys, tmp_path):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("permissions do not bind this user (root): see the issue-26 report for a read-only mount")
        for out, what in ((ro / "sub", "cannot create the run directory"), (ro, "cannot write in the run directory")):
            code, lines = run_cli(capsys, "run", str(QUICKSTART), "-o", str(out), "--no-progress", "--set", "train.steps=1")
            assert code == 2 and lines == [f"-o {out}: {what}: Permission denied"], lines
    finally:
        ro.chmod(0o755)
