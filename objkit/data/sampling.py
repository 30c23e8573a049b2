"""Multilingual α-sampling (Conneau & Lample 2019; Conneau et al. 2020) and a resumable example stream.

A group (language, or language pair) of ``n_i`` examples is drawn with probability
``q_i = n_i^α / Σ_j n_j^α``: α = 1 keeps the natural proportions, α → 0 tends to uniform,
XLM-R uses α = 0.3.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
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


SHARD_ROWS = 1 << 16  # rows per shard of a group's permutation (part of the stream's definition)


class GroupOrder:
    """The rows of one group in a seeded, lazily drawn random order, epoch after epoch.

    The group's ``n`` rows (``runs``: contiguous ``(start, length)`` row ranges of the dataset)
    are cut into shards of :data:`SHARD_ROWS` positions. Epoch ``e`` visits the shards in the
    order of a permutation drawn from ``(seed, tag, e)`` and each shard's positions in the order
    of a permutation drawn from ``(seed, tag, e, shard)``: the whole order is a function of those
    numbers, so it is the same on every rank, and only the shard order (8 bytes per shard) and the
    shard being read (8 bytes per row of one shard) are held, not 8-16 bytes per row of the group.
    """

    def __init__(self, runs: np.ndarray, seed: int, tag: int) -> None:
        self.starts = runs[:, 0].astype(np.int64)
        self.ends = np.cumsum(runs[:, 1].astype(np.int64))  # position bound of each run
        self.size = int(self.ends[-1]) if len(self.ends) else 0
        self.seed, self.tag = seed, tag
        self.shards = -(-self.size // SHARD_ROWS)
        self._epoch: int | None = None
        self._order = self._bounds = np.zeros(0, np.int64)
        self._shard: tuple[int, int, np.ndarray] | None = None  # (epoch, shard, permutation)

    def _epoch_order(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        order = np.random.default_rng([self.seed, self.tag, epoch]).permutation(self.shards)
        lengths = np.minimum(SHARD_ROWS, self.size - order * SHARD_ROWS)
        self._epoch, self._order, self._bounds = epoch, order, np.cumsum(lengths)

    def _shard_perm(self, epoch: int, shard: int) -> np.ndarray:
        if self._shard is None or self._shard[:2] != (epoch, shard):
            length = min(SHARD_ROWS, self.size - shard * SHARD_ROWS)
            perm = np.random.default_rng([self.seed, self.tag, epoch, shard]).permutation(length)
            self._shard = (epoch, shard, perm)
        return self._shard[2]

    def rows(self, epoch: int, cursors: np.ndarray) -> np.ndarray:
        """Dataset rows at the (increasing) ``cursors`` of ``epoch``'s order."""
        self._epoch_order(epoch)
        slots = np.searchsorted(self._bounds, cursors, side="right")
        out = np.empty(len(cursors), np.int64)
        for slot in np.unique(slots).tolist():
            mask = slots == slot
            shard = int(self._order[slot])
            offsets = cursors[mask] - (self._bounds[slot - 1] if slot else 0)
            positions = shard * SHARD_ROWS + self._shard_perm(epoch, shard)[offsets]
            run = np.searchsorted(self.ends, positions, side="right")
            run_begin = np.where(run > 0, self.ends[np.maximum(run - 1, 0)], 0)
            out[mask] = self.starts[run] + positions - run_begin
        return out


def group_runs(column: pa.ChunkedArray | pa.Array, groups: list[str] | None = None
               ) -> tuple[list[str], dict[str, np.ndarray]]:
    """Groups (first appearance order, or ``groups``) and, for each, its contiguous row ranges
    ``[[start, length], ...]``, read chunk by chunk: a dataset whose groups are contiguous (as
    :func:`objkit.data.load_source` concatenates them) costs a few numbers per group."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    found: dict[str, list[np.ndarray]] = {}
    offset = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        encoded = pc.dictionary_encode(chunk)
        names = encoded.dictionary.to_pylist()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        cuts = np.flatnonzero(codes[1:] != codes[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        lengths = np.diff(np.concatenate([starts, [len(codes)]]))
        run_codes = codes[starts]
        for code in np.unique(run_codes).tolist():
            sel = run_codes == code
            found.setdefault(names[code], []).append(np.stack([starts[sel] + offset, lengths[sel]], axis=1))
        offset += len(chunk)
    order = groups if groups is not None else list(found)
    runs = {}
    for g in order:
        parts = found.get(g)
        runs[g] = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        if len(runs[g]) > 1:  # merge runs split by chunk boundaries
            r = runs[g][np.argsort(runs[g][:, 0], kind="stable")]
            joined = np.flatnonzero(r[1:, 0] != r[:-1, 0] + r[:-1, 1]) + 1
            starts = r[np.concatenate([[0], joined]), 0]
            ends = np.concatenate([r[joined - 1, 0] + r[joined - 1, 1], [r[-1, 0] + r[-1, 1]]])
            runs[g] = np.stack([starts, ends - starts], axis=1)
    return order, runs


class GroupSampler:
    """The global draw sequence of α-sampling over groups of known row ranges.

    Each draw picks a group with probability ``q_i`` (one ``numpy`` RNG seeded with ``seed``),
    then the next row of that group's :class:`GroupOrder`; an exhausted group starts a new epoch.
    Draws are computed for a whole call at once (vectorised per group)."""

    def __init__(self, runs: Mapping[str, np.ndarray], alpha: float, seed: int) -> None:
        self.groups = list(runs)
        self.orders = [GroupOrder(runs[g], seed, zlib.crc32(g.encode())) for g in self.groups]
        self.sizes = {g: o.size for g, o in zip(self.groups, self.orders)}
        q = sampling_probabilities(self.sizes, alpha)
        self.probabilities = q
        self.cdf = np.cumsum([q[g] for g in self.groups])
        self.last = int(np.flatnonzero([q[g] for g in self.groups])[-1])
        self.rng = np.random.default_rng([seed])
        self.epochs = [0] * len(self.groups)
        self.cursors = [0] * len(self.groups)

    def draw(self, draws: int, keep: slice) -> np.ndarray:
        """Advance the sequence by ``draws`` and return the rows of draws ``keep`` (in order)."""
        picks = np.minimum(np.searchsorted(self.cdf, self.rng.random(draws), side="right"), self.last)
        start, stop = keep.start or 0, keep.stop if keep.stop is not None else draws
        out = np.empty(stop - start, np.int64)
        for g in np.unique(picks).tolist():
            where = np.flatnonzero(picks == g)
            order = self.orders[g]
            ordinal = self.cursors[g] + np.arange(len(where), dtype=np.int64)  # position since this epoch began
            mine = (where >= start) & (where < stop)
            if mine.any():
                epochs, cursors = np.divmod(ordinal[mine], order.size)
                rows = np.empty(len(cursors), np.int64)
                for e in np.unique(epochs).tolist():
                    sel = epochs == e
                    rows[sel] = order.rows(self.epochs[g] + e, cursors[sel])
                out[where[mine] - start] = rows
            wraps, self.cursors[g] = divmod(self.cursors[g] + len(where), order.size)
            self.epochs[g] += wraps
        return out

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


class _MapStream:
    """Map-style backend: a :class:`GroupSampler` over the dataset's ``group`` column.

    Every rank runs the same global sampler (group choices and permutations depend on the seed
    only) and reads the rows of its slice of each draw."""

    def __init__(self, dataset: datasets.Dataset, alpha: float, seed: int, rank: int, world_size: int) -> None:
        if "group" not in dataset.column_names:
            raise ValueError(f"ExampleStream needs a 'group' column (columns: {dataset.column_names})")
        self.dataset, self.rank, self.world_size = dataset, rank, world_size
        groups, runs = group_runs(dataset.with_format("arrow")["group"])
        self.sampler = GroupSampler({g: runs[g] for g in sorted(groups)}, alpha, seed)
        self.probabilities = self.sampler.probabilities
        self.sizes = self.sampler.sizes

    def next_examples(self, n: int) -> list[dict[str, Any]]:
        """This rank's ``n`` of the next ``n × world_size`` global draws (rank ``r`` takes ``[r·n, (r+1)·n)``)."""
        return self.read(self.sampler.draw(n * self.world_size, slice(self.rank * n, (self.rank + 1) * n)))

    def draw(self, draws: int) -> np.ndarray:
        """Advance the global sequence by ``draws`` draws and return the dataset rows of all of them
        (every rank's; :class:`objkit.data.bucketing.BucketedStream` reorders them)."""
        return self.sampler.draw(draws, slice(0, draws))

    def read(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The examples at dataset ``rows``, in that order."""
        rows = [int(r) for r in rows]
        return _rows(self.dataset[rows]) if rows else []

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


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
                 group_sizes: Mapping[str, int] | None = None, shuffle_buffer: int = 0,
                 on_error: Callable[[BaseException], BaseException] | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}) (got {rank})")
        self._impl: _MapStream | _IterStream
        self._on_error = on_error
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
        """This rank's next ``n`` examples (rows as dicts). A streamed source that fails while
        read (a byte that is not UTF-8 deep into a file) raises what ``on_error`` makes of it."""
        if self._on_error is None or not self.per_rank:
            return self._impl.next_examples(n)
        try:
            return self._impl.next_examples(n)
        except Exception as exc:
            raise self._on_error(exc) from None

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position of the stream."""
        return self._impl.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the stream that produced ``state`` was."""
        self._impl.load_state_dict(state)


def _in_group(row: dict[str, Any], group: str) -> bool:
    return row["group"] == group
