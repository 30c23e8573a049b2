"""The run's memory and speed options, applied to the built encoder: ``train.activation_checkpointing``,
``train.lm_head_chunk_rows`` and ``train.compile``.

* **Activation checkpointing** (Chen et al., 2016, "Training deep nets with sublinear memory
  cost"; per transformer block as in Megatron-LM's full recomputation): each block keeps only
  its input in the forward pass and recomputes its activations in the backward pass, through
  the encoder's :meth:`~objkit.encoder.XLMREncoder.set_activation_checkpointing`
  (``torch.utils.checkpoint``, non-reentrant, so it composes with DDP's unused-parameter
  detection, FSDP2's hooks and XLCO's truncated passes: a truncated pass checkpoints the blocks
  it runs). Activations drop from ``layers × block`` to ``layers × block input + one block``;
  the price is one more forward of the blocks per step. ``true`` applies to every objective, a
  list of objective names to those only (the others keep their activations, e.g. a cheap
  truncated XLCO pass). Dropout draws are replayed (the RNG state is saved), so losses and
  gradients are unchanged up to float rounding.
* **Chunked LM-head loss**: :func:`objkit.lm_head_loss` reads
  ``encoder.lm_head_chunk_rows`` and ``encoder.lm_head_grad_in_place`` (see :mod:`objkit.lm_head`).
* **Embedding gradients into** ``.grad`` (one process, always on): the backward of a lookup in a
  ``vocab × d`` table is a dense ``vocab × d`` tensor (``embedding_dense_backward``) that autograd
  then adds into ``.grad``: 0.95 GiB for XLM-R large, alive at the end of every objective's
  backward on top of everything else -- the peak of an ``infoxlm_large`` step. Each
  ``nn.Embedding`` of the encoder becomes a :class:`GradIntoEmbedding`, whose backward adds its
  rows' gradients straight into ``weight.grad`` (``index_add_``, padding row left out as
  ``F.embedding`` does) and hands autograd none. Not under DDP, whose reducer all-reduces a
  parameter when autograd accumulates its gradient (a parameter autograd never sees would never
  be reduced), nor FSDP2; there autograd's path stays. Parameter names, ``state_dict`` and the
  export are unchanged (the module only changes class).
* **torch.compile** of each transformer block's ``forward`` (the trained encoder's now, a
  momentum copy's on its first pass); the module tree, parameter names, checkpoints and the
  export are unchanged. The backend is tried on a tiny function first, so a machine without a
  C++ compiler (CPU) or Triton (CUDA) stops with one line before anything is trained.

:func:`apply_train_options` runs after the objectives are built (their momentum copies are
taken from the plain encoder) and after the model is wrapped for DDP / FSDP2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from objkit.distributed import ParallelStrategy
from objkit.errors import UserError, first_line
from objkit.interfaces import Encoder, Objective
from objkit.lm_head import grad_into
from objkit.schema import TrainConfig


def checkpointed_objectives(train: TrainConfig, objectives: Sequence[str]) -> set[str]:
    """The objective instances whose encoder passes recompute their activations."""
    setting = train.activation_checkpointing
    if setting is True:
        return set(objectives)
    if setting is False:
        return set()
    return set(setting) & set(objectives)


def apply_train_options(
    encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective], train: TrainConfig, device: torch.device
) -> None:
    """Configure ``encoder`` (and the strategy's step module) for the run's memory and speed options."""
    encoder.lm_head_chunk_rows = train.lm_head_chunk_rows or 0
    # the chunked head adds the decoder's gradient straight into .grad (objkit.lm_head); FSDP2
    # reduce-scatters gradients of parameters it unshards for the pass, so it keeps autograd's path
    encoder.lm_head_grad_in_place = strategy.mode != "fsdp"
    set_embedding_grad_in_place(encoder, strategy.mode == "single")
    names = [o.instance_name for o in objectives]
    checkpointed = checkpointed_objectives(train, names)
    if checkpointed:
        toggle = getattr(encoder, "set_activation_checkpointing", None)
        if toggle is None:
            raise UserError(
                f"train.activation_checkpointing: encoder {encoder.name!r} does not support activation checkpointing "
                "(it has no set_activation_checkpointing); set it to false"
            )
        toggle(True)
        if checkpointed != set(names):  # only some objectives: switch before each one's forward
            strategy.module.before_compute = lambda objective: toggle(objective.instance_name in checkpointed)
    if train.compile:
        compile_blocks = getattr(encoder, "compile_blocks", None)
        if compile_blocks is None:
            raise UserError(f"train.compile: encoder {encoder.name!r} cannot compile its blocks (no compile_blocks); "
                            "set it to false")
        check_compile_backend(device)
        compile_blocks()


class _EmbeddingIntoGrad(torch.autograd.Function):
    """``F.embedding(ids, weight, padding_idx)`` whose backward adds the looked-up rows' gradients
    into ``weight.grad`` (created on the step's first backward) and returns none for ``weight``."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, padding_idx: int | None) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.param = weight
        ctx.padding_idx = padding_idx
        return F.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(ctx: Any, grad_rows: torch.Tensor) -> tuple[None, None, None]:
        if ctx.needs_input_grad[1]:
            (ids,) = ctx.saved_tensors
            grad = grad_into(ctx.param)
            ids = ids.reshape(-1)
            grad_rows = grad_rows.reshape(ids.shape[0], -1)
            if ctx.padding_idx is not None:  # F.embedding's padding row gets no gradient
                keep = ids != ctx.padding_idx
                ids, grad_rows = ids[keep], grad_rows[keep]
            grad.index_add_(0, ids, grad_rows.to(grad.dtype))
        return None, None, None


class GradIntoEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose backward adds its gradient into ``weight.grad`` in place instead
    of handing autograd a dense ``num_embeddings × embedding_dim`` tensor (see the module
    docstring). Falls back to ``nn.Embedding.forward`` where that is not possible: no gradient
    recorded, a weight that is not a leaf requiring grad (momentum copies, FSDP2's unsharded
    views), ``max_norm``, ``scale_grad_by_freq`` or ``sparse``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (torch.is_grad_enabled() and weight.requires_grad and weight.is_leaf and self.max_norm is None
                and not self.scale_grad_by_freq and not self.sparse):
            return _EmbeddingIntoGrad.apply(input, weight, self.padding_idx)
        return super().forward(input)


def set_embedding_grad_in_place(encoder: nn.Module, enabled: bool) -> int:
    """Make every plain ``nn.Embedding`` of ``encoder`` a :class:`GradIntoEmbedding` (or back to
    ``nn.Embedding``); how many were switched. Off (the default) ``torch.autograd.grad`` sees the
    embeddings' gradients; on it does not (they go to ``.grad``)."""
    switched = 0
    for module in encoder.modules():
        if enabled and type(module) is nn.Embedding:
            module.__class__ = GradIntoEmbedding
            switched += 1
        elif not enabled and type(module) is GradIntoEmbedding:
            module.__class__ = nn.Embedding
            switched += 1
    return switched


def check_compile_backend(device: torch.device) -> None:
    """Compile and run a two-op function on ``device`` with torch.compile's default backend
    (inductor); a :class:`UserError` naming the reason if that fails (no C++ compiler for CPU
    kernels, no Triton for CUDA ones, a Python version dynamo does not support)."""
    try:
        import torch._dynamo

        def probe(x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x) * 2 + 1

        compiled = torch.compile(probe)
        x = torch.linspace(0, 1, 8, device=device)
        result = compiled(x)
        if not torch.allclose(result, probe(x)):
            raise RuntimeError("the compiled probe computed a wrong result")
        torch._dynamo.reset()
    except UserError:
        raise
    except Exception as exc:  # whatever inductor, a compiler or triton raises
        raise UserError(
            f"train.compile: torch.compile cannot build kernels on {device.type} here "
            f"({type(exc).__name__}: {first_line(exc)[:200]}); install a C++ compiler (CPU) or Triton "
            "(CUDA), or set train.compile = false (got true)"
        ) from None
