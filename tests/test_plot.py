"""`objkit plot`: curves of runs' metrics.jsonl into an image."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from objkit.contract.errors import UserError
from objkit.cli.plot import plot_command, plot_runs, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, with_xlco: bool) -> Path:
    d = root / name
    d.mkdir(parents=True)
    rows = []
    for step in range(0, 50, 10):
        row = {"step": step, "lr": 1e-4 * (step + 1) / 50, "mlm/loss": 5.0 - step / 20}
        if with_xlco:
            row |= {"xlco/loss": 3.0 - step / 30, "xlco/accuracy": step / 50}
        if step % 20 == 0:
            row |= {"eval/tatoeba/acc": step / 2, "eval/tatoeba/src2tgt": step / 3}
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    return d


def test_plot_two_runs_png(tmp_path):
    a, b = make_run(tmp_path, "mlm", False), make_run(tmp_path, "mlm+xlco", True)
    out = tmp_path / "plots" / "curves.png"
    plot_runs([a, b], out)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_plot_command(tmp_path):
    a, b = make_run(tmp_path, "a", True), make_run(tmp_path, "b", True)
    out = tmp_path / "cmp.png"
    result = CliRunner().invoke(plot_command, [str(a), str(b), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and out.read_bytes()[:8] == PNG_MAGIC
    help_text = CliRunner().invoke(plot_command, ["--help"]).output
    assert "Examples:" in help_text and "\n    objkit plot runs/mlm -o mlm.png" in help_text


def test_missing_or_empty_metrics(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="metrics.jsonl: no such file"):
        plot_runs([empty], tmp_path / "x.png")
    (empty / "metrics.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="empty"):
        plot_runs([empty], tmp_path / "x.png")
    (empty / "metrics.jsonl").write_text('{"step": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not JSON"):
        read_metrics(empty)
    (empty / "metrics.jsonl").write_text('{"step": 1, "note": "hi"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="nothing to plot"):
        plot_runs([empty], tmp_path / "x.png")
    result = CliRunner().invoke(plot_command, [str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")])
    assert isinstance(result.exception, UserError) and "nope" in str(result.exception)
    assert not (tmp_path / "x.png").exists()


def test_unknown_image_format(tmp_path):
    a = make_run(tmp_path, "a", False)
    with pytest.raises(UserError, match="x.notaformat"):
        plot_runs([a], tmp_path / "x.notaformat")


def test_matplotlib_missing(tmp_path, monkeypatch):
    a = make_run(tmp_path, "a", False)
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(UserError, match=r"pip install 'objkit\[plot\]'"):
        plot_runs([a], tmp_path / "x.png")
