"""Word alignment from an encoder's embeddings, scored by alignment error rate (AER).

The protocol is SimAlign's (Jalili Sabet et al., Findings of EMNLP 2020), the one XLM-Align
(Chi et al., ACL 2021) and later work report word alignment with:

* Sentences are whitespace-tokenised words. Each word is tokenised on its own (for
  SentencePiece models that gives every word its leading ``▁``, as SimAlign does), the
  pieces are concatenated between the model's special tokens, and each side of a pair is
  encoded on its own (no cross-attention between the two sentences).
* A word's vector is the mean of its subword vectors at one hidden layer (0 = embeddings,
  i = output of block i; default 8 for a 12-layer model, as in SimAlign and XLM-Align).
* Similarity is SimAlign's rescaled cosine ``(cos + 1) / 2`` between every source and target
  word, and links are extracted from that matrix with

  - ``argmax``: the intersection of row-wise and column-wise argmaxes (SimAlign's *ArgMax*);
  - ``itermax``: SimAlign's *IterMax*: argmax, then up to ``max_count - 1`` more rounds in
    which only words left unaligned compete: similarities are scaled by 1 when both words are
    free and by α = 0.9 when one of them is, and the intersection of argmaxes among pairs with
    at least one free word is added (sentences of at most two words keep the argmax links);
  - ``match``: a maximum-weight bipartite matching (SimAlign's *Match*; here the Hungarian
    algorithm, ``scipy.optimize.linear_sum_assignment``, which yields the same
    maximum-cardinality maximum-weight matching as SimAlign's networkx call).

Scores are summed over the corpus, with the sure links S a subset of the possible links P:
precision ``|A∩P| / |A|``, recall ``|A∩S| / |S|``, F1, and AER
``1 − (|A∩S| + |A∩P|) / (|A| + |S|)`` (Och & Ney 2003), all in percent.

SimAlign's default extracts on subwords and maps links back to words; objkit extracts on
word vectors (SimAlign's ``token_type="word"``), as the issue that introduced this asks.

Gold formats (detected from the file):

* ``SENT I J [S|P]`` -- one link a line, I and J 1-based word indices into ``--src`` and
  ``--tgt``; ``S`` (default) is sure, ``P`` possible. SENT is an id, not a line number: the
  k-th distinct id in file order is line k (the WPT / Europarl test sets). A negative index
  marks a link to NULL (one such line in the Europarl de-en set): it is not a link and is
  skipped (counted as ``null_links``).
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

from objkit.errors import UserError
from objkit.device import resolve_device
from objkit.eval.retrieval import _blocks_run, check_layer, model_max_tokens, read_lines

Method = Literal["argmax", "itermax", "match"]
METHODS: tuple[str, ...] = ("argmax", "itermax", "match")
Link = tuple[int, int]

_PHARAOH = re.compile(r"^\d+[-p]\d+$")
_SIGNED = re.compile(r"^-?\d+$")


# ----------------------------------------------------------------------------- extraction
def argmax_links(sim: np.ndarray) -> np.ndarray:
    """Boolean ``[m, n]``: (i, j) is linked when j is row i's argmax and i is column j's
    argmax (ties go to the lowest index)."""
    sim = np.asarray(sim)
    m, n = sim.shape
    out = np.zeros((m, n), dtype=bool)
    if m == 0 or n == 0:
        return out
    rows = sim.argmax(axis=1)
    cols = sim.argmax(axis=0)
    mutual = cols[rows] == np.arange(m)
    out[np.arange(m)[mutual], rows[mutual]] = True
    return out


def itermax_links(sim: np.ndarray, max_count: int = 2, alpha: float = 0.9) -> np.ndarray:
    """SimAlign's IterMax on a similarity matrix with entries in ``[0, 1]``.

    Round 1 is :func:`argmax_links`. Each further round (up to ``max_count`` rounds in all)
    looks only at pairs where the source or the target word is still unaligned: their
    similarity is kept when both are free and multiplied by ``alpha`` when one is, all other
    pairs count as 0, and the mutual argmaxes among the eligible pairs are added. It stops
    early when a round adds nothing or one side has no free word left. Matrices with a side
    of at most two words get the argmax links only.
    """
    sim = np.asarray(sim, dtype=np.float64)
    links = argmax_links(sim)
    m, n = sim.shape
    if min(m, n) <= 2:
        return links
    for _ in range(max_count - 1):
        row_free = ~links.any(axis=1)
        col_free = ~links.any(axis=0)
        if not row_free.any() or not col_free.any():
            break
        both = row_free[:, None] & col_free[None, :]
        either = row_free[:, None] | col_free[None, :]
        scale = np.where(both, 1.0, np.where(either, alpha, 0.0))
        scaled = sim * scale
        fwd = np.zeros((m, n), dtype=bool)
        fwd[np.arange(m), scaled.argmax(axis=1)] = True
        bwd = np.zeros((m, n), dtype=bool)
        bwd[scaled.argmax(axis=0), np.arange(n)] = True
        new = fwd & bwd & either
        if not new.any():
            break
        links |= new
    return links


def match_links(sim: np.ndarray) -> np.ndarray:
    """Maximum-weight matching of ``min(m, n)`` links (Hungarian algorithm, scipy)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise UserError(
            "--method match needs scipy (pip install scipy, or pip install 'objkit[align]'); "
            "argmax and itermax do not"
        ) from None
    sim = np.asarray(sim, dtype=np.float64)
    out = np.zeros(sim.shape, dtype=bool)
    if sim.size:
        rows, cols = linear_sum_assignment(sim, maximize=True)
        out[rows, cols] = True
    return out


def extract(sim: np.ndarray, method: str) -> set[Link]:
    """Links ``{(i, j)}`` (0-based) extracted from a similarity matrix with ``method``."""
    if method == "argmax":
        mat = argmax_links(sim)
    elif method == "itermax":
        mat = itermax_links(sim)
    elif method == "match":
        mat = match_links(sim)
    else:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(mat), strict=True)}


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
    null_links: int = 0  # links to a negative index (NULL) in the gold file, skipped


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
        if i < 0 or j < 0:  # a link to NULL (e.g. '178 22 -99 S' in the Europarl de-en set): no link
            gold[ids[fields[0]]].null_links += 1
            continue
        if i < 1 or j < 1:
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


def check_gold(gold: Sequence[GoldSentence], src: Sequence[list[str]], tgt: Sequence[list[str]], path: str | Path,
               base: int) -> None:  # fmt: skip
    """UserError for the first gold link that points past its sentence's words."""
    for k, (sentence, s, t) in enumerate(zip(gold, src, tgt, strict=True)):
        for (i, j), line in sorted(sentence.lines.items(), key=lambda kv: kv[1]):
            if i >= len(s) or j >= len(t):
                raise UserError(
                    f"{path}: line {line}: link {i + base} {j + base} is outside sentence {k + 1} "
                    f"({len(s)} source words, {len(t)} target words; indices are {base}-based)"
                )


# ----------------------------------------------------------------------------- encoding
def _special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a single sequence starts and ends with (``<s>`` / ``</s>`` for XLM-R),
    found by tokenising a probe word with and without special tokens."""
    for probe in ("a", "the", "x", "0"):
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        core = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        for at in range(len(full) - len(core) + 1):
            if core and full[at : at + len(core)] == core:
                return full[:at], full[at + len(core) :]
    raise UserError("cannot tell where the tokenizer puts its special tokens (probe words vanished)")


def word_pieces(tokenizer: Any, sentences: Sequence[list[str]]) -> list[list[list[int]]]:
    """Per sentence, per word, its subword ids (each word tokenised on its own, no specials;
    a word that yields no piece gets ``<unk>``)."""
    vocab = sorted({w for s in sentences for w in s})
    ids = tokenizer(vocab, add_special_tokens=False)["input_ids"] if vocab else []
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    table = {w: (list(p) or [unk]) for w, p in zip(vocab, ids, strict=True)}
    return [[table[w] for w in s] for s in sentences]


def _encode_side(
    model: nn.Module, pieces: list[list[list[int]]], layers: list[int], layout: tuple[list[int], list[int]],
    budget: int, pad_id: int, dev: torch.device,
) -> tuple[list[list[torch.Tensor]], int]:  # fmt: skip
    """Word vectors (L2-normalised, float32, CPU) per requested layer per sentence, and how
    many sentences were truncated. Words past the token budget get no vector."""
    prefix, suffix = layout
    rows, word_of, truncated = [], [], 0
    for words in pieces:
        flat: list[int] = []
        owner: list[int] = []
        for w, p in enumerate(words):
            if len(flat) + len(p) > budget:
                truncated += 1
                break
            flat += p
            owner += [w] * len(p)
        rows.append(prefix + flat + suffix)
        word_of.append([-1] * len(prefix) + owner + [-1] * len(suffix))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    states = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True).hidden_states
    out: list[list[torch.Tensor]] = []
    for layer in layers:
        if not 0 <= layer < len(states):
            check_layer(layer, len(states) - 1)
        hidden = states[layer].float().cpu()
        per_sentence = []
        for r, owners in enumerate(word_of):
            n_words = max(owners) + 1 if owners else 0
            own = torch.tensor(owners)
            keep = own >= 0
            vec = torch.zeros(n_words, hidden.shape[-1])
            vec.index_add_(0, own[keep], hidden[r, : len(owners)][keep])
            counts = torch.bincount(own[keep], minlength=n_words).clamp_min(1).unsqueeze(1)
            per_sentence.append(torch.nn.functional.normalize(vec / counts, dim=-1))
        out.append(per_sentence)
    return out, truncated


def similarity(src_vecs: torch.Tensor, tgt_vecs: torch.Tensor) -> np.ndarray:
    """SimAlign's ``(cos + 1) / 2`` between L2-normalised word vectors, as float64 numpy."""
    return ((src_vecs @ tgt_vecs.T + 1.0) / 2.0).double().numpy()


def align_corpus(
    model: nn.Module,
    tokenizer: Any,
    src: Sequence[list[str]],
    tgt: Sequence[list[str]],
    gold: Sequence[GoldSentence],
    *,
    layers: Sequence[int],
    method: str = "argmax",
    batch_size: int = 32,
    max_length: int = 512,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Align every pair at every layer in ``layers`` and score against ``gold``.

    Returns ``{"layers": {layer: scores}, "best_layer", "n", "truncated"}`` where scores are
    :meth:`Counts.scores` (percent) and ``best_layer`` has the lowest AER (ties: lowest layer).
    """
    if method not in METHODS:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    if method == "match":
        match_links(np.zeros((1, 1)))  # fail before encoding when scipy is missing
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if n_layers is not None:
        for layer in layers:
            check_layer(layer, n_layers)
    layout = _special_layout(tokenizer)
    max_length = min(max_length, model_max_tokens(model) or max_length)
    budget = max(1, max_length - len(layout[0]) - len(layout[1]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    src_pieces, tgt_pieces = word_pieces(tokenizer, src), word_pieces(tokenizer, tgt)
    counts = {layer: Counts() for layer in layers}
    order = sorted(range(len(src)), key=lambda k: -sum(map(len, src_pieces[k])) - sum(map(len, tgt_pieces[k])))
    truncated = 0

    from tqdm.auto import tqdm

    bar = tqdm(total=len(order), desc="align", unit="pair", file=sys.stderr, disable=not progress)
    was_training = model.training
    model.eval()
    blocks_ctx, _ = _blocks_run(model, max(layers)) if max(layers) >= 1 else _blocks_run(model, 1)
    try:
        with torch.inference_mode(), blocks_ctx:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                s_vecs, s_cut = _encode_side(model, [src_pieces[k] for k in idx], list(layers), layout, budget, pad_id, dev)
                t_vecs, t_cut = _encode_side(model, [tgt_pieces[k] for k in idx], list(layers), layout, budget, pad_id, dev)
                truncated += s_cut + t_cut
                for li, layer in enumerate(layers):
                    for r, k in enumerate(idx):
                        links = extract(similarity(s_vecs[li][r], t_vecs[li][r]), method)
                        counts[layer].add(links, gold[k].sure, gold[k].possible)
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    scores = {layer: c.scores() for layer, c in counts.items()}
    best = min(layers, key=lambda layer: (scores[layer]["aer"], layer))
    return {"layers": scores, "best_layer": best, "n": len(src), "truncated": truncated, "max_tokens": max_length}


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
    check_gold(sentences, src_words, tgt_words, gold, base=1 if fmt == "sid" else 0)
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
    "Counts",
    "GoldSentence",
    "align_corpus",
    "argmax_links",
    "extract",
    "format_table",
    "itermax_links",
    "match_links",
    "parse_layers",
    "read_corpus",
    "read_gold",
    "score_alignments",
    "similarity",
    "word_pieces",
]
