"""The objkit hook specification: how a distribution contributes plugins.

A distribution declares modules in the ``objkit`` entry-point group::

    [project.entry-points.objkit]
    my_objective = "my_package.my_objective"

Each module implements one hook, marked with :data:`objkit.hookimpl`::

    from objkit import hookimpl

    @hookimpl
    def objkit_plugins():
        return [MyObjective]

The classes returned must derive from one of the kinds in :mod:`objkit.interfaces`
(Objective, Encoder, NegativeStore, Augmentation), have a unique ``name`` and a pydantic
``Config`` model. objkit's own built-in plugins are registered the same way.
"""

from __future__ import annotations

import pluggy

PROJECT = "objkit"
ENTRY_POINT_GROUP = "objkit"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def objkit_plugins() -> list[type]:
    """Return the plugin classes this module provides."""
