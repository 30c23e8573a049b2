"""The objkit hook specification and plugin API version: how a distribution contributes plugins.

The full contract (what a plugin may rely on, what it must provide, what is stable) is
``docs/plugin-api.md``; this module is its machine-readable part.

A distribution declares modules in the ``objkit`` entry-point group::

    [project.entry-points.objkit]
    my_objective = "my_package.my_objective"

Each module implements one hook, marked with :data:`objkit.hookimpl`::

    from objkit import hookimpl

    @hookimpl
    def objkit_plugins():
        return [MyObjective]

The classes returned must derive from one of the kinds in :mod:`objkit.contract.interfaces`
(Objective, Encoder, NegativeStore, Augmentation), have a unique ``name``, a pydantic
``Config`` model that forbids unknown keys, and declare the plugin API they are written
against::

    class MyObjective(Objective):
        name = "my_objective"
        plugin_api = "1.0"

Hooks are called with keyword arguments only (pluggy's rule; ``objkit_plugins`` takes
none today, so hooks added later can pass arguments without breaking it). objkit's own
built-in plugins are registered the same way.
"""

from __future__ import annotations

import re

import pluggy

PROJECT = "objkit"
ENTRY_POINT_GROUP = "objkit"

PLUGIN_API_VERSION = "1.7"
"""The plugin API this objkit provides, ``MAJOR.MINOR``.

A plugin declares the version it is written against (class attribute ``plugin_api``). It
loads when the majors are equal and its minor is at most objkit's: minors only add to the
API, a new major may change or remove what plugins use. Anything else is a
:class:`~objkit.contract.errors.PluginError` naming the plugin, its distribution and both versions;
the other plugins still load.

History: 1.0 the plugin kinds, contexts and masking helpers; 1.1 adds the per-example seeds,
momentum copies and schedules, InfoNCE, the cross-rank row gather, the masked-LM and packing
helpers, and ``Encoder.copy_body`` / ``Encoder.run_copy`` (plugins declaring "1.0" load
unchanged); 1.2 makes the encoder contract real: ``Encoder.build(config, ctx)`` with an
``EncoderContext``, ``EncoderConfig`` (the encoder's ``Config`` validates ``[model]``),
``Encoder.momentum_copy`` / ``MomentumCopy``, ``resize_token_types``, the ``num_heads`` /
``max_tokens`` / position-id attributes, and ``TokenizerTraining.algorithm``; it adds the trainer
events (``Callback``, ``FitState``), optimizer and schedule plugins, ``lm_head_loss`` /
``LMHeadLoss`` (the LM-head loss the run may chunk, ``train.lm_head_chunk_rows``), 0-dim tensors
in ``ObjectiveOutput.metrics``, ``ContrastiveResult.top1`` and ``NegativeStore.accepts_gathered_keys``; 1.3 adds
``Encoder.resize_vocab`` (a checkpoint's vocabulary grown for an extended tokenizer),
``Objective.bucket_lengths`` (the objective's key for ``train.length_bucketing``),
``side_lengths``, ``length_groups`` and ``padding_counts`` (with the ``.N`` suffix of a
tensor's further length groups).
"""

_VERSION = re.compile(r"^(\d+)\.(\d+)$")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def parse_api_version(text: object) -> tuple[int, int] | None:
    """``"1.0"`` -> ``(1, 0)``; None for anything that is not ``MAJOR.MINOR``."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def api_compatible(declared: str, provided: str = PLUGIN_API_VERSION) -> bool:
    """True if a plugin written against ``declared`` runs on an objkit providing ``provided``."""
    want, have = parse_api_version(declared), parse_api_version(provided)
    if want is None or have is None:
        return False
    return want[0] == have[0] and want[1] <= have[1]


@hookspec
def objkit_plugins() -> list[type]:
    """Return the plugin classes this module provides (called once, with no arguments)."""
