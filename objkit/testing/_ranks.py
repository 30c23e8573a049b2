"""Simulated ranks for the conformance kit: one global batch of ``B`` examples trained as
1 rank × ``B`` and as ``N`` ranks × ``B/N``, through the real :class:`objkit.train.step.CompositeLoss`
(which gives every example its ``sample_seed`` and every rank its own ``generator``).

The ``N`` ranks are threads of this process. Collectives go through an in-process exchange:
the composite's all-reduce of unit counts and the gradient average use it directly, and
``torch.distributed.all_gather`` / ``all_reduce`` / ``get_world_size`` are replaced for the
duration, so a plugin that gathers other ranks' tensors with :func:`objkit.gather_rows` (or
calls ``torch.distributed`` itself) sees a real N-rank world. Internal: the public entry
point is :func:`objkit.testing.check_objective_ranks`.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch

from objkit.distributed import ParallelStrategy
from objkit.train.step import CompositeLoss, ObjectiveSlot
from objkit.contract.interfaces import Encoder, Objective, StepContext, WorldInfo

SLOT = "under_test"
_TIMEOUT_S = 300.0


class _Exchange:
    """``exchange(rank, value)`` -> every rank's value, in rank order (a barrier on both sides)."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.barrier = threading.Barrier(world_size, timeout=_TIMEOUT_S)
        self.slots: list[Any] = [None] * world_size

    def exchange(self, rank: int, value: Any) -> list[Any]:
        if self.world_size == 1:
            return [value]
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


_current = threading.local()  # .rank and .exchange of the simulated rank running in this thread


def _all_gather(out: list[torch.Tensor], tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    parts = _current.exchange.exchange(_current.rank, tensor.detach().clone())
    for slot, part in zip(out, parts, strict=True):
        slot.copy_(part)


def _all_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    parts = _current.exchange.exchange(_current.rank, tensor.detach().clone())
    tensor.copy_(torch.stack(parts).sum(dim=0))


@contextlib.contextmanager
def _fake_distributed(world_size: int) -> Iterator[None]:
    import torch.distributed as dist

    with (
        mock.patch.object(dist, "all_gather", _all_gather, create=True),
        mock.patch.object(dist, "all_reduce", _all_reduce, create=True),
        mock.patch.object(dist, "get_world_size", lambda *a, **k: world_size, create=True),
    ):
        yield


class _ThreadStrategy(ParallelStrategy):
    """The one-process :class:`objkit.distributed.ParallelStrategy` of one simulated rank, with
    sums reduced over the simulated ranks."""

    def __init__(self, encoder: Encoder, objective: Objective, rank: int, exchange: _Exchange) -> None:
        super().__init__(encoder, [objective], WorldInfo(rank=rank, world_size=exchange.world_size))
        self.rank, self.exchange = rank, exchange

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.exchange.exchange(self.rank, tensor.clone())).sum(dim=0)


def run_ranks(
    build: Callable[[WorldInfo], tuple[Encoder, Objective, list[torch.nn.Parameter]]],
    examples: list[dict[str, Any]],
    *,
    world_size: int,
    steps: int,
    seed: int,
    lr: float = 0.1,
) -> list[tuple[float, float] | None]:
    """Train ``steps`` SGD steps of one objective on the same global batch ``examples`` every
    step, split over ``world_size`` simulated ranks (``len(examples)`` divisible by it), with
    gradients averaged over ranks as DDP does. Returns per step the global ``(loss sum, units)``
    of the objective (per-unit loss × units, summed over ranks), or None for a step without
    output units. ``build(world)`` makes one rank's encoder, objective and parameters
    (called in this thread, rank by rank, so global RNG use is deterministic)."""
    if len(examples) % world_size:
        raise ValueError(f"{len(examples)} examples do not split over {world_size} ranks")
    b = len(examples) // world_size
    exchange = _Exchange(world_size)
    replicas = [build(WorldInfo(rank=r, world_size=world_size)) for r in range(world_size)]
    results: list[list[tuple[float, float] | None] | None] = [None] * world_size
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        _current.rank, _current.exchange = rank, exchange
        encoder, objective, params = replicas[rank]
        mine = examples[rank * b : (rank + 1) * b]
        slot = ObjectiveSlot(SLOT, objective, 1.0, lambda n: copy.deepcopy(mine[:n]))
        composite = CompositeLoss([slot], micro_batch_size=b, accumulation=1, seed=seed,
                                  strategy=_ThreadStrategy(encoder, objective, rank, exchange))
        optimizer = torch.optim.SGD(params, lr=lr)
        world = WorldInfo(rank=rank, world_size=world_size)
        losses: list[tuple[float, float] | None] = []
        try:
            for step in range(steps):
                ctx = StepContext(step=step, encoder=encoder, device=torch.device("cpu"), world=world)
                stats = composite.accumulate(ctx)
                key = f"{SLOT}/loss"
                local = (float(stats.sums.get(key, 0.0)), stats.units.get(key, 0.0))
                total = exchange.exchange(rank, local)
                units = sum(u for _, u in total)
                losses.append((sum(s for s, _ in total), units) if units > 0 else None)
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                for p, parts in zip(params, zip(*exchange.exchange(rank, grads), strict=True), strict=True):
                    p.grad = torch.stack(parts).mean(dim=0)  # DDP averages; the composite scaled by world_size
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                objective.after_optimizer_step(ctx)
            results[rank] = losses
        except BaseException as exc:  # free the other ranks waiting on the barrier
            errors.append(exc)
            exchange.barrier.abort()

    if world_size == 1:
        rank_main(0)
    else:
        with _fake_distributed(world_size):
            threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(world_size)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(_TIMEOUT_S * 2)
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    assert results[0] is not None
    return results[0]
