"""Checks for any plugin kind: registration through the registry, config round trip and rejection."""

from __future__ import annotations


import copy
import json
import tomllib
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from objkit.contract.interfaces import Encoder, Objective, PluginConfig
from objkit.testing._common import installed_registry, registry_with


# ----------------------------------------------------------------------------- checks: any kind
def check_registration(plugin: str | type, *, distribution: str | None = None, kind: str | None = None) -> Any:
    """The plugin is registered through the installed entry points (from ``distribution``)
    and passes the registry's checks (name, Config forbidding extra keys, data kind,
    abstract methods, plugin API version). Returns its :class:`~objkit.contract.registry.PluginInfo`."""
    from objkit.contract.registry import Registry

    registry = installed_registry()
    name = plugin if isinstance(plugin, str) else getattr(plugin, "name", None)
    assert isinstance(name, str), f"{plugin!r} has no name"
    broken = {s.name: s for s in registry.skipped.values() if s.status == "broken"}
    assert name not in broken, broken[name].line() if name in broken else ""
    if distribution is not None:
        assert not [s for s in broken.values() if s.distribution == distribution], [
            s.line() for s in broken.values() if s.distribution == distribution
        ]
    info = registry.get(f"{distribution}:{name}" if distribution else name)
    if isinstance(plugin, type):
        assert info.cls is plugin, f'"{name}" is registered as {info.cls!r}, not {plugin!r}'
    if kind is not None:
        assert info.kind == kind, f'"{name}" is a {info.kind}, expected a {kind}'
    if distribution is not None:
        assert info.distribution == distribution, f'"{name}" comes from {info.distribution}, expected {distribution}'
        assert info.version, f'"{name}": no version for {distribution}'
    Registry().add(info.cls, distribution=info.distribution, version=info.version)  # checks pass on their own
    return info


def check_config(cls: type, table: dict[str, Any]) -> PluginConfig:
    """``table`` validates; the validated config survives a round trip through JSON and TOML
    (``exclude_none``, as ``objkit validate`` prints it and run directories keep it) and
    re-validates to an equal config; an unknown key is rejected."""
    config_cls: type[BaseModel] = cls.Config
    config = config_cls.model_validate(copy.deepcopy(table))
    dumped = config.model_dump(mode="json", exclude_none=True)
    again = config_cls.model_validate(json.loads(json.dumps(dumped)))
    assert again == config, f"{cls.name}: config changes through a JSON round trip: {config!r} -> {again!r}"
    via_toml = tomllib.loads(tomli_w.dumps({"t": dumped}))["t"]
    again = config_cls.model_validate(via_toml)
    assert again == config, f"{cls.name}: config changes through a TOML round trip: {config!r} -> {again!r}"
    try:
        config_cls.model_validate({**copy.deepcopy(table), "no_such_key_xyz": 1})
    except ValidationError as exc:
        assert any(e["type"] == "extra_forbidden" for e in exc.errors()), exc
    else:
        raise AssertionError(f"{cls.name}: Config accepts an unknown key (use objkit.PluginConfig as its base)")
    return config


def check_rejects(cls: type, table: dict[str, Any], registry: Any = None) -> None:
    """``table`` is an invalid recipe table for the plugin: its Config or its ``check``
    rejects it (what ``objkit validate`` would report)."""
    try:
        config = cls.Config.model_validate(copy.deepcopy(table))
    except ValidationError:
        return
    problems = cls.check(config, registry or registry_with(cls))
    assert problems, f"{cls.name}: accepted a table it should reject: {table!r}"


def check_recipe_validation(cls: type, table: dict[str, Any]) -> None:
    """A minimal recipe using the plugin with ``table`` validates (objectives and encoders)."""
    from objkit.recipe.loader import validate_recipe

    if issubclass(cls, Encoder):
        raw = {
            "model": {"encoder": cls.name, **copy.deepcopy(table)},
            "data": {"d": {"type": "text", "files": [{"path": "x.txt", "lang": "en"}]}},
            "objectives": {"mlm": {"data": "d"}},
            "train": {"steps": 1, "batch_size": 2, "lr": 1e-3},
        }
        validate_recipe(raw, registry_with(cls), source=f"recipe using {cls.name}")
        return
    if not issubclass(cls, Objective):
        return
    data_kind = cls.data_kind
    source = (
        {"type": "text", "files": [{"path": "x.txt", "lang": "en"}]}
        if data_kind == "text"
        else {"type": "parallel", "pairs": [{"src": "x.en", "tgt": "x.de", "src_lang": "en", "tgt_lang": "de"}]}
    )
    raw = {
        "model": {"preset": "tiny", "tokenizer": "unused"},
        "data": {"d": source},
        "objectives": {"under_test": {"plugin": cls.name, "data": "d", **copy.deepcopy(table)}},
        "train": {"steps": 1, "batch_size": 2, "lr": 1e-3},
    }
    validate_recipe(raw, registry_with(cls), source=f"recipe using {cls.name}")


