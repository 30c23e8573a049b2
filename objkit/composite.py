"""Loss composition: weights, one batch per objective, one backward per objective.

``CompositeLoss.accumulate`` runs every enabled objective on its own micro-batches for one
optimizer step. By default each objective's weighted loss is backpropagated before the next
objective runs (``backward = "per_objective"``, as the InfoXLM reference does), which frees
each graph before the next is built and bounds peak memory by the largest single objective.
``backward = "joint"`` sums the objectives of a micro-batch and backpropagates once.

The global batch of a step (``batch_size`` examples per objective) is laid out as
``accumulation`` global micro-batches of ``world_size × micro_batch_size`` examples; rank
``r`` collates rows ``[r·b, (r+1)·b)`` of each. Every example carries a ``sample_seed``
(:mod:`objkit.seeding`) that depends on its position in the global batch, not on the rank.

Normalisation, by the step's *global* unit counts (masked tokens, sentences: each
objective's ``sample_size`` summed over all micro-batches and ranks of the step, known before
the first forward and all-reduced once), fairseq's sample-size reduction:

* ``"mean"`` (default): ``Σ_i weight_i · (Σ per-unit losses of i) / (units of i)`` -- each
  objective's loss is a mean over its own units, so weights mean what they say.
* ``"reference"``: the fairseq reference sums the per-unit losses of all objectives and
  divides by the total number of units (XLCO sentences + masked tokens), so an objective's
  share is proportional to its unit count.

Each rank backpropagates its part of that sum (times the world size, since DDP and FSDP
average gradients over ranks), so the gradient equals one process's gradient of the whole
global batch: 1 rank × micro-batch B and 2 ranks × B/2 give the same losses and gradients up
to floating-point reduction order. All backward passes of a step but the last accumulate
gradients locally (``no_sync``); the last synchronises them once (:mod:`objkit.distributed`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from objkit.distributed import Replicas, all_gather_objects
from objkit.interfaces import Objective, StepContext, WorldInfo
from objkit.seeding import SAMPLE_SEED, derive_seed, sample_seed


def micro_batch_seed(seed: int, objective: str, step: int, rank: int, micro: int) -> int:
    """A stable 63-bit seed for the ``generator`` given to ``collate``: randomness about a
    micro-batch as a whole. Per-example randomness uses ``sample_seed`` instead."""
    return derive_seed(seed, objective, step, rank, micro)


@dataclass
class ObjectiveSlot:
    name: str
    objective: Objective
    weight: float
    next_examples: Callable[[int], list[dict[str, Any]]]


@dataclass
class StepStats:
    """What one optimizer step measured on this rank.

    ``sums[key]`` is ``Σ value × units`` over this rank's micro-batches and ``units[key]`` the
    units behind it, for ``<objective>/loss`` and every ``<objective>/<metric>``: summed over
    ranks and divided, they give the global per-unit mean (:func:`summarise`). ``values`` holds
    step-level scalars that are the same on every rank (``grad_norm``). ``backwards`` counts
    backward passes, ``synced_backwards`` those that synchronised gradients (at most one)."""

    sums: dict[str, float] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    sample_size: int = 0
    tokens: int = 0
    synced_backwards: int = 0
    backwards: int = 0


class CompositeLoss:
    def __init__(
        self,
        slots: list[ObjectiveSlot],
        *,
        micro_batch_size: int,
        accumulation: int,
        normalization: str = "mean",
        backward: str = "per_objective",
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        scale_loss: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
        seed: int = 1,
        replicas: Replicas | None = None,
    ) -> None:
        self.slots = slots
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.normalization = normalization
        self.backward_mode = backward
        self.autocast = autocast
        self.scale_loss = scale_loss
        self.seed = seed
        self.replicas: Replicas | _InProcess = replicas if replicas is not None else _InProcess()

    def collate_step(self, ctx: StepContext) -> list[list[dict[str, torch.Tensor]]]:
        """This rank's batches of the step, ``[micro][slot]``, on the CPU."""
        world, b = ctx.world, self.micro_batch_size
        batches = []
        for micro in range(self.accumulation):
            row = []
            for slot in self.slots:
                examples = slot.next_examples(b)
                first = (micro * world.world_size + world.rank) * b  # position in the step's global batch
                for j, example in enumerate(examples):
                    example[SAMPLE_SEED] = sample_seed(self.seed, slot.name, ctx.step, first + j)
                generator = torch.Generator().manual_seed(
                    micro_batch_seed(self.seed, slot.name, ctx.step, world.rank, micro)
                )
                row.append(slot.objective.collate(examples, generator))
            batches.append(row)
        return batches

    def accumulate(self, ctx: StepContext) -> StepStats:
        """Forward and backward for one optimizer step; gradients are left in ``.grad``."""
        batches = self.collate_step(ctx)
        world_size = ctx.world.world_size
        weights = [slot.weight * slot.objective.loss_weight(ctx.step) for slot in self.slots]
        active = [slot.objective.has_loss(ctx.step) for slot in self.slots]
        units = [
            [slot.objective.sample_size(batch) if on else 0 for slot, batch, on in zip(self.slots, row, active)]
            for row in batches
        ]
        local = torch.tensor([sum(row[k] for row in units) for k in range(len(self.slots))], dtype=torch.float64)
        if world_size > 1:  # the step's global unit counts (on the device: NCCL reduces CUDA tensors)
            local = self.replicas.all_reduce_sum(local.to(ctx.device))
        totals = local.tolist()
        if self.normalization == "reference":
            everything = sum(t for t, w in zip(totals, weights) if w > 0)
            denominators = [everything] * len(totals)
        else:
            denominators = totals
        groups = [[k] for k in range(len(self.slots))] if self.backward_mode != "joint" else [list(range(len(self.slots)))]
        last = max(((m, k) for m in range(self.accumulation) for k, on in enumerate(active) if on), default=None)

        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        stats = StepStats()
        for micro, row in enumerate(batches):
            for group in groups:
                sync = last is not None and last[0] == micro and last[1] in group
                tasks = []
                for k in group:
                    batch = row[k]
                    stats.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                    on_device = {name: t.to(ctx.device, non_blocking=True) for name, t in batch.items()}
                    tasks.append((self.slots[k].objective, on_device))
                with self.replicas.gradient_sync(sync):
                    with self.autocast():
                        outputs = self.replicas.forward(tasks, ctx)
                    terms = []
                    for k, out in zip(group, outputs, strict=True):
                        slot, n = self.slots[k], units[micro][k]
                        self._check(slot, active[k], out, n, ctx.step)
                        if active[k]:
                            share = n * weights[k] * world_size / max(denominators[k], 1.0)
                            terms.append(out.loss.float() * share)
                            stats.sample_size += n if weights[k] > 0 else 0
                        if out.sample_size > 0:
                            sums[f"{slot.name}/loss"] += float(out.loss.detach()) * out.sample_size
                            counts[f"{slot.name}/loss"] += out.sample_size
                            for key, value in out.metrics.items():
                                sums[f"{slot.name}/{key}"] += float(value) * out.sample_size
                                counts[f"{slot.name}/{key}"] += out.sample_size
                    del outputs, tasks
                    if terms:
                        self.scale_loss(torch.stack(terms).sum() if len(terms) > 1 else terms[0]).backward()
                        stats.backwards += 1
                        stats.synced_backwards += int(sync)
                    else:
                        self.replicas.no_backward()
        stats.sums, stats.units = dict(sums), dict(counts)
        return stats

    @staticmethod
    def _check(slot: ObjectiveSlot, active: bool, out: Any, units: int, step: int) -> None:
        """The objective did what ``has_loss`` / ``sample_size`` announced (the step's
        normalisation and gradient synchronisation were planned on it)."""
        trains = bool(out.loss.requires_grad)
        if active and not trains:
            raise RuntimeError(
                f"objectives.{slot.name}: has_loss({step}) is True but compute() returned a loss without a "
                "gradient; return False from has_loss for steps without a loss"
            )
        if trains and not active:
            raise RuntimeError(
                f"objectives.{slot.name}: compute() returned a loss with a gradient at step {step} although "
                "has_loss() is False; it would not be trained"
            )
        if active and out.sample_size != units:
            raise RuntimeError(
                f"objectives.{slot.name}: sample_size(batch) announced {units} units but compute() reported "
                f"{out.sample_size}; the two must agree (the loss is normalised by the announced count)"
            )


class _InProcess:
    """Objectives called directly, no process group (a composite built without :class:`Replicas`)."""

    def forward(self, tasks: list[tuple[Objective, dict[str, torch.Tensor]]], ctx: StepContext) -> list[Any]:
        return [objective.compute(batch, ctx) for objective, batch in tasks]

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def no_backward(self) -> None:
        pass

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def summarise(window: list[StepStats], world: WorldInfo) -> tuple[dict[str, float], int]:
    """Logged values of a window of steps, reduced over ranks (every rank must call this: one
    all-gather): per-unit means of every ``<objective>/<key>`` over all ranks and steps, window
    means of the step-level ``values``, sorted by key; and the tokens all ranks processed."""
    sums: dict[str, float] = defaultdict(float)
    units: dict[str, float] = defaultdict(float)
    for stats in window:
        for key, value in stats.sums.items():
            sums[key] += value
            units[key] += stats.units[key]
    local = (dict(sums), dict(units), sum(s.tokens for s in window))
    sums, units = defaultdict(float), defaultdict(float)
    tokens = 0
    for rank_sums, rank_units, rank_tokens in all_gather_objects(local, world):
        for key, value in rank_sums.items():
            sums[key] += value
            units[key] += rank_units[key]
        tokens += rank_tokens
    means = {key: sums[key] / units[key] for key in sums if units[key] > 0}
    for key in {k for s in window for k in s.values}:
        values = [s.values[key] for s in window if key in s.values]
        means[key] = sum(values) / len(values)
    return {key: means[key] for key in sorted(means)}, tokens
