"""objkit.blocks.momentum: schedule formulas (as in the reference's get_xlco_momentum), fused EMA
math, exact copies, enable_step, fp32 copies, and why fp16 EMA (the reference's) stalls."""

from __future__ import annotations

import pytest
import torch
from pydantic import BaseModel, ValidationError, field_validator
from torch import nn

from objkit.blocks.momentum import (
    ConstantMomentum,
    ConstantWithRefresh,
    ExponentialMomentum,
    LinearMomentum,
    MomentumSchedule,
    MomentumTracker,
    coerce_schedule,
    make_momentum_copy,
)


class Holder(BaseModel):
    momentum: MomentumSchedule

    @field_validator("momentum", mode="before")
    @classmethod
    def _number(cls, v: object) -> object:
        return coerce_schedule(v)


def test_schedules_follow_reference_formulas():
    assert ConstantMomentum(m=0.999).value(5) == 0.999
    linear = LinearMomentum(begin=10, end=20, min=0.9, max=0.99)
    assert [linear.value(t) for t in (0, 10, 15, 20, 30)] == pytest.approx([0.9, 0.9, 0.945, 0.99, 0.99])
    expo = ExponentialMomentum(alpha=0.51, min=0.0, max=0.9995)
    assert expo.value(0) == 0.0 and expo.value(1) == 0.0  # 1 - 1^-α = 0
    assert expo.value(100) == pytest.approx(1 - 100 ** -0.51)
    assert expo.value(10**9) == 0.9995  # clipped at max
    assert ExponentialMomentum(alpha=0.5, min=0.5, max=1.0).value(2) == 0.5  # 1 - 2^-0.5 = 0.29 -> min
    refresh = ConstantWithRefresh(m=0.99, every=3)
    assert [refresh.value(t) for t in (1, 2, 3, 4, 6)] == [0.99, 0.99, 0.0, 0.99, 0.0]


def test_schedule_union_parses_tables_and_numbers():
    assert isinstance(Holder.model_validate({"momentum": 0.9999}).momentum, ConstantMomentum)
    parsed = Holder.model_validate({"momentum": {"type": "constant_with_refresh", "m": 0.99, "every": 100}})
    assert isinstance(parsed.momentum, ConstantWithRefresh) and parsed.momentum.every == 100
    with pytest.raises(ValidationError):
        Holder.model_validate({"momentum": {"type": "cosine"}})
    with pytest.raises(ValidationError):
        Holder.model_validate({"momentum": {"type": "linear", "begin": 5, "end": 1}})
    with pytest.raises(ValidationError):
        Holder.model_validate({"momentum": 1.5})


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    source = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    return source, make_momentum_copy(source)


def test_copy_is_equal_frozen_fp32():
    source, target = _pair()
    for (n, p), (_, q) in zip(source.named_parameters(), target.named_parameters()):
        assert torch.equal(p, q) and not q.requires_grad and q.dtype == torch.float32 and p.requires_grad, n
    half = make_momentum_copy(nn.Linear(2, 2).half())
    assert half.weight.dtype == torch.float32


def test_ema_update_math_and_exact_copy():
    source, target = _pair()
    tracker = MomentumTracker.between(source, target)
    before = [t.clone() for t in tracker.targets]
    with torch.no_grad():
        for p in source.parameters():
            p.mul_(3.0).add_(1.0)
    tracker.update(0.9)
    for b, s, t in zip(before, tracker.sources, tracker.targets):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    tracker.update(1.0)  # no-op
    tracker.update(0.0)  # exact copy, bit for bit
    assert all(torch.equal(s, t) for s, t in zip(tracker.sources, tracker.targets))
    with pytest.raises(ValueError):
        tracker.update(1.5)


def test_step_uses_schedule_and_enable_step():
    source, target = _pair()
    tracker = MomentumTracker.between(source, target)
    schedule = ConstantWithRefresh(m=0.5, every=4)
    used = []
    for updates in range(1, 7):
        with torch.no_grad():
            for p in source.parameters():
                p.add_(1.0)
        used.append(tracker.step(updates, schedule, enable_step=3))
        if updates < 3:
            assert all(torch.equal(s, t) for s, t in zip(tracker.sources, tracker.targets))
    assert used == [0.0, 0.0, 0.5, 0.0, 0.5, 0.5]
    assert tracker.last_momentum == 0.5


def test_fused_update_is_one_foreach_call(monkeypatch):
    source, target = _pair()
    tracker = MomentumTracker.between(source, target)
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: (calls.append(len(a[0])), real(*a))[1])
    tracker.update(0.99)
    assert calls == [len(list(target.parameters()))]


def test_between_pairs_subset_by_name_and_rejects_unknown():
    source = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    subset = make_momentum_copy(nn.Sequential(source[0]))  # only block 0
    tracker = MomentumTracker.between(source, subset)
    assert tracker.numel() == 6 and tracker.sources[0] is source[0].weight
    with pytest.raises(KeyError):
        MomentumTracker.between(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2)))


def test_ema_stays_fp32_under_autocast_and_fp16_ema_stalls():
    source = nn.Linear(8, 8)
    target = make_momentum_copy(source)
    tracker = MomentumTracker.between(source, target)
    with torch.no_grad():
        source.weight.add_(0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _ = source(torch.randn(2, 8))  # the forward runs in bf16; weights and the EMA do not
        tracker.update(0.9999)
    assert target.weight.dtype == torch.float32
    fp32_moved = (target.weight - (source.weight - 0.05)).abs().max().item()
    assert fp32_moved == pytest.approx(0.05 * 1e-4, rel=1e-2)
    # the reference's fp16 slow model: p2 * 0.9999 + p1 * 0.0001 in half precision
    assert torch.tensor(0.9999, dtype=torch.float16).item() == 1.0
    p2 = (source.weight - 0.05).detach().half()
    p1 = source.weight.detach().half()
    updated = p2 * 0.9999 + p1 * (1 - 0.9999)
    assert (updated != p2).float().mean().item() < 0.2  # most weights do not move at all
