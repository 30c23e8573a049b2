"""objkit: compose pretraining objectives for cross-lingual encoders from plugins and recipes."""

from objkit.hookspecs import hookimpl
from objkit.interfaces import (
    Augmentation,
    BuildContext,
    Encoder,
    NegativeStore,
    Objective,
    ObjectiveOutput,
    PluginConfig,
    StepContext,
    VocabInfo,
    WorldInfo,
)

__version__ = "0.1.0"

__all__ = [
    "Augmentation",
    "BuildContext",
    "Encoder",
    "NegativeStore",
    "Objective",
    "ObjectiveOutput",
    "PluginConfig",
    "StepContext",
    "VocabInfo",
    "WorldInfo",
    "hookimpl",
    "__version__",
]
