"""Retrieval metric, pooling/encoding on a tiny random XLM-R, and `objkit eval retrieval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from objkit.contract.errors import UserError
from objkit.eval.cli import eval_group
from objkit.eval.retrieval import (
    default_layer,
    encode_sentences,
    evaluate_pair,
    load_encoder,
    read_aligned,
    retrieval_scores,
    top1_accuracy,
)
from tiny_models import tiny_encoder

SENTENCES = [
    "the cat sat on the mat",
    "a dog",
    "the big red house",
    "small tree",
    "the dog sat on a big mat on the red house",
    "cat",
]


@pytest.fixture(scope="module")
def enc():
    return tiny_encoder()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, enc) -> Path:
    d = tmp_path_factory.mktemp("tiny-xlmr")
    enc[0].save_pretrained(d)
    enc[1].save_pretrained(d)
    return d


def reference(model, tokenizer, sentence: str, layer: int) -> torch.Tensor:
    batch = tokenizer([sentence], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    return out.hidden_states[layer][0]


# ----------------------------------------------------------------------------- metric
def test_default_layer():
    assert default_layer(12) == 8
    assert default_layer(24) == 16
    assert default_layer(4) == 3
    assert default_layer(1) == 1
    assert all(1 <= default_layer(n) <= n for n in range(1, 49))
    with pytest.raises(ValueError):
        default_layer(0)


def _unit(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_identity_is_perfect_and_permutation_is_chance():
    x = _unit(500, 64, 0)
    assert top1_accuracy(x, x) == 100.0
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(1))
    assert top1_accuracy(x, x[perm]) <= 3.0
    s = retrieval_scores(x, x)
    assert s == {"src2tgt": 100.0, "tgt2src": 100.0, "mean": 100.0}


@pytest.mark.parametrize("chunk", [7, 64, 299, 300, 301, 4096])
def test_chunked_equals_dense(chunk):
    q = _unit(300, 16, 2)
    noise = torch.randn(300, 16, generator=torch.Generator().manual_seed(3))
    k = torch.nn.functional.normalize(q + 0.35 * noise, dim=-1)
    dense = 100.0 * (q @ k.T).argmax(1).eq(torch.arange(300)).float().mean().item()
    assert 5.0 < dense < 95.0  # a non-trivial case
    assert top1_accuracy(q, k, chunk_size=chunk) == pytest.approx(dense)
    dense_t2s = 100.0 * (k @ q.T).argmax(1).eq(torch.arange(300)).float().mean().item()
    assert retrieval_scores(q, k, chunk_size=chunk)["tgt2src"] == pytest.approx(dense_t2s)


@pytest.mark.parametrize("chunk", [1, 2, 3, 10])
def test_ties_go_to_lowest_index(chunk):
    same = torch.ones(5, 2)  # every similarity ties: only query 0 finds key 0
    assert top1_accuracy(same, same, chunk_size=chunk) == pytest.approx(20.0)


# ----------------------------------------------------------------------------- encoding
def test_cls_and_mean_pooling_match_hand_computation(enc):
    model, tok = enc
    layer = 3
    h = reference(model, tok, SENTENCES[0], layer)
    mean = encode_sentences(model, tok, SENTENCES[:1], layer=layer, pooling="mean")
    cls = encode_sentences(model, tok, SENTENCES[:1], layer=layer, pooling="cls")
    norm = torch.nn.functional.normalize
    assert torch.allclose(mean[0], norm(h.mean(0), dim=0), atol=1e-5)
    assert torch.allclose(cls[0], norm(h[0], dim=0), atol=1e-5)
    assert not torch.allclose(mean, cls, atol=1e-3)
    assert mean.dtype == torch.float32 and mean.shape == (1, 32)


@pytest.mark.parametrize("layer", [0, 1, 2, 3, 4])
def test_layer_selects_hidden_state(enc, layer):
    model, tok = enc
    h = reference(model, tok, SENTENCES[2], layer)
    got = encode_sentences(model, tok, [SENTENCES[2]], layer=layer, pooling="mean")
    assert len(model.encoder.layer) == 4  # blocks above `layer` skipped, then restored
    assert torch.allclose(got[0], torch.nn.functional.normalize(h.mean(0), dim=0), atol=1e-5)


def test_skipping_blocks_first_keeps_later_full_runs_right():
    """transformers 5 hooks the blocks present at the first call: a truncated first run
    must not cut the hidden states of later, deeper runs."""
    model, tok = tiny_encoder()
    shallow = encode_sentences(model, tok, SENTENCES[:2], layer=1, pooling="mean")
    fresh, _ = tiny_encoder()
    for layer in (1, 3, 4):
        got = encode_sentences(model, tok, SENTENCES[:2], layer=layer, pooling="mean")
        want = encode_sentences(fresh, tok, SENTENCES[:2], layer=layer, pooling="mean")
        assert torch.allclose(got, want, atol=1e-5), layer
    assert torch.allclose(shallow, encode_sentences(fresh, tok, SENTENCES[:2], layer=1), atol=1e-5)


def test_exclude_special(enc):
    model, tok = enc
    h = reference(model, tok, SENTENCES[0], 3)
    incl = encode_sentences(model, tok, SENTENCES[:1], layer=3, pooling="mean")
    excl = encode_sentences(model, tok, SENTENCES[:1], layer=3, pooling="mean", exclude_special=True)
    assert not torch.allclose(incl, excl, atol=1e-4)
    assert torch.allclose(excl[0], torch.nn.functional.normalize(h[1:-1].mean(0), dim=0), atol=1e-5)
    empty = encode_sentences(model, tok, [""], layer=3, pooling="mean", exclude_special=True)
    assert torch.isfinite(empty).all() and empty.norm().item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 64])
def test_padding_and_sorting_do_not_change_vectors(enc, batch_size):
    model, tok = enc
    alone = torch.cat([encode_sentences(model, tok, [s], layer=3, pooling="mean") for s in SENTENCES])
    batched = encode_sentences(model, tok, SENTENCES, layer=3, pooling="mean", batch_size=batch_size)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_training_flag_restored_and_layer_checked(enc):
    model, tok = enc
    model.train()
    try:
        encode_sentences(model, tok, SENTENCES, layer=2, pooling="mean")
        assert model.training
    finally:
        model.eval()
    encode_sentences(model, tok, SENTENCES, layer=2, pooling="cls")
    assert not model.training
    with pytest.raises(UserError, match="out of range"):
        encode_sentences(model, tok, SENTENCES, layer=5, pooling="mean")


def test_evaluate_pair_identical_lists(enc):
    model, tok = enc
    res = evaluate_pair(model, tok, SENTENCES, SENTENCES, layer=3, batch_size=2)
    assert res["src2tgt"] == res["tgt2src"] == res["mean"] == 100.0
    assert res["n"] == len(SENTENCES) and res["layer"] == 3 and res["pooling"] == "mean"


# ----------------------------------------------------------------------------- files
def test_read_aligned(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\ntwo\nthree\r\n", encoding="utf-8")
    b.write_text("uno\ndos\ntres", encoding="utf-8")
    assert read_aligned(a, b) == (["one", "two", "three"], ["uno", "dos", "tres"])
    b.write_text("uno\n \t\ntres", encoding="utf-8")  # a blank "sentence" would be scored like any other
    with pytest.raises(UserError) as err:
        read_aligned(a, b)
    assert str(err.value) == f"{b}: line 2 is blank (expected one sentence a line, line-aligned)"
    b.write_text("uno\ndos\n", encoding="utf-8")
    with pytest.raises(UserError) as err:
        read_aligned(a, b)
    assert str(a) in str(err.value) and str(b) in str(err.value) and "3" in str(err.value)
    with pytest.raises(UserError, match="no such file"):
        read_aligned(a, tmp_path / "missing.txt")


def test_load_encoder_errors(tmp_path, saved):
    with pytest.raises(UserError, match="no config.json"):
        load_encoder(tmp_path, "cpu")
    model, tok = load_encoder(saved, "cpu")
    assert model.config.num_hidden_layers == 4 and not model.training
    assert tok.pad_token_id == 1


# ----------------------------------------------------------------------------- CLI
def _files(tmp_path: Path, src: list[str], tgt: list[str]) -> tuple[Path, Path]:
    s, t = tmp_path / "src.txt", tmp_path / "tgt.txt"
    s.write_text("\n".join(src) + "\n", encoding="utf-8")
    t.write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return s, t


def test_cli_retrieval_json_and_text(tmp_path, saved):
    s, t = _files(tmp_path, SENTENCES, SENTENCES)
    args = ["retrieval", str(saved), "--src", str(s), "--tgt", str(t), "--device", "cpu"]
    result = CliRunner().invoke(eval_group, [*args, "--json", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["src2tgt"] == data["tgt2src"] == data["mean"] == 100.0
    assert data["layer"] == 3 and data["pooling"] == "mean" and data["n"] == len(SENTENCES)
    result = CliRunner().invoke(eval_group, [*args, "--pooling", "cls", "--layer", "4"])
    assert result.exit_code == 0, result.output
    assert "layer: 4" in result.output and "pooling: cls" in result.output
    assert "src→tgt" in result.output and "mean" in result.output


def test_cli_retrieval_user_errors(tmp_path, saved):
    s, t = _files(tmp_path, SENTENCES, SENTENCES[:-1])
    result = CliRunner().invoke(eval_group, ["retrieval", str(saved), "--src", str(s), "--tgt", str(t)])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
    assert str(s) in str(result.exception) and str(t) in str(result.exception)
    s, t = _files(tmp_path, SENTENCES, SENTENCES)
    bad_layer = ["retrieval", str(saved), "--src", str(s), "--tgt", str(t), "--layer", "9"]
    result = CliRunner().invoke(eval_group, bad_layer)
    assert isinstance(result.exception, UserError) and "out of range" in str(result.exception)
    not_model = ["retrieval", str(tmp_path), "--src", str(s), "--tgt", str(t)]
    result = CliRunner().invoke(eval_group, not_model)
    assert isinstance(result.exception, UserError) and "config.json" in str(result.exception)


def test_cli_retrieval_refuses_whitespace_only_files(tmp_path, saved, capsys):
    from objkit.cli import main

    s, t = _files(tmp_path, [" ", "  "], ["\t", " "])
    with pytest.raises(SystemExit) as info:
        main(["eval", "retrieval", str(saved), "--src", str(s), "--tgt", str(t), "--device", "cpu"])
    assert info.value.code == 2
    assert capsys.readouterr().err == f"{s}: line 1 is blank (expected one sentence a line, line-aligned)\n"


def test_cli_help_has_examples():
    for cmd in ("retrieval", "tatoeba"):
        result = CliRunner().invoke(eval_group, [cmd, "--help"])
        assert result.exit_code == 0 and "Examples:" in result.output
        assert "\n    objkit eval " + cmd in result.output  # \b keeps the example lines


def test_cli_retrieval_several_models_json_lines_and_markdown(tmp_path, saved):
    """Several MODEL arguments (PATH or NAME=PATH): one JSON object per model, one a line, and a
    Markdown table with a row per model; two models of the same name are refused."""
    s, t = _files(tmp_path, SENTENCES, SENTENCES)
    md = tmp_path / "out" / "ret.md"
    md.parent.mkdir()
    args = ["retrieval", f"a={saved}", f"b={saved}", "--src", str(s), "--tgt", str(t), "--device", "cpu",
            "--batch-size", "2"]
    result = CliRunner().invoke(eval_group, [*args, "--json", "--markdown", str(md)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["name"], r["model"], r["mean"]) for r in lines] == [("a", str(saved), 100.0), ("b", str(saved), 100.0)]
    table = md.read_text().splitlines()
    assert table[0] == "| model | layer | pooling | pairs | src→tgt | tgt→src | mean |"
    assert table[2:] == [f"| {n} | 3 | mean | {len(SENTENCES)} | 100.00 | 100.00 | 100.00 |" for n in "ab"]
    result = CliRunner().invoke(eval_group, ["retrieval", f"a={saved}", f"a={saved}", "--src", str(s), "--tgt", str(t)])
    assert isinstance(result.exception, UserError) and "two models are named 'a'" in str(result.exception)
