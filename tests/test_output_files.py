"""Files a command writes for the user (``eval transfer --markdown``, ``new-plugin``): never over
a file of the user's (one line, exit 2, nothing touched), never over one objkit wrote that the
user has since edited; an untouched earlier one is replaced (temporary file, rename)."""

from __future__ import annotations

import pytest

from objkit.contract.errors import UserError
from objkit.data.ownership import MANIFEST, owned_entries, write_report
from tests.test_eval_transfer import model_dir, run_main, write_sib  # noqa: F401  (the fixture)


def test_a_report_objkit_wrote_is_replaced_until_the_user_edits_it(tmp_path):
    table = tmp_path / "table.md"
    write_report(table, "| a |\n", "objkit eval", "--markdown")
    write_report(table, "| b |\n", "objkit eval", "--markdown")
    assert table.read_text() == "| b |\n" and "table.md" in owned_entries(tmp_path)
    table.write_text("| b | my note |\n")
    with pytest.raises(UserError, match=r"table.md: changed since objkit wrote it; .*choose another --markdown"):
        write_report(table, "| c |\n", "objkit eval", "--markdown")
    assert table.read_text() == "| b | my note |\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST, "table.md"]


def test_eval_markdown_over_a_users_file_is_one_line_before_any_training(tmp_path, capsys, model_dir):  # noqa: F811
    root = write_sib(tmp_path / "sib")
    mine = tmp_path / "table.md"
    mine.write_text("my results\n")
    code, err = run_main(capsys, str(model_dir), "--task", "sib200", "--data-dir", str(root), "--seeds", "1",
                         "--markdown", str(mine))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"{mine}: exists and objkit did not write it")
    assert lines[0].endswith("(move it away or choose another --markdown)")
    assert mine.read_text() == "my results\n"


def _new_plugin(capsys, *argv: str) -> tuple[int, list[str]]:
    from objkit.cli import main

    with pytest.raises(SystemExit) as info:
        main(["new-plugin", *argv])
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return int(info.value.code or 0), captured.err.strip().splitlines()


def test_new_plugin_beside_a_users_files_never_over_them(tmp_path, capsys):
    plugin = tmp_path / "p"
    plugin.mkdir()
    (plugin / "LICENSE").write_text("mine")
    assert _new_plugin(capsys, "own_demo", "-o", str(plugin))[0] == 0  # beside the user's LICENSE
    assert (plugin / "LICENSE").read_text() == "mine" and (plugin / "pyproject.toml").is_file()
    assert _new_plugin(capsys, "own_demo", "-o", str(plugin))[0] == 0  # its own untouched files: replaced
    objective = plugin / "objkit_own_demo" / "objective.py"
    objective.write_text(objective.read_text() + "# my change\n")
    readme = (plugin / "README.md").read_text()
    code, lines = _new_plugin(capsys, "own_demo", "-o", str(plugin))
    assert code == 2 and lines == [f"{objective}: changed since objkit wrote it; objkit replaces only what it wrote "
                                   "(move it away or choose another -o)"]
    assert objective.read_text().endswith("# my change\n") and (plugin / "README.md").read_text() == readme

    other = tmp_path / "q"
    other.mkdir()
    (other / "README.md").write_text("my readme")
    code, lines = _new_plugin(capsys, "own_demo", "-o", str(other))
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"{other / 'README.md'}: exists and objkit did not")
    assert sorted(p.name for p in other.iterdir()) == ["README.md"]  # nothing else written either
    assert (other / "README.md").read_text() == "my readme"
