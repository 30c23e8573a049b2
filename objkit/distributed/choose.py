"""Which :class:`~objkit.distributed.strategy.ParallelStrategy` a run uses: one process, DDP or
FSDP2. Chosen here, above both :mod:`objkit.distributed.strategy` and
:mod:`objkit.distributed.fsdp`, so that neither imports the other's way back."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from objkit.contract.errors import UserError
from objkit.contract.interfaces import Encoder, Objective, WorldInfo
from objkit.distributed.strategy import DDPStrategy, ParallelStrategy


def parallelize(
    encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo, device: torch.device, mode: str, precision: str,
    param_dtype: torch.dtype | None = None,
) -> ParallelStrategy:
    """The run's :class:`ParallelStrategy`: one process, else DDP or FSDP (``train.parallelism``).
    ``param_dtype`` (FSDP only; ``train.param_dtype``): the dtype FSDP2 gathers the encoder's fp32
    shards in for the step (its ``MixedPrecisionPolicy``)."""
    if world.world_size <= 1:
        return ParallelStrategy(encoder, objectives, world)
    if mode == "fsdp":
        if precision == "fp16":
            raise UserError(
                "train.precision: fp16 (with a gradient scaler) is not supported with parallelism = 'fsdp'; "
                "use bf16 (got 'fp16')"
            )
        from objkit.distributed.fsdp import FSDPStrategy

        return FSDPStrategy(encoder, objectives, world, device, param_dtype=param_dtype)
    return DDPStrategy(encoder, objectives, world, device)


__all__ = ["parallelize"]
