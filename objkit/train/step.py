"""One optimizer step, top to bottom: :meth:`TrainStep.__call__` reads it in order.

====  ==========================================  ============================  ===================
      what happens                                who does it                   named point after it
====  ==========================================  ============================  ===================
1     collate this rank's micro-batches           :meth:`CompositeLoss.collate`  ``collated``
      (or take those the prefetcher collated)     (:mod:`objkit.train.prefetch`)
2     loss normalisation: weights, global unit    :meth:`CompositeLoss.normalise`  ``normalised``
      counts (one all-reduce), denominators       strategy ``all_reduce_sum``
3     forward, per objective and micro-batch      strategy ``forward``          ``before_compute``
                                                                                (each objective)
4     loss terms, backward (fp16: scaled)         :func:`forward_backward`      ``backward``
5     gradient sync in the step's last backward   strategy ``gradient_sync``    ``synced``
6     unscale (fp16), gradient norm, clip         strategy ``grad_norm``        ``clipped``
7     skip on non-finite (agreed over ranks,      strategy ``agree``,           ``agreed``
      with stop requests and the time budget)     :class:`objkit.distributed.faults.BadSteps`
8     optimizer (unless skipped) and schedule     the recipe's optimizer and    ``updated``
                                                  schedule, the fp16 scaler
9     release gradients (``zero_grad``)            the grad pool                 ``released``
                                                  (:class:`objkit.blocks.grad_pool.GradPool`)
10    after-step hooks (momentum encoders,        ``Objective.after_optimizer_  ``after_step``
      queues), unless skipped                     step``
====  ==========================================  ============================  ===================

The parallel strategy (:mod:`objkit.distributed`: one process, DDP, FSDP2) is called at points
3, 5, 6, 7 and 2 through its declared methods; the memory methods (:mod:`objkit.train.memory`) plug in as
:class:`StepHook` objects given to the step, each declaring the :class:`StepPoint` it acts at
(activation checkpointing of some objectives only: ``before_compute``), and as the grad pool (9).
The fused chunked LM head and the gradients written in place act inside the encoder, through the
run options it declares (:class:`objkit.EncoderRunOptions`). The trainer (:mod:`objkit.train.trainer`)
is the loop around the step: logging, checkpoints, evaluation, signals, the time budget.

Loss composition: weights, one batch per objective, one backward per objective. By default each
objective's weighted loss is backpropagated before the next objective runs (``backward =
"per_objective"``, as the InfoXLM reference does), which frees each graph before the next is
built and bounds peak memory by the largest single objective. ``backward = "joint"`` sums the
objectives of a micro-batch and backpropagates once.

The global batch of a step (``batch_size`` examples per objective) is laid out as
``accumulation`` global micro-batches of ``world_size × micro_batch_size`` examples; rank
``r`` collates rows ``[r·b, (r+1)·b)`` of each. Every example carries a ``sample_seed``
(:mod:`objkit.blocks.seeding`) that depends on its position in the global batch, not on the rank.

Normalisation, by the step's *global* unit counts (masked tokens, sentences: each objective's
``sample_size`` summed over all micro-batches and ranks of the step, known before the first
forward and all-reduced once), fairseq's sample-size reduction:

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
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch

from objkit.distributed import faults
from objkit.distributed import ParallelStrategy
from objkit.blocks.grad_pool import GradPool
from objkit.contract.interfaces import Objective, StepContext, WorldInfo
from objkit.blocks.masking import padding_counts
from objkit.train.metrics import Scalar, StepStats, to_host
from objkit.blocks.seeding import SAMPLE_SEED, derive_seed, sample_seed


class StepPoint(str, Enum):
    """The named points of a step, in the order :meth:`TrainStep.__call__` reaches them (see the
    module docstring); ``before_compute`` and ``backward`` come once per objective pass."""

    COLLATED = "collated"
    NORMALISED = "normalised"
    BEFORE_COMPUTE = "before_compute"
    BACKWARD = "backward"
    SYNCED = "synced"
    CLIPPED = "clipped"
    AGREED = "agreed"
    UPDATED = "updated"
    RELEASED = "released"
    AFTER_STEP = "after_step"


@dataclass
class StepState:
    """What a :class:`StepHook` sees, filled in as the step goes: ``collated`` from
    ``collated``, ``objective`` at ``before_compute``, ``micro`` and ``sync`` (this backward
    synchronised gradients) at ``backward``, ``stats`` from ``synced``, ``grad_norm`` (a 0-dim
    tensor on the device: reading it waits for the device) from ``clipped``, ``skipped`` (the
    update was skipped: non-finite on some rank) from ``agreed``."""

    ctx: StepContext
    collated: CollatedStep | None = None
    objective: Objective | None = None
    micro: int = 0
    sync: bool = False
    stats: StepStats | None = None
    grad_norm: torch.Tensor | None = None
    skipped: bool = False


class StepHook:
    """Plugged into a step at the named points it declares (``points``); :meth:`at` is called
    there with the step's :class:`StepState`. A hook must not read device values back (the step
    reads one boolean per step) nor touch the global RNGs (dropout draws from them)."""

    points: ClassVar[frozenset[StepPoint]] = frozenset()

    def at(self, point: StepPoint, state: StepState) -> None:
        raise NotImplementedError


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


@dataclass
class Normalisation:
    """The step's loss normalisation (:meth:`CompositeLoss.normalise`): per slot the weight,
    whether it has a loss, its units per micro-batch and its denominator; the backward groups and
    the ``(micro, slot)`` of the step's last backward (the one that synchronises gradients)."""

    weights: list[float]
    active: list[bool]
    units: list[list[int]]
    denominators: list[Scalar]
    groups: list[list[int]]
    last: tuple[int, int] | None


class CompositeLoss:
    """The step's objectives and their loss composition (points 1 to 5 of the module docstring),
    run through ``strategy`` (:class:`objkit.distributed.ParallelStrategy`)."""

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
        thread while the previous step trains (:class:`objkit.train.prefetch.StepPrefetcher`)."""
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

    def collate(self, ctx: StepContext, collated: CollatedStep | None = None) -> CollatedStep:
        """Point 1: ``collated`` (the step's batches collated ahead), else collated now."""
        if collated is None:
            collated = self.collate_step(ctx.step, ctx.world)
        if collated.step != ctx.step:
            raise RuntimeError(f"batches collated for step {collated.step} given to step {ctx.step}")
        return collated

    def normalise(self, ctx: StepContext, collated: CollatedStep) -> Normalisation:
        """Point 2: every objective's weight and denominator, from the step's global unit counts
        (all-reduced once, left on the device: NCCL reduces CUDA tensors)."""
        weights = [slot.weight * slot.objective.loss_weight(ctx.step) for slot in self.slots]
        active = [slot.objective.has_loss(ctx.step) for slot in self.slots]
        units = [[n if on else 0 for n, on in zip(row, active, strict=True)] for row in collated.units]
        counts_by_slot = [sum(row[k] for row in units) for k in range(len(self.slots))]
        totals: list[Scalar]
        if ctx.world.world_size > 1:
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
        return Normalisation(weights, active, units, denominators, groups, last)

    def accumulate(self, ctx: StepContext, collated: CollatedStep | None = None) -> StepStats:
        """Points 1 to 5 alone (no optimizer): gradients are left in ``.grad``.
        ``collated``: the step's batches, collated ahead (default: collated now)."""
        collated = self.collate(ctx, collated)
        return forward_backward(self, ctx, collated, self.normalise(ctx, collated))


def forward_backward(composite: CompositeLoss, ctx: StepContext, collated: CollatedStep, norm: Normalisation,
                     at: Callable[[StepPoint, StepState], None] | None = None,
                     state: StepState | None = None) -> StepStats:
    """Points 3 to 5: forward, loss terms and backward of every objective on every micro-batch
    (through the strategy: the last backward synchronises gradients); what they measured.
    ``at(point, state)``: the step's hooks at ``before_compute`` and ``backward``."""
    slots, strategy, world_size = composite.slots, composite.strategy, ctx.world.world_size
    sums: dict[str, Scalar] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    stats = StepStats(tokens=collated.tokens)
    for k, (n_slots, padded) in enumerate(collated.padding):
        if n_slots:
            sums[f"{slots[k].name}/padding"] += padded
            counts[f"{slots[k].name}/padding"] += n_slots
    before_compute = _point_before_compute(at, state) if at is not None and state is not None else None
    for micro, row in enumerate(collated.batches):
        for group in norm.groups:
            sync = norm.last is not None and norm.last[0] == micro and norm.last[1] in group
            tasks = []
            for k in group:
                on_device = {name: t.to(ctx.device, non_blocking=True) for name, t in row[k].items()}
                tasks.append((slots[k].objective, on_device))
            with strategy.gradient_sync(sync):
                with composite.autocast():  # 3. forward
                    outputs = strategy.forward(tasks, ctx, before_compute)
                terms = []
                for k, out in zip(group, outputs, strict=True):
                    slot, n = slots[k], norm.units[micro][k]
                    _check(slot, norm.active[k], out, n, ctx.step)
                    if norm.active[k]:  # 4. the loss term: weight × world size × units / global units
                        terms.append(out.loss.float() * _share(n * norm.weights[k] * world_size, norm.denominators[k]))
                        stats.sample_size += n if norm.weights[k] > 0 else 0
                    if out.sample_size > 0:  # accumulated where they are: no host synchronisation
                        sums[f"{slot.name}/loss"] += _weighted(out.loss, out.sample_size)
                        counts[f"{slot.name}/loss"] += out.sample_size
                        for key, value in out.metrics.items():
                            sums[f"{slot.name}/{key}"] += _weighted(value, out.sample_size)
                            counts[f"{slot.name}/{key}"] += out.sample_size
                del outputs, tasks
                if terms:  # 4. backward; 5. the step's last one synchronises gradients over ranks
                    composite.scale_loss(torch.stack(terms).sum() if len(terms) > 1 else terms[0]).backward()
                    stats.backwards += 1
                    stats.synced_backwards += int(sync)
                else:
                    strategy.no_backward()
            if at is not None and state is not None and terms:
                state.micro, state.sync = micro, sync
                at(StepPoint.BACKWARD, state)
    stats.sums, stats.units = dict(sums), dict(counts)
    return stats


@dataclass
class StepOutcome:
    """What :class:`TrainStep` tells the loop: the step's ``stats``; ``skipped`` (the update was
    skipped), ``message`` (the log line of a skipped step), ``aborted`` (``train.max_bad_steps``
    reached: the loop raises it once the step is logged); ``stop_agreed`` and ``budget_spent``
    as agreed over ranks."""

    stats: StepStats
    skipped: bool = False
    message: str | None = None
    aborted: faults.RunAborted | None = None
    stop_agreed: bool = False
    budget_spent: bool = False


@dataclass
class TrainStep:
    """One optimizer step (the module docstring): the objectives' forward and backward
    (``composite``), clipping, the skip on non-finite values, the update and the after-step
    hooks. ``params``: what is clipped (the strategy's parameters); ``hooks``: the
    :class:`StepHook` objects plugged in (memory methods, observers)."""

    composite: CompositeLoss
    strategy: ParallelStrategy
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    params: list[torch.nn.Parameter]
    objectives: Sequence[Objective]
    bad_steps: faults.BadSteps
    clip_norm: float | None = None
    grad_pool: GradPool = field(default_factory=GradPool)
    hooks: Sequence[StepHook] = ()

    def __post_init__(self) -> None:
        self._hooks = {point: [h for h in self.hooks if point in h.points] for point in StepPoint}

    def __call__(self, ctx: StepContext, collated: CollatedStep | None = None, stop_requested: bool = False,
                 budget_spent: bool = False) -> StepOutcome:
        """Step ``ctx.step``. ``collated``: its batches if collated ahead. ``stop_requested`` (a
        signal on this rank) and ``budget_spent`` (``train.time_budget`` spent when the step began)
        are agreed over ranks in the same all-reduce as the non-finite check. One host
        synchronisation: whether the step is finite."""
        state = StepState(ctx)
        at = self._at if any(self._hooks[p] for p in (StepPoint.BEFORE_COMPUTE, StepPoint.BACKWARD)) else None
        ctx.encoder.train()
        # 1. collate: this rank's micro-batches (collated ahead by the prefetcher, or now)
        state.collated = self.composite.collate(ctx, collated)
        self._at(StepPoint.COLLATED, state)
        # 2. loss normalisation: weights and the step's global unit counts
        norm = self.composite.normalise(ctx, state.collated)
        self._at(StepPoint.NORMALISED, state)
        # 3-5. forward, loss terms, backward per objective and micro-batch; the last backward syncs
        state.stats = stats = forward_backward(self.composite, ctx, state.collated, norm, at, state)
        self._at(StepPoint.SYNCED, state)
        # 6. unscale (fp16), gradient norm over all ranks, clip to train.clip_norm
        self.scaler.unscale_(self.optimizer)
        state.grad_norm = self.strategy.grad_norm(self.params, self.clip_norm)
        if self.clip_norm is not None:
            stats.values["grad_norm"] = state.grad_norm
        self._at(StepPoint.CLIPPED, state)
        # 7. skip on non-finite: agreed over ranks, with the stop request and the time budget
        reason = nonfinite(stats, state.grad_norm)
        bad, stop_agreed, budget_spent = self.strategy.agree(reason is not None, stop_requested, budget_spent)
        out = StepOutcome(stats, skipped=bad, stop_agreed=stop_agreed, budget_spent=budget_spent)
        state.skipped = bad
        if bad:  # optimizer and momentum encoders stay; step and schedule move on
            try:
                out.message = self.bad_steps.record(ctx.step, reason or "loss or gradients on another rank")
            except faults.RunAborted as exc:  # raised by the loop once this step is counted and logged
                out.aborted = exc
            stats.values["skipped"] = 1.0
        else:
            self.bad_steps.record(ctx.step, None)
        self._at(StepPoint.AGREED, state)
        # 8. optimizer (unless skipped) and schedule
        if bad:
            self.scaler.update()  # fp16: back the loss scale off
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                self.scheduler.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self._at(StepPoint.UPDATED, state)
        # 9. release the gradients (zero_grad(set_to_none=True)); the grad pool keeps the storage of
        #    those written in place for the next step
        self.grad_pool.release(p for group in self.optimizer.param_groups for p in group["params"])
        self._at(StepPoint.RELEASED, state)
        # 10. after-step hooks: momentum encoders, queues
        if not bad:
            for objective in self.objectives:
                objective.after_optimizer_step(ctx)
        self._at(StepPoint.AFTER_STEP, state)
        return out

    def _at(self, point: StepPoint, state: StepState) -> None:
        for hook in self._hooks[point]:
            hook.at(point, state)


def nonfinite(stats: StepStats, grad_norm: torch.Tensor) -> str | None:
    """:func:`objkit.distributed.faults.nonfinite_reason` of the step's losses and gradient norm, reading one
    boolean back from the device (the values themselves only when something is not finite)."""
    checked = {key: value for key, value in {**stats.sums, **stats.values}.items() if key.endswith("loss")}
    tensors = [v.detach().float().reshape(()).to(grad_norm.device) for v in checked.values()
               if isinstance(v, torch.Tensor)]
    floats = [v for v in checked.values() if not isinstance(v, torch.Tensor)]
    finite = bool(torch.isfinite(torch.stack([grad_norm.detach().float().reshape(()), *tensors])).all())
    if finite and all(math.isfinite(v) for v in floats):
        return None
    return faults.nonfinite_reason(to_host(checked), float(grad_norm))


def _point_before_compute(at: Callable[[StepPoint, StepState], None],
                          state: StepState) -> Callable[[Objective], None]:
    """What the strategy's wrapped forward calls before each objective's ``compute``."""
    def before_compute(objective: Objective) -> None:
        state.objective = objective
        at(StepPoint.BEFORE_COMPUTE, state)

    return before_compute


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
