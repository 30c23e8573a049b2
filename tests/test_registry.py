"""Registry: entry points, load errors, duplicates, checks at registration."""

from __future__ import annotations

import importlib.metadata as md
import sys
import types
from typing import ClassVar

import pytest
import torch

from objkit import Objective, ObjectiveOutput, PluginConfig, hookimpl
from objkit.errors import PluginError
from objkit.registry import Registry


def _objective(name: str, config: type[PluginConfig] = PluginConfig) -> type[Objective]:
    class Dummy(Objective):
        Config: ClassVar[type[PluginConfig]] = config
        data_kind = "text"

        def collate(self, examples, generator):  # noqa: ANN001, ANN202
            return {}

        def compute(self, batch, ctx):  # noqa: ANN001, ANN202
            return ObjectiveOutput(torch.zeros(()), 0)

    Dummy.name = name
    return Dummy


def _module(name: str, *classes: type) -> types.ModuleType:
    module = types.ModuleType(name)

    @hookimpl
    def objkit_plugins() -> list[type]:
        return list(classes)

    module.objkit_plugins = objkit_plugins
    return module


def test_builtins_come_from_entry_points():
    registry = Registry.from_entry_points()
    assert registry.load_errors == []
    names = set(registry.names())
    assert {"mlm", "tlm", "xlmr"} <= names
    mlm = registry.get("mlm")
    assert (mlm.kind, mlm.distribution, mlm.module) == ("objective", "objkit", "objkit_plugins.mlm")
    assert mlm.version == md.version("objkit")
    assert registry.get("xlmr").kind == "encoder"


def test_duplicate_name_names_both_distributions():
    registry = Registry()
    registry.register_module(_module("a", _objective("same")), name="a", distribution="dist-one", version="1.0")
    with pytest.raises(PluginError) as err:
        registry.register_module(_module("b", _objective("same")), name="b", distribution="dist-two", version="2.0")
    message = str(err.value)
    assert '"same"' in message and "dist-one 1.0" in message and "dist-two 2.0" in message


def test_unknown_name_suggests_close_match():
    registry = Registry()
    registry.register_module(_module("a", _objective("xlco")), name="a", distribution="d", version="1")
    with pytest.raises(PluginError, match='did you mean "xlco"'):
        registry.get("xcol")


def test_config_must_forbid_extra_keys():
    class Loose(PluginConfig):
        model_config = {"extra": "allow"}

    registry = Registry()
    with pytest.raises(PluginError, match="forbid extra keys"):
        registry.add(_objective("loose", Loose), distribution="d", version="1")


def test_non_plugin_class_rejected():
    with pytest.raises(PluginError, match="derives from none"):
        Registry().add(int, distribution="d", version="1")


def test_failing_entry_point_is_reported_and_others_still_load(monkeypatch):
    good = _module("good_mod", _objective("good"))
    sys.modules["good_mod"] = good

    def fake_entry_points(group):  # noqa: ANN001, ANN202
        dist = types.SimpleNamespace(name="thirdparty-objkit", version="0.3")
        broken = md.EntryPoint("broken", "no_such_module_xyz", group)
        fine = md.EntryPoint("good", "good_mod", group)
        broken_ep = _with_dist(broken, dist)
        fine_ep = _with_dist(fine, dist)
        return [broken_ep, fine_ep]

    monkeypatch.setattr(md, "entry_points", fake_entry_points)
    registry = Registry.from_entry_points()
    assert registry.names() == ["good"]
    assert registry.load_errors == [
        'error loading objkit plugin "broken" from thirdparty-objkit 0.3: '
        "ModuleNotFoundError: No module named 'no_such_module_xyz'"
    ]


def _with_dist(ep: md.EntryPoint, dist: object) -> md.EntryPoint:
    # EntryPoint is immutable; _for() is how importlib.metadata itself attaches the distribution
    return ep._for(dist)  # type: ignore[attr-defined]
