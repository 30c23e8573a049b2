"""Conformance: every built-in plugin passes objkit.testing's kit, as a third party's must.

One harness per plugin of the installed registry; extra configurations worth exercising
for built-ins are listed here (every plugin also runs with its defaults). Third-party
plugins installed in the test environment run their own harness from their own tests
(e.g. examples/objkit-translation-ranking/tests).
"""

from __future__ import annotations

from pathlib import Path

from objkit.testing import (
    AugmentationConformance,
    Case,
    NegativeStoreConformance,
    ObjectiveConformance,
    installed_registry,
)


class TestMLM(ObjectiveConformance):
    plugin = "mlm"
    distribution = "objkit"
    configs = [{}, {"mask_prob": 0.3, "replace_prob": 1.0, "random_prob": 0.0}, {"mask_specials": True},
               {"packing": "none"}, {"packing": "documents", "mask_prob": 0.3}]
    bad_configs = [{"mask_prob": 0.0}, {"mask_prob": 1.5}, {"replace_prob": "often"}, {"mask_specials": "yes please"},
                   {"packing": "packed"}]


class TestTLM(ObjectiveConformance):
    plugin = "tlm"
    distribution = "objkit"
    configs = [
        {},
        {"reset_positions": True, "language_embeddings": True, "languages": ["en", "de", "fr", "cs"]},
        {"random_order": True, "mask_specials": True, "language_embeddings": True, "languages": ["en", "de", "fr", "cs"]},
        {"packing": "documents", "reset_positions": True, "random_order": True},
    ]
    bad_configs = [{"language_embeddings": True}, {"mask_prob": -0.1}, {"random_order": "sometimes"},
                   {"packing": "complete"}]


class TestXLCO(ObjectiveConformance):
    plugin = "xlco"
    distribution = "objkit"
    configs = [
        # the reference's 131,072-key queue is still filling after 3 steps: no loss yet
        Case({}, expect_gradients=False),
        {"negatives": {"momentum_queue": {"size": 8}}, "augment": {"mixup": {}}},
        {"negatives": {"in_batch": {}}, "symmetric": True, "learnable_temperature": True, "pooling": "mean"},
    ]
    bad_configs = [
        {"temperature": 0.0},
        {"negatives": {}},
        {"negatives": {"no_such_store": {}}},
        {"negatives": {"momentum_queue": {"size": 0}}},
        {"augment": {"mixup": {"prob": 2.0}}},
    ]


class TestXlmAlign(ObjectiveConformance):
    plugin = "xlm_align"
    distribution = "objkit"
    configs = [
        {},
        {"wa_layer": 3, "align_enable_step": 2, "random_order": True, "mask_specials": True},
        {"projection": False, "tlm_loss": False, "sinkhorn_iter": 0, "wa_max_count": 1},
    ]
    bad_configs = [{"wa_layer": -1}, {"sinkhorn_iter": -1}, {"wa_max_count": 0}, {"align_enable_step": "soon"}]


class TestMomentumQueue(NegativeStoreConformance):
    plugin = "momentum_queue"
    distribution = "objkit"
    configs = [{"size": 8}, {"size": 32, "fill_before_start": False}]
    bad_configs = [{"size": 0}]


class TestInBatch(NegativeStoreConformance):
    plugin = "in_batch"
    distribution = "objkit"
    bad_configs = [{"size": 3}]


class TestMixup(AugmentationConformance):
    plugin = "mixup"
    distribution = "objkit"
    configs = [{}, {"partner": "random", "prob": 0.5}]
    bad_configs = [{"prob": 1.5}, {"partner": "nearest"}]


HARNESSES = {
    cls.plugin: cls for cls in (TestMLM, TestTLM, TestXLCO, TestXlmAlign, TestMomentumQueue, TestInBatch, TestMixup)
}
# built-ins whose harness lives in their own test module (beside their other tests)
HARNESS_MODULES = {"mrtd": "test_xlm_e.py", "trtd": "test_xlm_e.py", "camlm": "test_ernie_m.py", "btmlm": "test_ernie_m.py"}


def test_every_builtin_plugin_has_a_harness():
    # encoders: tests/test_encoder_conformance.py; optimizers and schedules: tests/test_events.py
    builtins = {
        info.name for info in installed_registry().infos() if info.distribution == "objkit" and info.kind in ("objective", "negative_store", "augmentation")
    }
    assert builtins == set(HARNESSES) | set(HARNESS_MODULES)
    here = Path(__file__).parent
    for name, module in HARNESS_MODULES.items():
        assert f'plugin = "{name}"' in (here / module).read_text(encoding="utf-8"), f"no harness for {name} in {module}"


def test_rank_check_catches_masking_from_the_generator():
    """The kit's rank check drives the real CompositeLoss: an objective that masks from the
    per-rank ``generator`` (what the scaffold generated before plugin API 1.1) fails it, and
    the same objective masking from ``sample_seed`` passes."""
    from typing import Any, ClassVar

    import pytest
    import torch

    from objkit import (
        BuildContext,
        MaskingConfig,
        Objective,
        ObjectiveOutput,
        StepContext,
        derive_seed,
        example_seeds,
        mask_tokens,
        masked_lm_output,
        pad_sequences,
    )
    from objkit.testing import check_objective_ranks

    class GeneratorMasking(Objective):
        name: ClassVar[str] = "generator_masking"
        Config: ClassVar[type[MaskingConfig]] = MaskingConfig
        plugin_api: ClassVar[str] = "1.1"
        data_kind = "text"
        per_sample: ClassVar[bool] = False

        def __init__(self, config: MaskingConfig, ctx: BuildContext) -> None:
            super().__init__(config, ctx)
            self.vocab = ctx.vocab

        def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
            rows = [[self.vocab.bos_id, *e["input_ids"][:20], self.vocab.eos_id] for e in examples]
            ids, attention = pad_sequences(rows, self.vocab.pad_id)
            seeds = [derive_seed(s, "m") for s in example_seeds(examples, generator)] if self.per_sample else None
            masked, labels = mask_tokens(ids, self.vocab, generator, self.config, seeds=seeds)
            return {"input_ids": masked, "attention_mask": attention, "labels": labels}

        def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
            return masked_lm_output(ctx.encoder, batch)

    class SampleSeedMasking(GeneratorMasking):
        name: ClassVar[str] = "sample_seed_masking"
        per_sample: ClassVar[bool] = True

    with pytest.raises(AssertionError, match="must come from example\\['sample_seed'\\]|units on 1 rank"):
        check_objective_ranks(GeneratorMasking, MaskingConfig(), steps=1)
    assert check_objective_ranks(SampleSeedMasking, MaskingConfig(), steps=1)[0] is not None
