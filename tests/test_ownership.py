"""objkit.data.ownership: objkit removes or replaces only what its manifests say it wrote."""

from __future__ import annotations

import os

import pytest

from objkit.contract.errors import UserError
from objkit.data.ownership import MANIFEST, check_replaceable, claim, foreign_entries, is_owned, owned_entries, write_folder


def test_claim_records_entries_and_refuses_names_outside_the_folder(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    claim(tmp_path, ["metrics.jsonl"], "objkit run")
    claim(tmp_path, ["checkpoints"], "objkit run")
    assert owned_entries(tmp_path) == {"checkpoints": "objkit run", "metrics.jsonl": "objkit run"}
    with pytest.raises(ValueError):
        claim(tmp_path, ["../x"], "objkit run")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_users_file_is_never_replaceable_and_the_error_names_it(tmp_path):
    user = tmp_path / "export"
    user.mkdir()
    (user / "my_model.bin").write_text("x")
    with pytest.raises(UserError, match=r"export: exists and objkit did not write it"):
        check_replaceable(user, "-o")
    assert (user / "my_model.bin").read_text() == "x"


def test_a_folder_objkit_wrote_whole_is_replaced_but_not_once_a_user_adds_a_file(tmp_path):
    target = tmp_path / "out"
    write_folder(target, lambda d: (d / "a.txt").write_text("1"), "objkit export")
    assert is_owned(target) and (target / MANIFEST).is_file()
    write_folder(target, lambda d: (d / "b.txt").write_text("2"), "objkit export")
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "b.txt"]
    (target / "notes.md").write_text("mine")
    assert foreign_entries(target) == ["notes.md"]
    with pytest.raises(UserError, match=r"notes.md not written by objkit"):
        write_folder(target, lambda d: (d / "c.txt").write_text("3"), "objkit export")
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST, "b.txt", "notes.md"]


def test_a_failed_build_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    write_folder(target, lambda d: (d / "a.txt").write_text("1"), "objkit export")

    def fail(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_folder(target, fail, "objkit export")
    assert (target / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_or_absent_path_may_be_written(tmp_path):
    check_replaceable(tmp_path / "absent", "-o")
    (tmp_path / "empty").mkdir()
    write_folder(tmp_path / "empty", lambda d: (d / "a").write_text(""), "objkit export")
    assert (tmp_path / "empty" / "a").exists()


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_folder(tmp_path / "out", lambda d: (d / "a").write_text(""), "objkit export")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / MANIFEST).stat().st_mode & 0o777 == 0o644


def test_a_file_a_library_wrote_0600_gets_the_umask_mode(tmp_path):
    def build(folder):
        (folder / "model.safetensors").write_bytes(b"x")
        os.chmod(folder / "model.safetensors", 0o600)  # as safetensors' save_file leaves it

    old = os.umask(0o022)
    try:
        write_folder(tmp_path / "export", build, "objkit export")
    finally:
        os.umask(old)
    assert (tmp_path / "export" / "model.safetensors").stat().st_mode & 0o777 == 0o644
