"""What a training step measured, and its reduction over ranks and logging windows.

A step's values stay on the device as 0-dim tensors (:data:`Scalar`) until a logging window
ends; :func:`summarise` then reads them back in one transfer and reduces them over ranks in one
all-gather."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from objkit.distributed import all_gather_objects
from objkit.contract.interfaces import WorldInfo

Scalar = float | torch.Tensor
"""A logged number: a Python float or a 0-dim tensor still on the device (read back once per
logging interval by :func:`summarise`, not per micro-batch)."""


@dataclass
class StepStats:
    """What one optimizer step measured on this rank.

    ``sums[key]`` is ``Σ value × units`` over this rank's micro-batches and ``units[key]`` the
    units behind it, for ``<objective>/loss``, every ``<objective>/<metric>`` and
    ``<objective>/padding`` (padded token slots over all slots): summed over ranks and divided,
    they give the global per-unit mean (:func:`summarise`). Sums of tensors stay tensors on the
    device. ``values`` holds step-level scalars that are the same on every rank
    (``grad_norm``). ``backwards`` counts backward passes, ``synced_backwards`` those that
    synchronised gradients (at most one)."""

    sums: dict[str, Scalar] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)
    values: dict[str, Scalar] = field(default_factory=dict)
    sample_size: int = 0
    tokens: int = 0
    synced_backwards: int = 0
    backwards: int = 0


def to_host(values: dict[str, Scalar]) -> dict[str, float]:
    """Every value as a float, with one device-to-host transfer for all tensors together."""
    tensors = {key: v for key, v in values.items() if isinstance(v, torch.Tensor)}
    out = {key: float(v) for key, v in values.items() if not isinstance(v, torch.Tensor)}
    if tensors:
        device = next(iter(tensors.values())).device
        stacked = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v in tensors.values()])
        out.update(zip(tensors, stacked.tolist(), strict=True))
    return out


def summarise(window: list[StepStats], world: WorldInfo) -> tuple[dict[str, float], int]:
    """Logged values of a window of steps, reduced over ranks (every rank must call this: one
    all-gather): per-unit means of every ``<objective>/<key>`` over all ranks and steps, window
    means of the step-level ``values``, sorted by key; and the tokens all ranks processed.
    Tensors accumulated on the device are read back here, all in one transfer."""
    window_sums: dict[str, Scalar] = defaultdict(float)
    units: dict[str, float] = defaultdict(float)
    for stats in window:
        for key, value in stats.sums.items():
            window_sums[key] += value
            units[key] += stats.units[key]
    step_values: dict[str, list[Scalar]] = defaultdict(list)
    for stats in window:
        for key, value in stats.values.items():
            step_values[key].append(value)
    totals = {key: sum(values, 0.0) for key, values in step_values.items()}
    host = to_host({**{f"sum:{k}": v for k, v in window_sums.items()}, **{f"value:{k}": v for k, v in totals.items()}})
    sums: dict[str, float] = {key: host[f"sum:{key}"] for key in window_sums}
    local = (dict(sums), dict(units), sum(s.tokens for s in window))
    sums, units = defaultdict(float), defaultdict(float)
    tokens = 0
    for rank_sums, rank_units, rank_tokens in all_gather_objects(local, world):
        for key, value in rank_sums.items():
            sums[key] += value
            units[key] += rank_units[key]
        tokens += rank_tokens
    means = {key: sums[key] / units[key] for key in sums if units[key] > 0}
    for key, values in step_values.items():
        means[key] = host[f"value:{key}"] / len(values)
    return {key: means[key] for key in sorted(means)}, tokens


__all__ = ["Scalar", "StepStats", "summarise", "to_host"]
