"""Registry: entry points, load errors, duplicates, checks at registration."""

from __future__ import annotations

import importlib.metadata as md
import inspect
import re
import sys
import types
from typing import ClassVar

import pytest
import torch

import objkit
from objkit import Objective, ObjectiveOutput, PluginConfig, hookimpl
from objkit.contract.errors import PluginError
from objkit.contract.hookspecs import PLUGIN_API_VERSION, api_compatible
from objkit.contract.registry import PluginSelection, Registry


def _objective(name: str, config: type[PluginConfig] = PluginConfig, api: str | None = "1.0") -> type[Objective]:
    class Dummy(Objective):
        Config: ClassVar[type[PluginConfig]] = config
        data_kind = "text"
        plugin_api = api

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
    builtins = [("adamw", "optimizer", "objkit_plugins.adamw"), ("linear", "schedule", "objkit_plugins.schedules"),
                ("constant", "schedule", "objkit_plugins.schedules"), ("cosine", "schedule", "objkit_plugins.schedules")]
    for name, kind, module in builtins:
        info = registry.get(name, kind=kind)  # the optimizer and the schedules are plugins like mlm
        assert (info.distribution, info.module, info.plugin_api) == ("objkit", module, PLUGIN_API_VERSION), name


def test_the_registry_holds_the_kinds_and_no_builtin():
    """objkit's registry and kind modules define the kinds; every built-in plugin class lives in
    objkit_plugins (plugins/), loaded through the entry points."""
    from objkit.contract import optim
    from objkit.contract import registry as registry_module

    assert registry_module.PLUGIN_KINDS["optimizer"] is objkit.Optimizer is optim.Optimizer
    assert registry_module.PLUGIN_KINDS["schedule"] is objkit.Schedule is optim.Schedule
    for module in (optim, registry_module):
        defined = [v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__]
        assert not [c for c in defined if issubclass(c, objkit.Plugin) and not inspect.isabstract(c)], module
    assert {i.module for i in Registry.from_entry_points().infos() if i.kind in ("optimizer", "schedule")} == {
        "objkit_plugins.adamw", "objkit_plugins.schedules"}


def test_duplicate_name_names_both_distributions():
    registry = Registry()
    registry.register_module(_module("a", _objective("same")), name="a", distribution="dist-one", version="1.0")
    registry.register_module(_module("b", _objective("same")), name="b", distribution="dist-two", version="2.0")
    assert [i.distribution for i in registry.infos()] == ["dist-one", "dist-two"]  # both kept, neither wins
    assert list(registry.conflicts()) == ["same"]
    with pytest.raises(PluginError) as err:
        registry.get("same", kind="objective")
    message = str(err.value)
    assert '"same"' in message and "dist-one 1.0" in message and "dist-two 2.0" in message
    assert len(message.splitlines()) == 1 and 'plugin = "dist-one:same" or "dist-two:same"' in message
    assert registry.get("dist-two:same").distribution == "dist-two"
    assert registry.versions() == {"dist-one:same": "dist-one 1.0", "dist-two:same": "dist-two 2.0"}
    with pytest.raises(PluginError, match='no plugin "same" from distribution dist-three'):
        registry.get("dist-three:same")
    with pytest.raises(PluginError, match='duplicate objkit plugin name "same" within dist-one'):
        registry.register_module(_module("c", _objective("same")), name="c", distribution="dist-one", version="1.0")


def test_plugin_dist_name_chooses_between_colliding_plugins(monkeypatch):
    _fake_world(
        monkeypatch,
        {"aaa": _module("aaa", _objective("mlm")), "core": _module("core", _objective("mlm"))},
        {"aaa": "dist-impostor", "core": "objkit"},
    )
    registry = Registry.from_entry_points(selection=PluginSelection.parse([], environ={}))
    assert list(registry.conflicts()) == ["mlm"] and registry.load_errors == []  # neither is "broken"
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["objkit:mlm"], environ={}))
    assert registry.conflicts() == {} and registry.get("mlm").distribution == "objkit"
    assert registry.versions() == {"mlm": "objkit 1.0"}
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["nope:mlm"], environ={}))
    assert 'no plugin "mlm" from distribution nope' in registry.load_errors[0]


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


# ----------------------------------------------------------------------------- plugin API version
def test_api_compatibility_rule():
    assert PLUGIN_API_VERSION == "1.7"
    assert api_compatible("1.0", "1.0") and api_compatible("1.0", "1.6")
    assert not api_compatible("1.8", "1.7")  # needs a newer minor
    assert not api_compatible("2.0", "1.0") and not api_compatible("0.9", "1.0")  # other majors
    assert not api_compatible("1", "1.0") and not api_compatible("one", "1.0")


def test_api_mismatch_names_plugin_distribution_and_both_versions():
    registry = Registry()
    with pytest.raises(PluginError) as err:
        registry.add(_objective("future", api="2.0"), distribution="objkit-future", version="3.1")
    message = str(err.value)
    assert '"future"' in message and "objkit-future 3.1" in message
    assert "plugin API 2.0" in message and f"provides plugin API {PLUGIN_API_VERSION}" in message
    with pytest.raises(PluginError, match=rf"needs objkit plugin API 1\.8, but objkit .* provides plugin API {re.escape(PLUGIN_API_VERSION)}"):
        registry.add(_objective("newer_minor", api="1.8"), distribution="d", version="1")


def test_undeclared_or_malformed_api_version_is_an_error():
    with pytest.raises(PluginError, match=r'declares no plugin API version; add plugin_api = "1\.7"'):
        Registry().add(_objective("silent", api=None), distribution="d", version="1")
    with pytest.raises(PluginError, match="must be \"MAJOR.MINOR\""):
        Registry().add(_objective("odd", api="v1"), distribution="d", version="1")


def test_builtins_declare_the_current_api():
    registry = Registry.from_entry_points()
    builtins = [info for info in registry.infos() if info.distribution == "objkit"]
    assert builtins and {info.plugin_api for info in builtins} == {PLUGIN_API_VERSION}


def test_module_registers_all_of_its_plugins_or_none():
    registry = Registry()
    module = _module("mixed", _objective("fine"), _objective("stale", api="0.1"))
    with pytest.raises(PluginError, match="stale"):
        registry.register_module(module, name="mixed", distribution="d", version="1")
    assert registry.names() == []
    registry.register_module(_module("again", _objective("fine")), name="mixed", distribution="d", version="1")
    assert registry.names() == ["fine"]


# ----------------------------------------------------------------------------- loading controls
def _fake_world(monkeypatch, modules: dict[str, types.ModuleType], dists: dict[str, str]) -> None:
    """Entry points named like ``modules``' keys, each from distribution ``dists[name]``."""
    for module_name, module in modules.items():
        monkeypatch.setitem(sys.modules, module_name, module)

    def fake_entry_points(group):  # noqa: ANN001, ANN202
        eps = []
        for name in modules:
            dist = types.SimpleNamespace(name=dists[name], version="1.0")
            eps.append(_with_dist(md.EntryPoint(name, name, group), dist))
        return eps

    monkeypatch.setattr(md, "entry_points", fake_entry_points)


def test_broken_api_entry_point_is_skipped_and_named_on_lookup(monkeypatch):
    _fake_world(
        monkeypatch,
        {"good_one": _module("good_one", _objective("good_one")), "future_one": _module("future_one", _objective("future_one", api="9.0"))},
        {"good_one": "dist-good", "future_one": "dist-future"},
    )
    registry = Registry.from_entry_points()
    assert registry.names() == ["good_one"]
    assert registry.skipped["future_one"].status == "broken"
    assert "plugin API 9.0" in registry.load_errors[0] and "dist-future 1.0" in registry.load_errors[0]
    with pytest.raises(PluginError, match='objective plugin "future_one" from dist-future 1.0 failed to load: .*9.0'):
        registry.get("future_one", kind="objective")


def test_plugin_no_name_blocks_entry_points_and_distributions(monkeypatch):
    _fake_world(
        monkeypatch,
        {"alpha": _module("alpha", _objective("alpha")), "beta": _module("beta", _objective("beta"))},
        {"alpha": "dist-a", "beta": "dist-b"},
    )
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["no:alpha"], environ={}))
    assert registry.names() == ["beta"]
    assert registry.skipped["alpha"].status == "disabled" and registry.skipped["alpha"].reason == "--plugin no:alpha"
    with pytest.raises(PluginError, match='"alpha" from dist-a 1.0 is disabled \\(--plugin no:alpha\\)'):
        registry.get("alpha")
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["no:dist-b"], environ={}))
    assert registry.names() == ["alpha"]


def test_disable_autoload_keeps_builtins_and_named_plugins(monkeypatch):
    _fake_world(
        monkeypatch,
        {"alpha": _module("alpha", _objective("alpha")), "beta": _module("beta", _objective("beta")),
         "core": _module("core", _objective("core"))},
        {"alpha": "dist-a", "beta": "dist-b", "core": "objkit"},
    )
    env = {"OBJKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    registry = Registry.from_entry_points(selection=PluginSelection.parse([], environ=env))
    assert registry.names() == ["core"]
    assert "OBJKIT_DISABLE_PLUGIN_AUTOLOAD is set" in registry.skipped["alpha"].reason
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["alpha"], environ=env))
    assert registry.names() == ["alpha", "core"]
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["dist-b"], environ=env))
    assert registry.names() == ["beta", "core"]
    assert PluginSelection.parse([], environ={"OBJKIT_DISABLE_PLUGIN_AUTOLOAD": "0"}).autoload


def test_plugin_by_module_path_and_unknown_name(monkeypatch):
    _fake_world(monkeypatch, {"alpha": _module("alpha", _objective("alpha"))}, {"alpha": "dist-a"})
    monkeypatch.setitem(sys.modules, "my_local_objective", _module("my_local_objective", _objective("local")))
    registry = Registry.from_entry_points(selection=PluginSelection.parse(["my_local_objective", "alpah"], environ={}))
    assert registry.names() == ["alpha", "local"]
    assert registry.get("local").distribution == "<--plugin>"  # a module no distribution owns
    assert registry.skipped["alpah"].status == "broken"
    assert 'did you mean "alpha"' in registry.skipped["alpah"].reason


def test_module_without_the_marked_hook_is_an_error():
    module = types.ModuleType("unmarked")
    module.objkit_plugins = lambda: [_objective("unmarked")]  # @hookimpl forgotten
    registry = Registry()
    with pytest.raises(PluginError, match=r"has no objkit_plugins\(\) function marked with @objkit.hookimpl"):
        registry.register_module(module, name="unmarked", distribution="d", version="1")
    assert registry.names() == []
