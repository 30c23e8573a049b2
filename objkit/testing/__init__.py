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
:class:`AugmentationConformance` do the same for the other kinds, and :class:`EncoderConformance`
checks an encoder against the contract objectives rely on (layer truncation, the LM head at
selected positions, the momentum copy, FSDP units, export through ``AutoModel``).
:class:`SourceConformance` reads a source plugin's tables through the core (input checks,
columns, declared groups, determinism, cache inputs, streamed = map-style rows) and samples
them on 1 and 2 ranks (the same global batches).

The same checks are plain functions (``check_objective(cls, config)`` and friends) for use
outside pytest. The objective checks train any encoder through the Encoder contract
(:class:`TinyEncoder`: an encoder plugin and a ``[model]`` table, set as the harness's
``encoder``); by default the installed ``xlmr`` encoder plugin, tiny (8 layers, hidden 32, no
dropout), over a synthetic vocabulary in XLM-R's layout (:meth:`objkit.VocabInfo.xlmr`); the
dummy data is random token ids in four languages. Nothing is downloaded; a harness runs in
seconds on a CPU.

This module is part of the public plugin API (docs/plugin-api.md) and needs pytest only
for the harness classes.
"""


from __future__ import annotations

from objkit.blocks.seeding import seed_everything
from objkit.testing._common import (
    Case,
    TinyEncoder,
    assert_same_state,
    build_context,
    checkpoint_round_trip,
    dummy_source,
    installed_registry,
    registry_with,
    resolve_plugin,
    tiny_encoder,
    tiny_vocab,
)
from objkit.testing.registration import check_config, check_recipe_validation, check_registration, check_rejects
from objkit.testing.objectives import (
    check_objective,
    check_objective_compute,
    check_objective_data,
    check_objective_determinism,
    check_objective_meta,
    check_objective_ranks,
    check_objective_state,
)
from objkit.testing.stores import check_augmentation, check_negative_store
from objkit.testing.encoders import (
    check_encoder,
    check_encoder_build,
    check_encoder_export,
    check_encoder_lm_head,
    check_encoder_momentum_copy,
    check_encoder_shard_units,
    check_encoder_token_types,
    check_encoder_truncation,
)
from objkit.testing.harness import AugmentationConformance, EncoderConformance, NegativeStoreConformance, ObjectiveConformance, SourceConformance, harness_for
from objkit.testing.sources import check_source, check_source_ranks, check_source_recipe, word_tokenizer

__all__ = [
    "AugmentationConformance",
    "Case",
    "EncoderConformance",
    "NegativeStoreConformance",
    "ObjectiveConformance",
    "SourceConformance",
    "TinyEncoder",
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
    "check_source",
    "check_source_ranks",
    "check_source_recipe",
    "check_encoder",
    "check_encoder_build",
    "check_encoder_export",
    "check_encoder_lm_head",
    "check_encoder_momentum_copy",
    "check_encoder_shard_units",
    "check_encoder_token_types",
    "check_encoder_truncation",
    "checkpoint_round_trip",
    "dummy_source",
    "harness_for",
    "installed_registry",
    "registry_with",
    "resolve_plugin",
    "seed_everything",
    "tiny_encoder",
    "tiny_vocab",
    "word_tokenizer",
]
