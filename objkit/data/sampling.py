"""Multilingual α-sampling (Conneau & Lample 2019; Conneau et al. 2020) and a resumable example stream.

A group (language, or language pair) of ``n_i`` examples is drawn with probability
``q_i = n_i^α / Σ_j n_j^α``: α = 1 keeps the natural proportions, α → 0 tends to uniform,
XLM-R uses α = 0.3.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.distributed import split_dataset_by_node


def sampling_probabilities(sizes: Mapping[str, int], alpha: float) -> dict[str, float]:
    """``q_i = n_i^α / Σ_j n_j^α`` (empty groups get 0; α = 0 gives uniform over non-empty groups)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (got {alpha})")
    weights = {g: float(n) ** alpha if n > 0 else 0.0 for g, n in sizes.items()}
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("cannot sample: every group is empty")
    return {g: w / total for g, w in weights.items()}


def _rows(batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]


class _MapStream:
    """Map-style backend: per-group index arrays, seeded permutations, one group-choice RNG.

    Every rank runs the same global sampler (group choices and permutations depend on the seed
    only) and reads the rows of its slice of each draw."""

    def __init__(self, dataset: datasets.Dataset, alpha: float, seed: int, rank: int, world_size: int) -> None:
        if "group" not in dataset.column_names:
            raise ValueError(f"ExampleStream needs a 'group' column (columns: {dataset.column_names})")
        self.dataset, self.seed, self.rank, self.world_size = dataset, seed, rank, world_size
        column = dataset.with_format("arrow")["group"]
        uniques = pc.unique(column)
        codes = pc.index_in(column, value_set=uniques)
        chunks = codes.chunks if isinstance(codes, pa.ChunkedArray) else [codes]
        code_arr = np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]) if chunks else np.zeros(0, int)
        self.groups: list[str] = uniques.to_pylist()
        counts = np.bincount(code_arr, minlength=len(self.groups))
        order = np.argsort(code_arr, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(counts)])
        self.indices: list[np.ndarray] = [order[bounds[g] : bounds[g + 1]] for g in range(len(self.groups))]
        self.sizes = {g: int(n) for g, n in zip(self.groups, counts)}
        q = sampling_probabilities(self.sizes, alpha)
        self.probabilities = q
        self.cdf = np.cumsum([q[g] for g in self.groups])
        self.last = int(np.flatnonzero([q[g] for g in self.groups])[-1])
        self.rng = np.random.default_rng([seed])
        self.epochs = [0] * len(self.groups)
        self.cursors = [0] * len(self.groups)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, g: int) -> np.ndarray:
        perm = self._perms.get(g)
        if perm is None:
            tag = zlib.crc32(self.groups[g].encode())
            rng = np.random.default_rng([self.seed, tag, self.epochs[g]])
            perm = self._perms[g] = self.indices[g][rng.permutation(len(self.indices[g]))]
        return perm

    def next_examples(self, n: int) -> list[dict[str, Any]]:
        """This rank's ``n`` of the next ``n × world_size`` global draws (rank ``r`` takes ``[r·n, (r+1)·n)``)."""
        return self.read(self.draw(n * self.world_size, keep=range(self.rank * n, (self.rank + 1) * n)))

    def draw(self, draws: int, keep: range | None = None) -> list[int]:
        """Advance the global sequence by ``draws`` draws; the dataset rows of those in ``keep``
        (positions in ``[0, draws)``; default all of them), in draw order."""
        picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(draws), side="right"), self.last)
        keep = range(draws) if keep is None else keep
        rows: list[int] = []
        for i, g in enumerate(picks.tolist()):
            if i in keep:
                rows.append(int(self._perm(g)[self.cursors[g]]))
            self.cursors[g] += 1
            if self.cursors[g] == len(self.indices[g]):  # exhausted: next epoch, new permutation
                self.epochs[g] += 1
                self.cursors[g] = 0
                self._perms.pop(g, None)
        return rows

    def read(self, rows: list[int]) -> list[dict[str, Any]]:
        return _rows(self.dataset[rows]) if rows else []

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "map",
            "rng": self.rng.bit_generator.state,
            "groups": {g: {"epoch": e, "cursor": c} for g, e, c in zip(self.groups, self.epochs, self.cursors)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "map" or sorted(state["groups"]) != sorted(self.groups):
            raise ValueError(f"stream state is for groups {sorted(state.get('groups', {}))}, "
                             f"this dataset has {sorted(self.groups)}")
        self.rng.bit_generator.state = state["rng"]
        for i, g in enumerate(self.groups):
            self.epochs[i] = int(state["groups"][g]["epoch"])
            self.cursors[i] = int(state["groups"][g]["cursor"])
        self._perms.clear()


class _IterStream:
    """Streaming backend: ``interleave_datasets`` over per-group streams, rebuilt each epoch."""

    def __init__(self, parts: dict[str, datasets.IterableDataset], sizes: Mapping[str, int], alpha: float,
                 seed: int, rank: int, world_size: int, shuffle_buffer: int) -> None:
        q = sampling_probabilities({g: sizes.get(g, 0) for g in parts}, alpha)
        self.groups = [g for g in parts if q[g] > 0]
        self.probabilities = {g: q[g] for g in self.groups}
        self.sizes = dict(sizes)
        self.seed, self.rank = seed, rank
        self.parts = []
        for g in self.groups:
            ds = split_dataset_by_node(parts[g], rank=rank, world_size=world_size)
            if shuffle_buffer > 0:
                ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
            self.parts.append(ds)
        self.epoch = 0
        self._build()

    def _build(self) -> None:
        seed = int(np.random.default_rng([self.seed, self.rank, self.epoch]).integers(0, 2**31))
        self.ds = datasets.interleave_datasets(self.parts, probabilities=[self.probabilities[g] for g in self.groups],
                                               seed=seed, stopping_strategy="all_exhausted")
        self.ds.set_epoch(self.epoch)
        self._it: Any = None

    def next_examples(self, n: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        empty_epoch = False
        while len(out) < n:
            if self._it is None:
                self._it = iter(self.ds)
            try:
                out.append(next(self._it))
                empty_epoch = False
            except StopIteration:
                if empty_epoch:
                    raise ValueError("streaming dataset yields no examples") from None
                empty_epoch = True
                self.epoch += 1
                self._build()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "streaming", "epoch": self.epoch, "dataset": self.ds.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "streaming":
            raise ValueError("stream state is not from a streaming ExampleStream")
        self.epoch = int(state["epoch"])
        self._build()
        self.ds.load_state_dict(state["dataset"])


class ExampleStream:
    """An infinite, deterministic, resumable source of examples with α-sampling over groups.

    Map-style ``datasets.Dataset`` (needs a ``group`` column): each draw picks a group with
    probability ``q_i`` (α-sampling over group sizes), then the next example of that group
    from a seeded permutation; an exhausted group starts a new epoch with a new permutation.
    The sequence of draws is a function of ``seed`` alone, the same on every rank and for any
    number of ranks: ``next_examples(n)`` on rank ``r`` of ``world_size`` advances the global
    sequence by ``n × world_size`` draws and returns draws ``[r·n, (r+1)·n)`` of them, so the
    global batch of a step does not depend on how many ranks share it (1 rank × B and 2 ranks
    × B/2 read the same B examples) and a checkpoint resumes with any number of ranks. The
    stream does not depend on how draws are split into ``next_examples`` calls, and
    :meth:`state_dict` (identical on every rank) restores it exactly.

    Streaming (``datasets.IterableDataset``, or a dict group -> ``IterableDataset`` as from
    :func:`objkit.data.sources.load_source_groups`): group sizes cannot be counted without
    reading everything, so ``q`` comes from ``group_sizes`` -- e.g.
    :func:`objkit.data.sources.source_group_sizes` (bytes on disk per group) -- or, for a dict
    without ``group_sizes``, equal weights. A single ``IterableDataset`` is split per group with
    ``filter`` (each group's stream then reads the whole source; prefer the dict). Groups are
    mixed by ``interleave_datasets(..., stopping_strategy="all_exhausted")`` after
    ``split_dataset_by_node``; when every group has been exhausted a new epoch starts with a
    new interleaving seed. Resumption uses ``IterableDataset.state_dict`` and is exact unless
    ``shuffle_buffer > 0`` (buffered examples are lost on resume). Streaming cannot give every
    rank the global sequence without every rank reading all of it, so here each rank reads
    its own shard (``split_dataset_by_node``: whole files when the group has at least
    ``world_size`` of them, else every ``world_size``-th example): the global batch then
    depends on the number of ranks, and each rank's position is its own (resume needs the
    same number of ranks).
    """

    def __init__(self, dataset: datasets.Dataset | datasets.IterableDataset | Mapping[str, datasets.IterableDataset],
                 *, alpha: float, seed: int, rank: int = 0, world_size: int = 1,
                 group_sizes: Mapping[str, int] | None = None, shuffle_buffer: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}) (got {rank})")
        self._impl: _MapStream | _IterStream
        if isinstance(dataset, datasets.Dataset):
            self._impl = _MapStream(dataset, alpha, seed, rank, world_size)
            return
        if isinstance(dataset, datasets.IterableDataset):
            if group_sizes is None:
                raise ValueError("a streaming ExampleStream needs group_sizes (e.g. source_group_sizes(...)) "
                                 "to know the groups and their sampling weights")
            parts = {g: dataset.filter(_in_group, fn_kwargs={"group": g}) for g in group_sizes}
        else:
            parts = dict(dataset)
            group_sizes = group_sizes if group_sizes is not None else dict.fromkeys(parts, 1)
        self._impl = _IterStream(parts, group_sizes, alpha, seed, rank, world_size, shuffle_buffer)

    @property
    def probabilities(self) -> dict[str, float]:
        """Sampling probability of each group."""
        return dict(self._impl.probabilities)

    @property
    def per_rank(self) -> bool:
        """True when each rank reads its own stream (streaming sources), so positions differ by
        rank; False for map-style sources, whose state is the same on every rank."""
        return isinstance(self._impl, _IterStream)

    @property
    def group_sizes(self) -> dict[str, int]:
        """Group sizes ``q`` is computed from (rows, or the streaming hint)."""
        return dict(self._impl.sizes)

    def next_examples(self, n: int) -> list[dict[str, Any]]:
        """This rank's next ``n`` examples (rows as dicts)."""
        return self._impl.next_examples(n)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of the stream."""
        return self._impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that produced ``state`` was."""
        self._impl.load_state_dict(state)


def _in_group(row: dict[str, Any], group: str) -> bool:
    return row["group"] == group
