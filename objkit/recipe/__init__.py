"""Recipes: the schema (every table as a pydantic model), reading TOML files, validating a
recipe against the plugin registry, and the recipe reference generator.

Before 0.8.0 this package was one module, now :mod:`objkit.recipe.loader`; that module's names
still import from here with a ``DeprecationWarning`` until objkit 1.0 (docs/plugin-api.md)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    from objkit._aliases import moved_attribute

    return moved_attribute(__name__, name)
