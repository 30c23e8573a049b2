"""The step engine: collate a step's micro-batches, forward, backward, count what it measured.

Loss composition: weights, one batch per objective, one backward per objective.

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
from dataclasses import dataclass
from typing import Any

import torch

from objkit.distributed import ParallelStrategy
from objkit.interfaces import Objective, StepContext, WorldInfo
from objkit.masking import padding_counts
from objkit.metrics import Scalar, StepStats
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
class CollatedStep:
    """This rank's batches of one step, ``batches[micro][slot]`` on the CPU, with what can be
    counted on the host before any forward pass: ``units[micro][slot]`` (each objective's
    ``sample_size``), attended ``tokens`` and per slot ``(token slots, padded slots)``.
    ``stream_states`` is the position of every example stream right after this step's draws
    (what a checkpoint written after the step records)."""

    step: int
    batches: list[list[dict[str, torch.Tensor]]]
    units: list[list[int]]
    tokens: int
    padding: list[tuple[int, int]]
    stream_states: dict[str, Any] | None = None


class CompositeLoss:
    """Runs one optimizer step's forward and backward passes of every objective through
    ``strategy`` (:class:`objkit.distributed.ParallelStrategy`); see the module docstring."""

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
        strategy: ParallelStrategy,
    ) -> None:
        self.slots = slots
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.normalization = normalization
        self.backward_mode = backward
        self.autocast = autocast
        self.scale_loss = scale_loss
        self.seed = seed
        self.strategy = strategy

    def collate_step(self, step: int, world: WorldInfo) -> CollatedStep:
        """This rank's batches of ``step`` and their host-side counts. Touches only the example
        streams and the objectives' ``collate`` / ``sample_size``, so it may run on a worker
        thread while the previous step trains (:class:`objkit.prefetch.StepPrefetcher`)."""
        b = self.micro_batch_size
        batches, units, tokens = [], [], 0
        padding = [(0, 0)] * len(self.slots)
        for micro in range(self.accumulation):
            row = []
            for k, slot in enumerate(self.slots):
                examples = slot.next_examples(b)
                first = (micro * world.world_size + world.rank) * b  # position in the step's global batch
                for j, example in enumerate(examples):
                    example[SAMPLE_SEED] = sample_seed(self.seed, slot.name, step, first + j)
                generator = torch.Generator().manual_seed(micro_batch_seed(self.seed, slot.name, step, world.rank, micro))
                batch = slot.objective.collate(examples, generator)
                row.append(batch)
                # "attention_mask" and its further length groups ("attention_mask.1", ...)
                tokens += sum(int(m.sum()) for name, m in batch.items() if name.partition(".")[0] == "attention_mask")
                slots, padded = padding_counts(batch)
                padding[k] = (padding[k][0] + slots, padding[k][1] + padded)
            batches.append(row)
            units.append([slot.objective.sample_size(batch) for slot, batch in zip(self.slots, row, strict=True)])
        return CollatedStep(step, batches, units, tokens, padding)

    def accumulate(self, ctx: StepContext, collated: CollatedStep | None = None) -> StepStats:
        """Forward and backward for one optimizer step; gradients are left in ``.grad``.
        ``collated``: the step's batches, collated ahead (default: collated now)."""
        if collated is None:
            collated = self.collate_step(ctx.step, ctx.world)
        if collated.step != ctx.step:
            raise RuntimeError(f"batches collated for step {collated.step} given to step {ctx.step}")
        batches = collated.batches
        world_size = ctx.world.world_size
        weights = [slot.weight * slot.objective.loss_weight(ctx.step) for slot in self.slots]
        active = [slot.objective.has_loss(ctx.step) for slot in self.slots]
        units = [[n if on else 0 for n, on in zip(row, active, strict=True)] for row in collated.units]
        counts_by_slot = [sum(row[k] for row in units) for k in range(len(self.slots))]
        totals: list[Scalar]
        if world_size > 1:  # the step's global unit counts, left on the device (NCCL reduces CUDA tensors)
            local = torch.tensor(counts_by_slot, dtype=torch.float64)
            reduced = self.strategy.all_reduce_sum(local.to(ctx.device))
            totals = list(reduced.unbind())
        else:
            totals = [float(n) for n in counts_by_slot]
        if self.normalization == "reference":
            everything = sum((t for t, w in zip(totals, weights) if w > 0), 0.0)
            denominators = [everything] * len(totals)
        else:
            denominators = totals
        groups = [[k] for k in range(len(self.slots))] if self.backward_mode != "joint" else [list(range(len(self.slots)))]
        last = max(((m, k) for m in range(self.accumulation) for k, on in enumerate(active) if on), default=None)

        sums: dict[str, Scalar] = defaultdict(float)
        counts: dict[str, float] = defaultdict(float)
        stats = StepStats(tokens=collated.tokens)
        for k, (slots, padded) in enumerate(collated.padding):
            if slots:
                sums[f"{self.slots[k].name}/padding"] += padded
                counts[f"{self.slots[k].name}/padding"] += slots
        for micro, row in enumerate(batches):
            for group in groups:
                sync = last is not None and last[0] == micro and last[1] in group
                tasks = []
                for k in group:
                    batch = row[k]
                    on_device = {name: t.to(ctx.device, non_blocking=True) for name, t in batch.items()}
                    tasks.append((self.slots[k].objective, on_device))
                with self.strategy.gradient_sync(sync):
                    with self.autocast():
                        outputs = self.strategy.forward(tasks, ctx)
                    terms = []
                    for k, out in zip(group, outputs, strict=True):
                        slot, n = self.slots[k], units[micro][k]
                        self._check(slot, active[k], out, n, ctx.step)
                        if active[k]:
                            terms.append(out.loss.float() * _share(n * weights[k] * world_size, denominators[k]))
                            stats.sample_size += n if weights[k] > 0 else 0
                        if out.sample_size > 0:  # accumulated where they are: no host synchronisation
                            sums[f"{slot.name}/loss"] += _weighted(out.loss, out.sample_size)
                            counts[f"{slot.name}/loss"] += out.sample_size
                            for key, value in out.metrics.items():
                                sums[f"{slot.name}/{key}"] += _weighted(value, out.sample_size)
                                counts[f"{slot.name}/{key}"] += out.sample_size
                    del outputs, tasks
                    if terms:
                        self.scale_loss(torch.stack(terms).sum() if len(terms) > 1 else terms[0]).backward()
                        stats.backwards += 1
                        stats.synced_backwards += int(sync)
                    else:
                        self.strategy.no_backward()
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


def _share(numerator: float, denominator: Scalar) -> Scalar:
    """``numerator / max(denominator, 1)``: a float, or a float32 tensor where the denominator
    is a reduced count still on the device (multiplying a float32 loss like a float would)."""
    if isinstance(denominator, torch.Tensor):
        return (numerator / denominator.clamp(min=1.0)).float()
    return numerator / max(denominator, 1.0)


def _weighted(value: Scalar, units: int) -> Scalar:
    if isinstance(value, torch.Tensor):
        return value.detach().float() * units
    return float(value) * units
