"""InfoNCE (van den Oord et al., 2018) as used by MoCo and InfoXLM's cross-lingual contrast.

For queries ``q_i``, positive keys ``k_i`` and negative keys ``n_j``::

    logits_i = [ (q_i·k_i − margin), q_i·n_1, ..., q_i·n_K ] · scale      (scale = 1/τ)
    loss     = mean_i  −log softmax(logits_i)[0]

The positive sits at index 0, as in the reference (``criterions/xlco.py``); there the loss
is a sum over queries, here a mean (the composite multiplies by ``sample_size`` for
``normalization = "reference"``). Logits are computed in fp32 with autocast disabled, block
by block, so a 131,072-key queue is never copied or concatenated (only the ``[B, 1 + K]``
logits are). Negatives given as several blocks (queue, in-batch keys) may each carry a
boolean ``[B, K_b]`` mask of entries to exclude (e.g. a query's own positive among the
in-batch keys).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ContrastiveResult:
    loss: torch.Tensor
    """Scalar mean cross-entropy over queries."""
    top1: torch.Tensor
    """(API 1.2) Fraction of queries whose positive scores at least as high as every negative,
    a detached 0-dim tensor on the queries' device: return it as a metric without a host
    synchronisation."""
    num_negatives: int

    @property
    def accuracy(self) -> float:
        """``top1`` as a Python float (reading it waits for the device)."""
        return float(self.top1)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: Sequence[torch.Tensor] = (),
    *,
    scale: float | torch.Tensor = 4.0,
    margin: float = 0.0,
    exclude: Sequence[torch.Tensor | None] | None = None,
) -> ContrastiveResult:
    """InfoNCE of ``query [B, d]`` against ``positive [B, d]`` and negative blocks ``[K_b, d]``.

    ``scale`` is the inverse temperature (a float or a scalar tensor, e.g. learnable);
    ``margin`` is subtracted from the positive similarity before scaling (additive margin);
    ``exclude[b]`` masks entries of block ``b`` (True = not a negative).
    """
    if query.shape != positive.shape:
        raise ValueError(f"query {tuple(query.shape)} and positive {tuple(positive.shape)} differ")
    masks = list(exclude) if exclude is not None else [None] * len(negatives)
    if len(masks) != len(negatives):
        raise ValueError("exclude needs one entry (or None) per negative block")
    with _no_autocast(query.device):
        q = query.float()
        pos = (q * positive.float()).sum(dim=-1, keepdim=True)
        blocks = [pos - margin]
        excluded = [torch.zeros_like(pos, dtype=torch.bool)]
        best_negative = torch.full_like(pos, float("-inf"))
        for block, mask in zip(negatives, masks, strict=True):
            sims = q @ block.float().T
            blocks.append(sims)
            excluded.append(mask if mask is not None else torch.zeros_like(sims, dtype=torch.bool))
            if sims.shape[1]:
                shown = sims.detach() if mask is None else sims.detach().masked_fill(mask, float("-inf"))
                best_negative = torch.maximum(best_negative, shown.max(dim=1, keepdim=True).values)
        logits = torch.cat(blocks, dim=1) * scale
        if any(m is not None for m in masks):  # after scaling, so a learnable scale gets no 0·∞ gradient
            logits = logits.masked_fill(torch.cat(excluded, dim=1), float("-inf"))
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        loss = F.cross_entropy(logits, labels)
    correct = (pos.detach() >= best_negative).float().mean() if q.shape[0] else pos.new_zeros(())
    return ContrastiveResult(loss=loss, top1=correct, num_negatives=sum(b.shape[0] for b in negatives))


__all__ = ["ContrastiveResult", "info_nce"]
