"""``in_batch``: the current micro-batch's keys as negatives (SimCLR / CLIP-style in-batch contrast).

Not part of the InfoXLM reference (which uses the momentum queue only); an option for XLCO,
alone or next to ``momentum_queue``. ``negatives(keys)`` returns the keys of the whole
*global* micro-batch: with several ranks, every rank's keys are gathered in rank order
(ranks may hold different numbers), so a query on 2 ranks × B/2 is contrasted against the
same B keys as on 1 rank × B, and the loss does not depend on the number of ranks. The
keys come from the momentum encoder and carry no gradient, so gathering them costs one
all-gather and changes no gradient path; beside a ``momentum_queue`` the objective gathers
them once for both stores (``accepts_gathered_keys``). This rank's own keys sit at rows
``[current_keys_offset, current_keys_offset + B)``; the store declares
``includes_current_keys = True`` and the objective masks that diagonal (each query's own
positive). With one process nothing is gathered: ``B − 1`` negatives per query.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from objkit import (
    PLUGIN_API_VERSION,
    AllGather,
    NegativeStore,
    PluginConfig,
    WorldInfo,
    dist_all_gather,
    gather_rows,
    hookimpl,
)


class InBatchConfig(PluginConfig):
    """No options."""


class InBatchNegatives(NegativeStore):
    name: ClassVar[str] = "in_batch"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[InBatchConfig]] = InBatchConfig
    includes_current_keys: ClassVar[bool] = True
    """Rows ``[o, o + B)`` of ``negatives(keys)`` are ``keys`` in order (their diagonal is each query's positive)."""
    accepts_gathered_keys: ClassVar[bool] = True

    def __init__(self, config: InBatchConfig, dim: int, device: torch.device, world: WorldInfo) -> None:
        super().__init__(config, dim, device, world)
        self.all_gather: AllGather | None = dist_all_gather if world.world_size > 1 else None
        self._offset = 0

    @property
    def current_keys_offset(self) -> int:
        return self._offset

    def negatives(self, current_keys: torch.Tensor,
                  gathered: tuple[torch.Tensor, list[int]] | None = None) -> torch.Tensor:
        keys = current_keys.detach()
        if gathered is None:
            if self.all_gather is None:
                return keys
            gathered = gather_rows(keys, self.all_gather)
        rows, sizes = gathered
        self._offset = sum(sizes[: self.world.rank])
        return rows


@hookimpl
def objkit_plugins() -> list[type]:
    return [InBatchNegatives]
