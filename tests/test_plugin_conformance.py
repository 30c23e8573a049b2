"""Conformance: every installed plugin, built-in or third-party, must pass these.

Objectives: constructible on the meta device; ``prepare`` keeps the ``group`` column;
``collate`` is a pure function of its examples and generator; ``compute`` gives a finite
scalar; state survives a checkpoint round trip (safetensors + JSON) so that a restored
instance behaves exactly like the original. Negative stores and augmentations likewise.
"""

from __future__ import annotations

import copy
import json
import math

import datasets
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import XLMRobertaConfig

from objkit.checkpoint import flatten_state, unflatten_state
from objkit.encoder import XLMREncoder
from objkit.interfaces import BuildContext, StepContext, VocabInfo, WorldInfo
from objkit.registry import default_registry
from objkit.tokenizer import train_tokenizer

REGISTRY = default_registry()
CPU = torch.device("cpu")
PAIRS = [
    ("Germany", "Deutschland", "en", "de"), ("France", "Frankreich", "en", "de"), ("Spain", "Spanien", "en", "de"),
    ("German", "allemand", "en", "fr"), ("French", "français", "en", "fr"), ("Italy", "Italie", "en", "fr"),
    ("Euro", "euro", "en", "fr"), ("Japan", "Japonsko", "en", "cs"), ("Czech", "čeština", "en", "cs"),
    ("Russia", "Rusko", "en", "cs"), ("Arabic", "arabština", "en", "cs"), ("Chinese", "čínština", "en", "cs"),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [side for pair in PAIRS for side in pair[:2]] * 3
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=60)


def _encoder(vocab_size: int) -> XLMREncoder:
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=8, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return XLMREncoder.from_hf_config(config)


def _ctx(encoder, tokenizer, device=CPU) -> BuildContext:  # noqa: ANN001
    return BuildContext(
        encoder=encoder, tokenizer=tokenizer, vocab=VocabInfo.from_tokenizer(tokenizer), registry=REGISTRY,
        instance_name="under_test", seed=5, device=device, total_steps=100, max_length=32, world=WorldInfo(),
    )


def _source(kind: str, tokenizer) -> datasets.Dataset:  # noqa: ANN001
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    if kind == "text":
        rows = [(encode(s), lang) for s, t, src_lang, lang in PAIRS for s in (s, t)]
        return datasets.Dataset.from_dict(
            {"input_ids": [r[0] for r in rows], "lang": [r[1] for r in rows], "group": [r[1] for r in rows]}
        )
    return datasets.Dataset.from_dict({
        "src_ids": [encode(p[0]) for p in PAIRS], "tgt_ids": [encode(p[1]) for p in PAIRS],
        "src_lang": [p[2] for p in PAIRS], "tgt_lang": [p[3] for p in PAIRS],
        "group": [f"{p[2]}-{p[3]}" for p in PAIRS],
    })


def _checkpoint_round_trip(state: dict, tmp_path) -> dict:  # noqa: ANN001
    tensors, values = flatten_state(state)
    save_file({k: v.clone() for k, v in tensors.items()}, str(tmp_path / "state.safetensors"))
    (tmp_path / "state.json").write_text(json.dumps(values))
    return unflatten_state(load_file(str(tmp_path / "state.safetensors")), json.loads((tmp_path / "state.json").read_text()))


def _assert_same_state(a: dict, b: dict) -> None:
    ta, va = flatten_state(a)
    tb, vb = flatten_state(b)
    assert ta.keys() == tb.keys() and va == vb
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=key)


OBJECTIVES = REGISTRY.names("objective")
# extra configurations worth exercising for built-ins (every plugin also runs with its defaults)
EXTRA_CONFIGS = {
    "xlco": [
        {"negatives": {"momentum_queue": {"size": 8}}, "augment": {"mixup": {}}},
        {"negatives": {"in_batch": {}}, "symmetric": True, "learnable_temperature": True, "pooling": "mean"},
    ],
    "tlm": [{"reset_positions": True, "language_embeddings": True, "languages": ["en", "de", "fr", "cs"]}],
}
CASES = [(name, {}) for name in OBJECTIVES] + [
    (name, extra) for name, extras in EXTRA_CONFIGS.items() if name in OBJECTIVES for extra in extras
]


@pytest.mark.parametrize(("name", "overrides"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_objective_conformance(name, overrides, tokenizer, tmp_path):
    cls = REGISTRY.get(name, kind="objective").cls
    config = cls.Config.model_validate(overrides)
    # constructible on the meta device (what --dry-run does)
    with torch.device("meta"):
        cls(config, _ctx(_encoder(len(tokenizer)), tokenizer, device=torch.device("meta")))

    encoder = _encoder(len(tokenizer))
    original_encoder = copy.deepcopy(encoder)
    objective = cls(config, _ctx(encoder, tokenizer))
    prepared = objective.prepare(_source(cls.data_kind, tokenizer))
    assert "group" in prepared.column_names
    examples = [prepared[i] for i in range(min(8, len(prepared)))]
    first = objective.collate(examples, torch.Generator().manual_seed(11))
    again = objective.collate(examples, torch.Generator().manual_seed(11))
    assert first.keys() == again.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key

    params = list(encoder.parameters()) + [p for m in objective.trainable_modules().values() for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1)
    for step in range(3):
        ctx = StepContext(step=step, encoder=encoder, device=CPU)
        announced = objective.has_loss(step)  # asked before the forward, as the composite does
        batch = objective.collate(examples, torch.Generator().manual_seed(step))
        out = objective.compute(batch, ctx)
        assert out.loss.dim() == 0 and math.isfinite(float(out.loss.detach()))
        assert out.loss.requires_grad == announced
        if announced:  # the composite normalises by the announced count
            assert out.sample_size == objective.sample_size(batch)
        assert all(isinstance(v, float) and math.isfinite(v) for v in out.metrics.values())
        if out.loss.requires_grad:
            (out.loss * objective.loss_weight(step)).backward()
        optimizer.step()
        optimizer.zero_grad()
        objective.after_optimizer_step(ctx)

    restored_state = _checkpoint_round_trip(objective.state_dict(), tmp_path)
    clone = cls(config, _ctx(original_encoder, tokenizer))
    original_encoder.load_state_dict(encoder.state_dict())
    clone.load_state_dict(restored_state)
    _assert_same_state(objective.state_dict(), clone.state_dict())
    encoder.eval(), original_encoder.eval()
    batch = objective.collate(examples, torch.Generator().manual_seed(99))
    with torch.no_grad():
        a = objective.compute(batch, StepContext(step=3, encoder=encoder, device=CPU))
        b = clone.compute(batch, StepContext(step=3, encoder=original_encoder, device=CPU))
    assert float(a.loss) == float(b.loss) and a.metrics == b.metrics


@pytest.mark.parametrize("name", REGISTRY.names("negative_store"))
def test_negative_store_conformance(name, tmp_path):
    cls = REGISTRY.get(name, kind="negative_store").cls
    store = cls(cls.Config(), dim=8, device=CPU, world=WorldInfo())
    for _ in range(3):
        store.enqueue(torch.randn(5, 8))
    clone = cls(cls.Config(), dim=8, device=CPU, world=WorldInfo())
    clone.load_state_dict(_checkpoint_round_trip(store.state_dict(), tmp_path))
    _assert_same_state(store.state_dict(), clone.state_dict())
    current = torch.randn(4, 8)
    assert torch.equal(store.negatives(current), clone.negatives(current))
    assert store.ready == clone.ready


@pytest.mark.parametrize("name", REGISTRY.names("augmentation"))
def test_augmentation_conformance(name, tokenizer):
    cls = REGISTRY.get(name, kind="augmentation").cls
    augmentation = cls(cls.Config(), _ctx(_encoder(len(tokenizer)), tokenizer))
    rows = _source(cls.data_kind, tokenizer)
    examples = [rows[i] for i in range(len(rows))]
    a = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(3))
    b = augmentation.apply(copy.deepcopy(examples), torch.Generator().manual_seed(3))
    assert a == b and len(a) > 0


def test_builtin_plugins_present():
    assert {"mlm", "tlm", "xlco"} <= set(OBJECTIVES)
    assert {"momentum_queue", "in_batch"} <= set(REGISTRY.names("negative_store"))
    assert "mixup" in REGISTRY.names("augmentation")
