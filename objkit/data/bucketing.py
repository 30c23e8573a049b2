"""Length bucketing: examples of similar length in the same step, so micro-batches pad little.

``train.length_bucketing = K`` (steps; 0 turns it off) reorders an objective's draws in
pools of ``K`` steps: the ``K × batch_size`` global draws of the next ``K`` steps are taken
from the α-sampler as usual, sorted by length (stable: ties keep their draw order), cut into
``K`` step batches of ``batch_size`` consecutive examples, and the order of those ``K``
batches is shuffled with a generator seeded by ``(seed, pool number)``. Within a step the
examples stay in length order, so each micro-batch (consecutive rows of the step's global
batch, whatever the micro-batch size or the number of ranks) holds neighbours in length.

What stays true without bucketing:

* **Rank invariance.** The reordering acts on the *global* sequence of draws, and cuts it at
  step boundaries (``batch_size``, which the recipe fixes), never at micro-batch or rank
  boundaries: every rank computes the same pools (lengths of all draws, not only its own rows)
  and reads its slice of each global micro-batch, as :class:`objkit.data.ExampleStream` does.
  1 rank × B and 2 ranks × B/2 read the same examples in the same steps.
* **Sampling.** A pool holds exactly the draws the unbucketed stream would make in those
  ``K`` steps, reordered: the α-sampling proportions, the per-group epochs (every example once
  per epoch of its group) and the draw sequence across pools are unchanged. Examples move
  between steps of one pool only.
* **Resumption.** :meth:`BucketedStream.state_dict` holds the sampler's state at the start
  of the current pool and the position in it; loading it redraws the pool (a pure function
  of that state) and continues exactly, on any number of ranks.

Streamed sources (each rank reads its own shard) are not bucketed. The sort key of an example
is the objective's :meth:`objkit.Objective.bucket_lengths`, computed once over the prepared
dataset from its Arrow columns. Default: its longest token list (:func:`example_lengths`):
``input_ids`` for TLM and ``xlm_align`` (the pair laid out as one sequence), ``max(src_ids,
tgt_ids)`` for the example plugin's ``[2B, L]`` batch, whose padded width is set by the longest
side. A key may have several columns (``[N, k]``), compared in order: XLCO sorts on the longer
side, then the shorter (:func:`side_lengths`), since it pads each side on its own.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from objkit.contract.defaults import example_lengths, side_lengths  # the sort keys (re-exported here)
from objkit.data.sampling import ExampleStream, _MapStream


class BucketedStream:
    """An :class:`ExampleStream` (map-style) whose draws are reordered in pools of
    ``pool_steps`` steps of ``step_size`` global examples (see the module docstring).
    Same interface as the stream: ``next_examples``, ``state_dict``, ``load_state_dict``."""

    def __init__(self, stream: ExampleStream, lengths: np.ndarray, *, step_size: int, pool_steps: int,
                 seed: int) -> None:
        impl = stream._impl
        if not isinstance(impl, _MapStream):
            raise ValueError("length bucketing needs a map-style source (streamed sources are not bucketed)")
        if step_size <= 0 or pool_steps <= 0:
            raise ValueError(f"step_size and pool_steps must be positive (got {step_size}, {pool_steps})")
        if np.ndim(lengths) not in (1, 2):
            raise ValueError(f"lengths must be [rows] or [rows, keys] (got shape {np.shape(lengths)})")
        if len(lengths) != len(impl.dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(impl.dataset)} rows")
        self.stream, self._impl = stream, impl
        self.lengths = np.asarray(lengths)
        self.step_size, self.pool_steps, self.seed = step_size, pool_steps, seed
        self._pool: list[int] = []  # dataset rows of the current pool, in bucketed order
        self._pos = 0  # global draws of the current pool already handed out
        self._pool_number = -1  # pools drawn so far - 1
        self._pool_start: dict[str, Any] | None = None  # the sampler's state before the current pool

    # ------------------------------------------------------------------ passthrough
    @property
    def probabilities(self) -> dict[str, float]:
        return self.stream.probabilities

    @property
    def group_sizes(self) -> dict[str, int]:
        return self.stream.group_sizes

    @property
    def per_rank(self) -> bool:
        return False

    # ------------------------------------------------------------------ draws
    def _next_pool(self) -> None:
        self._pool_start = copy.deepcopy(self._impl.state_dict())
        self._pool_number += 1
        rows = np.asarray(self._impl.draw(self.step_size * self.pool_steps), dtype=np.int64)
        keys = self.lengths[rows]
        if keys.ndim == 1:
            rows = rows[np.argsort(keys, kind="stable")]
        else:  # column 0 decides, the next columns break ties (np.lexsort: last key primary; stable)
            rows = rows[np.lexsort(keys.T[::-1])]
        steps = rows.reshape(self.pool_steps, self.step_size)
        order = np.random.default_rng([self.seed, self._pool_number]).permutation(self.pool_steps)
        self._pool = steps[order].reshape(-1).tolist()
        self._pos = 0

    def next_rows(self, draws: int) -> list[int]:
        """The dataset rows of the next ``draws`` global draws (all ranks), in bucketed order."""
        out: list[int] = []
        while len(out) < draws:
            if self._pos == len(self._pool):
                self._next_pool()
            take = min(draws - len(out), len(self._pool) - self._pos)
            out.extend(self._pool[self._pos : self._pos + take])
            self._pos += take
        return out

    def next_examples(self, n: int) -> list[dict[str, Any]]:
        """This rank's ``n`` of the next ``n × world_size`` global draws (rank ``r``: ``[r·n, (r+1)·n)``)."""
        rows = self.next_rows(n * self._impl.world_size)
        rank = self._impl.rank
        return self._impl.read(rows[rank * n : (rank + 1) * n])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self._pool_start is None:  # no pool drawn yet
            return {"kind": "bucketed", "pool": None, "sampler": self._impl.state_dict()}
        return {"kind": "bucketed", "pool": self._pool_number, "offset": self._pos, "sampler": self._pool_start,
                "pool_steps": self.pool_steps, "step_size": self.step_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "bucketed":
            raise ValueError("stream state is not from a length-bucketed stream (train.length_bucketing changed?)")
        self._impl.load_state_dict(state["sampler"])
        self._pool, self._pos, self._pool_start = [], 0, None
        self._pool_number = -1
        if state["pool"] is None:
            return
        if (state["pool_steps"], state["step_size"]) != (self.pool_steps, self.step_size):
            raise ValueError(f"stream state has pools of {state['pool_steps']} steps of {state['step_size']}, "
                             f"this stream {self.pool_steps} of {self.step_size}")
        self._pool_number = int(state["pool"]) - 1
        self._next_pool()
        self._pos = int(state["offset"])
