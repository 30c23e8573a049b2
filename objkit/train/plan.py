"""``objkit run --dry-run``: build everything on the ``meta`` device and report what a run needs.

No weights are allocated or loaded, so the plan for xlm-roberta-large works on a laptop and
without the checkpoint. Memory per rank is the static part (fp32 weights, gradients, AdamW
moments, objective state such as momentum encoders and queues) plus the largest objective's
activations and LM-head logits, each with and without ``train.activation_checkpointing`` and
``train.lm_head_chunk_rows`` (:func:`estimate_memory`). The process itself (Python, torch and
transformers: about 0.5 GiB of host memory; the CUDA context on a GPU) comes on top.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from objkit.distributed import env_world
from objkit.contract.errors import UserError
from objkit.contract.interfaces import VocabInfo, WorldInfo
from objkit.recipe.loader import ResolvedRecipe
from objkit.recipe.schema import TokenizerTraining
from objkit.contract.registry import Registry
from objkit.train.memory import low_precision_dtype
from objkit.train.build import (
    accumulation_steps,
    build_encoder,
    build_objectives,
    load_tokenizer,
)

GiB = 1024**3
SUGGESTED_CHUNK_ROWS = 256
MASKED_FRACTION = 0.15  # MLM / TLM predict 15% of the tokens


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank of one training step (see :func:`estimate_memory`)."""

    static: dict[str, int]
    activations: int
    lm_head: int
    head_rows: int
    chunk_rows: int
    checkpointing: bool
    tied_gradient: int
    """Bytes of the word-embedding matrix's fp32 gradient alive during a backward pass beside
    ``.grad``: the tied decoder's gradient, the embedding lookup's dense one and, where autograd
    adds them out of place, their sum -- three copies with the head in one piece or
    checkpointed per chunk. The head chunked through :meth:`Encoder.lm_head_parts` accumulates
    the decoder gradient in one buffer that takes the embedding's in place: two; one where that
    buffer is ``.grad`` itself (``lm_head_grad_in_place``: one process or DDP, the head chunked
    or in one piece); none where the embedding lookup adds into ``.grad`` too
    (:class:`objkit.train.memory.GradIntoEmbedding`: one process). With the lookup into ``.grad`` and
    autograd's decoder gradient (an encoder without ``lm_head_parts``), that gradient
    waits for the lookup's backward: one copy (head in one piece), two (checkpointed chunks: the
    sum and a chunk's). Measured with ``benchmarks/memory_phases.py`` on ``infoxlm_large``
    shapes (chunked, one process): the peak of a step is a backward pass, with one block's
    activations recomputed."""
    weight_copies: int = 0
    """Bytes of the bf16/fp16 copies autocast makes of fp32 weights for its matmuls, which the
    backward keeps (the cast weight is saved): every block's matmul weights (one block's when
    checkpointed: the others are cast again as they are recomputed) and the LM head's decoder.
    None in fp32, nor with bf16 weights (``train.param_dtype``, counted in ``static``)."""

    @property
    def total(self) -> int:
        return sum(self.static.values()) + self.activations + self.lm_head + self.tied_gradient + self.weight_copies

    def as_dict(self) -> dict[str, int | bool]:
        return {**self.static, "activations": self.activations, "lm_head": self.lm_head, "head_rows": self.head_rows,
                "chunk_rows": self.chunk_rows, "checkpointing": self.checkpointing,
                "tied_gradient": self.tied_gradient, "weight_copies": self.weight_copies, "total": self.total}


def activation_elements(shape: ModelShape, batch: int, length: int, checkpointing: bool) -> int:
    """Elements one sequence batch keeps for the backward pass of a full-depth encoder pass.

    Counted on transformers' XLM-R with SDPA attention (``saved_tensors_hooks`` over a forward;
    least squares over seven shapes, within 0.1%): the embeddings keep ``s·b·h``; each block
    ``8·s·b·h`` (attention input, q/k/v, attention output, two layer norms' inputs and outputs)
    ``+ 2·s·b·f`` (the feed-forward's GELU input and output) ``+ s²·b`` (the expanded attention
    mask). SDPA's fused kernels keep no ``a·s²`` score matrices, unlike Korthikanti et al.
    (2022)'s count for unfused attention. With checkpointing a block keeps its input ``s·b·h``
    (the mask once), and the backward pass recomputes one block at a time."""
    sbh, sbf, ssb = length * batch * shape.hidden, length * batch * shape.ffn, length * length * batch
    block = 8 * sbh + 2 * sbf + ssb
    if checkpointing:
        return sbh + shape.layers * sbh + ssb + block
    return sbh + shape.layers * block


def estimate_memory(
    shape: ModelShape,
    batch: int,
    length: int,
    precision: str,
    static: dict[str, int],
    *,
    checkpointing: bool,
    chunk_rows: int,
    graphs: int = 1,
    fused_head: bool = True,
    grad_in_place: bool = True,
    embedding_grad_in_place: bool = True,
    low_precision_weights: bool = False,
) -> MemoryEstimate:
    """Static bytes plus the activations of ``graphs`` objectives' passes (1 with the default
    per-objective backward: one graph at a time) and the LM head's fp32 logits on 15% of the
    tokens: the logits and their log-softmax in the forward, its gradient in the backward, so
    three ``rows × vocab`` tensors, or three ``chunk × vocab`` ones when chunked. Activations
    take 4 bytes an element in fp32 and about 2 under bf16/fp16 autocast. ``fused_head``: the
    encoder has :meth:`Encoder.lm_head_parts`; ``grad_in_place``: its decoder gradient goes
    straight into ``.grad`` (not under FSDP2); ``embedding_grad_in_place``: so does the embedding
    lookup's (one process); see :attr:`MemoryEstimate.tied_gradient`. ``low_precision_weights``:
    ``train.param_dtype = "bf16"``, so autocast copies no weight (:attr:`MemoryEstimate.weight_copies`)."""
    element = 2 if precision in ("bf16", "fp16") else 4
    weight_copies = 0
    if element == 2 and not low_precision_weights:
        block = 4 * shape.hidden**2 + 2 * shape.hidden * shape.ffn
        weight_copies = 2 * (shape.vocab * shape.hidden + (1 if checkpointing else shape.layers) * block)
    activations = graphs * element * activation_elements(shape, batch, length, checkpointing)
    rows = math.ceil(MASKED_FRACTION * batch * length)
    live = min(chunk_rows, rows) if chunk_rows else rows
    lm_head = graphs * 3 * 4 * live * shape.vocab
    chunked = bool(chunk_rows) and rows > chunk_rows
    if fused_head and grad_in_place:  # the decoder's gradient into .grad, chunked or in one piece
        tied_copies = 0 if embedding_grad_in_place else 1
    elif chunked and fused_head:
        tied_copies = 2
    elif embedding_grad_in_place:
        tied_copies = 2 if chunked else 1
    else:
        tied_copies = 3
    return MemoryEstimate(static=dict(static), activations=activations, lm_head=lm_head, head_rows=rows,
                          chunk_rows=chunk_rows, checkpointing=checkpointing,
                          tied_gradient=tied_copies * 4 * shape.vocab * shape.hidden, weight_copies=weight_copies)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dry_run_plan(resolved: ResolvedRecipe, registry: Registry, world_size: int | None = None) -> list[tuple[str, str]]:
    """The plan's rows; ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
    return plan_with_memory(resolved, registry, world_size)[0]


def plan_with_memory(
    resolved: ResolvedRecipe, registry: Registry, world_size: int | None = None
) -> tuple[list[tuple[str, str]], dict[str, MemoryEstimate]]:
    """The plan's rows and its memory estimates per rank: ``run`` (the recipe's settings),
    ``plain`` (no checkpointing, head in one piece) and ``lean`` (checkpointing and a chunked head)."""
    recipe = resolved.recipe
    rows: list[tuple[str, str]] = []
    notes: list[str] = []
    tokenizer = None
    try:
        if recipe.model.tokenizer is not None or recipe.model.init is not None:
            if isinstance(recipe.model.tokenizer, TokenizerTraining):
                notes.append("tokenizer trained (or taken from cache) from the recipe's data")
            tokenizer = load_tokenizer(resolved, local_files_only=True)
    except UserError as exc:
        notes.append(f"tokenizer not available ({exc}); assuming the encoder's default vocabulary")
    world = env_world()  # the torchrun layout, without joining a process group
    if world_size is not None:
        world = WorldInfo(rank=0, world_size=world_size)
    precision = recipe.train.precision
    if precision == "auto":  # what a CUDA run would use; the plan is for the target machine
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    with torch.device("meta"):
        encoder = build_encoder(resolved, registry, vocab_size=len(tokenizer) if tokenizer is not None else None,
                                load_weights=False)
        # without the tokenizer, token ids in XLM-R's layout over the encoder's vocabulary (sizes are what count)
        vocab = VocabInfo.from_tokenizer(tokenizer) if tokenizer is not None else VocabInfo.xlmr(encoder.vocab_size)
        objectives = build_objectives(
            resolved, registry, encoder, tokenizer, torch.device("meta"), world, precision, vocab=vocab
        )
    if recipe.model.init:
        notes.append(
            f"weights NOT loaded: architecture of {recipe.model.init!r} (its local config.json, else the recipe's "
            "preset) built on the meta device; the dry run reads only local files and makes no hub request"
        )
    micro, accumulation = accumulation_steps(recipe.train, world)
    encoder_params = _count(encoder)
    trainable = encoder_params
    extra_bytes = 0  # objective state: queues and other buffers
    copies = 0  # objective state: parameters of momentum copies (fp32)
    rows.append(("encoder", f"{type(encoder).__name__}: {encoder.num_layers} layers, hidden {encoder.hidden_size}, vocab {encoder.vocab_size:,}"))
    rows.append(("query encoder parameters", f"{encoder_params:,} ({encoder_params / 1e6:.0f}M)"))
    for built in objectives:
        extra_trainable = sum(_count(m) for m in built.objective.trainable_modules().values())
        trainable += extra_trainable
        for key, value in built.objective.plan().items():
            shown = f"{value:,}" if isinstance(value, int) else str(value)
            if isinstance(value, int) and key.endswith("parameters"):
                shown += f" ({value / 1e6:.0f}M)"
                copies += 4 * value
            elif isinstance(value, int) and key.endswith("bytes"):
                shown = f"{value / GiB:.2f} GiB"
                extra_bytes += value
            rows.append((f"{built.name}: {key}", shown))
    max_len = recipe.model.max_length
    n_obj = len(objectives)
    tokens_per_step = recipe.train.batch_size * max_len * n_obj
    rows.append(("objectives", ", ".join(f"{b.name} (×{b.weight:g}, data {b.data})" for b in objectives)))
    rows.append(("batch", f"{recipe.train.batch_size} sequences per objective per step = {micro} per micro-batch × {accumulation} micro-batches × {world.world_size} ranks"))
    rows.append(("tokens per step (upper bound)", f"{tokens_per_step:,} ({recipe.train.batch_size} × {max_len} × {n_obj} objectives)"))
    rows.append(("steps", f"{recipe.train.steps:,} (warmup {recipe.train.warmup_steps:,}, {recipe.train.schedule} schedule, peak lr {recipe.train.lr:g})"))
    weights = 4 * trainable
    optimizer = 8 * trainable
    sharded = recipe.train.parallelism == "fsdp" and world.world_size > 1
    if sharded:  # FSDP: weights, gradients and optimizer state are split over the ranks
        weights //= world.world_size
        optimizer //= world.world_size
        copies //= world.world_size  # momentum copies are sharded like the encoder; queues are not
    checkpointed = set(recipe.enabled_objectives()) if recipe.train.activation_checkpointing is True else set(
        recipe.train.activation_checkpointing or [])
    shape = ModelShape(
        layers=encoder.num_layers, hidden=encoder.hidden_size, vocab=encoder.vocab_size,
        heads=encoder.num_heads or max(1, encoder.hidden_size // 64),
        ffn=getattr(encoder, "intermediate_size", None) or 4 * encoder.hidden_size,
    )
    joint = recipe.train.backward == "joint" and n_obj > 1
    static = {"weights": weights, "gradients": weights, "adamw": optimizer, "objective_state": extra_bytes + copies}
    # train.param_dtype = "bf16": one process and DDP hold bf16 encoder weights and their bf16 gradients beside
    # the fp32 masters (the fp32 weights and gradients above) -- under DDP both gradients live at once; the
    # bf16 weights take the place of the copies autocast makes of fp32 weights (MemoryEstimate.weight_copies).
    # FSDP2 gathers its fp32 shards in bf16 block by block instead: no copies kept beside them
    low_precision = low_precision_dtype(recipe.train, precision) is not None
    if low_precision and not sharded:
        static["bf16_weights"] = static["bf16_gradients"] = 2 * encoder_params
    chunk = recipe.train.lm_head_chunk_rows or 0
    fused = encoder.lm_head_parts() is not None
    head = {"graphs": n_obj if joint else 1, "fused_head": fused, "grad_in_place": not sharded,
            "embedding_grad_in_place": world.world_size == 1, "low_precision_weights": low_precision}
    run = estimate_memory(shape, micro, max_len, precision, static,
                          # a list that leaves out an objective: its graph may be the largest (conservative)
                          checkpointing={b.name for b in objectives} <= checkpointed, chunk_rows=chunk, **head)
    plain = estimate_memory(shape, micro, max_len, precision, static, checkpointing=False, chunk_rows=0, **head)
    lean = estimate_memory(shape, micro, max_len, precision, static, checkpointing=True,
                           chunk_rows=chunk or SUGGESTED_CHUNK_ROWS, **head)
    rows.append(("precision", precision))
    if recipe.train.param_dtype != "fp32":
        kept = (f"fp32 shards gathered in {recipe.train.param_dtype} (FSDP2's MixedPrecisionPolicy)" if sharded
                else f"{recipe.train.param_dtype} encoder weights, fp32 masters in the optimizer")
        rows.append(("param dtype", kept if low_precision else
                     f"fp32 (param_dtype {recipe.train.param_dtype} needs precision {recipe.train.param_dtype})"))
    if world.world_size > 1:
        layout = "FSDP2, sharded over" if sharded else "DDP, replicated on"
        rows.append(("parallelism", f"{recipe.train.parallelism} ({layout} {world.world_size} ranks)"))
    rows.append(("memory: weights + grads (fp32)", f"{2 * weights / GiB:.2f} GiB"))
    rows.append(("memory: AdamW moments (fp32)", f"{optimizer / GiB:.2f} GiB"))
    if low_precision and not sharded:
        rows.append(("memory: bf16 encoder weights + grads (train.param_dtype)",
                     f"{4 * encoder_params / GiB:.2f} GiB (the fp32 ones above are the optimizer's masters)"))
    extra_bytes += copies
    rows.append(("memory: objective state", f"{extra_bytes / GiB:.2f} GiB"))
    setting = "on" if run.checkpointing else "off"
    rows.append(("memory: activations per micro-batch (est.)",
                 f"{run.activations / GiB:.2f} GiB (activation checkpointing {setting}; "
                 f"off: {plain.activations / GiB:.2f} GiB, on: {lean.activations / GiB:.2f} GiB)"))
    head_setting = f"chunks of {chunk} rows" if chunk else "one piece"
    rows.append(("memory: LM-head logits per micro-batch (est.)",
                 f"{run.lm_head / GiB:.2f} GiB ({run.head_rows:,} masked rows, {head_setting}; one piece: "
                 f"{plain.lm_head / GiB:.2f} GiB, chunks of {lean.chunk_rows}: {lean.lm_head / GiB:.2f} GiB)"))
    tied = run.tied_gradient // (4 * shape.vocab * shape.hidden)
    copies_text = (f"{tied} {'copy' if tied == 1 else 'copies'} of the tied embedding / decoder gradient beside .grad"
                   if tied else "the decoder's and the embedding lookup's gradients go straight into .grad")
    rows.append(("memory: embedding gradient in the backward (est.)", f"{run.tied_gradient / GiB:.2f} GiB ({copies_text})"))
    if run.weight_copies:
        rows.append(("memory: autocast's bf16 weight copies (est.)",
                     f"{run.weight_copies / GiB:.2f} GiB (kept for the backward; none with train.param_dtype = \"bf16\")"))
    rows.append(("memory: total per rank (est.)", f"{run.total / GiB:.2f} GiB"))
    rows.append(("memory: without checkpointing or chunked head", f"{plain.total / GiB:.2f} GiB"))
    rows.append(("memory: with checkpointing + chunked head",
                 f"{lean.total / GiB:.2f} GiB (train.activation_checkpointing = true, "
                 f"train.lm_head_chunk_rows = {lean.chunk_rows})"))
    for note in notes:
        rows.append(("note", note))
    return rows, {"run": run, "plain": plain, "lean": lean}
