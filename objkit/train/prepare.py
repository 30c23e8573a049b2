"""Objective-ready rows for a run, and the tokenized cache that keeps them between runs.

:func:`build_streams` is what a run does with its data: for each enabled objective, the
source's rows tokenized (``num_proc`` = the cores) and prepared by the objective (packed,
for MLM), then an α-sampling :class:`~objkit.data.ExampleStream`. Rank 0 does the work while
the other ranks wait (``train.collective_timeout`` bounds the wait); they then read what it
wrote. With a cache directory (``data.cache_dir``, ``objkit run --cache-dir``) the rows of
map-style sources are kept there (:mod:`objkit.data.cache`): a run that finds a valid entry
starts without tokenizing, one that finds none builds it once, one that finds an entry built
from other inputs stops with one line naming the key that differs. ``objkit prepare`` builds
every entry up front (:func:`prepare_cache`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from objkit import distributed
from objkit.data import ExampleStream, load_source, source_group_sizes
from objkit.data import cache as data_cache
from objkit.data.bucketing import BucketedStream
from objkit.data.sources import locate_stream_error, source_files
from objkit.contract.interfaces import WorldInfo
from objkit.recipe.loader import ResolvedRecipe
from objkit.contract.source import source_plugin
from objkit.contract.registry import Registry
from objkit.train.build import BuiltObjective
from objkit.blocks.seeding import derive_seed


@dataclass
class Prepared:
    """One objective's rows and how they came to be (for ``objkit prepare``'s report)."""

    name: str
    rows: datasets.Dataset | datasets.IterableDataset
    how: str  # "cached" | "built" | "streamed" | "tokenized"
    tokens: int = 0
    seconds: float = 0.0


def cache_dir_of(resolved: ResolvedRecipe) -> Path | None:
    """``data.cache_dir`` as a path (relative to the working directory), or None."""
    value = resolved.recipe.data_cache_dir
    return Path(value).expanduser() if value else None


def entry_key(resolved: ResolvedRecipe, built: BuiltObjective, tokenizer_id: str, registry: Registry) -> dict:
    """What determines an objective's cached rows (see :mod:`objkit.data.cache`)."""
    recipe = resolved.recipe
    entry = recipe.objectives[built.name]
    source = recipe.data[built.data]
    return data_cache.entry_key(
        source=source.model_dump(mode="json"),
        files=data_cache.content_files(source_files(built.data, source), cache_dir_of(resolved)),
        tokenizer=tokenizer_id,
        max_length=recipe.model.max_length,
        prepare={"plugin": entry.plugin, "version": registry.versions().get(entry.plugin, ""),
                 "config": resolved.objective_configs[built.name].model_dump(mode="json")},
    )


def _tokenize(resolved: ResolvedRecipe, built: BuiltObjective, tokenizer: Any, tokenized: dict[str, Any],
              num_proc: int) -> Any:
    source = resolved.recipe.data[built.data]
    if built.data not in tokenized:
        tokenized[built.data] = load_source(built.data, source, tokenizer, num_proc=num_proc,
                                            max_tokens=resolved.recipe.model.max_length - 2)
    assert source_plugin(source).data_kind(source) == built.objective.data_kind
    return built.objective.prepare(tokenized[built.data])


def prepared_rows(resolved: ResolvedRecipe, built: BuiltObjective, tokenizer: Any, registry: Registry, *,
                  cache_dir: Path | None, tokenized: dict[str, Any], num_proc: int, rebuild: bool = False,
                  tokenizer_id: str | None = None) -> Prepared:
    """One objective's rows: from the cache when it holds them, else tokenized (and written to
    the cache when there is one and the source is map-style). ``rebuild`` replaces an entry
    built from other inputs instead of refusing it."""
    source = resolved.recipe.data[built.data]
    timer = data_cache.Timer()
    if source.streaming:
        return Prepared(built.name, _tokenize(resolved, built, tokenizer, tokenized, num_proc), "streamed")
    if cache_dir is None:
        return Prepared(built.name, _tokenize(resolved, built, tokenizer, tokenized, num_proc), "tokenized")
    key = entry_key(resolved, built, tokenizer_id or data_cache.tokenizer_fingerprint(tokenizer), registry)
    # one builder per entry: a second process waits here, then finds the entry the first built
    with data_cache.entry_lock(cache_dir, built.name):
        try:
            cached = data_cache.open_entry(cache_dir, built.name, key)
        except Exception:
            if not rebuild:
                raise
            cached = None
        if cached is not None:
            return Prepared(built.name, cached, "cached", data_cache.count_tokens(cached), timer.seconds)
        rows = _tokenize(resolved, built, tokenizer, tokenized, num_proc)
        written = data_cache.write_entry(cache_dir, built.name, key, rows, num_proc=num_proc)
    return Prepared(built.name, written, "built", data_cache.count_tokens(written), timer.seconds)


def build_streams(resolved: ResolvedRecipe, objectives: list[BuiltObjective], tokenizer: Any, registry: Registry,
                  world: WorldInfo, cache_dir: Path | None = None) -> dict[str, ExampleStream | BucketedStream]:
    """Every enabled objective's :class:`ExampleStream`. Rank 0 reads, tokenizes and caches
    first; the other ranks wait, then read the cache (``data.cache_dir``) or the ``datasets``
    cache rank 0 filled."""
    recipe = resolved.recipe
    tokenized: dict[str, Any] = {}
    streams: dict[str, ExampleStream | BucketedStream] = {}
    tokenizer_id = data_cache.tokenizer_fingerprint(tokenizer) if cache_dir is not None else None
    num_proc = data_cache.cores()
    for built in objectives:
        source = recipe.data[built.data]
        with distributed.main_process_first(world):
            prepared = prepared_rows(resolved, built, tokenizer, registry, cache_dir=cache_dir, tokenized=tokenized,
                                     num_proc=num_proc, tokenizer_id=tokenizer_id)
        if cache_dir is not None and prepared.how in ("built", "cached"):  # which rank tokenized (once)
            print(cache_report(prepared, cache_dir, world), file=sys.stderr)
        seed = recipe.train.seed * 7919 + len(streams)
        # streamed sources cannot be counted up front: α-sampling uses their sizes on disk
        group_sizes = source_group_sizes(built.data, source) if source.streaming else None
        stream: ExampleStream | BucketedStream = ExampleStream(
            prepared.rows, alpha=source.sampling_alpha, seed=seed, rank=world.rank, world_size=world.world_size,
            group_sizes=group_sizes,
            on_error=lambda exc, name=built.data, src=source: locate_stream_error(name, src, exc),
        )
        pool = recipe.train.length_bucketing  # pair objectives on map-style data (objkit.data.bucketing)
        if pool and built.objective.data_kind == "parallel" and not source.streaming:
            stream = BucketedStream(stream, built.objective.bucket_lengths(prepared.rows), step_size=recipe.train.batch_size,
                                    pool_steps=pool, seed=derive_seed(recipe.train.seed, "buckets", built.name))
        streams[built.name] = stream
    return streams


def cache_report(prepared: Prepared, cache_dir: Path, world: WorldInfo) -> str:
    """One line: whether this rank built the cache entry (tokenized) or read one (built before, or
    by rank 0 while this rank waited)."""
    rank = f"rank {world.rank} of {world.world_size}: " if world.world_size > 1 else ""
    what = "tokenized and cached" if prepared.how == "built" else "read from the cache"
    return (f"data.cache_dir: {rank}{prepared.name}: {len(prepared.rows):,} rows {what} "
            f"({Path(cache_dir) / prepared.name}, {prepared.seconds:.1f}s)")


def prepare_cache(resolved: ResolvedRecipe, registry: Registry, cache_dir: Path) -> list[Prepared]:
    """``objkit prepare``: build (or rebuild) the cache entry of every objective with a map-style
    source, on this machine's cores. The objectives are built on the meta device (their
    ``prepare`` needs the tokenizer and the recipe, not weights)."""
    import torch

    from objkit.train.build import build_encoder, build_objectives, load_tokenizer

    world = WorldInfo()
    tokenizer = load_tokenizer(resolved, world=world)
    with torch.device("meta"):
        encoder = build_encoder(resolved, registry, vocab_size=len(tokenizer), load_weights=False)
        objectives = build_objectives(resolved, registry, encoder, tokenizer, torch.device("meta"), world, "fp32")
    tokenizer_id = data_cache.tokenizer_fingerprint(tokenizer)
    tokenized: dict[str, Any] = {}
    out = []
    for built in objectives:
        if resolved.recipe.data[built.data].streaming:
            print(f"{built.name}: data.{built.data} is streamed: not cached", file=sys.stderr)
            continue
        out.append(prepared_rows(resolved, built, tokenizer, registry, cache_dir=cache_dir, tokenized=tokenized,
                                 num_proc=data_cache.cores(), rebuild=True, tokenizer_id=tokenizer_id))
    return out
