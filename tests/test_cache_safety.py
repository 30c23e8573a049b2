"""The tokenized cache under concurrency and edits: a second builder of an entry waits for the
first (saying who holds it) and then reads what it built; a data file edited in place with its
size and mtime restored is noticed (the key holds the content's hash) and named in words; a
folder of the user's where an entry goes is never replaced."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from objkit.cli import main
from objkit.data.cache import content_files, entry_lock
from tests.test_prepare import run_cli, workdir  # noqa: F401  (the fixture)


def test_a_same_size_edit_with_its_mtime_restored_is_rebuilt_and_named(capsys, workdir):  # noqa: F811
    code, _ = run_cli(capsys, "prepare", "r.toml", "-o", "cache")
    assert code == 0
    mono = workdir / "mono.txt"
    before = mono.stat()
    text = mono.read_text()
    mono.write_text(text.replace("cat", "cow"))  # the same size
    os.utime(mono, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r / cp -p
    assert (mono.stat().st_size, mono.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run", "--cache-dir", "cache", "--no-progress")
    assert code == 2 and len(lines) == 1
    assert f"(data file {mono} changed since the cache was built (its content differs))" in lines[0]
    code, lines = run_cli(capsys, "prepare", "r.toml", "-o", "cache")
    assert code == 0
    code, lines = run_cli(capsys, "run", "r.toml", "-o", "run", "--cache-dir", "cache", "--no-progress")
    assert code == 0 and any(line.startswith("data.cache_dir: mlm: ") and "read from the cache" in line for line in lines)


def test_hashes_are_reused_until_the_file_changes(tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("one two\n")
    row = [[str(data), data.stat().st_size, data.stat().st_mtime_ns]]
    first = content_files(row, tmp_path)
    assert first[0][2].startswith("sha256:") and content_files(row, tmp_path) == first
    stat = data.stat()
    data.write_text("one tw0\n")
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_files(row, tmp_path)[0][2] != first[0][2]


def test_a_users_folder_where_an_entry_goes_is_left_alone(capsys, workdir):  # noqa: F811
    (workdir / "cache" / "mlm").mkdir(parents=True)
    (workdir / "cache" / "mlm" / "notes.txt").write_text("mine")
    code, lines = run_cli(capsys, "prepare", "r.toml", "-o", "cache")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("cache/mlm: exists and objkit did not write it")
    assert sorted(p.name for p in (workdir / "cache" / "mlm").iterdir()) == ["notes.txt"]


def test_a_second_builder_waits_for_the_first_and_reads_its_entry(capsys, workdir):  # noqa: F811
    codes: list[int] = []

    def prepare() -> None:
        try:
            main(["prepare", "r.toml", "-o", "cache"])
            codes.append(0)
        except SystemExit as exc:
            codes.append(int(exc.code or 0))

    with entry_lock(workdir / "cache", "mlm"):  # another builder holds the mlm entry
        thread = threading.Thread(target=prepare)
        thread.start()
        err, deadline = "", time.monotonic() + 120
        while "waiting for it" not in err and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.2)
            err += capsys.readouterr().err
        assert f"data.cache_dir: cache/mlm is being built by pid {os.getpid()} on " in err
        assert thread.is_alive() and not (workdir / "cache" / "mlm").exists()
    thread.join(120)
    assert codes == [0]
    assert (workdir / "cache" / "mlm" / "key.json").is_file()
    assert not [p for p in (workdir / "cache").iterdir() if "tmp" in p.name or "old" in p.name]
