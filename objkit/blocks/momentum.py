"""Momentum (EMA) encoders as in MoCo (He et al., CVPR 2020) and InfoXLM (Chi et al., NAACL 2021).

A momentum copy ``θ_k`` of trained weights ``θ_q`` is updated after every optimizer step as
``θ_k ← m·θ_k + (1 − m)·θ_q`` with fused multi-tensor ops (one ``torch._foreach_lerp_`` over
all tensors, never a Python loop of per-parameter kernels). Reusable by any objective.

Schedules follow the InfoXLM reference (``tasks/infoxlm.py``, ``get_xlco_momentum``), with
``t`` = number of completed optimizer updates, evaluated after update ``t`` (so the first
EMA update uses ``t = 1``; the trainer's ``StepContext.step`` in ``after_optimizer_step`` is
``t − 1``):

* ``constant(m)``: ``m``.
* ``linear(begin, end, min, max)``: ``min`` for ``t ≤ begin``, ``max`` for ``t ≥ end``,
  linear in between.
* ``exponential(alpha, min, max)``: ``1 − t^(−alpha)`` clipped to ``[min, max]`` (``min`` at ``t ≤ 0``).
* ``constant_with_refresh(m, every)``: ``m``, except ``0`` (an exact copy) when ``t % every == 0``.

Before ``enable_step`` the reference sets the momentum to 0 (the key encoder tracks the
query encoder exactly); :meth:`MomentumTracker.step` does the same, with an exact copy.

Precision -- a flaw of the reference fixed here: fairseq's ``--fp16`` keeps the slow model in
fp16 and updates it there. The nearest fp16 value to 0.9999 is 1.0 (fp16 has 10 mantissa
bits: the neighbours of 1 are 1 − 2⁻¹¹ ≈ 0.99951 and 1), and an update of relative size
``(1 − m)·|θ_q − θ_k| / |θ_k| ≈ 10⁻⁴·…`` is below half an fp16 ulp (≈ 4.9·10⁻⁴ relative),
so it rounds away and the key encoder barely moves from its initial weights. Here momentum
copies are always fp32 (``make_momentum_copy``), whatever autocast does to the forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from objkit.blocks.master_weights import master_of
from objkit.contract.defaults import make_momentum_copy  # public here (objkit.make_momentum_copy)
from objkit.contract.interfaces import PluginConfig

Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class ConstantMomentum(PluginConfig):
    """``m`` at every step (reference: ``constant,0.9999`` for base, ``0.999`` for large)."""

    type: Literal["constant"] = "constant"
    m: Unit = 0.9999

    def value(self, t: int) -> float:
        return self.m


class LinearMomentum(PluginConfig):
    """``min`` until ``begin``, then linearly to ``max`` at ``end`` (reference ``linear,b,e,min,max``)."""

    type: Literal["linear"] = "linear"
    begin: int = Field(0, ge=0)
    end: int = Field(ge=0)
    min: Unit = 0.999
    max: Unit = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> LinearMomentum:
        if self.end < self.begin:
            raise ValueError("end must be >= begin")
        return self

    def value(self, t: int) -> float:
        if t <= self.begin:
            return self.min
        if t >= self.end:
            return self.max
        return self.min + (t - self.begin) * (self.max - self.min) / (self.end - self.begin)


class ExponentialMomentum(PluginConfig):
    """``1 − t^(−alpha)`` clipped to ``[min, max]`` (reference ``exponential,alpha,min,max``)."""

    type: Literal["exponential"] = "exponential"
    alpha: float = Field(0.51, gt=0)
    min: Unit = 0.0
    max: Unit = 0.9995

    def value(self, t: int) -> float:
        if t <= 0:
            return self.min
        return min(max(1.0 - t ** (-self.alpha), self.min), self.max)


class ConstantWithRefresh(PluginConfig):
    """``m``, but an exact copy of the query weights after every ``every``-th update."""

    type: Literal["constant_with_refresh"] = "constant_with_refresh"
    m: Unit = 0.9999
    every: int = Field(gt=0)

    def value(self, t: int) -> float:
        return 0.0 if t % self.every == 0 else self.m


MomentumSchedule = Annotated[
    ConstantMomentum | LinearMomentum | ExponentialMomentum | ConstantWithRefresh,
    Field(discriminator="type"),
]
"""A typed schedule; in TOML ``momentum = { type = "linear", begin = 0, end = 10000, min = 0.99, max = 0.9999 }``."""


def coerce_schedule(value: object) -> object:
    """Let a bare number stand for ``constant`` (``momentum = 0.9999``); use as a before-validator."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"type": "constant", "m": float(value)}
    return value


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view: in-place updates reach the DTensor), else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


class MomentumTracker:
    """Keeps ``targets`` an EMA of ``sources`` (lists of tensors paired by position).

    Build from modules with :meth:`between`, which pairs parameters by name, so a target
    module may hold a subset of the source's parameters (e.g. only the first L blocks).
    """

    def __init__(self, sources: Iterable[torch.Tensor], targets: Iterable[torch.Tensor]) -> None:
        self.sources = list(sources)
        self.targets = list(targets)
        if len(self.sources) != len(self.targets):
            raise ValueError(f"{len(self.sources)} source tensors but {len(self.targets)} targets")
        for src, dst in zip(self.sources, self.targets, strict=True):
            if src.shape != dst.shape:
                raise ValueError(f"shape mismatch: source {tuple(src.shape)} vs target {tuple(dst.shape)}")
        self.last_momentum: float | None = None

    @classmethod
    def between(cls, source: nn.Module, target: nn.Module) -> MomentumTracker:
        """Pair every parameter of ``target`` with ``source``'s parameter of the same name."""
        named = dict(source.named_parameters(remove_duplicate=False))
        pairs = []
        for name, param in target.named_parameters():
            if name not in named:
                raise KeyError(f"momentum target parameter {name!r} has no counterpart in the source module")
            pairs.append((named[name], param))
        return cls((s for s, _ in pairs), (t for _, t in pairs))

    def _sources(self) -> list[torch.Tensor]:
        """The sources as the EMA reads them: a source kept in bf16 by ``train.param_dtype`` is
        read from its fp32 master (:func:`objkit.blocks.master_weights.master_of`), and a source
        of another dtype than its target is cast to the target's."""
        sources = [_local(master_of(s).detach()) for s in self.sources]
        if all(s.dtype == t.dtype for s, t in zip(sources, self.targets, strict=True)):
            return sources
        return [s.to(t.dtype) for s, t in zip(sources, self.targets, strict=True)]

    @torch.no_grad()
    def update(self, momentum: float) -> None:
        """``target ← m·target + (1 − m)·source``; ``m = 0`` copies exactly, ``m = 1`` is a no-op.

        Sharded (FSDP) pairs are updated shard by shard, each rank its local part: source and
        target must then be sharded alike (same mesh and placement), as
        :meth:`objkit.Objective.shard` arranges."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] (got {momentum})")
        self.last_momentum = momentum
        if momentum == 1.0 or not self.targets:
            return
        targets = [_local(t) for t in self.targets]
        if momentum == 0.0:
            torch._foreach_copy_(targets, self._sources())
        else:
            torch._foreach_lerp_(targets, self._sources(), 1.0 - momentum)

    def step(self, updates: int, schedule: MomentumSchedule, enable_step: int = 0) -> float:
        """Apply the schedule after ``updates`` completed optimizer updates; returns the momentum used.

        Before ``enable_step`` (``updates < enable_step``) the target is an exact copy.
        """
        momentum = 0.0 if updates < enable_step else schedule.value(updates)
        self.update(momentum)
        return momentum

    def numel(self) -> int:
        return sum(t.numel() for t in self.targets)


__all__ = [
    "ConstantMomentum",
    "ConstantWithRefresh",
    "ExponentialMomentum",
    "LinearMomentum",
    "MomentumSchedule",
    "MomentumTracker",
    "coerce_schedule",
    "make_momentum_copy",
]
