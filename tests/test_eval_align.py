"""Word alignment evaluation: link extraction, AER, gold readers, bad input, `objkit eval align`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from objkit.contract.errors import UserError
from objkit.eval.align import (
    Counts,
    align_corpus,
    argmax_links,
    extract,
    itermax_links,
    match_links,
    gold_notes,
    parse_layers,
    read_corpus,
    read_gold,
    score_alignments,
    word_pieces,
)
from objkit.eval.cli import eval_group

from test_eval_retrieval import tiny_encoder  # noqa: E402  (tests/ is on sys.path)


def links(mat: np.ndarray) -> set[tuple[int, int]]:
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(mat))}


# ----------------------------------------------------------------------------- AER by hand
def test_aer_by_hand():
    # gold: sure {(0,0), (1,1)}, possible adds (1,2); predicted {(0,0), (1,2), (2,2)}
    sure = {(0, 0), (1, 1)}
    possible = sure | {(1, 2)}
    predicted = {(0, 0), (1, 2), (2, 2)}
    s = score_alignments([predicted], [(sure, possible)])
    # |A|=3, |A∩S|=1, |A∩P|=2, |S|=2: precision 2/3, recall 1/2, AER = 1 - 3/5 = 0.4
    assert s["precision"] == pytest.approx(100 * 2 / 3)
    assert s["recall"] == pytest.approx(50.0)
    assert s["f1"] == pytest.approx(100 * 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["aer"] == pytest.approx(40.0)
    assert s["links"] == 3


def test_aer_sums_over_the_corpus_not_per_sentence():
    gold = [({(0, 0)}, {(0, 0)}), ({(0, 0), (1, 1), (2, 2)}, {(0, 0), (1, 1), (2, 2)})]
    pred = [set(), {(0, 0), (1, 1), (2, 2)}]
    # corpus: |A|=3, |A∩S|=|A∩P|=3, |S|=4 -> AER = 1 - 6/7; a per-sentence mean would be 0.5
    assert score_alignments(pred, gold)["aer"] == pytest.approx(100 / 7)


def test_possible_always_includes_sure():
    # a possible set that omits the sure link still counts it as possible (S ⊆ P)
    s = score_alignments([{(0, 0)}], [({(0, 0)}, set())])
    assert s["aer"] == 0.0 and s["precision"] == 100.0


def test_perfect_and_empty():
    gold = [({(0, 0), (1, 1)}, {(0, 0), (1, 1), (0, 1)})]
    assert score_alignments([{(0, 0), (1, 1)}], gold)["aer"] == 0.0
    empty = score_alignments([set()], gold)
    assert empty["aer"] == 100.0 and empty["precision"] == 0.0 and empty["recall"] == 0.0


def independent_scores(pred, gold):
    """Straightforward re-implementation: count link by link."""
    a = s = hit_s = hit_p = 0
    for links_, (sure, possible) in zip(pred, gold):
        p_all = set(possible) | set(sure)
        for link in set(links_):
            a += 1
            hit_s += link in sure
            hit_p += link in p_all
        s += len(set(sure))
    return {"precision": hit_p / a, "recall": hit_s / s, "aer": 1 - (hit_s + hit_p) / (a + s)}


def test_agrees_with_an_independent_implementation():
    rng = random.Random(0)
    for _ in range(20):
        gold, pred = [], []
        for _ in range(rng.randint(1, 8)):
            m, n = rng.randint(1, 9), rng.randint(1, 9)
            cells = [(i, j) for i in range(m) for j in range(n)]
            sure = set(rng.sample(cells, rng.randint(1, len(cells))))
            possible = sure | set(rng.sample(cells, rng.randint(0, len(cells))))
            gold.append((sure, possible))
            pred.append(set(rng.sample(cells, rng.randint(1, len(cells)))))
        ours = score_alignments(pred, gold)
        ref = independent_scores(pred, gold)
        for key in ("precision", "recall", "aer"):
            assert ours[key] == pytest.approx(100 * ref[key])


# ----------------------------------------------------------------------------- extraction
def test_argmax_is_mutual_argmax():
    sim = np.array([
        [0.9, 0.1, 0.2],
        [0.8, 0.3, 0.1],   # row argmax col 0, but col 0's argmax is row 0: no link
        [0.1, 0.2, 0.7],
    ])  # fmt: skip
    assert links(argmax_links(sim)) == {(0, 0), (2, 2)}
    assert extract(sim, "argmax") == {(0, 0), (2, 2)}


def test_argmax_rectangular_and_ties():
    sim = np.array([[0.5, 0.5], [0.1, 0.2], [0.3, 0.1]])
    # row 0 ties -> col 0; col 0's argmax row 0; col 1's argmax row 0 (tie) -> (0, 0) only
    assert links(argmax_links(sim)) == {(0, 0)}
    assert argmax_links(np.zeros((0, 3))).shape == (0, 3)


def test_itermax_adds_links_for_unaligned_words():
    sim = np.array([
        [0.9, 0.1, 0.1, 0.1],
        [0.8, 0.2, 0.1, 0.1],   # row 1 loses col 0 to row 0
        [0.1, 0.1, 0.9, 0.1],
        [0.1, 0.1, 0.1, 0.9],
    ])  # fmt: skip
    first = links(argmax_links(sim))
    assert first == {(0, 0), (2, 2), (3, 3)}
    # round 2: row 1 and column 1 are free. Scaled: row 1 = [0.8·0.9, 0.2·1, 0.1·0.9, 0.1·0.9],
    # column 0 = [0, 0.72, 0, 0] (only row 1 is eligible there), column 1 = [0.09, 0.2, 0.09, 0.09].
    # Row 1's best is column 0 and column 0's best is row 1: (1, 0) is added; column 1's best
    # is row 1, whose best is column 0, so column 1 stays unaligned.
    got = links(itermax_links(sim))
    assert got == first | {(1, 0)}


def test_itermax_stops_and_respects_small_matrices():
    two = np.array([[0.9, 0.8], [0.7, 0.1]])
    assert links(itermax_links(two)) == links(argmax_links(two))  # min side <= 2: argmax only
    eye = np.eye(4) * 0.5 + 0.25
    assert links(itermax_links(eye)) == {(i, i) for i in range(4)}  # nothing free: unchanged
    # max_count = 1 is plain argmax
    sim = np.random.default_rng(0).random((6, 5))
    assert links(itermax_links(sim, max_count=1)) == links(argmax_links(sim))
    assert links(argmax_links(sim)) <= links(itermax_links(sim))


def test_itermax_matches_simalign_formulation_on_random_matrices():
    """The masked formulation of the paper (mask = clip(α·free_row + α·free_col, 0, 1),
    eligible = free_row or free_col), written out independently."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        m, n = rng.integers(1, 9, size=2)
        sim = rng.random((m, n))
        ref = argmax_links(sim).astype(float)
        if min(m, n) > 2:
            fr = 1.0 - np.clip(ref.sum(1, keepdims=True), 0, 1) * np.ones((1, n))
            fc = 1.0 - np.clip(ref.sum(0, keepdims=True), 0, 1) * np.ones((m, 1))
            if fr.sum() >= 1 and fc.sum() >= 1:
                mask = np.clip(0.9 * fr + 0.9 * fc, 0, 1)
                eligible = 1.0 - (1.0 - fr) * (1.0 - fc)
                s2 = sim * mask
                f = np.eye(n)[s2.argmax(1)] * eligible
                b = np.eye(m)[s2.argmax(0)].T * eligible
                ref = ref + f * b
        assert links(itermax_links(sim)) == links(ref > 0)


def test_match_is_a_maximum_weight_matching():
    pytest.importorskip("scipy")
    sim = np.array([[0.9, 0.8, 0.0], [0.85, 0.1, 0.0]])
    # greedy would take (0,0) then (1,1): 1.0; the best matching is (0,1) + (1,0): 1.65
    assert links(match_links(sim)) == {(0, 1), (1, 0)}
    square = np.random.default_rng(2).random((5, 5))
    got = links(match_links(square))
    assert len(got) == 5 and len({i for i, _ in got}) == 5 and len({j for _, j in got}) == 5
    import itertools

    best = max(itertools.permutations(range(5)), key=lambda p: sum(square[i, p[i]] for i in range(5)))
    assert got == {(i, best[i]) for i in range(5)}


def test_unknown_method():
    with pytest.raises(UserError, match="--method"):
        extract(np.eye(2), "greedy")


# ----------------------------------------------------------------------------- gold files
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_gold_sid_format(tmp_path):
    # ids are not line numbers: the k-th distinct id is line k; 3 fields = sure; CRLF tolerated
    g = write(tmp_path / "g.txt", "0007 1 1 S\r\n0007 2 3 P\r\n0009 1 2\r\n0007 2 2 S\r\n")
    gold, fmt = read_gold(g, 2)
    assert fmt == "sid"
    assert gold[0].sure == {(0, 0), (1, 1)} and gold[0].possible == {(0, 0), (1, 2), (1, 1)}
    assert gold[1].sure == {(0, 1)} and gold[1].possible == {(0, 1)}


def test_links_to_null_are_kept_unhittable(tmp_path):
    """As XLM-Align's scorer (and SimAlign's) keeps every gold link: the NULL link counts in |S|."""
    g = write(tmp_path / "g.txt", "5 1 1 S\n5 2 -99 S\n6 1 1\n")
    gold, _ = read_gold(g, 2)
    assert gold[0].sure == {(0, 0), (1, -100)} and gold[0].null_links == 1 and gold[1].null_links == 0
    # a perfect prediction of the real links still misses the NULL link: AER = 1 - 4/5
    s = score_alignments([{(0, 0)}, {(0, 0)}], [(g_.sure, g_.possible) for g_ in gold])
    assert s["aer"] == pytest.approx(100 / 5) and s["recall"] == pytest.approx(200 / 3)


def test_read_gold_pharaoh(tmp_path):
    g = write(tmp_path / "g.txt", "0-0 1p2 1-1\n\n2-0\n")
    gold, fmt = read_gold(g, 3)
    assert fmt == "pharaoh"
    assert gold[0].sure == {(0, 0), (1, 1)} and gold[0].possible == {(0, 0), (1, 1), (1, 2)}
    assert gold[1].sure == set() and gold[2].sure == {(2, 0)}


@pytest.fixture
def corpus(tmp_path):
    src = write(tmp_path / "s.txt", "the cat sat\na dog\n")
    tgt = write(tmp_path / "t.txt", "cat the sat\ndog a\n")
    gold = write(tmp_path / "g.txt", "1 1 2 S\n1 2 1 S\n1 3 3 P\n2 1 2 S\n2 2 1 S\n")
    return src, tgt, gold


def test_read_corpus(corpus):
    src, tgt, sentences, fmt = read_corpus(*corpus)
    assert src == [["the", "cat", "sat"], ["a", "dog"]] and fmt == "sid"
    assert sentences[0].sure == {(0, 1), (1, 0)} and (2, 2) in sentences[0].possible


@pytest.mark.parametrize(
    "case, message",
    [
        ("counts", "line counts differ"),
        ("format", "unknown gold alignment format"),
        ("empty_src", "empty file"),
        ("empty_gold", "empty gold file"),
        ("ids", "distinct sentence ids"),
        ("zero", "1-based"),
        ("bad_tag", "expected 'SENT I J"),
        ("pharaoh_lines", "lines of Pharaoh links"),
        ("empty_line", "line 2 is empty"),
    ],
)
def test_bad_input_is_one_line(tmp_path, corpus, case, message):
    src, tgt, gold = corpus
    if case == "counts":
        write(tgt, "cat the sat\n")
    elif case == "format":
        write(gold, "sentence one: the cat\n")
    elif case == "empty_src":
        write(src, "")
    elif case == "empty_gold":
        write(gold, "\n")
    elif case == "ids":
        write(gold, "1 1 1 S\n")
    elif case == "zero":
        write(gold, "1 0 1 S\n2 1 1 S\n")
    elif case == "bad_tag":
        write(gold, "1 1 1 S\n2 1 1 X\n")
    elif case == "pharaoh_lines":
        write(gold, "0-0\n")
    elif case == "empty_line":
        write(src, "the cat sat\n\n")
    with pytest.raises(UserError, match=message) as err:
        read_corpus(src, tgt, gold)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text, lines", [("1 1 2 S\n2 3 1 S\n2 1 2 P\n", [2]), ("0-3\n0-0 5p0\n", [1, 2])])
def test_links_past_the_end_are_kept_and_counted(corpus, text, lines):
    """The en-hi set's line 678 case: the reference keeps such a link in S (or P), where no
    alignment can hit it; objkit does the same and reports the gold file lines."""
    src, tgt, gold = corpus
    write(gold, text)
    _, _, sentences, _ = read_corpus(src, tgt, gold)
    assert sorted(line for s in sentences for line in s.out_of_range) == lines
    if text.startswith("1"):
        assert (2, 0) in sentences[1].sure  # kept as a sure link
        # |A| = 2, |A∩S| = 1, |A∩P| = 2, |S| = 2 (the unhittable link counted) -> AER = 1 - 3/4
        pred = [{(0, 1)}, {(0, 1)}]
        assert score_alignments(pred, [(s.sure, s.possible) for s in sentences])["aer"] == pytest.approx(25.0)
    notes = gold_notes(gold, sentences)
    assert len(notes) == 1 and f"{len(lines)} gold link(s) past the end" in notes[0]


def test_parse_layers():
    assert parse_layers(None, 12, 8) == [8]
    assert parse_layers("all", 4, 3) == [0, 1, 2, 3, 4]
    assert parse_layers("2", 4, 3) == [2]
    with pytest.raises(UserError, match="out of range"):
        parse_layers("5", 4, 3)
    with pytest.raises(UserError, match="'all'"):
        parse_layers("last", 4, 3)


# ----------------------------------------------------------------------------- on a model
@pytest.fixture(scope="module")
def enc():
    return tiny_encoder()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, enc) -> Path:
    d = tmp_path_factory.mktemp("tiny-xlmr-align")
    enc[0].save_pretrained(d)
    enc[1].save_pretrained(d)
    return d


def test_word_vectors_are_means_of_subwords(enc):
    """Identical sentences on both sides align every word to itself at the embedding layer
    (distinct words, no position collisions matter for the mutual argmax of equal vectors)."""
    model, tok = enc
    words = ["the big red house", "a dog sat on the mat"]
    split = [s.split() for s in words]
    gold = read_gold_from_links([{(i, i) for i in range(len(s))} for s in split])
    res = align_corpus(model, tok, split, split, gold, layers=[0, 1], method="argmax", unit="word", batch_size=1)
    assert res["layers"][0]["aer"] == 0.0 and res["n"] == 2
    assert word_pieces(tok, [["dog", "zebra"]]) == [[[tok.convert_tokens_to_ids("dog")], [tok.unk_token_id]]]


def read_gold_from_links(per_sentence):
    from objkit.eval.align import GoldSentence

    return [GoldSentence(sure=set(s), possible=set(s), lines={link: 1 for link in s}) for s in per_sentence]


def test_batching_does_not_change_scores(enc):
    model, tok = enc
    src = [s.split() for s in ["the cat sat on the mat", "a dog", "the big red house", "small tree"]]
    tgt = [s.split() for s in ["mat the on sat cat the", "dog a", "house red big the", "tree small"]]
    gold = read_gold_from_links([{(0, 1)}, {(0, 1), (1, 0)}, {(3, 0)}, {(0, 1)}])
    a = align_corpus(model, tok, src, tgt, gold, layers=[2, 4], method="itermax", batch_size=1)
    b = align_corpus(model, tok, src, tgt, gold, layers=[2, 4], method="itermax", batch_size=3)
    assert a == b


def test_cli_align_json_and_text(tmp_path, saved, corpus):
    src, tgt, gold = corpus
    args = ["align", str(saved), "--src", str(src), "--tgt", str(tgt), "--gold", str(gold)]
    result = CliRunner().invoke(eval_group, [*args, "--json", "--layer", "all"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out["layers"]) == {"0", "1", "2", "3", "4"}
    assert out["best_layer"] in range(5) and out["n"] == 2 and out["gold_format"] == "sid"
    for s in out["layers"].values():
        assert 0.0 <= s["aer"] <= 100.0 and set(s) == {"precision", "recall", "f1", "aer", "links"}
    best = out["layers"][str(out["best_layer"])]["aer"]
    assert best == min(s["aer"] for s in out["layers"].values())
    assert out["unit"] == "subword" and out["out_of_range_links"] == 0 and out["null_links"] == 0
    text = CliRunner().invoke(eval_group, [*args, "--method", "itermax", "--layer", "2"])
    assert text.exit_code == 0, text.output
    assert "AER" in text.output and "method: itermax" in text.output


def test_cli_align_errors_exit_2_without_traceback(tmp_path, saved, corpus):
    from objkit.cli import main

    src, tgt, gold = corpus
    write(gold, "1 1 2 S\n2 1 1 S\n2 1 1 X\n")
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "objkit", "eval", "align", str(saved), "--src", str(src), "--tgt", str(tgt),
         "--gold", str(gold)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "line 3: expected 'SENT I J [S|P]'" in proc.stderr
    assert main is not None


def test_cli_align_past_the_end_link_warns_counts_and_exits_0(saved, corpus):
    """Before: exit 2 on such a gold file (the en-hi set's line 678). Now: one warning line,
    the count in the JSON, the link kept in |S|; the same for --method xlmalign."""
    import subprocess
    import sys

    src, tgt, gold = corpus
    write(gold, "1 1 2 S\n1 2 1 S\n2 1 2 S\n2 3 9 S\n")
    for method in ("argmax", "xlmalign"):
        proc = subprocess.run(
            [sys.executable, "-m", "objkit", "eval", "align", str(saved), "--src", str(src), "--tgt", str(tgt),
             "--gold", str(gold), "--layer", "1", "--method", method, "--json"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "past the end" in line]
        assert len(warnings) == 1 and "1 gold link(s)" in warnings[0] and "line 4" in warnings[0]
        out = json.loads(proc.stdout)
        assert out["out_of_range_links"] == 1 and out["method"] == method
        assert out["layers"]["1"]["recall"] <= 75.0  # 4 sure links, one unreachable


def test_cli_xlmalign_refuses_word_unit(saved, corpus):
    src, tgt, gold = corpus
    args = ["align", str(saved), "--src", str(src), "--tgt", str(tgt), "--gold", str(gold)]
    result = CliRunner().invoke(eval_group, [*args, "--method", "xlmalign", "--unit", "word"])
    assert isinstance(result.exception, UserError) and "xlmalign aligns subwords" in str(result.exception)


def test_cli_align_help_has_examples():
    result = CliRunner().invoke(eval_group, ["align", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "SimAlign" in result.output
    assert "--unit" in result.output and "xlmalign" in result.output and "Sinkhorn" in result.output


def test_counts_add_is_incremental():
    c = Counts()
    c.add({(0, 0)}, {(0, 0)}, {(0, 0)})
    c.add({(1, 1)}, {(0, 0)}, set())
    assert (c.predicted, c.hit_sure, c.hit_possible, c.sure) == (2, 1, 1, 2)
    assert torch.tensor(c.scores()["aer"]).isfinite()


# ----------------------------------------------------------------------------- against the references' code
def _pair_corpus(n: int = 12, seed: int = 0) -> tuple[list[list[str]], list[list[str]], list]:
    """Sentence pairs over made-up words long enough to split into several SentencePiece pieces,
    with random gold links (sure and possible) and one link past the end of a sentence."""
    from objkit.eval.align import GoldSentence

    rng = random.Random(seed)
    stems = ["hausboot", "strandkorb", "maison", "bateau", "lumiere", "fenster", "garten", "ordinateur",
             "schreibtisch", "papillon", "wasserfall", "montagne", "kirsche", "voiture", "regenschirm"]  # fmt: skip
    src, tgt, gold = [], [], []
    for _ in range(n):
        s = [rng.choice(stems) + rng.choice(["", "n", "en", "chen", "ier"]) for _ in range(rng.randint(2, 9))]
        t = [rng.choice(stems) + rng.choice(["", "s", "e", "es", "ette"]) for _ in range(rng.randint(2, 9))]
        links = {(rng.randrange(len(s)), rng.randrange(len(t))) for _ in range(len(s))}
        sure = {link for link in links if rng.random() < 0.7}
        src.append(s), tgt.append(t)
        gold.append(GoldSentence(sure=sure, possible=set(links), lines={link: 1 for link in links}))
    gold[0].sure.add((len(src[0]), 0))  # past the end: kept, never hit
    gold[0].possible.add((len(src[0]), 0))
    return src, tgt, gold


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    """A random 4-layer XLM-R with a SentencePiece tokenizer trained on the corpus' words,
    saved with save_pretrained (what SimAlign's SentenceAligner loads by path)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from objkit.data.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tiny-sp-xlmr")
    src, tgt, _ = _pair_corpus(40, seed=1)
    tok = train_tokenizer([" ".join(s) for s in src + tgt] * 3, d, vocab_size=60)
    torch.manual_seed(0)
    cfg = XLMRobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, type_vocab_size=1)  # fmt: skip
    XLMRobertaModel(cfg).eval().save_pretrained(d)
    return d


def _scores_of(links_per_sentence, gold):
    return score_alignments(links_per_sentence, [(g.sure, g.possible) for g in gold])


@pytest.mark.parametrize("token_type, unit", [("bpe", "subword"), ("word", "word")])
def test_agrees_with_simalign_package(sp_model, token_type, unit):
    """SimAlign's published SentenceAligner and objkit's evaluator, the same model and pairs:
    the same links, so the same precision, recall and AER (argmax and itermax)."""
    simalign = pytest.importorskip("simalign")
    from transformers import AutoModel, AutoTokenizer

    src, tgt, gold = _pair_corpus()
    tok = AutoTokenizer.from_pretrained(sp_model)
    assert any(len(tok.tokenize(w)) > 1 for s in src for w in s)  # subwords really differ from words
    model = AutoModel.from_pretrained(sp_model).eval()
    for layer in (2, 4):
        aligner = simalign.SentenceAligner(model=str(sp_model), token_type=token_type, matching_methods="ai",
                                           device="cpu", layer=layer)  # fmt: skip
        theirs = [aligner.get_word_aligns(s, t) for s, t in zip(src, tgt)]
        for method, key in (("argmax", "inter"), ("itermax", "itermax")):
            expected = _scores_of([set(map(tuple, out[key])) for out in theirs], gold)
            ours = align_corpus(model, tok, src, tgt, gold, layers=[layer], method=method, unit=unit, batch_size=5)
            assert ours["layers"][layer] == pytest.approx(expected), (layer, method)


def _xlmalign_by_hand(model, tok, s_words, t_words, layer, rounds=2):
    """XLM-Align's aligner written out from its description, one pair at a time: the pair as
    one sequence <s> src </s> tgt </s>, raw dot products, column- then row-normalisation twice,
    a link where the target is its row's argmax of the row-normalised plan and the source its
    column's argmax of the column-normalised plan; subword links mapped to words."""
    s_ids, s_gid, t_ids, t_gid = [], [], [], []
    for g, w in enumerate(s_words):
        ids = tok.convert_tokens_to_ids(tok.tokenize(w))
        s_ids += ids
        s_gid += [g] * len(ids)
    for g, w in enumerate(t_words):
        ids = tok.convert_tokens_to_ids(tok.tokenize(w))
        t_ids += ids
        t_gid += [g] * len(ids)
    seq = [tok.bos_token_id, *s_ids, tok.eos_token_id, *t_ids, tok.eos_token_id]
    with torch.no_grad():
        h = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[layer][0]
    a = h[1 : 1 + len(s_ids)]
    b = h[2 + len(s_ids) : 2 + len(s_ids) + len(t_ids)]
    plan = a @ b.T
    for _ in range(rounds):
        col = plan / plan.sum(0)
        plan = col / col.sum(1, keepdim=True)
    links = set()
    for i in range(len(s_ids)):
        j = int(plan[i].argmax())
        if int(col[:, j].argmax()) == i:
            links.add((s_gid[i], t_gid[j]))
    return links


def test_xlmalign_agrees_with_a_transcription_of_its_aligner(sp_model):
    from transformers import AutoModel, AutoTokenizer

    src, tgt, gold = _pair_corpus()
    tok = AutoTokenizer.from_pretrained(sp_model)
    model = AutoModel.from_pretrained(sp_model).eval()
    for layer in (0, 3):
        expected = _scores_of([_xlmalign_by_hand(model, tok, s, t, layer) for s, t in zip(src, tgt)], gold)
        ours = align_corpus(model, tok, src, tgt, gold, layers=[layer], method="xlmalign", batch_size=4)
        assert ours["layers"][layer] == pytest.approx(expected, rel=1e-9)
        assert ours["out_of_range_links"] == 0  # GoldSentence built by hand: check_gold not run
    with pytest.raises(UserError, match="xlmalign aligns subwords"):
        align_corpus(model, tok, src, tgt, gold, layers=[1], method="xlmalign", unit="word")


def test_units_differ_on_a_subword_model(sp_model):
    """With words of several pieces, the subword and the word unit give different links."""
    from transformers import AutoModel, AutoTokenizer

    src, tgt, gold = _pair_corpus()
    tok = AutoTokenizer.from_pretrained(sp_model)
    model = AutoModel.from_pretrained(sp_model).eval()
    sub = align_corpus(model, tok, src, tgt, gold, layers=[2], unit="subword")["layers"][2]
    word = align_corpus(model, tok, src, tgt, gold, layers=[2], unit="word")["layers"][2]
    assert sub["links"] != word["links"]
