"""Building a run from a validated recipe: tokenizer, encoder, objectives, optimizer, schedule,
callbacks (the device and precision come from :mod:`objkit.distributed.device`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objkit.distributed import barrier
from objkit.contract.errors import UserError
from objkit.blocks.hub import hub_unreachable_reason, offline_unless_reachable
from objkit.contract.interfaces import BuildContext, Encoder, EncoderContext, EncoderRunOptions, Objective, VocabInfo, WorldInfo
from objkit.recipe.loader import ResolvedRecipe
from objkit.recipe.schema import TokenizerTraining, TrainConfig
from objkit.contract.registry import Registry


def default_cache_dir() -> Path:
    """Where trained tokenizers are cached: ``$OBJKIT_CACHE`` or ``~/.cache/objkit``."""
    return Path(os.environ.get("OBJKIT_CACHE") or Path.home() / ".cache" / "objkit")


def load_tokenizer(
    resolved: ResolvedRecipe,
    cache_dir: Path | None = None,
    world: WorldInfo | None = None,
    local_files_only: bool = False,
) -> Any:
    """The recipe's tokenizer: a path/hub id, one trained on the recipe's data, or the init's.
    ``local_files_only``: never touch the network (a hub id must be in the local HF cache)."""
    from transformers import AutoTokenizer

    world = world or WorldInfo()
    cache_dir = (cache_dir or default_cache_dir()) / "tokenizers"
    model = resolved.recipe.model
    spec = model.tokenizer
    if isinstance(spec, TokenizerTraining):
        from objkit.data.tokenizer import ensure_tokenizer

        if world.is_main:  # rank 0 trains (or finds the cached one) while the others wait
            spec_path = str(ensure_tokenizer(spec, resolved.recipe.data, cache_dir))
        barrier(world)
        if not world.is_main:
            spec_path = str(ensure_tokenizer(spec, resolved.recipe.data, cache_dir))
        key = "model.tokenizer"
    else:
        spec_path = spec or model.init
        key = "model.tokenizer" if spec else "model.init"
    offline = local_files_only or offline_unless_reachable(spec_path)
    try:
        return AutoTokenizer.from_pretrained(spec_path, local_files_only=offline)
    except (OSError, ValueError) as exc:
        if local_files_only and not Path(spec_path).is_dir():  # the caller asked for no network (--dry-run)
            reason = "not a local directory nor in the HF cache; the network is not used here"
        else:
            why = hub_unreachable_reason() if offline and not Path(spec_path).is_dir() else None
            reason = f"not a local directory nor in the HF cache, and {why}" if why else str(exc).splitlines()[0][:120]
        raise UserError(
            f"{key}: cannot load a tokenizer from {spec_path!r} ({reason}); "
            "give a local directory or a reachable hub id"
        ) from None


def build_encoder(resolved: ResolvedRecipe, registry: Registry, vocab_size: int | None,
                  load_weights: bool = True, options: EncoderRunOptions | None = None) -> Encoder:
    """The recipe's encoder plugin, built with ``build(config, ctx)`` from its validated
    ``[model]`` Config and the run ``options`` it is to honour (``ctx.options``; default: none on).
    An encoder written to plugin API 1.1's documented ``build(config)`` gets just its config, and
    builds with its weights; one written before API 1.6, which does not keep ``ctx.options`` in
    ``run_options``, is given them there."""
    import inspect

    cls = registry.get(resolved.recipe.model.encoder, kind="encoder").cls
    config = resolved.encoder_config
    ctx = EncoderContext(vocab_size=vocab_size, load_weights=load_weights,
                         options=options if options is not None else EncoderRunOptions())
    if len(inspect.signature(cls.build).parameters) < 2:
        encoder = cls.build(config)
    else:
        encoder = cls.build(config, ctx)
    if encoder.run_options is Encoder.run_options:  # the class default: the encoder did not take them
        encoder.run_options = ctx.options
    return encoder


@dataclass
class BuiltObjective:
    name: str
    objective: Objective
    weight: float
    data: str


def build_objectives(
    resolved: ResolvedRecipe,
    registry: Registry,
    encoder: Encoder,
    tokenizer: Any,
    device: torch.device,
    world: WorldInfo,
    precision: str,
    vocab: VocabInfo | None = None,
) -> list[BuiltObjective]:
    recipe = resolved.recipe
    vocab = vocab or VocabInfo.from_tokenizer(tokenizer)
    built: dict[str, BuiltObjective] = {}
    entries = recipe.enabled_objectives()
    classes = {name: registry.get(entry.plugin, kind="objective").cls for name, entry in entries.items()}
    # Objectives that change the encoder's modules are built first, so that copies taken by
    # the others (momentum encoders) see the final structure; recipe order is kept otherwise.
    order = sorted(entries, key=lambda n: not classes[n].modifies_encoder(resolved.objective_configs[n]))
    for name in order:
        entry, cls = entries[name], classes[name]
        ctx = BuildContext(
            encoder=encoder,
            tokenizer=tokenizer,
            vocab=vocab,
            registry=registry,
            instance_name=name,
            seed=recipe.train.seed,
            device=device,
            total_steps=recipe.train.steps,
            max_length=recipe.model.max_length,
            world=world,
            precision=precision,
        )
        built[name] = BuiltObjective(name, cls(resolved.objective_configs[name], ctx), entry.weight, entry.data)
    return [built[name] for name in entries]


def accumulation_steps(train: TrainConfig, world: WorldInfo) -> tuple[int, int]:
    """(micro batch size per rank, micro-batches per step) so that their product × ranks = batch_size."""
    micro = train.micro_batch_size or max(1, train.batch_size // world.world_size)
    per_step = micro * world.world_size
    if train.batch_size % per_step:
        raise UserError(
            f"train.batch_size: {train.batch_size} is not a multiple of micro_batch_size × ranks "
            f"= {micro} × {world.world_size} (got {train.batch_size})"
        )
    return micro, train.batch_size // per_step


def build_optimizer(resolved: ResolvedRecipe, registry: Registry, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The recipe's ``[train.optimizer]`` plugin (``adamw`` by default) at peak ``train.lr``."""
    train = resolved.recipe.train
    cls = registry.get(train.optimizer.name, kind="optimizer").cls
    return cls.build(params, train.lr, resolved.optimizer_config)


def build_schedule(resolved: ResolvedRecipe, registry: Registry, optimizer: torch.optim.Optimizer) -> Any:
    """The recipe's ``train.schedule`` plugin over ``train.steps`` with ``train.warmup_steps``."""
    train = resolved.recipe.train
    cls = registry.get(train.schedule, kind="schedule").cls
    return cls.build(optimizer, train.warmup_steps, train.steps, cls.Config())


def build_callbacks(resolved: ResolvedRecipe, registry: Registry) -> list[Any]:
    """The recipe's ``[callbacks.NAME]`` plugins, in recipe order, each with its validated Config."""
    return [registry.get(entry.plugin, kind="callback").cls(resolved.callback_configs[name])
            for name, entry in resolved.recipe.callbacks.items()]
