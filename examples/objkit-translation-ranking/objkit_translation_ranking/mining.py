"""``bitext_mining``: parallel sentence mining F1, an evaluator plugin (plugin kind ``evaluator``).

The protocol is BUCC's (Zweigenbaum et al., 2017/2018: find the translation pairs hidden among
sentences that have none) scored the way LASER and XTREME score it (Artetxe & Schwenk, 2019,
"Margin-based Parallel Corpus Mining with Multilingual Sentence Embeddings"):

* every sentence is encoded (an intermediate layer, mean-pooled, L2-normalised: the retrieval
  evaluators' :func:`objkit.eval.encode_sentences`);
* pairs are scored with the **ratio margin**
  ``score(x, y) = cos(x, y) / (mean_k cos(x, NN_k(x)) / 2 + mean_k cos(y, NN_k(y)) / 2)``
  over the k nearest neighbours on the other side (k = 4);
* candidates are each source sentence's best target and each target sentence's best source
  (LASER's ``max`` retrieval), taken by decreasing score, a sentence used at most once;
* a candidate is predicted parallel when its score reaches a threshold; precision, recall and F1
  (percent) against the gold pairs. With no fixed ``threshold`` the best one on the data is used
  (XTREME tunes it on BUCC's training split; here it is an oracle, so report it as such).

Data: ``src`` and ``tgt`` hold the gold pairs, line-aligned; ``src_distractors`` /
``tgt_distractors`` (optional) hold sentences with no translation on the other side, mixed in as in
BUCC. The similarity matrix is dense (sources x targets floats): a few thousand sentences a side.

During training (``[eval.NAME]`` with ``plugin = "bitext_mining"``) every rank scores the encoder
with its full weights (FSDP gathers them: ``weights = "every_rank"``); logged as ``eval/NAME/f1``,
``eval/NAME/precision``, ``eval/NAME/recall`` and ``eval/NAME/threshold``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from objkit import EvalContext, Evaluator, PluginConfig, UserError, hookimpl


class BitextMiningConfig(PluginConfig):
    src: str = Field(description="source sentences of the gold pairs, one a line")
    tgt: str = Field(description="their translations, line-aligned with src")
    src_distractors: str | None = Field(None, description="source sentences without a translation, one a line")
    tgt_distractors: str | None = Field(None, description="target sentences without a translation, one a line")
    k: int = Field(4, gt=0, description="nearest neighbours in the margin's denominator (LASER, XTREME: 4)")
    threshold: float | None = Field(None, description="margin score a pair needs; default: the best on the data")
    max_lines: int | None = Field(None, gt=0, description="use the first N lines of each file")
    layer: int | None = Field(None, ge=0, description="hidden layer to pool (0 = embeddings); default 8 for 12 "
                              "layers, else round(2/3 depth)")
    pooling: Literal["mean", "cls"] = Field("mean", description="mean of the tokens, or the first token")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")
    max_length: int | None = Field(None, ge=2, description="tokens per sentence; default: the run's, else 128")


def margin_scores(src: torch.Tensor, tgt: torch.Tensor, k: int) -> torch.Tensor:
    """Ratio-margin scores ``[n_src, n_tgt]`` of L2-normalised vectors (Artetxe & Schwenk, 2019)."""
    sims = src @ tgt.T
    k_src, k_tgt = min(k, tgt.shape[0]), min(k, src.shape[0])
    knn_src = sims.topk(k_src, dim=1).values.mean(dim=1)  # each source's k nearest targets
    knn_tgt = sims.topk(k_tgt, dim=0).values.mean(dim=0)  # each target's k nearest sources
    return sims / ((knn_src[:, None] + knn_tgt[None, :]) / 2)


def mine(scores: torch.Tensor) -> list[tuple[float, int, int]]:
    """LASER's ``max`` retrieval: each source's best target and each target's best source, by
    decreasing score, a sentence used at most once: ``[(score, src, tgt)]`` in that order."""
    fwd_score, fwd = scores.max(dim=1)
    bwd_score, bwd = scores.max(dim=0)
    candidates = [(float(s), i, int(j)) for i, (s, j) in enumerate(zip(fwd_score, fwd, strict=True))]
    candidates += [(float(s), int(i), j) for j, (s, i) in enumerate(zip(bwd_score, bwd, strict=True))]
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    seen_src, seen_tgt, out = set(), set(), []
    for score, i, j in candidates:
        if i not in seen_src and j not in seen_tgt:
            seen_src.add(i)
            seen_tgt.add(j)
            out.append((score, i, j))
    return out


def prf(predicted: list[tuple[int, int]], gold: set[tuple[int, int]]) -> tuple[float, float, float]:
    """Precision, recall and F1 in percent."""
    hits = sum(1 for pair in predicted if pair in gold)
    precision = 100.0 * hits / len(predicted) if predicted else 0.0
    recall = 100.0 * hits / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def mining_f1(candidates: list[tuple[float, int, int]], gold: set[tuple[int, int]],
              threshold: float | None = None) -> dict[str, float]:
    """Scores of the candidates at ``threshold`` (score >= it), or at the threshold of best F1 (each
    candidate's score tried; ties: the higher threshold)."""
    if threshold is not None:
        kept = [(i, j) for s, i, j in candidates if s >= threshold]
        p, r, f = prf(kept, gold)
        return {"f1": f, "precision": p, "recall": r, "threshold": threshold}
    best = {"f1": 0.0, "precision": 0.0, "recall": 0.0, "threshold": candidates[0][0] if candidates else 0.0}
    hits = 0
    for n, (score, i, j) in enumerate(candidates, start=1):  # by decreasing score: the first n kept
        hits += (i, j) in gold
        if n < len(candidates) and candidates[n][0] == score:
            continue  # a threshold keeps every candidate of its score
        p, r = 100.0 * hits / n, 100.0 * hits / len(gold) if gold else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        if f > best["f1"]:
            best = {"f1": f, "precision": p, "recall": r, "threshold": score}
    return best


def _read(path: str | None, max_lines: int | None) -> list[str]:
    if path is None:
        return []
    from objkit.eval import read_lines

    lines = read_lines(path)[:max_lines]
    blank = next((n for n, line in enumerate(lines, 1) if not line.strip()), None)
    if blank is not None:
        raise UserError(f"{path}: line {blank} is blank (expected one sentence a line)")
    return lines


class BitextMining(Evaluator):
    """Parallel sentence mining F1 among distractors (BUCC protocol, LASER's ratio margin)."""

    name: ClassVar[str] = "bitext_mining"
    plugin_api: ClassVar[str] = "1.6"  # the evaluator plugin kind (plugin API 1.6)
    Config = BitextMiningConfig
    weights: ClassVar[Literal["every_rank", "main"]] = "every_rank"

    def __init__(self, config: BitextMiningConfig) -> None:
        from objkit.eval import read_aligned

        super().__init__(config)
        self.config: BitextMiningConfig = config
        src, tgt = read_aligned(config.src, config.tgt)
        self.src = src[: config.max_lines] + _read(config.src_distractors, config.max_lines)
        self.tgt = tgt[: config.max_lines] + _read(config.tgt_distractors, config.max_lines)
        self.gold = {(i, i) for i in range(len(src[: config.max_lines]))}

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from objkit.eval import default_layer, encode_sentences

        cfg = self.config
        layer = cfg.layer if cfg.layer is not None else default_layer(ctx.num_layers)
        kw = dict(layer=layer, pooling=cfg.pooling, batch_size=cfg.batch_size,
                  max_length=cfg.max_length or ctx.max_length or 128, device=ctx.device)
        src = encode_sentences(ctx.model, ctx.tokenizer, self.src, **kw)
        tgt = encode_sentences(ctx.model, ctx.tokenizer, self.tgt, **kw)
        return mining_f1(mine(margin_scores(src, tgt, cfg.k)), self.gold, cfg.threshold)


@hookimpl
def objkit_plugins() -> list[type]:
    return [BitextMining]
