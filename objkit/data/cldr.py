"""Moved: the ``cldr`` source's reader is the built-in source plugin ``objkit_plugins.source_cldr``
(plugin API 1.6). The names still import from here (deprecated; removed in plugin API 2.0)."""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("objkit_plugins.source_cldr"), name)
