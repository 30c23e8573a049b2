"""pytest harness classes (subclass one per plugin) and ``harness_for``."""

from __future__ import annotations


import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar


from objkit.contract.interfaces import Augmentation, NegativeStore, Objective, PluginConfig

from objkit.testing._common import Case, TinyEncoder, as_case, installed_registry, resolve_plugin
from objkit.testing.registration import check_config, check_recipe_validation, check_registration, check_rejects
from objkit.testing.objectives import check_objective_compute, check_objective_data, check_objective_determinism, check_objective_meta, check_objective_ranks, check_objective_state
from objkit.testing.encoders import (
    check_encoder_build,
    check_encoder_export,
    check_encoder_lm_head,
    check_encoder_momentum_copy,
    check_encoder_shard_units,
    check_encoder_token_types,
    check_encoder_truncation,
)
from objkit.testing.stores import check_augmentation, check_negative_store
from objkit.testing.sources import check_source, check_source_ranks, check_source_recipe


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
    encoder: ClassVar[TinyEncoder | None] = None
    """(API 1.6) The encoder the checks train, through the Encoder contract (default: the tiny
    ``xlmr`` of :func:`objkit.testing.tiny_encoder`); e.g. ``TinyEncoder("hf_mlm", {...})``."""

    def _config(self, case: Case) -> PluginConfig:
        return self.cls.Config.model_validate(copy.deepcopy(case.config))

    def test_meta_device(self, case: Case) -> None:
        check_objective_meta(self.cls, self._config(case), encoder=self.encoder)

    def test_prepare_and_collate(self, case: Case) -> None:
        check_objective_data(self.cls, self._config(case), batch_size=self.batch_size, seed=self.seed,
                             encoder=self.encoder)

    def test_compute_and_gradients(self, case: Case) -> None:
        check_objective_compute(
            self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size,
            expect_gradients=case.expect_gradients, encoder=self.encoder,
        )

    def test_state_round_trip(self, case: Case, tmp_path: Path) -> None:
        check_objective_state(
            self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size, directory=tmp_path,
            encoder=self.encoder,
        )

    def test_determinism(self, case: Case) -> None:
        check_objective_determinism(self.cls, self._config(case), steps=self.steps, seed=self.seed,
                                    batch_size=self.batch_size, encoder=self.encoder)

    def test_rank_invariance(self, case: Case) -> None:
        if not case.rank_invariant:
            import pytest

            pytest.skip("this configuration depends on the number of ranks by design (Case.rank_invariant=False)")
        check_objective_ranks(self.cls, self._config(case), steps=self.steps, seed=self.seed, batch_size=self.batch_size,
                              encoder=self.encoder)


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


class EncoderConformance(_Harness):
    """pytest harness for an Encoder plugin: ``configs`` are ``[model]`` tables of a tiny fresh
    model (e.g. ``{"num_layers": 3, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64,
    "tokenizer": "unused", "max_length": 32, "dropout": 0.0}``)."""

    kind = "encoder"

    def _table(self, case: Case) -> dict[str, Any]:
        return copy.deepcopy(case.config)

    def test_build(self, case: Case) -> None:
        check_encoder_build(self.cls, self._table(case))

    def test_layer_truncation(self, case: Case) -> None:
        check_encoder_truncation(self.cls, self._table(case))

    def test_lm_head_at_positions(self, case: Case) -> None:
        check_encoder_lm_head(self.cls, self._table(case))

    def test_momentum_copy(self, case: Case) -> None:
        check_encoder_momentum_copy(self.cls, self._table(case))

    def test_shard_units(self, case: Case) -> None:
        check_encoder_shard_units(self.cls, self._table(case))

    def test_export_round_trip(self, case: Case) -> None:
        check_encoder_export(self.cls, self._table(case))

    def test_token_types(self, case: Case) -> None:
        check_encoder_token_types(self.cls, self._table(case))


def harness_for(plugin: str, **attributes: Any) -> type:
    """A harness class for an installed plugin of any kind, e.g. to test every plugin of
    a registry: ``TestX = harness_for("xlco", configs=[...])``."""
    kind = installed_registry().get(plugin).kind
    base = {"objective": ObjectiveConformance, "negative_store": NegativeStoreConformance,
            "augmentation": AugmentationConformance, "encoder": EncoderConformance,
            "source": SourceConformance}.get(kind)
    if base is None:
        raise ValueError(f'no conformance harness for {kind} plugins ("{plugin}")')
    return type(f"Test_{plugin}", (base,), {"plugin": plugin, "__test__": True, **attributes})




class SourceConformance(_Harness):
    """pytest harness for a source plugin (kind ``source``): ``files`` (relative path -> text)
    are written to a temporary folder that each table of ``configs`` reads from (relative
    paths); every table is read through the core (:func:`objkit.testing.check_source`) and
    sampled on 1 and 2 ranks (:func:`objkit.testing.check_source_ranks`)."""

    kind = "source"
    files: ClassVar[dict[str, str]] = {}

    def _base(self, tmp_path: Path) -> Path:
        for rel, text in self.files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return tmp_path

    def test_config_round_trip(self, case: Case) -> None:
        check_config(self.cls, case.config)
        check_source_recipe(self.cls, case.config)

    def test_reads_deterministically(self, case: Case, tmp_path: Path) -> None:
        check_source(self.cls, case.config, self._base(tmp_path))

    def test_rank_invariant_sampling(self, case: Case, tmp_path: Path) -> None:
        check_source_ranks(check_source(self.cls, case.config, self._base(tmp_path)))
