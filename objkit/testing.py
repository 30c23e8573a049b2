"""The plugin conformance kit: checks every objkit plugin must pass, runnable from pytest.

A plugin distribution tests itself by subclassing one harness per plugin::

    # tests/test_conformance.py
    from objkit.testing import ObjectiveConformance

    class TestMyObjective(ObjectiveConformance):
        plugin = "my_objective"              # registry name (or the class itself)
        distribution = "objkit-my-objective" # registered from this distribution
        configs = [{}, {"margin": 0.1}]      # valid recipe tables; each runs every check
        bad_configs = [{"margin": -1.0}]     # tables its Config must reject

pytest then runs, per config: registration, config round trip (JSON and TOML, as a
recipe and ``objkit validate`` see it) and rejection of unknown keys and ``bad_configs``,
construction on the meta device (``--dry-run``), ``prepare``/``collate`` on a dummy
source (``group`` kept; collation a pure function of examples and generator), a few
training steps of ``compute`` with a tiny encoder (finite scalar loss and metrics;
gradients reach the parameters whenever the output counts), state save/restore through a
real checkpoint round trip (safetensors + JSON) with an identical restored instance,
determinism under a fixed seed, and rank invariance (the real ``CompositeLoss`` step with
``sample_seed``: 1 rank × B and 2 simulated ranks × B/2 give the same losses). :class:`NegativeStoreConformance` and
:class:`AugmentationConformance` do the same for the other kinds.

The same checks are plain functions (``check_objective(cls, config)`` and friends) for use
outside pytest. The tiny encoder is objkit's XLM-R encoder (8 layers, hidden 32, no dropout)
over a synthetic vocabulary in XLM-R's layout (:meth:`objkit.VocabInfo.xlmr`); the dummy
data is random token ids in four languages. Nothing is downloaded; a harness runs in
seconds on a CPU.

This module is part of the public plugin API (docs/plugin-api.md) and needs pytest only
for the harness classes.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import random
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch
import tomli_w
from pydantic import BaseModel, ValidationError

from objkit.interfaces import (
    Augmentation,
    BuildContext,
    Encoder,
    NegativeStore,
    Objective,
    PluginConfig,
    StepContext,
    VocabInfo,
    WorldInfo,
)

CPU = torch.device("cpu")
TINY_VOCAB_SIZE = 96
TINY_MAX_LENGTH = 32
LANGUAGES = ("en", "de", "fr", "cs")


# ----------------------------------------------------------------------------- building blocks
@dataclass
class Case:
    """One configuration a harness runs every check with.

    ``expect_gradients``: some training step must put gradients on the encoder or the
    plugin's trainable modules (False for a configuration whose loss legitimately stays
    out of training for the first ``steps`` steps, e.g. a queue still filling).

    ``rank_invariant``: False for a configuration whose loss depends on the number of ranks
    by design (e.g. negatives from this rank's batch only); the rank check is then skipped."""

    config: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    expect_gradients: bool = True
    rank_invariant: bool = True

    @property
    def label(self) -> str:
        if self.id:
            return self.id
        if not self.config:
            return "defaults"
        text = json.dumps(self.config, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."


def as_case(value: Case | dict[str, Any]) -> Case:
    return value if isinstance(value, Case) else Case(dict(value))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, as the trainer does."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tiny_vocab(vocab_size: int = TINY_VOCAB_SIZE) -> VocabInfo:
    """XLM-R's special-token layout over a small synthetic vocabulary."""
    return VocabInfo.xlmr(vocab_size)


def tiny_encoder(
    vocab_size: int = TINY_VOCAB_SIZE,
    *,
    num_layers: int = 8,
    hidden_size: int = 32,
    num_heads: int = 4,
    max_length: int = TINY_MAX_LENGTH,
    seed: int = 0,
) -> Encoder:
    """objkit's XLM-R encoder, tiny and without dropout, initialised from ``seed``."""
    from transformers import XLMRobertaConfig

    from objkit.encoder import XLMREncoder

    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length + 8,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )
    return XLMREncoder.from_hf_config(config)


def dummy_source(data_kind: str, vocab: VocabInfo | None = None, rows: int = 48, seed: int = 0) -> datasets.Dataset:
    """Tokenized rows of a data source of ``data_kind`` (the layout :data:`objkit.DataKind`
    documents, without special tokens), with a ``group`` column: random regular token ids,
    3-12 per sentence, languages en/de/fr/cs."""
    vocab = vocab or tiny_vocab()
    generator = torch.Generator().manual_seed(seed)
    regular = [i for i in range(vocab.vocab_size) if i not in set(vocab.special_ids)]

    def sentence() -> list[int]:
        length = int(torch.randint(3, 13, (1,), generator=generator))
        picks = torch.randint(len(regular), (length,), generator=generator).tolist()
        return [regular[p] for p in picks]

    # languages in contiguous runs, as a corpus read file by file
    if data_kind == "text":
        langs = [LANGUAGES[i * len(LANGUAGES) // rows] for i in range(rows)]
        return datasets.Dataset.from_dict({"input_ids": [sentence() for _ in range(rows)], "lang": langs, "group": langs})
    if data_kind != "parallel":
        raise ValueError(f'data_kind must be "text" or "parallel" (got {data_kind!r})')
    targets = [LANGUAGES[1 + i * (len(LANGUAGES) - 1) // rows] for i in range(rows)]
    return datasets.Dataset.from_dict({
        "src_ids": [sentence() for _ in range(rows)],
        "tgt_ids": [sentence() for _ in range(rows)],
        "src_lang": ["en"] * rows,
        "tgt_lang": targets,
        "group": [f"en-{t}" for t in targets],
    })


@functools.lru_cache(maxsize=1)
def installed_registry() -> Any:
    """Every installed plugin (autoload on, no ``--plugin`` filter), loaded once."""
    from objkit.registry import PluginSelection, Registry

    return Registry.from_entry_points(selection=PluginSelection(autoload=True))


def resolve_plugin(plugin: str | type, kind: str | None = None) -> type:
    """A plugin class from its registry name (or the class itself)."""
    if isinstance(plugin, type):
        return plugin
    return installed_registry().get(plugin, kind=kind).cls


def registry_with(cls: type) -> Any:
    """The installed registry, plus ``cls`` if it is not registered there (a class under
    development); what a plugin's ``check`` and ``BuildContext.registry`` get."""
    registry = installed_registry()
    try:
        if registry.get(cls.name).cls is cls:
            return registry
    except Exception:
        pass
    from objkit.registry import Registry

    fresh = Registry.from_entry_points()
    if cls.name in fresh.names():
        fresh._plugins.pop(cls.name)
    fresh.add(cls, distribution="<under test>", version="")
    return fresh


def build_context(
    encoder: Encoder,
    *,
    registry: Any,
    vocab: VocabInfo | None = None,
    device: torch.device = CPU,
    instance_name: str = "under_test",
    seed: int = 5,
    max_length: int = TINY_MAX_LENGTH,
    world: WorldInfo | None = None,
    total_steps: int = 100,
) -> BuildContext:
    return BuildContext(
        encoder=encoder,
        tokenizer=None,
        vocab=vocab or tiny_vocab(getattr(encoder, "vocab_size", TINY_VOCAB_SIZE)),
        registry=registry,
        instance_name=instance_name,
        seed=seed,
        device=device,
        total_steps=total_steps,
        max_length=max_length,
        world=world or WorldInfo(),
    )


def checkpoint_round_trip(state: dict[str, Any], directory: str | Path | None = None) -> dict[str, Any]:
    """``state`` written and read back the way objkit checkpoints are (safetensors + JSON)."""
    from safetensors.torch import load_file, save_file

    from objkit.checkpoint import flatten_state, unflatten_state

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(directory or scratch)
        root.mkdir(parents=True, exist_ok=True)
        tensors, values = flatten_state(state)
        try:
            save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(root / "state.safetensors"))
            (root / "state.json").write_text(json.dumps(values))
        except (TypeError, ValueError) as exc:
            raise AssertionError(
                f"state_dict() must hold tensors and JSON-serialisable values only: {exc}"
            ) from exc
        return unflatten_state(load_file(str(root / "state.safetensors")), json.loads((root / "state.json").read_text()))


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal keys, equal JSON values, bit-identical tensors."""
    from objkit.checkpoint import flatten_state

    ta, va = flatten_state(a)
    tb, vb = flatten_state(b)
    assert ta.keys() == tb.keys(), f"state tensors differ: {sorted(ta.keys() ^ tb.keys())}"
    assert va == vb, f"state values differ: {va} != {vb}"
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=lambda m, key=key: f"state {key}: {m}")


def _assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: batch keys differ"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: batch[{key!r}] differs"


# ----------------------------------------------------------------------------- checks: any kind
def check_registration(plugin: str | type, *, distribution: str | None = None, kind: str | None = None) -> Any:
    """The plugin is registered through the installed entry points (from ``distribution``)
    and passes the registry's checks (name, Config forbidding extra keys, data kind,
    abstract methods, plugin API version). Returns its :class:`~objkit.registry.PluginInfo`."""
    from objkit.registry import Registry

    registry = installed_registry()
    name = plugin if isinstance(plugin, str) else getattr(plugin, "name", None)
    assert isinstance(name, str), f"{plugin!r} has no name"
    broken = {s.name: s for s in registry.skipped.values() if s.status == "broken"}
    assert name not in broken, broken[name].line() if name in broken else ""
    if distribution is not None:
        assert not [s for s in broken.values() if s.distribution == distribution], [
            s.line() for s in broken.values() if s.distribution == distribution
        ]
    info = registry.get(f"{distribution}:{name}" if distribution else name)
    if isinstance(plugin, type):
        assert info.cls is plugin, f'"{name}" is registered as {info.cls!r}, not {plugin!r}'
    if kind is not None:
        assert info.kind == kind, f'"{name}" is a {info.kind}, expected a {kind}'
    if distribution is not None:
        assert info.distribution == distribution, f'"{name}" comes from {info.distribution}, expected {distribution}'
        assert info.version, f'"{name}": no version for {distribution}'
    Registry().add(info.cls, distribution=info.distribution, version=info.version)  # checks pass on their own
    return info


def check_config(cls: type, table: dict[str, Any]) -> PluginConfig:
    """``table`` validates; the validated config survives a round trip through JSON and TOML
    (``exclude_none``, as ``objkit validate`` prints it and run directories keep it) and
    re-validates to an equal config; an unknown key is rejected."""
    config_cls: type[BaseModel] = cls.Config
    config = config_cls.model_validate(copy.deepcopy(table))
    dumped = config.model_dump(mode="json", exclude_none=True)
    again = config_cls.model_validate(json.loads(json.dumps(dumped)))
    assert again == config, f"{cls.name}: config changes through a JSON round trip: {config!r} -> {again!r}"
    via_toml = tomllib.loads(tomli_w.dumps({"t": dumped}))["t"]
    again = config_cls.model_validate(via_toml)
    assert again == config, f"{cls.name}: config changes through a TOML round trip: {config!r} -> {again!r}"
    try:
        config_cls.model_validate({**copy.deepcopy(table), "no_such_key_xyz": 1})
    except ValidationError as exc:
        assert any(e["type"] == "extra_forbidden" for e in exc.errors()), exc
    else:
        raise AssertionError(f"{cls.name}: Config accepts an unknown key (use objkit.PluginConfig as its base)")
    return config


def check_rejects(cls: type, table: dict[str, Any], registry: Any = None) -> None:
    """``table`` is an invalid recipe table for the plugin: its Config or its ``check``
    rejects it (what ``objkit validate`` would report)."""
    try:
        config = cls.Config.model_validate(copy.deepcopy(table))
    except ValidationError:
        return
    problems = cls.check(config, registry or registry_with(cls))
    assert problems, f"{cls.name}: accepted a table it should reject: {table!r}"


def check_recipe_validation(cls: type, table: dict[str, Any]) -> None:
    """A minimal recipe using the plugin with ``table`` validates (objectives only)."""
    from objkit.recipe import validate_recipe

    if not issubclass(cls, Objective):
        return
    data_kind = cls.data_kind
    source = (
        {"type": "text", "files": [{"path": "x.txt", "lang": "en"}]}
        if data_kind == "text"
        else {"type": "parallel", "pairs": [{"src": "x.en", "tgt": "x.de", "src_lang": "en", "tgt_lang": "de"}]}
    )
    raw = {
        "model": {"preset": "tiny", "tokenizer": "unused"},
        "data": {"d": source},
        "objectives": {"under_test": {"plugin": cls.name, "data": "d", **copy.deepcopy(table)}},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-3},
    }
    validate_recipe(raw, registry_with(cls), source=f"recipe using {cls.name}")


# ----------------------------------------------------------------------------- checks: objectives
@dataclass
class _Trained:
    objective: Objective
    encoder: Encoder
    examples: list[dict[str, Any]]
    losses: list[float]
    metrics: list[dict[str, float]]
    gradient_steps: int


def objective_examples(objective: Objective, count: int = 8, seed: int = 0) -> list[dict[str, Any]]:
    """``prepare`` on a dummy source of the objective's data kind; the first ``count`` rows."""
    prepared = objective.prepare(dummy_source(type(objective).data_kind, seed=seed))
    assert "group" in prepared.column_names, f"{type(objective).name}: prepare() dropped the group column"
    assert len(prepared) > 0, f"{type(objective).name}: prepare() returned no examples"
    return [prepared[i] for i in range(min(count, len(prepared)))]


def _parameters(encoder: Encoder, objective: Objective) -> list[torch.nn.Parameter]:
    params = list(encoder.parameters())
    for module in objective.trainable_modules().values():
        params.extend(p for p in module.parameters() if p.requires_grad)
    return params


def _train(cls: type, config: PluginConfig, *, steps: int, seed: int, batch_size: int) -> _Trained:
    """Build from ``seed`` and run ``steps`` SGD steps the way the trainer does."""
    seed_everything(seed)
    encoder = tiny_encoder(seed=seed)
    encoder.train()
    objective = cls(config, build_context(encoder, registry=registry_with(cls), seed=seed))
    examples = objective_examples(objective, batch_size, seed=seed)
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


def _trained(cls: type, config: PluginConfig, *, steps: int, seed: int, batch_size: int) -> _Trained:
    """:func:`_train`, remembered per (class, config, steps, seed, batch size) so that the
    checks of one case share one run; callers get a deep copy to change as they like."""
    key = (cls, config.model_dump_json(), steps, seed, batch_size)
    if key not in _TRAINED:
        while len(_TRAINED) >= 8:  # tiny models; a harness's cases fit
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = _train(cls, config, steps=steps, seed=seed, batch_size=batch_size)
    try:
        return copy.deepcopy(_TRAINED[key])
    except Exception:  # a plugin holding something that cannot be copied: train again
        return _train(cls, config, steps=steps, seed=seed, batch_size=batch_size)


def check_objective_meta(cls: type, config: PluginConfig) -> None:
    """Constructible on the meta device (what ``objkit run --dry-run`` does); ``plan()``
    returns numbers and strings."""
    meta = torch.device("meta")
    with meta:
        encoder = tiny_encoder()
        objective = cls(config, build_context(encoder, registry=registry_with(cls), device=meta))
    plan = objective.plan()
    assert all(isinstance(v, (int, float, str)) for v in plan.values()), f"{cls.name}: plan() values {plan!r}"


def check_objective_data(cls: type, config: PluginConfig, *, batch_size: int = 8, seed: int = 0) -> None:
    """``prepare`` keeps ``group``; ``collate`` gives tensors and takes all its randomness
    from the generator (equal batches for equal seeds, whatever the global RNG state)."""
    encoder = tiny_encoder(seed=seed)
    objective = cls(config, build_context(encoder, registry=registry_with(cls), seed=seed))
    examples = objective_examples(objective, batch_size, seed=seed)
    torch.manual_seed(1234)
    random.seed(1234)
    first = objective.collate(copy.deepcopy(examples), torch.Generator().manual_seed(11))
    torch.manual_seed(4321)
    random.seed(4321)
    again = objective.collate(copy.deepcopy(examples), torch.Generator().manual_seed(11))
    assert first and all(isinstance(v, torch.Tensor) for v in first.values()), f"{cls.name}: collate() must return tensors"
    _assert_same_batch(first, again, f"{cls.name}: collate() with equal generator seeds")


def check_objective_compute(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, expect_gradients: bool = True
) -> list[float]:
    """``steps`` training steps on a dummy batch with a tiny encoder: finite scalar losses
    and metrics; whenever an output counts (``sample_size > 0`` and ``loss_weight > 0``) it
    is differentiable and its gradients are finite and reach the parameters; with
    ``expect_gradients`` at least one step trains."""
    trained = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size)
    if expect_gradients:
        assert trained.gradient_steps > 0, (
            f"{cls.name}: no step out of {steps} trained (sample_size 0 or loss_weight 0 throughout); "
            "use Case(..., expect_gradients=False) for a configuration that starts later"
        )
    return trained.losses


def check_objective_state(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, directory: Path | None = None
) -> None:
    """After training, ``state_dict`` survives a checkpoint round trip and a fresh instance
    that loads it (with the same encoder weights) has the same state and computes the same
    loss and metrics on the same batch."""
    trained = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size)
    restored = checkpoint_round_trip(trained.objective.state_dict(), directory)
    encoder = tiny_encoder(seed=seed + 1)  # different initial weights, then the trained ones
    clone = cls(config, build_context(encoder, registry=registry_with(cls), seed=seed))
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


def check_objective_determinism(cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8) -> None:
    """Two runs from the same seed give bit-identical losses, metrics and final state."""
    first = _trained(cls, config, steps=steps, seed=seed, batch_size=batch_size)
    torch.manual_seed(seed + 12345)  # disturb the global RNG between the runs
    random.seed(seed + 12345)
    second = _train(cls, config, steps=steps, seed=seed, batch_size=batch_size)
    assert first.losses == second.losses, f"{cls.name}: losses differ between equal-seed runs: {first.losses} vs {second.losses}"
    assert first.metrics == second.metrics, f"{cls.name}: metrics differ between equal-seed runs"
    assert_same_state(first.objective.state_dict(), second.objective.state_dict())
    for (name, a), b in zip(first.encoder.state_dict().items(), second.encoder.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{cls.name}: encoder weight {name} differs between equal-seed runs"


def check_objective_ranks(
    cls: type, config: PluginConfig, *, steps: int = 3, seed: int = 0, batch_size: int = 8, world_size: int = 2,
    rel_tol: float = 1e-4, abs_tol: float = 1e-5,
) -> list[float | None]:
    """Rank invariance through the real step: the same global batch of ``batch_size``
    examples, trained ``steps`` steps by objkit's ``CompositeLoss`` (which gives each example
    its ``sample_seed`` and each rank and micro-batch its own ``generator``) on 1 rank × B
    and on ``world_size`` simulated ranks × B/world_size (threads; gradients averaged as DDP
    does, ``torch.distributed`` gathers served in-process), gives the same per-unit loss at
    every step. Fails for a plugin that draws per-example randomness from ``generator``
    instead of ``sample_seed`` (docs/plugin-api.md, section 5). Returns the 1-rank losses."""
    from objkit._ranks import run_ranks

    def build(world: WorldInfo) -> tuple[Encoder, Objective, list[torch.nn.Parameter]]:
        seed_everything(seed)
        encoder = tiny_encoder(seed=seed)
        encoder.train()
        objective = cls(config, build_context(encoder, registry=registry_with(cls), seed=seed, world=world))
        return encoder, objective, _parameters(encoder, objective)

    probe = cls(config, build_context(tiny_encoder(seed=seed), registry=registry_with(cls), seed=seed))
    examples = objective_examples(probe, batch_size, seed=seed)
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


def check_objective(cls: type, table: dict[str, Any] | None = None, *, steps: int = 3, expect_gradients: bool = True) -> None:
    """Every objective check for one configuration table (outside pytest)."""
    table = table or {}
    config = check_config(cls, table)
    check_recipe_validation(cls, table)
    check_objective_meta(cls, config)
    check_objective_data(cls, config)
    check_objective_compute(cls, config, steps=steps, expect_gradients=expect_gradients)
    check_objective_state(cls, config, steps=steps)
    check_objective_determinism(cls, config, steps=steps)
    check_objective_ranks(cls, config, steps=steps)


# ----------------------------------------------------------------------------- checks: negative stores
def _keys(count: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def check_negative_store(cls: type, config: PluginConfig, *, dim: int = 8, batches: int = 3) -> None:
    """``negatives`` gives ``[K, dim]``; ``includes_current_keys`` holds when declared; state
    survives a checkpoint round trip (equal state, negatives and readiness); equal inputs
    give equal outputs."""
    def fed() -> NegativeStore:
        store = cls(config, dim=dim, device=CPU, world=WorldInfo())
        for i in range(batches):
            store.enqueue(_keys(5, dim, i))
        return store

    store = fed()
    current = _keys(4, dim, 100)
    negatives = store.negatives(current)
    assert negatives.dim() == 2 and negatives.shape[1] == dim, f"{cls.name}: negatives shape {tuple(negatives.shape)}"
    if cls.includes_current_keys:
        assert torch.equal(negatives[: current.shape[0]].float(), current.float()), (
            f"{cls.name}: includes_current_keys is True but rows [0, B) are not the current keys"
        )
    clone = cls(config, dim=dim, device=CPU, world=WorldInfo())
    clone.load_state_dict(checkpoint_round_trip(store.state_dict()))
    assert_same_state(store.state_dict(), clone.state_dict())
    assert torch.equal(store.negatives(current), clone.negatives(current)), f"{cls.name}: restored negatives differ"
    assert store.ready == clone.ready, f"{cls.name}: restored ready differs"
    assert torch.equal(fed().negatives(current), fed().negatives(current)), f"{cls.name}: not deterministic"


# ----------------------------------------------------------------------------- checks: augmentations
def check_augmentation(cls: type, config: PluginConfig, *, seed: int = 3) -> None:
    """``prepare`` keeps ``group``; ``apply`` returns rows of the data kind's layout, takes
    all randomness from the generator (equal outputs for equal seeds, whatever the global
    RNG state) and does not depend on the caller keeping its input unchanged."""
    encoder = tiny_encoder()
    augmentation = cls(config, build_context(encoder, registry=registry_with(cls)))
    prepared = augmentation.prepare(dummy_source(cls.data_kind, seed=seed))
    assert "group" in prepared.column_names, f"{cls.name}: prepare() dropped the group column"
    examples = [prepared[i] for i in range(min(16, len(prepared)))]
    torch.manual_seed(1)
    a = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(seed))
    torch.manual_seed(2)
    b = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(seed))
    assert a == b, f"{cls.name}: apply() differs for equal generator seeds"
    assert len(a) > 0, f"{cls.name}: apply() returned no examples"
    needed = ("input_ids",) if cls.data_kind == "text" else ("src_ids", "tgt_ids")
    for row in a:
        assert all(k in row for k in needed), f"{cls.name}: apply() row lacks {needed}: {sorted(row)}"


# ----------------------------------------------------------------------------- pytest harnesses
def _parametrize(metafunc: Any, harness: Any) -> None:
    cases = [as_case(c) for c in harness.configs]
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases, ids=[c.label for c in cases])
    if "bad_config" in metafunc.fixturenames:
        bad = list(harness.bad_configs)
        labels = [json.dumps(b, separators=(",", ":"), sort_keys=True)[:60] for b in bad]
        metafunc.parametrize("bad_config", bad, ids=labels)


class _Harness:
    plugin: ClassVar[str | type]
    """The plugin's registry name, or its class."""
    distribution: ClassVar[str | None] = None
    """If set, the plugin must be registered from this distribution (an installed entry point)."""
    configs: ClassVar[Sequence[dict[str, Any] | Case]] = ({},)
    """Valid recipe tables (or :class:`Case`); every check runs with each."""
    bad_configs: ClassVar[Sequence[dict[str, Any]]] = ()
    """Tables the plugin's Config (or ``check``) must reject."""
    kind: ClassVar[str]

    def pytest_generate_tests(self, metafunc: Any) -> None:
        _parametrize(metafunc, self)

    @property
    def cls(self) -> type:
        return resolve_plugin(self.plugin, self.kind)

    def test_registration(self) -> None:
        check_registration(self.plugin, distribution=self.distribution, kind=self.kind)

    def test_config_round_trip(self, case: Case) -> None:
        check_config(self.cls, case.config)
        check_recipe_validation(self.cls, case.config)

    def test_rejects_bad_config(self, bad_config: dict[str, Any]) -> None:
        check_rejects(self.cls, bad_config)


class ObjectiveConformance(_Harness):
    """pytest harness for an Objective plugin (see the module docstring)."""

    kind = "objective"
    steps: ClassVar[int] = 3
    """Training steps per check."""
    batch_size: ClassVar[int] = 8
    seed: ClassVar[int] = 0

    def _config(self, case: Case) -> PluginConfig:
        return self.cls.Config.model_validate(copy.deepcopy(case.config))

    def test_meta_device(self, case: Case) -> None:
        check_objective_meta(self.cls, self._config(case))

    def test_prepare_and_collate(self, case: Case) -> None:
        check_objective_data(self.cls, self._config(case), batch_size=self.batch_size, seed=self.seed)

    def test_compute_and_gradients(self, case: Case) -> None:
        check_objective_compute(
            self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size,
            expect_gradients=case.expect_gradients,
        )

    def test_state_round_trip(self, case: Case, tmp_path: Path) -> None:
        check_objective_state(
            self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size, directory=tmp_path
        )

    def test_determinism(self, case: Case) -> None:
        check_objective_determinism(self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size)

    def test_rank_invariance(self, case: Case) -> None:
        if not case.rank_invariant:
            import pytest

            pytest.skip("this configuration depends on the number of ranks by design (Case.rank_invariant=False)")
        check_objective_ranks(self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size)


class NegativeStoreConformance(_Harness):
    """pytest harness for a NegativeStore plugin."""

    kind = "negative_store"

    def test_store(self, case: Case) -> None:
        check_negative_store(self.cls, self.cls.Config.model_validate(copy.deepcopy(case.config)))


class AugmentationConformance(_Harness):
    """pytest harness for an Augmentation plugin."""

    kind = "augmentation"

    def test_augmentation(self, case: Case) -> None:
        check_augmentation(self.cls, self.cls.Config.model_validate(copy.deepcopy(case.config)))


def harness_for(plugin: str, **attributes: Any) -> type:
    """A harness class for an installed plugin of any kind, e.g. to test every plugin of
    a registry: ``TestX = harness_for("xlco", configs=[...])``."""
    kind = installed_registry().get(plugin).kind
    base = {"objective": ObjectiveConformance, "negative_store": NegativeStoreConformance,
            "augmentation": AugmentationConformance}.get(kind)
    if base is None:
        raise ValueError(f'no conformance harness for {kind} plugins ("{plugin}")')
    return type(f"Test_{plugin}", (base,), {"plugin": plugin, "__test__": True, **attributes})


__all__ = [
    "AugmentationConformance",
    "Case",
    "NegativeStoreConformance",
    "ObjectiveConformance",
    "assert_same_state",
    "build_context",
    "check_augmentation",
    "check_config",
    "check_negative_store",
    "check_objective",
    "check_objective_compute",
    "check_objective_data",
    "check_objective_determinism",
    "check_objective_meta",
    "check_objective_ranks",
    "check_objective_state",
    "check_recipe_validation",
    "check_registration",
    "check_rejects",
    "checkpoint_round_trip",
    "dummy_source",
    "harness_for",
    "installed_registry",
    "registry_with",
    "resolve_plugin",
    "seed_everything",
    "tiny_encoder",
    "tiny_vocab",
]
