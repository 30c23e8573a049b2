"""Checks for Objective plugins: meta device, data, compute and gradients, state, determinism, rank invariance."""

from __future__ import annotations


import copy
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from objkit.contract.interfaces import Encoder, Objective, PluginConfig, StepContext, WorldInfo

from objkit.blocks.seeding import seed_everything
from objkit.testing._common import (
    CPU,
    Case,
    TinyEncoder,
    _assert_same_batch,
    assert_same_state,
    build_context,
    checkpoint_round_trip,
    dummy_source,
    registry_with,
)
from objkit.testing.registration import check_config, check_recipe_validation


# ----------------------------------------------------------------------------- checks: objectives
@dataclass
class _Trained:
    objective: Objective
    encoder: Encoder
    examples: list[dict[str, Any]]
    losses: list[float]
    metrics: list[dict[str, float]]
    gradient_steps: int


def objective_examples(objective: Objective, count: int = 8, seed: int = 0,
                       encoder: TinyEncoder | None = None) -> list[dict[str, Any]]:
    """``prepare`` on a dummy source of the objective's data kind; the first ``count`` rows."""
    vocab = (encoder or TinyEncoder()).token_ids()
    prepared = objective.prepare(dummy_source(type(objective).data_kind, vocab, seed=seed))
    assert "group" in prepared.column_names, f"{type(objective).name}: prepare() dropped the group column"
    assert len(prepared) > 0, f"{type(objective).name}: prepare() returned no examples"
    return [prepared[i] for i in range(min(count, len(prepared)))]


def _parameters(encoder: Encoder, objective: Objective) -> list[torch.nn.Parameter]:
    params = list(encoder.parameters())
    for module in objective.trainable_modules().values():
        params.extend(p for p in module.parameters() if p.requires_grad)
    return params


def _context(cls: type, encoder: Encoder, spec: TinyEncoder | None, **kwargs: Any) -> Any:
    return build_context(encoder, registry=registry_with(cls), vocab=(spec or TinyEncoder()).token_ids(), **kwargs)


def _train(cls: type, config: PluginConfig, *, steps: int, seed: int, batch_size: int,
           encoder_spec: TinyEncoder | None = None) -> _Trained:
    """Build from ``seed`` and run ``steps`` SGD steps the way the trainer does."""
    seed_everything(seed)
    encoder = (encoder_spec or TinyEncoder()).build(seed)
    encoder.train()
    objective = cls(config, _context(cls, encoder, encoder_spec, seed=seed))
    examples = objective_examples(objective, batch_size, seed=seed, encoder=encoder_spec)
    params = _parameters(encoder, objective)
    optimizer = torch.optim.SGD(params, lr=0.1)
    losses: list[float] = []
    metrics: list[dict[str, float]] = []
    gradient_steps = 0
    for step in range(steps):
        ctx = StepContext(step=step, encoder=encoder, device=CPU)
        announced = objective.has_loss(step)  # asked before the forward, as the composite does
        batch = objective.collate(examples, torch.Generator().manual_seed(seed * 1000 + step))
        out = objective.compute(batch, ctx)
        assert out.loss.requires_grad == announced, (
            f"{cls.name}: has_loss({step}) said {announced} but the loss "
            f"{'carries' if out.loss.requires_grad else 'carries no'} gradient"
        )
        if announced:  # the composite normalises by the announced count, summed over ranks
            assert out.sample_size == objective.sample_size(batch), (
                f"{cls.name}: sample_size(batch) = {objective.sample_size(batch)} but compute() "
                f"reported {out.sample_size}"
            )
        assert isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0, f"{cls.name}: loss must be a scalar tensor"
        value = float(out.loss.detach())
        assert math.isfinite(value), f"{cls.name}: loss is {value} at step {step}"
        assert isinstance(out.sample_size, int) and out.sample_size >= 0, f"{cls.name}: sample_size {out.sample_size!r}"
        for key, value in out.metrics.items():
            scalar = isinstance(value, float) or (
                isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point()
            )
            assert scalar and math.isfinite(float(value)), f"{cls.name}: metric {key} = {value!r}"
        weight = objective.loss_weight(step)
        counts = out.sample_size > 0 and weight > 0
        if counts:
            assert out.loss.requires_grad, (
                f"{cls.name}: step {step} loss counts (sample_size {out.sample_size}, weight {weight}) "
                "but carries no gradient"
            )
        if out.loss.requires_grad:
            (out.loss.float() * weight).backward()
            grads = [p.grad for p in params if p.grad is not None]
            assert all(torch.isfinite(g).all() for g in grads), f"{cls.name}: non-finite gradient at step {step}"
            if counts:
                assert any(bool(g.abs().sum() > 0) for g in grads), (
                    f"{cls.name}: step {step} loss reaches no parameter of the encoder or the objective's "
                    "trainable_modules()"
                )
                gradient_steps += 1
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_optimizer_step(ctx)
        losses.append(value)
        metrics.append({key: float(value) for key, value in out.metrics.items()})
    return _Trained(objective, encoder, examples, losses, metrics, gradient_steps)


_TRAINED: dict[tuple[Any, ...], _Trained] = {}


def _trained(cls: type, config: PluginConfig, *, steps: int, seed: int, batch_size: int,
             encoder_spec: TinyEncoder | None = None) -> _Trained:
    """:func:`_train`, remembered per (class, config, steps, seed, batch size, encoder) so that
    the checks of one case share one run; callers get a deep copy to change as they like."""
    key = (cls, config.model_dump_json(), steps, seed, batch_size, (encoder_spec or TinyEncoder()).key)
    if key not in _TRAINED:
        while len(_TRAINED) >= 8:  # tiny models; a harness's cases fit
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = _train(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=encoder_spec)
    try:
        return copy.deepcopy(_TRAINED[key])
    except Exception:  # a plugin holding something that cannot be copied: train again
        return _train(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=encoder_spec)


def check_objective_meta(cls: type, config: PluginConfig, *, encoder: TinyEncoder | None = None) -> None:
    """Constructible on the meta device (what ``objkit run --dry-run`` does); ``plan()``
    returns numbers and strings."""
    meta = torch.device("meta")
    with meta:
        built = (encoder or TinyEncoder()).build()
        objective = cls(config, _context(cls, built, encoder, device=meta))
    plan = objective.plan()
    assert all(isinstance(v, (int, float, str)) for v in plan.values()), f"{cls.name}: plan() values {plan!r}"


def check_objective_data(cls: type, config: PluginConfig, *, batch_size: int = 8, seed: int = 0,
                         encoder: TinyEncoder | None = None) -> None:
    """``prepare`` keeps ``group``; ``collate`` gives tensors and takes all its randomness
    from the generator (equal batches for equal seeds, whatever the global RNG state)."""
    spec = encoder
    objective = cls(config, _context(cls, (spec or TinyEncoder()).build(seed), spec, seed=seed))
    examples = objective_examples(objective, batch_size, seed=seed, encoder=spec)
    torch.manual_seed(1234)
    random.seed(1234)
    first = objective.collate(copy.deepcopy(examples), torch.Generator().manual_seed(11))
    torch.manual_seed(4321)
    random.seed(4321)
    again = objective.collate(copy.deepcopy(examples), torch.Generator().manual_seed(11))
    assert first and all(isinstance(v, torch.Tensor) for v in first.values()), f"{cls.name}: collate() must return tensors"
    _assert_same_batch(first, again, f"{cls.name}: collate() with equal generator seeds")


def check_objective_compute(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, expect_gradients: bool = True,
    encoder: TinyEncoder | None = None,
) -> list[float]:
    """``steps`` training steps on a dummy batch with a tiny encoder: finite scalar losses
    and metrics; whenever an output counts (``sample_size > 0`` and ``loss_weight > 0``) it
    is differentiable and its gradients are finite and reach the parameters; with
    ``expect_gradients`` at least one step trains. ``encoder``: which encoder (default
    :func:`tiny_encoder`'s), as in every objective check."""
    trained = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=encoder)
    if expect_gradients:
        assert trained.gradient_steps > 0, (
            f"{cls.name}: no step out of {steps} trained (sample_size 0 or loss_weight 0 throughout); "
            "use Case(..., expect_gradients=False) for a configuration that starts later"
        )
    return trained.losses


def check_objective_state(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, directory: Path | None = None,
    encoder: TinyEncoder | None = None,
) -> None:
    """After training, ``state_dict`` survives a checkpoint round trip and a fresh instance
    that loads it (with the same encoder weights) has the same state and computes the same
    loss and metrics on the same batch."""
    spec = encoder
    trained = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=spec)
    restored = checkpoint_round_trip(trained.objective.state_dict(), directory)
    encoder = (spec or TinyEncoder()).build(seed + 1)  # different initial weights, then the trained ones
    clone = cls(config, _context(cls, encoder, spec, seed=seed))
    encoder.load_state_dict(trained.encoder.state_dict())
    clone.load_state_dict(restored)
    assert_same_state(trained.objective.state_dict(), clone.state_dict())
    trained.encoder.eval()
    encoder.eval()
    batch = trained.objective.collate(trained.examples, torch.Generator().manual_seed(99))
    with torch.no_grad():
        a = trained.objective.compute(batch, StepContext(step=steps, encoder=trained.encoder, device=CPU))
        b = clone.compute(batch, StepContext(step=steps, encoder=encoder, device=CPU))
    assert float(a.loss) == float(b.loss), f"{cls.name}: restored instance computes {float(b.loss)}, original {float(a.loss)}"
    assert a.metrics == b.metrics, f"{cls.name}: restored metrics {b.metrics} != {a.metrics}"


def check_objective_determinism(cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8,
                                encoder: TinyEncoder | None = None) -> None:
    """Two runs from the same seed give bit-identical losses, metrics and final state."""
    first = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=encoder)
    torch.manual_seed(seed + 12345)  # disturb the global RNG between the runs
    random.seed(seed + 12345)
    second = _train(cls, config, steps=steps, seed=seed, batch_size=batch_size, encoder_spec=encoder)
    assert first.losses == second.losses, f"{cls.name}: losses differ between equal-seed runs: {first.losses} vs {second.losses}"
    assert first.metrics == second.metrics, f"{cls.name}: metrics differ between equal-seed runs"
    assert_same_state(first.objective.state_dict(), second.objective.state_dict())
    for (name, a), b in zip(first.encoder.state_dict().items(), second.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{cls.name}: encoder weight {name} differs between equal-seed runs"


def check_objective_ranks(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, world_size: int = 2,
    rel_tol: float = 1e-4, abs_tol: float = 1e-5, encoder: TinyEncoder | None = None,
) -> list[float | None]:
    """Rank invariance through the real step: the same global batch of ``batch_size``
    examples, trained ``steps`` steps by objkit's ``CompositeLoss`` (which gives each example
    its ``sample_seed`` and each rank and micro-batch its own ``generator``) on 1 rank × B
    and on ``world_size`` simulated ranks × B/world_size (threads; gradients averaged as DDP
    does, ``torch.distributed`` gathers served in-process), gives the same per-unit loss at
    every step. Fails for a plugin that draws per-example randomness from ``generator``
    instead of ``sample_seed`` (docs/plugin-api.md, section 5). Returns the 1-rank losses."""
    from objkit.testing._ranks import run_ranks

    spec = encoder or TinyEncoder()

    def build(world: WorldInfo) -> tuple[Encoder, Objective, list[torch.nn.Parameter]]:
        seed_everything(seed)
        built = spec.build(seed)
        built.train()
        objective = cls(config, _context(cls, built, spec, seed=seed, world=world))
        return built, objective, _parameters(built, objective)

    probe = cls(config, _context(cls, spec.build(seed), spec, seed=seed))
    examples = objective_examples(probe, batch_size, seed=seed, encoder=spec)
    assert len(examples) == batch_size, f"{cls.name}: prepare() gave {len(examples)} < {batch_size} examples"
    one = run_ranks(build, examples, world_size=1, steps=steps, seed=seed)
    many = run_ranks(build, examples, world_size=world_size, steps=steps, seed=seed)
    out: list[float | None] = []
    for step, (a, b) in enumerate(zip(one, many, strict=True)):
        assert (a is None) == (b is None), (
            f"{cls.name}: step {step} has output units on {'1 rank' if a else f'{world_size} ranks'} only"
        )
        if a is None or b is None:
            out.append(None)
            continue
        assert a[1] == b[1], f"{cls.name}: step {step}: {a[1]:g} units on 1 rank, {b[1]:g} on {world_size} ranks"
        la, lb = a[0] / a[1], b[0] / b[1]
        assert math.isclose(la, lb, rel_tol=rel_tol, abs_tol=abs_tol), (
            f"{cls.name}: step {step} loss {la:.6g} on 1 rank × {batch_size} but {lb:.6g} on {world_size} ranks × "
            f"{batch_size // world_size}: per-example randomness must come from example['sample_seed'] "
            "(objkit.example_seeds / objkit.derive_seed), not from collate's generator"
        )
        out.append(la)
    return out


def check_objective(cls: type, table: dict[str, Any] | None = None, *, steps: int = 3, expect_gradients: bool = True,
                    encoder: TinyEncoder | None = None) -> None:
    """Every objective check for one configuration table (outside pytest), on ``encoder``
    (default: :func:`tiny_encoder`'s ``xlmr``)."""
    table = table or {}
    config = check_config(cls, table)
    check_recipe_validation(cls, table)
    check_objective_meta(cls, config, encoder=encoder)
    check_objective_data(cls, config, encoder=encoder)
    check_objective_compute(cls, config, steps=steps, expect_gradients=expect_gradients, encoder=encoder)
    check_objective_state(cls, config, steps=steps, encoder=encoder)
    check_objective_determinism(cls, config, steps=steps, encoder=encoder)
    check_objective_ranks(cls, config, steps=steps, encoder=encoder)


