"""Collate the next step while this one trains: one worker thread, one step ahead.

Drawing examples, collating (padding, masking) and counting units, tokens and padding are
host work; done synchronously they leave the device idle at the start of every step. The
trainer asks :class:`StepPrefetcher` for step ``t``, which hands over the batches collated
on the worker and immediately starts collating ``t + 1``.

Deterministic: a step's batches are a function of the example streams' positions and
``(seed, step)`` only (per-example ``sample_seed``, per-micro-batch generators), never of
timing; the worker is the only reader of the streams while it runs, and steps are collated
strictly in order. Since the worker runs ahead, the streams' live position is one step past
the one trained: each collated step carries the streams' state right after its own draws,
and a checkpoint records that (:attr:`StepPrefetcher.consumed_states`). A plugin's
``collate`` must not use the global RNGs (the plugin API already requires per-example
randomness from ``sample_seed``), since the training thread draws dropout from them.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from objkit.train.step import CollatedStep


class StepPrefetcher:
    """``collate(step) -> CollatedStep`` run one step ahead on a worker thread, for steps
    ``[start, stop)``. ``snapshot()`` returns the example streams' state; it is taken on the
    worker right after each step's draws."""

    def __init__(self, collate: Callable[[int], CollatedStep], snapshot: Callable[[], dict[str, Any]],
                 start: int, stop: int) -> None:
        self._collate, self._snapshot, self._stop = collate, snapshot, stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="objkit-collate")
        self._pending: Future[CollatedStep] | None = None
        self._next = start
        self.consumed_states: dict[str, Any] | None = None
        """The streams' state after the last step handed out (None before the first)."""
        self._submit()

    def _work(self, step: int) -> CollatedStep:
        collated = self._collate(step)
        collated.stream_states = self._snapshot()
        return collated

    def _submit(self) -> None:
        if self._next < self._stop:
            self._pending = self._pool.submit(self._work, self._next)
            self._next += 1
        else:
            self._pending = None

    def get(self, step: int) -> CollatedStep:
        """The batches of ``step`` (the next one in order); starts collating the one after."""
        if self._pending is None:
            raise RuntimeError(f"no step collated ahead for step {step}")
        collated = self._pending.result()  # re-raises what the worker raised
        if collated.step != step:
            raise RuntimeError(f"collated step {collated.step} but step {step} asked for")
        self.consumed_states = collated.stream_states
        self._submit()
        return collated

    def close(self) -> None:
        """Drop what was collated ahead (the streams' live state is then past the trained step:
        use :attr:`consumed_states`) and stop the worker."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StepPrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
