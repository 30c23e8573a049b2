"""Deprecated: the ``bert`` encoder moved to the ``bert`` plugin (``objkit_plugins.bert``) in 0.7.0.

``objkit.bert.BertEncoder`` (and ``BertEncoderConfig``, ``bert_architecture``,
``MBERT_VOCAB_SIZE``) keep working with a ``DeprecationWarning`` until objkit 1.0
(docs/plugin-api.md, "Deprecated names"). Nothing in objkit imports this module.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_NAMES = ("BertEncoder", "BertEncoderConfig", "bert_architecture", "MBERT_VOCAB_SIZE")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        warnings.warn(f"objkit.bert.{name} moved to objkit_plugins.bert.{name} (the bert encoder plugin); "
                      "the old name goes in objkit 1.0", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("objkit_plugins.bert"), name)
    raise AttributeError(f"module 'objkit.bert' has no attribute {name!r}")
