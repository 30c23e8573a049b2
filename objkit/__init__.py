"""objkit: compose pretraining objectives for cross-lingual encoders from plugins and recipes.

The names exported here (``objkit.__all__``), together with :mod:`objkit.testing`, are the
public plugin API: stable within a ``PLUGIN_API_VERSION`` major (see docs/plugin-api.md).
Everything else in the package is internal and may change in any release.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from objkit.contract.errors import PluginError, UserError
from objkit import _aliases

_aliases.install()  # old module paths (before 0.8.0's layers) import with a DeprecationWarning

if TYPE_CHECKING:
    from objkit.contract.hookspecs import PLUGIN_API_VERSION, hookimpl
    from objkit.contract.interfaces import (
        Augmentation,
        BuildContext,
        DataKind,
        Encoder,
        NegativeStore,
        Objective,
        ObjectiveOutput,
        Plugin,
        PluginConfig,
        StepContext,
        VocabInfo,
        WorldInfo,
    )
    from objkit.contract.interfaces import EncoderConfig, EncoderContext, MomentumCopy, TokenizerTraining
    from objkit.contract.interfaces import EncoderRunOptions
    from objkit.blocks.encoder import (
        PRESETS,
        MaskedLMEncoder,
        PresetEncoderConfig,
        find_block_list,
        preset_dims,
        run_truncated,
        truncated_blocks,
    )
    from objkit.contract.events import Callback, FitState
    from objkit.contract.evaluator import EvalContext, Evaluator
    from objkit.contract.optim import Optimizer, Schedule
    from objkit.blocks.contrastive import ContrastiveResult, info_nce
    from objkit.data import pack_sentences, sentence_rows
    from objkit.blocks.packed import document_attention_mask, pack_documents
    from objkit.distributed import AllGather, dist_all_gather, gather_rows
    from objkit.blocks.lm_head import LMHeadLoss, lm_head_loss
    from objkit.blocks.masking import (
        IGNORE_INDEX,
        MaskingConfig,
        length_groups,
        mask_tokens,
        masked_lm_output,
        masked_units,
        pad_sequences,
        padding_counts,
    )
    from objkit.data.bucketing import side_lengths
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
    from objkit.blocks.seeding import SAMPLE_SEED, derive_seed, example_seeds, sample_generator, sample_uniform
    from objkit.contract.source import SourceConfig
    from objkit.contract.source import AlignedFilesPart, BitextFilePart, RowsPart, Source, SourceContext, TextFilePart
    from objkit.blocks.hub import hub_unreachable_reason

# Imported on first use (PEP 562), so that ``objkit`` starts -- and answers Ctrl-C -- before
# torch is loaded: the command line imports only what a command needs.
_LAZY = {
    "PLUGIN_API_VERSION": "objkit.contract.hookspecs", "hookimpl": "objkit.contract.hookspecs",
    **dict.fromkeys(["Augmentation", "BuildContext", "DataKind", "Encoder", "NegativeStore", "Objective",
                     "ObjectiveOutput", "Plugin", "PluginConfig", "StepContext", "VocabInfo", "WorldInfo"],
                    "objkit.contract.interfaces"),
    **dict.fromkeys(["IGNORE_INDEX", "MaskingConfig", "mask_tokens", "masked_lm_output", "masked_units",
                     "pad_sequences"], "objkit.blocks.masking"),
    # plugin API 1.1: what the built-ins need to be rank-invariant and correct (docs/plugin-api.md §3)
    **dict.fromkeys(["SAMPLE_SEED", "derive_seed", "example_seeds", "sample_generator", "sample_uniform"],
                    "objkit.blocks.seeding"),
    **dict.fromkeys(["ConstantMomentum", "ConstantWithRefresh", "ExponentialMomentum", "LinearMomentum",
                     "MomentumSchedule", "MomentumTracker", "coerce_schedule", "make_momentum_copy"],
                    "objkit.blocks.momentum"),
    **dict.fromkeys(["ContrastiveResult", "info_nce"], "objkit.blocks.contrastive"),
    **dict.fromkeys(["AllGather", "dist_all_gather", "gather_rows"], "objkit.distributed"),
    "pack_sentences": "objkit.data",
    # plugin API 1.2: the LM-head loss, chunked when the run asks (train.lm_head_chunk_rows)
    **dict.fromkeys(["LMHeadLoss", "lm_head_loss"], "objkit.blocks.lm_head"),
    # plugin API 1.2: the encoder contract, trainer events, optimizer and schedule plugins
    **dict.fromkeys(["EncoderConfig", "EncoderContext", "MomentumCopy", "TokenizerTraining"], "objkit.contract.interfaces"),
    **dict.fromkeys(["Callback", "FitState"], "objkit.contract.events"),
    **dict.fromkeys(["Optimizer", "Schedule"], "objkit.contract.optim"),
    # plugin API 1.3: length bucketing keys and padding that objectives declare
    **dict.fromkeys(["length_groups", "padding_counts"], "objkit.blocks.masking"),
    "side_lengths": "objkit.data.bucketing",
    # plugin API 1.6: the run options an encoder honours, and the building blocks the built-in
    # encoders (plugins/xlmr.py, plugins/bert.py) are written on
    "EncoderRunOptions": "objkit.contract.interfaces",
    **dict.fromkeys(["PRESETS", "MaskedLMEncoder", "PresetEncoderConfig", "find_block_list", "preset_dims",
                     "run_truncated", "truncated_blocks"], "objkit.blocks.encoder"),
    # plugin API 1.6: the evaluator plugin kind (objkit eval NAME, [eval.NAME] in recipes)
    **dict.fromkeys(["EvalContext", "Evaluator"], "objkit.contract.evaluator"),
    # plugin API 1.6: the source plugin kind (docs/plugin-api.md section 7)
    "SourceConfig": "objkit.contract.source",
    **dict.fromkeys(["AlignedFilesPart", "BitextFilePart", "RowsPart", "Source", "SourceContext", "TextFilePart"],
                    "objkit.contract.source"),
    "hub_unreachable_reason": "objkit.blocks.hub",
    # plugin API 1.6: packed rows with per-document attention (objectives' packing = "documents")
    **dict.fromkeys(["document_attention_mask", "pack_documents"], "objkit.blocks.packed"),
    "sentence_rows": "objkit.data",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'objkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.8.0"  # = pyproject.toml's version (tests/test_packaging.py checks)

__all__ = [
    "IGNORE_INDEX",
    "PLUGIN_API_VERSION",
    "PRESETS",
    "SAMPLE_SEED",
    "AlignedFilesPart",
    "AllGather",
    "Augmentation",
    "BitextFilePart",
    "BuildContext",
    "Callback",
    "ConstantMomentum",
    "ConstantWithRefresh",
    "ContrastiveResult",
    "DataKind",
    "EvalContext",
    "Evaluator",
    "Encoder",
    "EncoderConfig",
    "EncoderContext",
    "EncoderRunOptions",
    "ExponentialMomentum",
    "FitState",
    "LMHeadLoss",
    "LinearMomentum",
    "MaskedLMEncoder",
    "MaskingConfig",
    "MomentumSchedule",
    "MomentumCopy",
    "MomentumTracker",
    "NegativeStore",
    "Objective",
    "ObjectiveOutput",
    "Optimizer",
    "Plugin",
    "PluginConfig",
    "PluginError",
    "PresetEncoderConfig",
    "RowsPart",
    "Schedule",
    "Source",
    "SourceConfig",
    "SourceContext",
    "StepContext",
    "TextFilePart",
    "TokenizerTraining",
    "UserError",
    "VocabInfo",
    "WorldInfo",
    "__version__",
    "coerce_schedule",
    "derive_seed",
    "dist_all_gather",
    "document_attention_mask",
    "example_seeds",
    "find_block_list",
    "gather_rows",
    "hub_unreachable_reason",
    "hookimpl",
    "info_nce",
    "length_groups",
    "lm_head_loss",
    "make_momentum_copy",
    "mask_tokens",
    "masked_lm_output",
    "masked_units",
    "pack_documents",
    "pack_sentences",
    "pad_sequences",
    "padding_counts",
    "preset_dims",
    "run_truncated",
    "sample_generator",
    "sample_uniform",
    "sentence_rows",
    "side_lengths",
    "truncated_blocks",
]
