"""``in_batch``: the current micro-batch's keys as negatives (SimCLR / CLIP-style in-batch contrast).

Not part of the InfoXLM reference (which uses the momentum queue only); an option for XLCO,
alone or next to ``momentum_queue``. ``negatives(keys)`` returns ``keys`` itself, so row
``i`` is query ``i``'s own positive: the store declares ``includes_current_keys = True`` and
the objective masks that diagonal. Keys are this rank's micro-batch only (no cross-rank
gather), so the number of negatives is ``micro_batch_size − 1``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from objkit import PLUGIN_API_VERSION, NegativeStore, PluginConfig, hookimpl


class InBatchConfig(PluginConfig):
    """No options."""


class InBatchNegatives(NegativeStore):
    name: ClassVar[str] = "in_batch"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[InBatchConfig]] = InBatchConfig
    includes_current_keys: ClassVar[bool] = True
    """Rows ``[0, B)`` of ``negatives(keys)`` are ``keys`` in order (their diagonal is each query's positive)."""

    def negatives(self, current_keys: torch.Tensor) -> torch.Tensor:
        return current_keys.detach()


@hookimpl
def objkit_plugins() -> list[type]:
    return [InBatchNegatives]
