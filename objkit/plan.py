"""``objkit run --dry-run``: build everything on the ``meta`` device and report what a run needs.

No weights are allocated or loaded, so the plan for xlm-roberta-large works on a laptop and
without the checkpoint. Memory is the static part (fp32 weights, gradients, AdamW moments,
objective state such as momentum encoders and queues) plus an activation estimate per
micro-batch after Korthikanti et al. (2022): ``s·b·h·(34 + 5·a·s/h)`` bytes per layer for
16-bit activations (×2 in fp32).
"""

from __future__ import annotations


import torch

from objkit.distributed import env_world
from objkit.errors import UserError
from objkit.interfaces import VocabInfo, WorldInfo
from objkit.recipe import ResolvedRecipe, TokenizerTraining
from objkit.registry import Registry
from objkit.runtime import (
    accumulation_steps,
    build_encoder,
    build_objectives,
    load_tokenizer,
)

GiB = 1024**3


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def dry_run_plan(resolved: ResolvedRecipe, registry: Registry, world_size: int | None = None) -> list[tuple[str, str]]:
    """The plan's rows; ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 without torchrun)."""
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
            "preset) built on the meta device; the dry run never uses the network"
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
    act_bytes_per_elem = 1 if precision in ("bf16", "fp16") else 2
    h, s, layers = encoder.hidden_size, max_len, encoder.num_layers
    a = encoder.num_heads or max(1, h // 64)
    activations = act_bytes_per_elem * layers * s * micro * h * (34 + 5 * a * s / h)
    rows.append(("precision", precision))
    if world.world_size > 1:
        layout = "FSDP2, sharded over" if sharded else "DDP, replicated on"
        rows.append(("parallelism", f"{recipe.train.parallelism} ({layout} {world.world_size} ranks)"))
    rows.append(("memory: weights + grads (fp32)", f"{2 * weights / GiB:.2f} GiB"))
    rows.append(("memory: AdamW moments (fp32)", f"{optimizer / GiB:.2f} GiB"))
    extra_bytes += copies
    rows.append(("memory: objective state", f"{extra_bytes / GiB:.2f} GiB"))
    rows.append(("memory: activations per micro-batch (est.)", f"{activations / GiB:.2f} GiB"))
    rows.append(("memory: total per rank (est.)", f"{(2 * weights + optimizer + extra_bytes + activations) / GiB:.2f} GiB"))
    for note in notes:
        rows.append(("note", note))
    return rows
