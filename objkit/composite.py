"""Loss composition: weights, one batch per objective, one backward per objective.

``CompositeLoss.accumulate`` runs every enabled objective on its own micro-batches for one
optimizer step. By default each objective's weighted loss is backpropagated before the next
objective runs (``backward = "per_objective"``, as the InfoXLM reference does), which frees
each graph before the next is built and bounds peak memory by the largest single objective.
``backward = "joint"`` sums the objectives of a micro-batch and backpropagates once.

Normalisation:

* ``"mean"`` (default): ``Σ_i weight_i · mean-loss_i`` -- each objective's loss is a mean over
  its own units (masked tokens, sentences), so weights mean what they say.
* ``"reference"``: the fairseq reference sums the per-unit losses of all objectives and
  divides by the total number of units (XLCO sentences + masked tokens), so an objective's
  share is proportional to its unit count. Gradients are divided by the global unit count
  after all backward passes.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from objkit.interfaces import Objective, StepContext


def micro_batch_seed(seed: int, objective: str, step: int, rank: int, micro: int) -> int:
    """A stable 63-bit seed for one micro-batch's randomness (masking, mixup, query side)."""
    digest = hashlib.blake2b(f"{seed}/{objective}/{step}/{rank}/{micro}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass
class ObjectiveSlot:
    name: str
    objective: Objective
    weight: float
    next_examples: Callable[[int], list[dict[str, Any]]]


@dataclass
class StepStats:
    """What one optimizer step measured: per-objective mean loss and metrics, units, tokens."""

    values: dict[str, float] = field(default_factory=dict)
    sample_size: int = 0
    tokens: int = 0


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
    ) -> None:
        self.slots = slots
        self.micro_batch_size = micro_batch_size
        self.accumulation = accumulation
        self.normalization = normalization
        self.backward_mode = backward
        self.autocast = autocast
        self.scale_loss = scale_loss
        self.seed = seed

    def _backward(self, loss: torch.Tensor) -> None:
        if loss.requires_grad:
            self.scale_loss(loss).backward()

    def accumulate(self, ctx: StepContext) -> StepStats:
        """Forward and backward for one optimizer step; gradients are left in ``.grad``."""
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        stats = StepStats()
        for micro in range(self.accumulation):
            joint: list[torch.Tensor] = []
            for slot in self.slots:
                generator = torch.Generator().manual_seed(
                    micro_batch_seed(self.seed, slot.name, ctx.step, ctx.world.rank, micro)
                )
                batch = slot.objective.collate(slot.next_examples(self.micro_batch_size), generator)
                stats.tokens += int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
                batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
                with self.autocast():
                    out = slot.objective.compute(batch, ctx)
                weight = slot.weight * slot.objective.loss_weight(ctx.step)
                if self.normalization == "reference":
                    term = out.loss.float() * out.sample_size * weight
                else:
                    term = out.loss.float() * weight / self.accumulation
                stats.sample_size += out.sample_size if weight > 0 else 0
                if self.backward_mode == "joint":
                    joint.append(term)
                else:
                    self._backward(term)
                if out.sample_size > 0:
                    sums[f"{slot.name}/loss"] += float(out.loss.detach())
                    counts[f"{slot.name}/loss"] += 1
                    for key, value in out.metrics.items():
                        sums[f"{slot.name}/{key}"] += float(value)
                        counts[f"{slot.name}/{key}"] += 1
                del out, batch
            if joint:
                self._backward(torch.stack(joint).sum())
        stats.values = {key: sums[key] / counts[key] for key in sums}
        return stats
