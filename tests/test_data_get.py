"""`objkit data get`: release files served by a local HTTP server this test starts (no mock of the
download code), the layouts read back by the objkit readers that use them, the one-line failures
(unreachable, checksum, a folder objkit did not write), and hub datasets converted from local
`datasets` copies (no network)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from objkit.cli import main
from objkit.data.fetch.cli import data_group
from objkit.data.fetch.tatoeba_sha256 import TATOEBA_SHA256


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, its base URL) on 127.0.0.1, a free port."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


SIB = {
    "train": [("1", "science/technology", "Cells divide."), ("2", "sports", "He scored twice."),
              ("3", "travel", "Pack light."), ("4", "sports", "The match\tended late.")],
    "dev": [("5", "travel", "Book early."), ("6", "science/technology", "Atoms bond.")],
    "test": [("7", "sports", "She ran fast."), ("8", "travel", "Trains are slow.")],
}


def write_sib200(root: Path, langs: tuple[str, ...] = ("eng_Latn", "deu_Latn")) -> None:
    for lang in langs:
        for split, rows in SIB.items():
            path = root / lang / f"{split}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            body = "".join(f"{i}\t{c}\t{t.replace(chr(9), ' ')} ({lang})\n" for i, c, t in rows)
            path.write_text("index_id\tcategory\ttext\n" + body, encoding="utf-8")


def test_sib200_end_to_end_from_a_local_server(capsys, tmp_path, server, monkeypatch):
    root, url = server
    write_sib200(root)
    monkeypatch.setenv("OBJKIT_DATA_URL_SIB200", url)
    dest = tmp_path / "out" / "sib200"
    code, out, err = run_main(capsys, "data", "get", "sib200", "-o", str(dest), "--langs", "eng_Latn,deu_Latn")
    assert code == 0, err
    assert f"written to {dest}" in out and "objkit eval transfer MODEL --task sib200" in out
    for lang in ("eng_Latn", "deu_Latn"):
        for split in ("train", "dev", "test"):
            assert (dest / lang / f"{split}.tsv").read_bytes() == (root / lang / f"{split}.tsv").read_bytes()
    source = (dest / "SOURCE.md").read_text(encoding="utf-8")
    assert url in source and "CC BY-SA 4.0" in source and "Adelani" in source and "github.com/dadelani/sib-200" in source
    marker = json.loads((dest / ".objkit-data.json").read_text(encoding="utf-8"))
    assert marker["dataset"] == "sib200" and "eng_Latn/train.tsv" in marker["files"] and "SOURCE.md" in marker["files"]
    assert leftovers(dest.parent) == []  # no temporary folder left beside DIR

    from objkit.eval.tasks import TASKS, load_task

    task = load_task(TASKS["sib200"], dest, None, ["eng_Latn"], "cross-lingual")  # the reader eval transfer uses
    assert task.languages == ["eng_Latn", "deu_Latn"] and task.label_names == ["science/technology", "sports", "travel"]

    (root / "eng_Latn" / "test.tsv").write_text("index_id\tcategory\ttext\n9\tsports\tNew.\n", encoding="utf-8")
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", str(dest), "--langs", "eng_Latn")
    assert code == 0, err  # a folder objkit wrote for the same data set is replaced as a whole
    assert (dest / "eng_Latn" / "test.tsv").read_text(encoding="utf-8").endswith("9\tsports\tNew.\n")
    assert not (dest / "deu_Latn").exists() and leftovers(dest.parent) == []

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is filled too; a file is refused
    assert run_main(capsys, "data", "get", "sib200", "-o", str(empty), "--langs", "deu_Latn")[0] == 0
    assert (empty / "deu_Latn" / "dev.tsv").is_file() and leftovers(tmp_path) == []
    (tmp_path / "file").write_text("x", encoding="utf-8")
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", str(tmp_path / "file"))
    assert code == 2 and err.strip() == f"-o {tmp_path / 'file'}: exists and is not a directory (expected a new or empty directory)"


def test_unreachable_source_is_one_line_naming_the_url_and_the_layout(capsys, tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("OBJKIT_DATA_URL_SIB200", url)
    dest = tmp_path / "sib200"
    code, out, err = run_main(capsys, "data", "get", "sib200", "-o", str(dest))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"cannot download {url}/eng_Latn/train.tsv" in lines[0]
    assert "by hand" in lines[0] and "LANG/{train,dev,test}.tsv" in lines[0] and "OBJKIT_DATA_URL_SIB200" in lines[0]
    assert not dest.exists() and leftovers(tmp_path) == []


def test_missing_file_on_the_server_is_one_line(capsys, tmp_path, server, monkeypatch):
    root, url = server
    write_sib200(root, ("eng_Latn",))
    monkeypatch.setenv("OBJKIT_DATA_URL_SIB200", url)
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", str(tmp_path / "d"), "--langs", "eng_Latn,yor_Latn")
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"cannot download {url}/yor_Latn/train.tsv (HTTP 404: not found)")
    assert not (tmp_path / "d").exists() and leftovers(tmp_path) == []  # eng_Latn was downloaded, then removed


def _serve_tatoeba(root: Path) -> tuple[bytes, bytes]:
    deu, eng = "Ich bin hier.\nDanke!\n".encode(), "I am here.\nThanks!\n".encode()
    (root / "tatoeba.deu-eng.deu").write_bytes(deu)
    (root / "tatoeba.deu-eng.eng").write_bytes(eng)
    return deu, eng


def test_checksum_mismatch_writes_nothing(capsys, tmp_path, server, monkeypatch):
    root, url = server
    _serve_tatoeba(root)  # not the bytes LASER publishes: their sha256 differs from the recorded one
    monkeypatch.setenv("OBJKIT_DATA_URL_TATOEBA", url)
    dest = tmp_path / "tatoeba"
    code, _, err = run_main(capsys, "data", "get", "tatoeba", "-o", str(dest), "--langs", "deu")
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"{url}/tatoeba.deu-eng.deu: sha256 ") and f"expected {TATOEBA_SHA256['deu'][0]}" in last
    assert not dest.exists() and leftovers(tmp_path) == []


def test_tatoeba_with_matching_checksums_is_read_by_the_tatoeba_evaluator(capsys, tmp_path, server, monkeypatch):
    root, url = server
    deu, eng = _serve_tatoeba(root)
    monkeypatch.setitem(TATOEBA_SHA256, "deu", (hashlib.sha256(deu).hexdigest(), hashlib.sha256(eng).hexdigest()))
    monkeypatch.setenv("OBJKIT_DATA_URL_TATOEBA", url)
    dest = tmp_path / "tatoeba"
    code, _, err = run_main(capsys, "data", "get", "tatoeba", "-o", str(dest), "--langs", "deu")
    assert code == 0, err
    from objkit.eval.tatoeba import discover_languages

    assert discover_languages(dest) == ["deu"] and (dest / "tatoeba.deu-eng.eng").read_bytes() == eng
    assert "CC BY 2.0 FR" in (dest / "SOURCE.md").read_text(encoding="utf-8")


def test_refuses_a_non_empty_folder_objkit_did_not_write(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("OBJKIT_DATA_URL_SIB200", closed_port_url())  # refused before any download
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me", encoding="utf-8")
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", str(dest))
    assert code == 2
    assert err.strip().splitlines() == [f"-o {dest}: not empty (holds 'notes.txt') and not written by "
                                        f"`objkit data get`; choose a new or empty directory (nothing was changed)"]
    assert sorted(p.name for p in dest.iterdir()) == ["notes.txt"] and leftovers(tmp_path) == []
    (dest / "notes.txt").unlink()
    (dest / "a.txt").write_text("a\n", encoding="utf-8")  # a folder objkit wrote, for another data set
    (dest / ".objkit-data.json").write_text(json.dumps({"dataset": "tatoeba", "files": ["a.txt"]}), encoding="utf-8")
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", str(dest))
    assert code == 2 and "holds data set 'tatoeba'" in err and (dest / "a.txt").exists()


def test_alignments_from_the_release_tarball(capsys, tmp_path, server, monkeypatch):
    root, url = server
    files = {"de-en/test.de": "Das Haus ist klein .\nJa .\n", "de-en/test.en": "The house is small .\nYes .\n",
             "de-en/alignv2.txt": "0 1 1 S\r\n0 2 2 S\r\n0 3 3 P\r\n0 4 4 S\r\n0 5 5 S\r\n1 1 1 S\r\n1 2 2 S\r\n",
             "de-en/align.txt": "0 1 1\n0 2 2\n0 3 3\n0 4 4\n0 5 5\n1 1 1\n1 2 2\n",
             "en-fr/test.en": "Yes .\n", "en-fr/test.fr": "Oui .\n", "en-fr/alignv2.txt": "1 1 1 S\n1 2 2 S\n"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"alignment-test-sets/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (root / "alignment-test-sets.tar.gz").write_bytes(buffer.getvalue())
    monkeypatch.setenv("OBJKIT_DATA_URL_ALIGNMENTS", url)
    dest = tmp_path / "alignment"
    code, _, err = run_main(capsys, "data", "get", "alignments", "-o", str(dest), "--langs", "de-en")
    assert code == 0, err
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        ".objkit-data.json", "SOURCE.md", "de-en/align.txt", "de-en/alignv2.txt", "de-en/test.de", "de-en/test.en"]
    for name in ("test.de", "test.en", "alignv2.txt", "align.txt"):  # as published (the gold files' CRLF too)
        assert (dest / "de-en" / name).read_bytes() == files[f"de-en/{name}"].encode()
    from objkit.eval.align import read_corpus

    src, tgt, gold, _ = read_corpus(dest / "de-en/test.de", dest / "de-en/test.en", dest / "de-en/alignv2.txt")
    assert len(src) == len(tgt) == len(gold) == 2
    code, _, err = run_main(capsys, "data", "get", "alignments", "-o", str(tmp_path / "x"), "--langs", "en-hi")
    assert code == 2 and "no en-hi/test.en in the archive" in err and not (tmp_path / "x").exists()


def test_ntrex_line_ends_and_names(capsys, tmp_path, server, monkeypatch):
    root, url = server
    (root / "newstest2019-src.eng.txt").write_bytes("One.\r\nTwo.\r\n".encode())
    (root / "newstest2019-ref.deu.txt").write_bytes("\ufeffEins.\r\nZwei.\r\n".encode())
    monkeypatch.setenv("OBJKIT_DATA_URL_NTREX", url)
    dest = tmp_path / "ntrex"
    code, _, err = run_main(capsys, "data", "get", "ntrex", "-o", str(dest), "--langs", "en,de")
    assert code == 0, err
    assert (dest / "ntrex.en").read_bytes() == b"One.\nTwo.\n" and (dest / "ntrex.de").read_bytes() == b"Eins.\nZwei.\n"
    code, _, err = run_main(capsys, "data", "get", "ntrex", "-o", str(tmp_path / "y"), "--langs", "en,xx")
    assert code == 2 and err.strip().splitlines() == [err.strip()] and "--langs xx" in err


def test_newstest_pairs_both_directions_dedups_and_skips_misaligned_sets(capsys, tmp_path, server, monkeypatch):
    root, url = server
    statmt = root / "datasets" / "statmt"
    (statmt / "wmt_newstest" / "2019").mkdir(parents=True)
    w = statmt / "wmt_newstest" / "2019"
    (w / "a.en").write_text("Hello.\nBye.\n", encoding="utf-8")
    (w / "a.de").write_text("Hallo.\nTschüss.\n", encoding="utf-8")
    (w / "b.de").write_text("Hallo.\nNeu.\n", encoding="utf-8")      # de-en direction: one pair repeats
    (w / "b.en").write_text("Hello.\nNew.\n", encoding="utf-8")
    (w / "c.en").write_text("Only one line.\n", encoding="utf-8")  # misaligned: skipped
    (w / "c.de").write_text("Eins.\nZwei.\n", encoding="utf-8")
    base = "datasets/statmt/wmt_newstest/2019"
    (statmt / "wmt_newstest.tsv").write_text(
        f"eng\tdeu\tnewstest2019\t\t\t\t{base}/a.en\t{base}/a.de\n"
        f"deu\teng\tnewstest2019\t\t\t\t{base}/b.de\t{base}/b.en\n"
        f"deu\tfra\tnewstest2019\t\t\t\t{base}/b.de\t{base}/nope.fr\n", encoding="utf-8")
    (statmt / "wmt_newstest_multiling.tsv").write_text(f"eng\tdeu\tnewstest2008\t\t\t\t{base}/c.en\t{base}/c.de\n",
                                                     encoding="utf-8")
    monkeypatch.setenv("OBJKIT_DATA_URL_NEWSTEST", url)
    dest = tmp_path / "newstest"
    code, out, err = run_main(capsys, "data", "get", "newstest", "-o", str(dest), "--langs", "de")
    assert code == 0, err
    assert (dest / "train.en-de.en").read_text(encoding="utf-8") == "Hello.\nBye.\nNew.\n"
    assert (dest / "train.en-de.de").read_text(encoding="utf-8") == "Hallo.\nTschüss.\nNeu.\n"
    assert "Skipped datasets/statmt/wmt_newstest/2019/c.de" in out and "en-de: 3 pairs from 3 test sets." in out


def _save_hub_copy(folder: Path) -> None:
    import datasets

    label = datasets.ClassLabel(names=["entailment", "neutral", "contradiction"])
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": label})
    for lang in ("en", "de"):
        rows = {"premise": [f"p{i} {lang}\twith tab" for i in range(3)], "hypothesis": [f"h{i}" for i in range(3)],
                "label": [0, 1, 2]}
        split = datasets.Dataset.from_dict(rows, features=features)
        datasets.DatasetDict({"train": split, "validation": split, "test": split}).save_to_disk(str(folder / lang))
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))
    ner = datasets.Dataset.from_dict(
        {"tokens": [["Angela", "Merkel", "in", "Berlin"], ["Ja", " "]], "ner_tags": [[1, 2, 0, 3], [0, 0]]},
        features=datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")), "ner_tags": tags}))
    datasets.DatasetDict({"train": ner, "validation": ner, "test": ner}).save_to_disk(str(folder / "PAN-X.de"))


def test_hub_datasets_converted_from_saved_copies_without_network(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = tmp_path / "saved"
    _save_hub_copy(saved)
    dest = tmp_path / "xnli"
    code, out, err = run_main(capsys, "data", "get", "xnli", "--from", str(saved), "-o", str(dest), "--langs", "en,de")
    assert code == 0, err
    assert sorted(p.name for p in dest.glob("*.tsv")) == ["dev-de.tsv", "dev-en.tsv", "test-de.tsv", "test-en.tsv",
                                                           "train-en.tsv"]  # German train: only --translate-train
    assert (dest / "test-de.tsv").read_text(encoding="utf-8").splitlines()[2] == "p2 de with tab\th2\tcontradiction"
    from objkit.eval.tasks import TASKS, load_task, read_token_split

    task = load_task(TASKS["xnli"], dest, None, ["en"], "cross-lingual")
    assert task.languages == ["en", "de"] and task.label_names == ["contradiction", "entailment", "neutral"]
    assert "https://huggingface.co" not in (dest / "SOURCE.md").read_text(encoding="utf-8").split("from:")[1][:80]

    dest = tmp_path / "panx"
    code, _, err = run_main(capsys, "data", "get", "panx", "--from", str(saved), "-o", str(dest), "--langs", "de")
    assert code == 0, err
    split = read_token_split(dest / "test-de.tsv")
    assert split.words == [["Angela", "Merkel", "in", "Berlin"], ["Ja"]]
    assert split.tags == [["B-PER", "I-PER", "O", "B-LOC"], ["O"]]  # a blank token is left out with its tag

    code, _, err = run_main(capsys, "data", "get", "udpos", "--from", str(saved), "-o", str(tmp_path / "p"), "--langs", "de")
    assert code == 2 and err.strip().startswith(f"--from {saved / 'udpos.German'}: cannot load a saved dataset")
    assert not (tmp_path / "p").exists() and len(err.strip().splitlines()) == 1
    code, _, err = run_main(capsys, "data", "get", "pawsx", "--from", str(saved), "-o", str(tmp_path / "p"), "--langs", "en")
    assert code == 2 and "no column 'sentence1'" in err and not (tmp_path / "p").exists()


def test_list_unknown_name_and_help(capsys):
    code, out, _ = run_main(capsys, "data", "list")
    assert code == 0
    for name in ("sib200", "tatoeba", "xnli", "pawsx", "panx", "udpos", "alignments", "ntrex", "newstest"):
        assert f"\n{name} " in f"\n{out}"
    rows = json.loads(run_main(capsys, "data", "list", "--json")[1])
    assert {r["name"]: r["kind"] for r in rows}["xnli"] == "hub"
    code, _, err = run_main(capsys, "data", "get", "sib-200", "-o", "never")
    assert code == 2 and err.strip() == ("data set 'sib-200': unknown; did you mean 'sib200'? known: sib200, tatoeba, "
                                         "alignments, ntrex, newstest, xnli, pawsx, panx, udpos (see `objkit data list`)")
    code, _, err = run_main(capsys, "data", "get", "sib200", "-o", "never", "--langs", "all")
    assert code == 2 and err.startswith("--langs all: sib200 has no fixed list of languages here")
    code, _, err = run_main(capsys, "data", "get", "tatoeba", "-o", "never", "--langs", "deu,xxx")
    assert code == 2 and err.startswith("--langs xxx: tatoeba has no such language")
    runner = CliRunner()
    for args in ([], ["list"], ["get"]):
        result = runner.invoke(data_group, [*args, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.output.strip().split("\n\n")[-1], args


def test_hub_unreachable_and_not_cached_is_one_line(capsys, tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and an empty cache: nothing to load
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    from objkit.blocks.hub import hub_unreachable_reason

    forget = getattr(hub_unreachable_reason, "cache_clear", lambda: None)  # decided once per process
    forget()
    dest = tmp_path / "xnli"
    try:
        code, out, err = run_main(capsys, "data", "get", "xnli", "-o", str(dest), "--langs", "de")
    finally:
        forget()
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("cannot load facebook/xnli configuration 'de' from https://huggingface.co/datasets/facebook/xnli "
                          "(the hub is unreachable (HF_HUB_OFFLINE is set) and it is not cached)")
    assert "--from COPY" in err and not dest.exists() and leftovers(tmp_path) == []
