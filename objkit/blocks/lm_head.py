"""The LM-head loss at selected positions, optionally in chunks recomputed in the backward.

Masked-LM objectives (MLM, TLM, XLM-Align's TLM part) apply the LM head to the hidden vectors
of the predicted positions only (``encoder.lm_logits(hidden[selected])``), which already avoids
``[batch, length, vocab]`` logits. What remains is ``rows × vocab``: 15% of 16 × 512 tokens is
1,229 rows, × 250,002 × 4 bytes = 1.2 GB of fp32 logits per micro-batch, and the
cross-entropy's backward holds a second tensor of that size.

With ``train.lm_head_chunk_rows = C`` (``encoder.run_options.lm_head_chunk_rows``: the
:class:`~objkit.EncoderRunOptions` the encoder was built with) the rows are split in chunks of ``C``; each chunk's logits, cross-entropy sum and top-1 hits
run under ``torch.utils.checkpoint`` (non-reentrant), so its logits are freed after the forward
and recomputed, one chunk at a time, in the backward: the head's peak memory is bounded by
``C × vocab`` logits (and their gradient) instead of ``rows × vocab``. The loss and gradients
are those of the unchunked head up to float summation order; the price is one more forward of
the head per step (the decoder matmul is ``2·rows·h·V`` FLOPs, a third of its forward and
backward). This is the memory-bounded cross-entropy of e.g. Liger Kernel's fused linear
cross-entropy, without its fused kernel: the chunk's head forward is recomputed rather than its
gradient precomputed in the forward, which would hold a second copy of the (tied) decoder
weight's gradient until the backward.

An encoder that names its head's parts (:meth:`Encoder.lm_head_parts`: the transform before
the decoder, the decoder's weight and bias; objkit's ``xlmr`` and ``bert`` do) gets one autograd
function for the decoder and the cross-entropy instead of a checkpoint per chunk, which slices
the vocabulary instead of the rows: every row, ``width = C · vocab / rows`` logits at a time
(:func:`vocab_slice_width`, the same ``C × vocab`` bound). The forward combines the slices'
log-sum-exps and keeps one per row; the backward recomputes each slice's logits, turns them into
their softmax gradient with that log-sum-exp and adds the slice's decoder gradient into its rows
of one buffer (``addmm_``), each row of it written once. Row chunks would read and write the
whole ``vocab × d`` buffer once per chunk, memory traffic that made chunks of 32 of 76 rows
1.7× the whole head's time on CPU (XLM-R base's 768 × 250,002 decoder); vocabulary slices take
1.2× (614 rows, chunks of 256: 1.4× → 1.3×, against the 4/3 of the one recomputed matmul).
Per chunk, autograd would make the chunk's ``vocab × d`` gradient and then the sum with what
came before: three decoder-sized tensors at once, 2.9 GB for XLM-R large. With the buffer, two
remain: the buffer, which autograd holds through the whole encoder backward (the tied weight's
gradient is summed once every path to it has run, the embedding lookup last), and the
embedding's own gradient, added into it at the end (measured on a 50,000 × 1,024 vocabulary:
3.0 → 2.2 decoder-sized tensors above what the backward started with).

Where the run allows it (``encoder.run_options.lm_head_grad_in_place``: one process and DDP, not
FSDP2), the buffer is the decoder weight's ``.grad`` itself, as Megatron-LM's
``gradient_accumulation_fusion`` writes a weight gradient straight into ``main_grad``: the
backward adds into ``.grad`` (creating it on a step's first backward) and hands autograd no
decoder gradient, so no decoder-sized tensor lives through the encoder backward; the tied
embedding lookup's own dense gradient is the one left, added into ``.grad`` by autograd at the
end (on one process not even that: :class:`objkit.train.memory.GradIntoEmbedding` adds its rows into
``.grad`` too). The sum in ``.grad`` is the same; under DDP the weight's gradient hook still
fires (from the embedding path, after the head's backward, which precedes it), so the
all-reduce sees the whole sum. The head in one piece does the same there (its decoder through
one autograd function, the logits and cross-entropy as before): autograd's decoder gradient was
a fresh decoder-sized tensor every backward, added into ``.grad`` and freed, whose new pages cost
a CPU step more than the matmul that wrote them; the buffer is kept from step to step
(:mod:`objkit.blocks.grad_pool`). Off by default: ``torch.autograd.grad`` with the weight as an input
would miss the decoder's part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from objkit.blocks.grad_pool import grad_into  # objkit.train.memory imports it from here too
from objkit.contract.interfaces import Encoder, EncoderRunOptions

_DEFAULTS = EncoderRunOptions()

IGNORE_INDEX = -100
"""A label that is not predicted (``F.cross_entropy``'s default ``ignore_index``)."""


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
    return _logits_loss(encoder.lm_logits(hidden), targets)


def _logits_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    correct = (logits.detach().argmax(dim=-1) == targets).sum()
    return loss, correct


class _DecoderIntoGrad(torch.autograd.Function):
    """``F.linear(features, weight, bias)``, the decoder of a head in one piece, whose backward adds
    the weight's gradient into ``weight.grad`` (:func:`grad_into`) and returns none for it: the
    whole head's counterpart of :class:`_LinearCrossEntropy`'s ``into_grad`` (no decoder-sized
    gradient from autograd, whose fresh pages cost a CPU step more than the matmul writing them:
    ``benchmarks/cpu_step.py``). ``weight`` must be a leaf."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(features, weight)
        ctx.has_bias = bias is not None
        return F.linear(features, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, None, Any]:
        features, weight = ctx.saved_tensors
        grad_features = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_features = (grad_out @ weight.to(grad_out.dtype)).to(features.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(dim=0)
        grad = grad_into(weight)
        if grad_out.dtype == grad.dtype:
            grad.addmm_(grad_out.t(), features.to(grad.dtype))
        else:  # autocast: the product in its dtype, as autograd's, then added
            grad.add_((grad_out.t() @ features.to(grad_out.dtype)).to(grad.dtype))
        return grad_features, None, grad_bias


def vocab_slice_width(rows: int, chunk_rows: int, vocab: int) -> int:
    """Vocabulary entries per slice of the fused head, so that ``rows × width`` logits stay within
    the ``chunk_rows × vocab`` the setting bounds."""
    return max(1, min(vocab, chunk_rows * vocab // max(rows, 1)))


class _LinearCrossEntropy(torch.autograd.Function):
    """``Σ_i CE(features_i · Wᵀ + b, target_i)`` (fp32) and the top-1 hits, over slices of the
    vocabulary (all rows, ``width`` logits each: :func:`vocab_slice_width`) in the forward and
    again in the backward. The forward keeps each row's log-sum-exp (combined over the slices),
    so the backward's softmax of a slice needs no other slice; each slice of the weight gradient
    is written once. Logit matmuls run under the autocast the forward ran under (recorded,
    re-entered in the backward). ``into_grad``: the backward adds the weight's gradient into
    ``weight.grad`` and returns none for it (see the module docstring; ``weight`` must be a
    leaf)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, width: int, into_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        device = features.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        rows = features.shape[0]
        valid = targets != IGNORE_INDEX
        lse = torch.full((rows,), -torch.inf, dtype=torch.float32, device=features.device)
        picked = torch.zeros((rows,), dtype=torch.float32, device=features.device)
        best = torch.full((rows,), -torch.inf, dtype=torch.float32, device=features.device)
        best_index = torch.zeros((rows,), dtype=torch.long, device=features.device)
        for start in range(0, weight.shape[0], width):
            end = min(start + width, weight.shape[0])
            logits = F.linear(features, weight[start:end], None if bias is None else bias[start:end]).float()
            lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
            here = valid & (targets >= start) & (targets < end)
            local = (targets - start).clamp(0, end - start - 1)
            picked = torch.where(here, logits.gather(1, local[:, None]).squeeze(1), picked)
            top, index = logits.max(dim=-1)
            better = top > best  # strictly: the first maximum wins, as in argmax over the whole row
            best, best_index = torch.where(better, top, best), torch.where(better, index + start, best_index)
            del logits
        total = torch.where(valid, lse - picked, 0.0).sum()
        hits = (best_index == targets).sum()
        ctx.save_for_backward(features, weight, bias, targets, lse)
        ctx.width = width
        ctx.param = weight if into_grad else None
        ctx.mark_non_differentiable(hits)
        return total, hits

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, _grad_hits: Any) -> tuple[Any, ...]:
        features, weight, bias, targets, lse = ctx.saved_tensors
        device, autocast_on, autocast_dtype = ctx.autocast
        grad_features = grad_weight = None
        if ctx.needs_input_grad[0]:  # summed over the slices in fp32
            grad_features = torch.zeros(features.shape, dtype=torch.float32, device=features.device)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_into(ctx.param) if ctx.param is not None else torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[2] else None
        valid = targets != IGNORE_INDEX
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            for start in range(0, weight.shape[0], ctx.width):
                end = min(start + ctx.width, weight.shape[0])
                w = weight[start:end]
                logits = F.linear(features, w, None if bias is None else bias[start:end])
                dtype = logits.dtype
                # d CE / d logits = softmax - one-hot (rows with ignore_index: zero), in place
                grad = logits.float().sub_(lse[:, None]).exp_()
                del logits
                here = (valid & (targets >= start) & (targets < end)).nonzero().squeeze(1)
                grad[here, targets[here] - start] -= 1
                grad[~valid] = 0
                grad = grad.mul_(grad_total).to(dtype)
                if grad_features is not None:
                    grad_features += grad @ w.to(grad.dtype)
                if grad_weight is not None:
                    grad_weight[start:end].addmm_(grad.t().to(weight.dtype), features.to(weight.dtype))
                if grad_bias is not None:
                    grad_bias[start:end] += grad.sum(dim=0).to(bias.dtype)
        if grad_features is not None:
            grad_features = grad_features.to(features.dtype)
        if ctx.param is not None:
            grad_weight = None  # already in .grad
        return grad_features, grad_weight, grad_bias, None, None, None


def lm_head_loss(
    encoder: Encoder,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    *,
    reduction: Literal["mean", "sum"] = "mean",
    chunk_rows: int | None = None,
) -> LMHeadLoss:
    """Cross-entropy of ``encoder.lm_logits(hidden)`` (``hidden [N, d]``, ``targets [N]``), with
    top-1 hits. ``chunk_rows`` defaults to ``encoder.run_options.lm_head_chunk_rows`` (the run's
    ``train.lm_head_chunk_rows``; 0: one piece, no recomputation). Chunks are
    checkpointed only when gradients are recorded; without them each chunk simply runs and is
    freed."""
    rows = int(targets.shape[0])
    options = getattr(encoder, "run_options", _DEFAULTS)  # declared by Encoder; a duck-typed module: defaults
    chunk = options.lm_head_chunk_rows if chunk_rows is None else chunk_rows
    chunked = bool(chunk) and rows > chunk
    in_place = bool(options.lm_head_grad_in_place) and torch.is_grad_enabled()
    parts = getattr(encoder, "lm_head_parts", lambda: None)() if chunked or in_place else None
    into_grad = parts is not None and in_place and parts[1].is_leaf and parts[1].requires_grad
    if parts is not None and chunked:
        transform, weight, bias = parts
        width = vocab_slice_width(rows, chunk, weight.shape[0])
        total, correct = _LinearCrossEntropy.apply(transform(hidden), weight, bias, targets, width, into_grad)
    elif not chunked and into_grad:  # the head in one piece, its decoder gradient into .grad
        transform, weight, bias = parts
        total, correct = _logits_loss(_DecoderIntoGrad.apply(transform(hidden), weight, bias), targets)
    elif not chunked:
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
