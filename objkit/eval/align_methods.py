"""The aligners of ``objkit eval align``: how a sentence pair becomes word links.

Two families, each written from its published code (see :mod:`objkit.eval.align` for the
protocol in words):

* SimAlign (Jalili Sabet et al., 2020; ``simalign`` 0.4, ``SentenceAligner``): each side
  encoded on its own, ``(cos + 1) / 2`` similarity, links by ``argmax``, ``itermax`` or
  ``match``, on subwords (``unit="subword"``, its ``token_type="bpe"``) or on word means
  (``unit="word"``, its ``token_type="word"``).
* XLM-Align's optimal-transport aligner (Chi et al., 2021; ``word_aligner/xlmalign-ot-aligner.py``
  in the XLM-Align repository): ``xlmalign``, the pair encoded jointly, raw dot products,
  two Sinkhorn normalisations, links on subwords.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from objkit.contract.errors import UserError
from objkit.eval.retrieval import check_layer

METHODS: tuple[str, ...] = ("argmax", "itermax", "match", "xlmalign")
UNITS: tuple[str, ...] = ("subword", "word")
SINKHORN_ROUNDS = 2  # the reference aligner's --sinkhorn_iter default
Link = tuple[int, int]


# ----------------------------------------------------------------------------- SimAlign's extraction
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


# ----------------------------------------------------------------------------- XLM-Align's extraction
def sinkhorn(scores: torch.Tensor, rounds: int = SINKHORN_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """XLM-Align's ``_sinkhorn_iter``: ``(pi, xi)`` after ``rounds`` rounds of column- then
    row-normalisation of the raw scores (no exponential). The reference's clamp of entries
    ``<= 0`` to 1e-6 (``S[S<=0].fill_(1e-6)``) fills a copy and leaves the scores unchanged;
    so does this. ``rounds <= 0`` returns the scores twice."""
    pi = xi = scores
    for _ in range(rounds):
        xi = pi / pi.sum(dim=0, keepdim=True)
        pi = xi / xi.sum(dim=1, keepdim=True)
    return pi, xi


def xlmalign_links(scores: torch.Tensor, rounds: int = SINKHORN_ROUNDS) -> np.ndarray:
    """Boolean ``[m, n]``: XLM-Align's ``extract_wa_from_pi_xi``: (i, j) is linked when j is
    the argmax of row i of ``pi`` and i the argmax of column j of ``xi``."""
    m, n = scores.shape
    out = np.zeros((m, n), dtype=bool)
    if m == 0 or n == 0:
        return out
    pi, xi = sinkhorn(scores, rounds)
    rows = pi.argmax(dim=1).numpy()
    cols = xi.argmax(dim=0).numpy()
    mutual = cols[rows] == np.arange(m)
    out[np.arange(m)[mutual], rows[mutual]] = True
    return out


def extract(sim: np.ndarray, method: str) -> set[Link]:
    """Links ``{(i, j)}`` (0-based) extracted from a similarity matrix with one of SimAlign's
    methods (``xlmalign`` needs raw scores: :func:`xlmalign_links`)."""
    if method == "argmax":
        mat = argmax_links(sim)
    elif method == "itermax":
        mat = itermax_links(sim)
    elif method == "match":
        mat = match_links(sim)
    elif method == "xlmalign":
        mat = xlmalign_links(torch.as_tensor(sim))
    else:
        raise UserError(f"--method {method}: expected one of {', '.join(METHODS)}")
    return {(int(i), int(j)) for i, j in zip(*np.nonzero(mat), strict=True)}


def similarity(src_vecs: torch.Tensor, tgt_vecs: torch.Tensor) -> np.ndarray:
    """SimAlign's ``(cos + 1) / 2`` between L2-normalised vectors, as float64 numpy."""
    return ((src_vecs @ tgt_vecs.T + 1.0) / 2.0).double().numpy()


def word_means(hidden: torch.Tensor, owners: Sequence[int], n_words: int) -> torch.Tensor:
    """``[n_words, d]``: the mean of each word's subword vectors (zeros for a word without
    one, e.g. cut by the token budget)."""
    own = torch.tensor(list(owners), dtype=torch.long)
    vec = torch.zeros(n_words, hidden.shape[-1])
    vec.index_add_(0, own, hidden)
    counts = torch.bincount(own, minlength=n_words).clamp_min(1).unsqueeze(1)
    return vec / counts


def pair_links(
    method: str, unit: str, src: torch.Tensor, tgt: torch.Tensor, src_owner: Sequence[int], tgt_owner: Sequence[int]
) -> set[Link]:  # fmt: skip
    """Word links of one pair from its subword hidden states (``[m, d]``, ``[n, d]``, float32)
    and each subword's word index. ``xlmalign``: raw dot products, Sinkhorn, mutual argmax
    of pi/xi on subwords. Otherwise SimAlign: ``(cos + 1) / 2`` between subwords (``unit =
    "subword"``) or word means (``"word"``), then ``method``. Subword links become word links:
    two words are linked when any of their subwords are."""
    if len(src_owner) == 0 or len(tgt_owner) == 0:
        return set()
    if unit == "word" and method != "xlmalign":
        n_s, n_t = max(src_owner) + 1, max(tgt_owner) + 1
        s = nn.functional.normalize(word_means(src, src_owner, n_s), dim=-1)
        t = nn.functional.normalize(word_means(tgt, tgt_owner, n_t), dim=-1)
        return extract(similarity(s, t), method)
    if method == "xlmalign":
        mat = xlmalign_links(src @ tgt.T)
        links = {(int(i), int(j)) for i, j in zip(*np.nonzero(mat), strict=True)}
    else:
        s, t = nn.functional.normalize(src, dim=-1), nn.functional.normalize(tgt, dim=-1)
        links = extract(similarity(s, t), method)
    return {(src_owner[i], tgt_owner[j]) for i, j in links}


# ----------------------------------------------------------------------------- encoding
def special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a single sequence starts and ends with (``<s>`` / ``</s>`` for XLM-R),
    found by tokenising a probe word with and without special tokens."""
    for probe in ("a", "the", "x", "0"):
        full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
        core = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
        for at in range(len(full) - len(core) + 1):
            if core and full[at : at + len(core)] == core:
                return full[:at], full[at + len(core) :]
    raise UserError("cannot tell where the tokenizer puts its special tokens (probe words vanished)")


def word_pieces(tokenizer: Any, sentences: Sequence[list[str]], *, sentencepiece: bool = False) -> list[list[list[int]]]:
    """Per sentence, per word, its subword ids (each word tokenised on its own, no specials;
    a word that yields no piece gets ``<unk>``). ``sentencepiece``: cut words with the
    tokenizer's own SentencePiece model (``vocab_file``, e.g. ``sentencepiece.bpe.model``) and
    map the pieces to ids, as XLM-Align's aligner does (``spm.encode(word)``), when the file
    is there: the tokenizers library's unigram can break a tie differently (``20,000``)."""
    vocab = sorted({w for s in sentences for w in s})
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    spm_file = getattr(tokenizer, "vocab_file", None)
    if sentencepiece and spm_file and str(spm_file).endswith(".model") and Path(spm_file).is_file():
        import sentencepiece as spm

        proc = spm.SentencePieceProcessor(model_file=str(spm_file))
        pieces = [proc.encode(w, out_type=str) for w in vocab]
        ids: list[list[int]] = [[i if i is not None else unk for i in tokenizer.convert_tokens_to_ids(p)] for p in pieces]
    else:
        ids = tokenizer(vocab, add_special_tokens=False)["input_ids"] if vocab else []
    table = {w: (list(p) or [unk]) for w, p in zip(vocab, ids, strict=True)}
    return [[table[w] for w in s] for s in sentences]


def _flatten(words: list[list[int]], budget: int) -> tuple[list[int], list[int], bool]:
    """Subword ids and their word indices, whole words only, at most ``budget`` ids."""
    flat: list[int] = []
    owner: list[int] = []
    for w, p in enumerate(words):
        if len(flat) + len(p) > budget:
            return flat, owner, True
        flat += p
        owner += [w] * len(p)
    return flat, owner, False


def _run(model: nn.Module, rows: list[list[int]], layers: list[int], pad_id: int, dev: torch.device) -> list[torch.Tensor]:
    """Hidden states ``[B, T, d]`` (float32, CPU) of padded ``rows`` at each of ``layers``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
    states = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True).hidden_states
    for layer in layers:
        if not 0 <= layer < len(states):
            check_layer(layer, len(states) - 1)
    return [states[layer].float().cpu() for layer in layers]


Encoded = tuple[list[list[torch.Tensor]], list[list[int]], int]


def encode_sides(
    model: nn.Module, pieces: list[list[list[int]]], layers: list[int], layout: tuple[list[int], list[int]],
    budget: int, pad_id: int, dev: torch.device,
) -> Encoded:  # fmt: skip
    """SimAlign's encoding: each sentence alone between its specials. Returns, per layer per
    sentence, its subword hidden states ``[n, d]`` (specials dropped), each subword's word
    index, and how many sentences lost words to the token budget."""
    prefix, suffix = layout
    flat = [_flatten(words, budget) for words in pieces]
    states = _run(model, [prefix + ids + suffix for ids, _, _ in flat], layers, pad_id, dev)
    out = [[h[r, len(prefix) : len(prefix) + len(ids)] for r, (ids, _, _) in enumerate(flat)] for h in states]
    return out, [owner for _, owner, _ in flat], sum(cut for _, _, cut in flat)


def encode_pairs(
    model: nn.Module, src: list[list[list[int]]], tgt: list[list[list[int]]], layers: list[int],
    layout: tuple[list[int], list[int]], budget: int, pad_id: int, dev: torch.device,
) -> tuple[Encoded, Encoded]:  # fmt: skip
    """XLM-Align's encoding: ``prefix src suffix tgt suffix`` (``<s> src </s> tgt </s>`` for
    XLM-R, as its aligner writes it; ``[CLS] src [SEP] tgt [SEP]`` for BERT), one sequence per
    pair. ``budget`` counts both sides' subwords; when they do not fit, whole words are cut
    from the end of the side with more subwords first. Returns one :data:`Encoded` per side."""
    prefix, suffix = layout
    rows, spans, s_own, t_own, cuts = [], [], [], [], 0
    for s_words, t_words in zip(src, tgt, strict=True):
        s_words, t_words = list(s_words), list(t_words)
        cut = False
        while sum(map(len, s_words)) + sum(map(len, t_words)) > budget:
            side = s_words if sum(map(len, s_words)) >= sum(map(len, t_words)) else t_words
            side.pop()
            cut = True
        cuts += cut
        s_ids, s_owner, _ = _flatten(s_words, budget)
        t_ids, t_owner, _ = _flatten(t_words, budget)
        rows.append(prefix + s_ids + suffix + t_ids + suffix)
        start_t = len(prefix) + len(s_ids) + len(suffix)
        spans.append((len(prefix), len(s_ids), start_t, len(t_ids)))
        s_own.append(s_owner)
        t_own.append(t_owner)
    states = _run(model, rows, layers, pad_id, dev)
    s_out = [[h[r, a : a + n] for r, (a, n, _, _) in enumerate(spans)] for h in states]
    t_out = [[h[r, b : b + n] for r, (_, _, b, n) in enumerate(spans)] for h in states]
    return (s_out, s_own, cuts), (t_out, t_own, 0)


__all__ = [
    "METHODS",
    "UNITS",
    "argmax_links",
    "encode_pairs",
    "encode_sides",
    "extract",
    "itermax_links",
    "match_links",
    "pair_links",
    "similarity",
    "sinkhorn",
    "special_layout",
    "word_means",
    "word_pieces",
    "xlmalign_links",
]
