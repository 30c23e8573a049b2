"""Tatoeba file discovery, language sets, evaluation and `objkit eval tatoeba`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from objkit.contract.errors import UserError
from objkit.eval.cli import eval_group
from objkit.eval.tatoeba import (
    INFOXLM14,
    XTREME36,
    discover_languages,
    evaluate_tatoeba,
    format_table,
    select_languages,
)
from tiny_models import tiny_encoder

LINES = ["the cat sat on the mat", "a dog", "the big red house", "small tree", "red cat on a tree"]


def write_pair(d: Path, lang: str, xx: list[str], en: list[str] | None = None) -> None:
    (d / f"tatoeba.{lang}-eng.{lang}").write_text("\n".join(xx) + "\n", encoding="utf-8")
    if en is not None:
        (d / f"tatoeba.{lang}-eng.eng").write_text("\n".join(en) + "\n", encoding="utf-8")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tatoeba"
    d.mkdir()
    write_pair(d, "deu", LINES, LINES)  # identical sides: retrieval is perfect
    write_pair(d, "fra", LINES[:4], LINES[:4])
    write_pair(d, "ita", LINES, None)  # one side only: not a language
    (d / "tatoeba.spa-eng.eng").write_text("x\n", encoding="utf-8")  # the other side only
    (d / "README.md").write_text("not data\n", encoding="utf-8")
    return d


def test_language_sets():
    assert len(XTREME36) == 36 and len(set(XTREME36)) == 36
    assert len(INFOXLM14) == 14 and set(INFOXLM14) <= set(XTREME36)
    assert "eng" not in XTREME36 and all(len(c) == 3 for c in XTREME36)


def test_discover_languages(data_dir, tmp_path):
    assert discover_languages(data_dir) == ["deu", "fra"]
    with pytest.raises(UserError, match="not a directory"):
        discover_languages(tmp_path / "nowhere")


def test_select_languages():
    available = ["deu", "fra", "ita"]
    assert select_languages("all", available) == available
    assert select_languages("fra,deu", available) == ["fra", "deu"]
    assert select_languages(" deu , de ,fr", available) == ["deu", "fra"]  # XTREME's 2-letter codes
    assert select_languages("infoxlm14", list(INFOXLM14)) == list(INFOXLM14)
    assert select_languages("XTREME36", [*XTREME36, "zzz"]) == list(XTREME36)


def test_select_languages_errors():
    available = ["deu", "fra", "ita"]
    with pytest.raises(UserError) as err:
        select_languages("infoxlm14", available)
    msg = str(err.value)
    assert "infoxlm14" in msg and "ara" in msg and "cmn" in msg and "deu" not in msg.split(":")[-1]
    with pytest.raises(UserError, match="jpn"):
        select_languages("xtreme36", [c for c in XTREME36 if c != "jpn"])
    with pytest.raises(UserError) as err:
        select_languages("deu,fre", available)
    assert '"fre"' in str(err.value) and 'did you mean "fra"' in str(err.value)
    with pytest.raises(UserError, match="no language"):
        select_languages(" , ", available)
    with pytest.raises(UserError, match="no Tatoeba language"):
        select_languages("all", [])


def test_evaluate_tatoeba_and_table(data_dir):
    model, tok = tiny_encoder()
    res = evaluate_tatoeba(model, tok, data_dir, ["deu", "fra"], layer=3, pooling="mean", batch_size=2)
    assert set(res["languages"]) == {"deu", "fra"}
    assert res["languages"]["deu"] == {"n": 5, "xx2en": 100.0, "en2xx": 100.0, "mean": 100.0}
    assert res["languages"]["fra"]["n"] == 4
    assert res["average"] == {"xx2en": 100.0, "en2xx": 100.0, "mean": 100.0}
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["language", "n", "xx→en", "en→xx", "mean"]
    assert lines[-1].split() == ["average", "9", "100.00", "100.00", "100.00"]
    assert any(line.startswith("deu") for line in lines)


def test_evaluate_tatoeba_unequal_lines(data_dir):
    write_pair(data_dir, "nld", LINES, LINES[:3])
    model, tok = tiny_encoder()
    with pytest.raises(UserError, match="tatoeba.nld-eng.eng"):
        evaluate_tatoeba(model, tok, data_dir, ["nld"], layer=3)


def test_cli_tatoeba(tmp_path, data_dir):
    model, tok = tiny_encoder()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    base = ["tatoeba", str(model_dir), "--data-dir", str(data_dir), "--device", "cpu"]
    result = CliRunner().invoke(eval_group, [*base, "--langs", "deu,fra", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["layer"] == 3 and data["pooling"] == "mean"
    assert data["average"]["mean"] == 100.0 and set(data["languages"]) == {"deu", "fra"}
    result = CliRunner().invoke(eval_group, [*base, "--langs", "all", "--pooling", "cls"])
    assert result.exit_code == 0, result.output
    assert "average" in result.output and "fra" in result.output and "pooling: cls" in result.output
    result = CliRunner().invoke(eval_group, base)  # default infoxlm14: most are missing
    assert isinstance(result.exception, UserError) and "ara" in str(result.exception)
    result = CliRunner().invoke(eval_group, [*base, "--langs", "deu,xyz"])
    assert isinstance(result.exception, UserError) and '"xyz"' in str(result.exception)


def test_cli_tatoeba_several_models_markdown(tmp_path, data_dir):
    model, tok = tiny_encoder()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    md = tmp_path / "t.md"
    args = ["tatoeba", f"x={model_dir}", f"y={model_dir}", "--data-dir", str(data_dir), "--device", "cpu",
            "--langs", "deu,fra", "--markdown", str(md)]
    result = CliRunner().invoke(eval_group, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("model: ") == 2 and result.output.count("average") == 2
    assert md.read_text().splitlines() == ["| model (mean of xx→en, en→xx) | deu | fra | average |", "|---|---:|---:|---:|",
                                           "| x | 100.00 | 100.00 | 100.00 |", "| y | 100.00 | 100.00 | 100.00 |"]
