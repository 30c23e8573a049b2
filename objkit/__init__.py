"""objkit: compose pretraining objectives for cross-lingual encoders from plugins and recipes.

The names exported here (``objkit.__all__``), together with :mod:`objkit.testing`, are the
public plugin API: stable within a ``PLUGIN_API_VERSION`` major (see docs/plugin-api.md).
Everything else in the package is internal and may change in any release.
"""

from objkit.errors import PluginError, UserError
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
