"""The memory and speed methods of a run, one documented unit each, with a method card.

The run's options reach the encoder declared, not as attributes set from outside:
:func:`encoder_run_options` turns ``[train]`` (and the parallel layout) into an
:class:`~objkit.EncoderRunOptions`, which :func:`objkit.train.build.build_encoder` passes to
:meth:`Encoder.build` in ``EncoderContext.options``; the encoder keeps what it honours in
``encoder.run_options``. :func:`apply_train_options` then installs each method the encoder's
``run_options`` ask for, once, after the objectives are built (their momentum copies are taken from
the plain encoder) and the model is wrapped for DDP / FSDP2; a method that acts during each step
returns the :class:`~objkit.train.step.StepHook` the step calls at the named point it declares
(:mod:`objkit.train.step`):

====================================  =====================================  ==========================
method (unit)                         option                                 installed through
====================================  =====================================  ==========================
:class:`ActivationCheckpointing`      ``activation_checkpointing``           ``set_activation_checkpointing``;
                                                                             some objectives only: the
                                                                             step's ``before_compute``
:class:`FusedChunkedLMHead`           ``lm_head_chunk_rows``,                :func:`objkit.lm_head_loss`
                                      ``lm_head_grad_in_place``              reads ``run_options``
:class:`EmbeddingGradInPlace`         ``embedding_grad_in_place``            :class:`GradIntoEmbedding`
:class:`CompiledBlocks`               ``compile``                            ``compile_blocks``
:class:`MasterWeightsHook`            ``param_dtype``                        :func:`master_weights_for`;
                                                                             the step's ``backward``,
                                                                             ``synced``, ``updated``
====================================  =====================================  ==========================

Each unit's docstring is its method card (what it follows, what it costs, what it saves, with the
figures measured in docs/results/performance.md); docs/guides/memory.md carries the same cards.
Losses and gradients are unchanged by every method up to float rounding (``param_dtype``: up to
the bf16 rounding autocast applies to the weights anyway, and that of the lookups and layer
norms); parameter names, checkpoints and the export are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from objkit.distributed import ParallelStrategy
from objkit.contract.errors import UserError, first_line
from objkit.contract.interfaces import Encoder, EncoderRunOptions, Objective, WorldInfo
from objkit.blocks.lm_head import grad_into
from objkit.blocks.master_weights import MasterWeights
from objkit.recipe.schema import TrainConfig
from objkit.train.step import StepHook, StepPoint, StepState


def checkpointed_objectives(train: TrainConfig, objectives: Sequence[str]) -> set[str]:
    """The objective instances whose encoder passes recompute their activations."""
    setting = train.activation_checkpointing
    if setting is True:
        return set(objectives)
    if setting is False:
        return set()
    return set(setting) & set(objectives)


def parallel_mode(train: TrainConfig, world_size: int) -> str:
    """The mode :func:`objkit.distributed.parallelize` will pick: ``single`` (one process), else
    ``train.parallelism`` (``ddp`` or ``fsdp``)."""
    return "single" if world_size <= 1 else train.parallelism


def encoder_run_options(train: TrainConfig, objectives: Sequence[str], world_size: int = 1,
                        precision: str = "fp32") -> EncoderRunOptions:
    """The :class:`~objkit.EncoderRunOptions` of a run: ``objectives`` are its objective instance
    names, ``precision`` the resolved one. The decoder's gradient goes into ``.grad`` on one process
    and under DDP (FSDP2 reduce-scatters gradients of the parameters it unshards for the pass, so it
    keeps autograd's path); the embeddings' on one process only (DDP's reducer all-reduces a
    parameter when autograd accumulates its gradient)."""
    mode = parallel_mode(train, world_size)
    return EncoderRunOptions(
        activation_checkpointing=frozenset(checkpointed_objectives(train, objectives)),
        lm_head_chunk_rows=train.lm_head_chunk_rows or 0,
        lm_head_grad_in_place=mode != "fsdp",
        embedding_grad_in_place=mode == "single",
        compile=bool(train.compile),
        precision=precision,
        packed_attention=train.packed_attention,
    )


class MemoryMethod:
    """One memory or speed method: ``applies(options)`` says whether the run asks for it,
    ``install(encoder, strategy, objectives, device)`` puts it in place (once per run) and returns
    the :class:`~objkit.train.step.StepHook` it plugs into every step, if any."""

    option: ClassVar[str]
    """The ``[train]`` key that turns it on."""

    @staticmethod
    def applies(options: EncoderRunOptions) -> bool:
        raise NotImplementedError

    @staticmethod
    def install(encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective],
                device: torch.device) -> StepHook | None:
        raise NotImplementedError


class ActivationCheckpointing(MemoryMethod):
    """**Activation checkpointing** (``train.activation_checkpointing``).

    *Follows*: Chen et al. (2016), "Training deep nets with sublinear memory cost", per transformer
    block as Megatron-LM's full recomputation; through transformers' own activation checkpointing
    of the blocks (the encoder's ``set_activation_checkpointing``), ``torch.utils.checkpoint``
    non-reentrant, so it composes with DDP's unused-parameter detection, FSDP2's hooks and XLCO's
    truncated passes (a truncated pass checkpoints the blocks it runs). Dropout draws are replayed.

    *Costs*: one more forward of the blocks per step: ``checkpointing_step_ratio`` 1.42 (CPU, MLM,
    4 layers, hidden 768, vocab 250,002, 4 × 128) and 1.74 (H200, bf16, 8 × 512; 74 vs 45 ms).

    *Saves*: each block keeps only its input; activations drop from ``layers × block`` to
    ``layers × block input + one block``: 16.6 → 11.4 GiB peak allocated for an XLM-R-base MLM step
    at 32 × 512 on an H200; the dry run estimates 12.41 → 1.31 GiB of activations for an
    ``infoxlm_large`` micro-batch of 16 × 512.

    ``true`` applies to every objective, a list of objective names to those only (the others keep
    their activations, e.g. a cheap truncated XLCO pass): the step switches it before each
    objective's forward. Momentum copies (taken before, run under ``no_grad``) never recompute."""

    option = "train.activation_checkpointing"

    @staticmethod
    def applies(options: EncoderRunOptions) -> bool:
        return bool(options.activation_checkpointing)

    @staticmethod
    def install(encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective],
                device: torch.device) -> StepHook | None:
        toggle = getattr(encoder, "set_activation_checkpointing", None)  # optional in the contract
        if toggle is None:
            raise UserError(
                f"train.activation_checkpointing: encoder {encoder.name!r} does not support activation checkpointing "
                "(it has no set_activation_checkpointing); set it to false"
            )
        checkpointed = encoder.run_options.activation_checkpointing
        toggle(True)
        if checkpointed != {o.instance_name for o in objectives}:  # only some: switch before each one's forward
            return CheckpointSomeObjectives(toggle, checkpointed)
        return None


class CheckpointSomeObjectives(StepHook):
    """:class:`ActivationCheckpointing` of the objectives ``checkpointed`` only: at the step's
    ``before_compute`` point, inside the strategy's wrapped forward, checkpointing is switched on
    for an objective it names and off for the others."""

    points = frozenset({StepPoint.BEFORE_COMPUTE})

    def __init__(self, toggle: Any, checkpointed: frozenset[str]) -> None:
        self.toggle, self.checkpointed = toggle, checkpointed

    def at(self, point: StepPoint, state: StepState) -> None:
        assert state.objective is not None
        self.toggle(state.objective.instance_name in self.checkpointed)


class FusedChunkedLMHead(MemoryMethod):
    """**The fused chunked LM head** (``train.lm_head_chunk_rows``; :mod:`objkit.blocks.lm_head`).

    *Follows*: the memory-bounded cross-entropy of Liger Kernel's fused linear cross-entropy (the
    head's logits never exist for all rows at once), without its fused kernel: each slice of the
    vocabulary is recomputed in the backward; on one process and under DDP the decoder's gradient
    is written straight into the tied weight's ``.grad``, as Megatron-LM's
    ``gradient_accumulation_fusion`` writes into ``main_grad``.

    *Costs*: one more forward of the decoder matmul per step (4/3 of the head's matmuls):
    ``chunked_head_time_ratio`` 0.958 on CPU (2339 vs 2636 ms per step, 76 rows, chunks of 32); the
    head alone 1.2× its unchunked time (XLM-R base's 768 × 250,002 decoder; :mod:`objkit.blocks.lm_head`).

    *Saves*: the head holds ``chunk_rows × vocab`` logits instead of ``rows × vocab``: 146 → 31 MiB
    of head memory in that benchmark; the dry run estimates 3.43 → 0.72 GiB of logits for an
    ``infoxlm_large`` micro-batch (1,229 masked rows, chunks of 256). The backward holds 2.2
    decoder-sized tensors instead of 3.0 (measured on a 50,000 × 1,024 vocabulary; :mod:`objkit.blocks.lm_head`).

    Installed by nothing: :func:`objkit.lm_head_loss` reads ``encoder.run_options`` on each call."""

    option = "train.lm_head_chunk_rows"

    @staticmethod
    def applies(options: EncoderRunOptions) -> bool:
        return options.lm_head_chunk_rows > 0

    @staticmethod
    def install(encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective],
                device: torch.device) -> StepHook | None:
        return None


class EmbeddingGradInPlace(MemoryMethod):
    """**Embedding gradients into** ``.grad`` (one process, always on there).

    *Follows*: Megatron-LM's ``gradient_accumulation_fusion`` (a weight's gradient accumulated
    where it lives rather than handed to autograd), applied to the lookup tables.

    *Costs*: nothing measurable: the backward adds the looked-up rows (``index_add_``) instead of
    autograd's ``embedding_dense_backward``.

    *Saves*: the backward of a lookup in a ``vocab × d`` table is otherwise a dense ``vocab × d``
    tensor (0.95 GiB for XLM-R large) alive at the end of every objective's backward, on top of
    everything else -- the peak of an ``infoxlm_large`` step: its peak went 13.16 → 12.36 GiB
    (``benchmarks/memory_phases.py``, 24 layers, 8 × 512; CHANGELOG 0.5.0).

    Each plain ``nn.Embedding`` of the encoder becomes a :class:`GradIntoEmbedding` (the module
    changes class only: parameter names, ``state_dict`` and the export are unchanged). Not under DDP,
    whose reducer all-reduces a parameter when autograd accumulates its gradient (a parameter
    autograd never sees would never be reduced), nor FSDP2: an encoder's ``run_options`` say
    ``embedding_grad_in_place`` on one process only, and an encoder with lookups of its own may
    turn it off in ``build``."""

    option = "(one process)"

    @staticmethod
    def applies(options: EncoderRunOptions) -> bool:
        return options.embedding_grad_in_place

    @staticmethod
    def install(encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective],
                device: torch.device) -> StepHook | None:
        set_embedding_grad_in_place(encoder, True)
        return None


class CompiledBlocks(MemoryMethod):
    """**Compiled blocks** (``train.compile``): a speed method.

    *Follows*: ``torch.compile`` (TorchDynamo + Inductor, PyTorch 2) of each transformer block's
    ``forward`` (the trained encoder's now, a momentum copy's on its first pass), through the
    encoder's ``compile_blocks``; the module tree, parameter names, checkpoints and the export are
    unchanged.

    *Costs*: the kernels compile during the first steps (18 s warm-up on CPU in
    ``compile_speedup``); a machine without a C++ compiler (CPU) or Triton (CUDA) stops with one
    line before anything is trained (:func:`check_compile_backend`).

    *Saves*: time where the fused kernels pay: ``compile_speedup`` 1.03 on CPU (base shape,
    4 layers); on an H200 0.84 at 8 × 512 but 112 vs 129 ms per step (21.8% vs 19.0% MFU) at
    64 × 512. No memory."""

    option = "train.compile"

    @staticmethod
    def applies(options: EncoderRunOptions) -> bool:
        return options.compile

    @staticmethod
    def install(encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective],
                device: torch.device) -> StepHook | None:
        compile_blocks = getattr(encoder, "compile_blocks", None)  # optional in the contract
        if compile_blocks is None:
            raise UserError(f"train.compile: encoder {encoder.name!r} cannot compile its blocks (no compile_blocks); "
                            "set it to false")
        check_compile_backend(device)
        compile_blocks()
        return None


MEMORY_METHODS: tuple[type[MemoryMethod], ...] = (
    FusedChunkedLMHead, EmbeddingGradInPlace, ActivationCheckpointing, CompiledBlocks)
"""In the order they are installed."""


def apply_train_options(
    encoder: Encoder, strategy: ParallelStrategy, objectives: Sequence[Objective], train: TrainConfig, device: torch.device
) -> list[StepHook]:
    """Install every method ``encoder.run_options`` asks for (:data:`MEMORY_METHODS`); the
    :class:`~objkit.train.step.StepHook` objects they plug into each step, for the step. The options
    were given to the encoder at build (:func:`encoder_run_options`); an encoder may keep the
    in-place gradients off (they only save memory), but one that dropped an option the recipe
    sets is refused in one line naming the key (rather than training without it)."""
    options = encoder.run_options
    asked = encoder_run_options(train, [o.instance_name for o in objectives], strategy.world.world_size,
                                options.precision)
    for key, value in (("activation_checkpointing", asked.activation_checkpointing),
                       ("lm_head_chunk_rows", asked.lm_head_chunk_rows), ("compile", asked.compile)):
        if getattr(options, key) != value:
            raise UserError(f"train.{key}: encoder {encoder.name!r} does not honour it (its run options have "
                            f"{getattr(options, key)!r}, the run asks for {value!r}); change the setting")
    own_kernel = type(encoder).forward_documents is not Encoder.forward_documents
    if asked.packed_attention != "auto" and (options.packed_attention != asked.packed_attention
                                             or (asked.packed_attention == "varlen" and not own_kernel)):
        raise UserError(f"train.packed_attention: encoder {encoder.name!r} does not honour "
                        f"{asked.packed_attention!r} (no varlen kernel of its own: packed rows go through the "
                        "block-diagonal mask); set it to \"auto\" or \"mask\"")
    hooks = []
    for method in MEMORY_METHODS:
        if method.applies(options) and (hook := method.install(encoder, strategy, objectives, device)) is not None:
            hooks.append(hook)
    return hooks


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
    of handing autograd a dense ``num_embeddings × embedding_dim`` tensor (:class:`EmbeddingGradInPlace`).
    Falls back to ``nn.Embedding.forward`` where that is not possible: no gradient
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


PARAM_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16}
"""``train.param_dtype`` -> the dtype the trained weights are held in during the step."""


def low_precision_dtype(train: TrainConfig, precision: str) -> torch.dtype | None:
    """``train.param_dtype``'s dtype where the run computes in it (``precision`` resolved), else
    None: with ``precision = "auto"`` on a device without bf16 (a CPU) the weights stay fp32, as
    the compute does."""
    if train.param_dtype == "fp32" or precision != train.param_dtype:
        return None
    return PARAM_DTYPES[train.param_dtype]


def master_weights_for(train: TrainConfig, precision: str, encoder: Encoder, world: WorldInfo) -> MasterWeights | None:
    """``train.param_dtype``'s :class:`~objkit.blocks.master_weights.MasterWeights` over the encoder's
    trained parameters, made before the model is wrapped; None for fp32 weights. The objectives'
    own modules (projection heads, generators) stay fp32, optimized as they are: they are small,
    and some compute in fp32 outside autocast by design (XLCO's projection).

    None too under FSDP2, whose fp32 shards are the masters: it gathers them in bf16 itself
    (:func:`low_precision_dtype` given to :func:`objkit.distributed.parallelize`)."""
    dtype = low_precision_dtype(train, precision)
    if dtype is None or parallel_mode(train, world.world_size) == "fsdp":
        return None
    return MasterWeights([p for p in encoder.parameters() if p.requires_grad], dtype)


class MasterWeightsHook(StepHook):
    """``train.param_dtype = "bf16"`` in the step (:mod:`objkit.blocks.master_weights`).

    Follows mixed-precision training with fp32 master weights (Micikevicius et al., 2018) and
    Megatron-LM's bf16 path (fp32 gradient accumulation into the masters). Departs: under DDP the
    gradients of a step's micro-batches accumulate, and are all-reduced, in bf16 (DDP's buckets take
    the parameters' dtype); on one process every backward's gradient is added into the fp32 master
    gradient at once; under FSDP2 this hook is not used (FSDP2's fp32 shards are the masters,
    gathered in bf16: :class:`objkit.distributed.fsdp.FSDPStrategy`).

    Saves the per-forward fp32 → bf16 copy of every weight autocast makes (13% of GPU time in the
    H200 profile of an XLM-R-base step, docs/results/performance.md). Costs 2 bytes per encoder
    parameter for the bf16 weights (which take the place of autocast's copies the backward keeps)
    and 2 for their gradients, and one fp32 → bf16 rounding of the encoder per optimizer step.

    At ``backward`` (one process) and ``synced`` the gradients go into the masters; at ``updated``
    the model's weights are rounded from the updated masters, and the masters' gradient storage
    is kept for the next step."""

    points = frozenset({StepPoint.BACKWARD, StepPoint.SYNCED, StepPoint.UPDATED})

    def __init__(self, masters: MasterWeights, every_backward: bool) -> None:
        self.masters = masters
        self.every_backward = every_backward

    def at(self, point: StepPoint, state: StepState) -> None:
        if point is StepPoint.BACKWARD:
            if self.every_backward:
                self.masters.accumulate_grads()
        elif point is StepPoint.SYNCED:
            self.masters.accumulate_grads()
        elif point is StepPoint.UPDATED:
            if not state.skipped:
                self.masters.copy_to_model()
            self.masters.keep_grad_storage()
