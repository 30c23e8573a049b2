"""objkit: compose pretraining objectives for cross-lingual encoders from plugins and recipes.

The names exported here (``objkit.__all__``), together with :mod:`objkit.testing`, are the
public plugin API: stable within a ``PLUGIN_API_VERSION`` major (see docs/plugin-api.md).
Everything else in the package is internal and may change in any release.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from objkit.errors import PluginError, UserError

if TYPE_CHECKING:
    from objkit.hookspecs import PLUGIN_API_VERSION, hookimpl
    from objkit.interfaces import (
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
    from objkit.masking import IGNORE_INDEX, MaskingConfig, mask_tokens, pad_sequences

# Imported on first use (PEP 562), so that ``objkit`` starts -- and answers Ctrl-C -- before
# torch is loaded: the command line imports only what a command needs.
_LAZY = {
    "PLUGIN_API_VERSION": "objkit.hookspecs", "hookimpl": "objkit.hookspecs",
    **dict.fromkeys(["Augmentation", "BuildContext", "DataKind", "Encoder", "NegativeStore", "Objective",
                     "ObjectiveOutput", "Plugin", "PluginConfig", "StepContext", "VocabInfo", "WorldInfo"],
                    "objkit.interfaces"),
    **dict.fromkeys(["IGNORE_INDEX", "MaskingConfig", "mask_tokens", "pad_sequences"], "objkit.masking"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'objkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "IGNORE_INDEX",
    "PLUGIN_API_VERSION",
    "Augmentation",
    "BuildContext",
    "DataKind",
    "Encoder",
    "MaskingConfig",
    "NegativeStore",
    "Objective",
    "ObjectiveOutput",
    "Plugin",
    "PluginConfig",
    "PluginError",
    "StepContext",
    "UserError",
    "VocabInfo",
    "WorldInfo",
    "__version__",
    "hookimpl",
    "mask_tokens",
    "pad_sequences",
]
