"""Word alignment from an encoder's embeddings, scored by alignment error rate (AER).

Three protocols, each following its published code (``--method`` and ``--unit``):

* **SimAlign** (Jalili Sabet et al., Findings of EMNLP 2020; the ``simalign`` package's
  ``SentenceAligner``), methods ``argmax`` (the default), ``itermax`` and ``match``:

  - Sentences are whitespace-tokenised words. Each word is tokenised on its own (for
    SentencePiece models every word gets its leading ``▁``, as SimAlign does), the pieces are
    concatenated between the model's special tokens, and each side of a pair is encoded on
    its own (no attention between the two sentences).
  - Vectors are read at one hidden layer (0 = embeddings, i = output of block i; default 8
    for a 12-layer model, SimAlign's default).
  - ``--unit subword`` (the default; SimAlign's ``token_type="bpe"``, its default): every
    subword is a unit; links are extracted between subwords and two words are linked when
    any of their subwords are. ``--unit word`` (``token_type="word"``): a word's vector is
    the mean of its subword vectors and links are extracted between words.
  - Similarity is ``(cos + 1) / 2`` between every source and target unit, and links come from
    that matrix with ``argmax`` (the intersection of row-wise and column-wise argmaxes,
    SimAlign's *ArgMax*, its ``inter``); ``itermax`` (SimAlign's *IterMax*: argmax, then up to
    one more round (``max_count = 2``) in which only units left unaligned compete: similarities
    are scaled by 1 when both units are free and by α = 0.9 when one of them is, and the
    intersection of argmaxes among pairs with at least one free unit is added; matrices with a
    side of at most two units keep the argmax links); or ``match`` (a maximum-weight bipartite
    matching, SimAlign's *Match* / ``mwmf``; here the Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``, which yields the same maximum-cardinality
    maximum-weight matching as SimAlign's networkx call up to ties).

* **XLM-Align's optimal-transport aligner** (Chi et al., ACL 2021; ``xlmalign-ot-aligner.py``
  in the XLM-Align repository, the code behind its word-alignment table), method
  ``xlmalign`` (subword unit only):

  - The pair is encoded jointly as one sequence, ``<s> src </s> tgt </s>`` for XLM-R (each
    word cut on its own by the tokenizer's SentencePiece model when it has the file, as the
    reference's ``spm.encode(word)``; else by the tokenizer); the hidden states at the layer
    are used as they are (not normalised).
  - Scores are the raw dot products between every source and every target subword (specials
    excluded); two rounds of Sinkhorn normalisation without exponential (``--sinkhorn_iter
    2``: divide by the column sums giving ``xi``, then by the row sums giving ``pi``); a link
    is a subword pair where the target is the argmax of ``pi``'s row and the source the argmax
    of ``xi``'s column. No itermax in this aligner (XLM-Align's *training* labels add itermax,
    ``--wa_max_count 2``; see the ``xlm_align`` plugin). Two words are linked when any of
    their subwords are. The reference prints all 13 layers of a base model; its table reads
    layer 8 for XLM-R (de-en 19.11, en-fr 6.83, en-hi 33.73, ro-en 28.73) and layer 9 for
    XLM-Align (17.42, 6.71, 31.93, 26.50).

Published numbers are not interchangeable: SimAlign's paper reports its own protocol (its
XLM-R argmax row, as the XLM-Align aligner's README quotes it: de-en 19, en-fr 7, en-hi 39,
ro-en 29), and the figures above are XLM-Align's aligner, not SimAlign's argmax.

Scores are summed over the corpus, with the sure links S a subset of the possible links P:
precision ``|A∩P| / |A|``, recall ``|A∩S| / |S|``, F1, and AER
``1 − (|A∩S| + |A∩P|) / (|A| + |S|)`` (Och & Ney 2003), all in percent. Every gold link
counts, as in both references' scorers: a link to NULL (a negative index) or past the end of
its sentence (line 678 of the WPT en-hi set) stays in S (or P) and no alignment can hit it;
both are counted and reported (``null_links``, ``out_of_range_links``).

Gold formats (detected from the file):

* ``SENT I J [S|P]`` -- one link a line, I and J 1-based word indices into ``--src`` and
  ``--tgt``; ``S`` (default) is sure, ``P`` possible. SENT is an id, not a line number: the
  k-th distinct id in file order is line k (the WPT / Europarl test sets). A negative index
  marks a link to NULL (one such line in the Europarl de-en set).
* Pharaoh -- line k holds the links of sentence k, ``i-j`` sure and ``ipj`` possible,
  0-based (``i-j`` and ``ipj`` may be mixed; an empty line is a sentence without links).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from objkit.distributed.device import resolve_device
from objkit.contract.errors import UserError
from objkit.eval.align_methods import (
    METHODS,
    UNITS,
    argmax_links,
    encode_pairs,
    encode_sides,
    extract,
    itermax_links,
    match_links,
    pair_links,
    similarity,
    special_layout,
    word_pieces,
)
from objkit.eval.retrieval import _blocks_run, check_layer, model_max_tokens, read_lines

Method = Literal["argmax", "itermax", "match", "xlmalign"]
Unit = Literal["subword", "word"]
Link = tuple[int, int]

_PHARAOH = re.compile(r"^\d+[-p]\d+$")
_SIGNED = re.compile(r"^-?\d+$")


# ----------------------------------------------------------------------------- scoring
@dataclass
class Counts:
    """Corpus sums: predicted links, their hits on S and on P, and gold sure links."""

    predicted: int = 0
    hit_sure: int = 0
    hit_possible: int = 0
    sure: int = 0

    def add(self, predicted: set[Link], sure: set[Link], possible: set[Link]) -> None:
        self.predicted += len(predicted)
        self.hit_sure += len(predicted & sure)
        self.hit_possible += len(predicted & (possible | sure))
        self.sure += len(sure)

    def scores(self) -> dict[str, float]:
        """precision, recall, f1 and aer in percent (0 for an empty denominator)."""
        precision = self.hit_possible / self.predicted if self.predicted else 0.0
        recall = self.hit_sure / self.sure if self.sure else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        denom = self.predicted + self.sure
        aer = 1.0 - (self.hit_sure + self.hit_possible) / denom if denom else 0.0
        return {"precision": 100 * precision, "recall": 100 * recall, "f1": 100 * f1, "aer": 100 * aer,
                "links": self.predicted}  # fmt: skip


def score_alignments(
    predicted: Sequence[set[Link]], gold: Sequence[tuple[set[Link], set[Link]]]
) -> dict[str, float]:
    """Corpus-level precision, recall, F1 and AER (percent) of ``predicted`` against
    ``gold`` = one ``(sure, possible)`` pair of link sets per sentence (S ⊆ P is enforced)."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences but {len(gold)} gold ones")
    counts = Counts()
    for links, (sure, possible) in zip(predicted, gold, strict=True):
        counts.add(set(links), set(sure), set(possible))
    return counts.scores()


# ----------------------------------------------------------------------------- gold files
@dataclass
class GoldSentence:
    sure: set[Link] = field(default_factory=set)
    possible: set[Link] = field(default_factory=set)  # includes the sure links
    lines: dict[Link, int] = field(default_factory=dict)  # link -> gold file line (for errors)
    null_links: int = 0  # links to a negative index (NULL): kept in S/P, no alignment hits them
    out_of_range: list[int] = field(default_factory=list)  # gold file lines of links past the sentence's end


def _detect_format(path: Path, lines: list[str]) -> str:
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if all(_PHARAOH.match(f) for f in fields):
            return "pharaoh"
        if len(fields) in (3, 4) and all(_SIGNED.match(f) for f in fields[1:3]) and (
            len(fields) == 3 or fields[3] in ("S", "P")
        ):
            return "sid"
        raise UserError(
            f"{path}: line {number}: unknown gold alignment format {line.strip()[:60]!r} "
            "(expected 'SENT I J [S|P]' with 1-based indices, or Pharaoh 'i-j ipj ...' with 0-based)"
        )
    raise UserError(f"{path}: no alignment links (empty gold file)")


def read_gold(path: str | Path, num_sentences: int) -> tuple[list[GoldSentence], str]:
    """Read a gold file into one :class:`GoldSentence` per sentence (0-based links) and the
    detected format (``"sid"`` or ``"pharaoh"``). Malformed lines raise :class:`UserError`."""
    p = Path(path)
    lines = read_lines(p)
    fmt = _detect_format(p, lines)
    if fmt == "pharaoh":
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) != num_sentences:
            raise UserError(f"{p}: {len(lines)} lines of Pharaoh links but the text files have "
                            f"{num_sentences} sentences (one line per sentence expected)")  # fmt: skip
        gold = [GoldSentence() for _ in range(num_sentences)]
        for number, line in enumerate(lines, 1):
            for item in line.split():
                if not _PHARAOH.match(item):
                    raise UserError(f"{p}: line {number}: {item!r} is not a Pharaoh link (i-j or ipj)")
                sure = "-" in item
                i, j = (int(x) for x in item.split("-" if sure else "p"))
                _add(gold[number - 1], (i, j), sure, number)
        return gold, fmt
    ids: dict[str, int] = {}
    gold = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        ok = len(fields) in (3, 4) and all(_SIGNED.match(f) for f in fields[1:3]) and (
            len(fields) == 3 or fields[3] in ("S", "P")
        )
        if not ok:
            raise UserError(f"{p}: line {number}: expected 'SENT I J [S|P]', got {line.strip()[:60]!r}")
        i, j = int(fields[1]), int(fields[2])
        if fields[0] not in ids:
            ids[fields[0]] = len(ids)
            gold.append(GoldSentence())
        if i < 0 or j < 0:  # a link to NULL ('178 22 -99 S' in the Europarl de-en set): kept, unhittable
            gold[ids[fields[0]]].null_links += 1
        elif i < 1 or j < 1:
            raise UserError(f"{p}: line {number}: word indices are 1-based in this format (got {i} {j})")
        _add(gold[ids[fields[0]]], (i - 1, j - 1), len(fields) == 3 or fields[3] == "S", number)
    if len(gold) != num_sentences:
        raise UserError(f"{p}: {len(gold)} distinct sentence ids but the text files have {num_sentences} "
                        "sentences (the k-th distinct id is line k: every sentence needs a link)")  # fmt: skip
    return gold, fmt


def _add(sentence: GoldSentence, link: Link, sure: bool, line: int) -> None:
    if sure:
        sentence.sure.add(link)
    sentence.possible.add(link)
    sentence.lines.setdefault(link, line)


def check_gold(gold: Sequence[GoldSentence], src: Sequence[list[str]], tgt: Sequence[list[str]]) -> int:
    """Mark the gold links that point past the end of their sentence (their gold file lines go
    to :attr:`GoldSentence.out_of_range`) and return how many. They stay in S (or P), as
    XLM-Align's and SimAlign's scorers keep them: no alignment can hit them, and the AER
    compares with theirs."""
    total = 0
    for sentence, s, t in zip(gold, src, tgt, strict=True):
        sentence.out_of_range = sorted(line for (i, j), line in sentence.lines.items() if i >= len(s) or j >= len(t))
        total += len(sentence.out_of_range)
    return total


def gold_notes(path: str | Path, gold: Sequence[GoldSentence]) -> list[str]:
    """The lines ``objkit eval align`` prints (stderr) about gold links no alignment can hit."""
    notes = []
    nulls = sum(sentence.null_links for sentence in gold)
    if nulls:
        notes.append(f"note: {path}: {nulls} gold link(s) to a negative index (NULL), kept: no alignment can hit them")
    lines = sorted(line for sentence in gold for line in sentence.out_of_range)
    if lines:
        shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
        notes.append(f"warning: {path}: {len(lines)} gold link(s) past the end of their sentence (line {shown}), "
                     "kept as the reference scorers keep them: no alignment can hit them")  # fmt: skip
    return notes


def align_corpus(
    model: nn.Module,
    tokenizer: Any,
    src: Sequence[list[str]],
    tgt: Sequence[list[str]],
    gold: Sequence[GoldSentence],
    *,
    layers: Sequence[int],
    method: str = "argmax",
    unit: str = "subword",
    batch_size: int = 32,
    max_length: int = 512,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Align every pair at every layer in ``layers`` with ``method`` on ``unit`` (see the
    module docstring) and score against ``gold``.

    Returns ``{"layers": {layer: scores}, "best_layer", "n", "truncated", "max_tokens",
    "out_of_range_links", "null_links"}`` where scores are :meth:`Counts.scores` (percent) and
    ``best_layer`` has the lowest AER (ties: lowest layer).
    """
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if unit not in UNITS:
        raise UserError(f"--unit {unit}: expected one of {', '.join(UNITS)}")
    if method == "xlmalign" and unit != "subword":
        raise UserError("--method xlmalign aligns subwords (XLM-Align's aligner); --unit word is SimAlign's "
                        "word averaging: use it with argmax, itermax or match")  # fmt: skip
    if method == "match":
        match_links(np.zeros((1, 1)))  # fail before encoding when scipy is missing
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n_layers is not None:
        for layer in layers:
            check_layer(layer, n_layers)
    layout = special_layout(tokenizer)
    max_length = min(max_length, model_max_tokens(model) or max_length)
    specials = len(layout[0]) + len(layout[1]) * (2 if method == "xlmalign" else 1)
    budget = max(1, max_length - specials)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    spm = method == "xlmalign"  # XLM-Align cuts words with the SentencePiece model itself
    src_pieces, tgt_pieces = word_pieces(tokenizer, src, sentencepiece=spm), word_pieces(tokenizer, tgt, sentencepiece=spm)
    counts = {layer: Counts() for layer in layers}
    order = sorted(range(len(src)), key=lambda k: -sum(map(len, src_pieces[k])) - sum(map(len, tgt_pieces[k])))
    truncated = 0
    layer_list = list(layers)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(order), desc="align", unit="pair", file=sys.stderr, disable=not progress)
    was_training = model.training
    model.eval()
    blocks_ctx, _ = _blocks_run(model, max(layers)) if max(layers) >= 1 else _blocks_run(model, 1)
    try:
        with torch.inference_mode(), blocks_ctx:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                s_batch, t_batch = [src_pieces[k] for k in idx], [tgt_pieces[k] for k in idx]
                if method == "xlmalign":
                    (s_vecs, s_own, s_cut), (t_vecs, t_own, t_cut) = encode_pairs(
                        model, s_batch, t_batch, layer_list, layout, budget, pad_id, dev)  # fmt: skip
                else:
                    s_vecs, s_own, s_cut = encode_sides(model, s_batch, layer_list, layout, budget, pad_id, dev)
                    t_vecs, t_own, t_cut = encode_sides(model, t_batch, layer_list, layout, budget, pad_id, dev)
                truncated += s_cut + t_cut
                for li, layer in enumerate(layer_list):
                    for r, k in enumerate(idx):
                        links = pair_links(method, unit, s_vecs[li][r], t_vecs[li][r], s_own[r], t_own[r])
                        counts[layer].add(links, gold[k].sure, gold[k].possible)
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    scores = {layer: c.scores() for layer, c in counts.items()}
    best = min(layers, key=lambda layer: (scores[layer]["aer"], layer))
    return {"layers": scores, "best_layer": best, "n": len(src), "truncated": truncated, "max_tokens": max_length,
            "out_of_range_links": sum(len(g.out_of_range) for g in gold),
            "null_links": sum(g.null_links for g in gold)}  # fmt: skip


def read_corpus(src: str | Path, tgt: str | Path, gold: str | Path) -> tuple[list[list[str]], list[list[str]], list[GoldSentence], str]:
    """Read and check ``--src``, ``--tgt`` (whitespace-tokenised, line-aligned) and ``--gold``."""
    a, b = read_lines(src), read_lines(tgt)
    if not a:
        raise UserError(f"{src}: empty file (expected one whitespace-tokenised sentence a line)")
    if not b:
        raise UserError(f"{tgt}: empty file (expected one whitespace-tokenised sentence a line)")
    if len(a) != len(b):
        raise UserError(f"line counts differ: {src} has {len(a)} lines, {tgt} has {len(b)}")
    src_words, tgt_words = [line.split() for line in a], [line.split() for line in b]
    for path, sentences in ((src, src_words), (tgt, tgt_words)):
        empty = next((k for k, s in enumerate(sentences) if not s), None)
        if empty is not None:
            raise UserError(f"{path}: line {empty + 1} is empty (every sentence needs a word)")
    sentences, fmt = read_gold(gold, len(a))
    check_gold(sentences, src_words, tgt_words)
    return src_words, tgt_words, sentences, fmt


def parse_layers(spec: str | None, num_layers: int, default: int) -> list[int]:
    """``None`` -> ``[default]``; ``"all"`` -> ``0..num_layers``; ``"N"`` -> ``[N]`` (checked)."""
    if spec is None:
        return [default]
    if spec.strip().lower() == "all":
        return list(range(num_layers + 1))
    try:
        layer = int(spec)
    except ValueError:
        raise UserError(f"--layer {spec}: expected a layer number or 'all'") from None
    check_layer(layer, num_layers)
    return [layer]


def format_table(res: dict[str, Any]) -> str:
    """One row per layer: AER, precision, recall, F1 (percent), links; the best layer marked."""
    lines = [f"{'layer':>5}  {'AER':>6}  {'prec':>6}  {'recall':>6}  {'F1':>6}  {'links':>7}"]
    for layer, s in res["layers"].items():
        mark = "  *" if len(res["layers"]) > 1 and layer == res["best_layer"] else ""
        lines.append(f"{layer:>5}  {s['aer']:6.2f}  {s['precision']:6.2f}  {s['recall']:6.2f}  "
                     f"{s['f1']:6.2f}  {s['links']:>7}{mark}")  # fmt: skip
    if len(res["layers"]) > 1:
        lines.append(f"best layer (lowest AER): {res['best_layer']}")
    return "\n".join(lines)


__all__ = [
    "METHODS",
    "UNITS",
    "Counts",
    "GoldSentence",
    "align_corpus",
    "argmax_links",
    "check_gold",
    "extract",
    "format_table",
    "gold_notes",
    "itermax_links",
    "match_links",
    "parse_layers",
    "read_corpus",
    "read_gold",
    "score_alignments",
    "pair_links",
    "similarity",
    "special_layout",
    "word_pieces",
]
