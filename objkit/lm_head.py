"""The LM-head loss at selected positions, optionally in row chunks recomputed in the backward.

Masked-LM objectives (MLM, TLM, XLM-Align's TLM part) apply the LM head to the hidden vectors
of the predicted positions only (``encoder.lm_logits(hidden[selected])``), which already avoids
``[batch, length, vocab]`` logits. What remains is ``rows × vocab``: 15% of 16 × 512 tokens is
1,229 rows, × 250,002 × 4 bytes = 1.2 GB of fp32 logits per micro-batch, and the
cross-entropy's backward holds a second tensor of that size.

With ``train.lm_head_chunk_rows = C`` (:attr:`Encoder.lm_head_chunk_rows`, set by the trainer)
the rows are split in chunks of ``C``; each chunk's logits, cross-entropy sum and top-1 hits
run under ``torch.utils.checkpoint`` (non-reentrant), so its logits are freed after the forward
and recomputed, one chunk at a time, in the backward: the head's peak memory is bounded by
``C × vocab`` logits (and their gradient) instead of ``rows × vocab``. The loss and gradients
are those of the unchunked head up to float summation order; the price is one more forward of
the head per step (the decoder matmul is ``2·rows·h·V`` FLOPs, a third of its forward and
backward). This is the memory-bounded cross-entropy of e.g. Liger Kernel's fused linear
cross-entropy, without its fused kernel: the chunk's head forward is recomputed rather than its
gradient precomputed in the forward, which would hold a second copy of the (tied) decoder
weight's gradient until the backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from objkit.interfaces import Encoder


@dataclass
class LMHeadLoss:
    """``loss``: the cross-entropy (mean or sum over the rows, fp32, differentiable); ``correct``:
    how many rows the head predicts right (top-1), a 0-d tensor on the rows' device (read it when
    logging: reading it waits for the device); ``rows``: how many rows."""

    loss: torch.Tensor
    correct: torch.Tensor
    rows: int

    @property
    def accuracy(self) -> torch.Tensor:
        """Top-1 accuracy over the rows, a 0-d tensor on the rows' device (no host synchronisation:
        ``ObjectiveOutput.metrics`` takes it as it is and the trainer reads it once per log interval)."""
        return self.correct.float() / self.rows if self.rows else self.correct.new_zeros((), dtype=torch.float32)


def _chunk_loss(encoder: Encoder, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = encoder.lm_logits(hidden).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return loss, correct


def lm_head_loss(
    encoder: Encoder,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    chunk_rows: int | None = None,
) -> LMHeadLoss:
    """Cross-entropy of ``encoder.lm_logits(hidden)`` (``hidden [N, d]``, ``targets [N]``), with
    top-1 hits. ``chunk_rows`` defaults to ``encoder.lm_head_chunk_rows`` (the run's
    ``train.lm_head_chunk_rows``; 0 or absent: one piece, no recomputation). Chunks are
    checkpointed only when gradients are recorded; without them each chunk simply runs and is
    freed."""
    rows = int(targets.shape[0])
    chunk = getattr(encoder, "lm_head_chunk_rows", 0) if chunk_rows is None else chunk_rows
    if not chunk or rows <= chunk:
        total, correct = _chunk_loss(encoder, hidden, targets)
    else:
        total = hidden.new_zeros((), dtype=torch.float32)
        hits = torch.zeros((), dtype=torch.long, device=hidden.device)
        record = torch.is_grad_enabled() and hidden.requires_grad
        for start in range(0, rows, chunk):
            piece = (encoder, hidden[start : start + chunk], targets[start : start + chunk])
            if record:
                loss, correct = checkpoint(_chunk_loss, *piece, use_reentrant=False)
            else:
                loss, correct = _chunk_loss(*piece)
            total = total + loss
            hits = hits + correct
        correct = hits
    loss = total / max(rows, 1) if reduction == "mean" else total
    return LMHeadLoss(loss=loss, correct=correct, rows=rows)
