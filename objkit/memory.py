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
* **torch.compile** of each transformer block's ``forward`` (the trained encoder's now, a
  momentum copy's on its first pass); the module tree, parameter names, checkpoints and the
  export are unchanged. The backend is tried on a tiny function first, so a machine without a
  C++ compiler (CPU) or Triton (CUDA) stops with one line before anything is trained.

:func:`apply_train_options` runs after the objectives are built (their momentum copies are
taken from the plain encoder) and after the model is wrapped for DDP / FSDP2.
"""

from __future__ import annotations

from collections.abc import Sequence
import torch

from objkit.distributed import ParallelStrategy
from objkit.errors import UserError, first_line
from objkit.interfaces import Encoder, Objective
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
