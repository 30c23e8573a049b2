"""A recipe's ``[data.NAME]`` tables validated through the registry: ``type`` names a source
plugin (:class:`objkit.Source`), whose ``Config`` validates the whole table."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from objkit.contract.errors import UserError
from objkit.contract.registry import BUILTIN_DISTRIBUTION, Registry

BUILTIN_ORDER = ("text", "parallel", "cldr", "hf")
"""The built-in sources, in the order messages and the reference list them."""


def unknown_type(registry: Registry, kind: str) -> str:
    """``expected one of 'text', 'parallel', ... (got 'txt'); did you mean "text"?``"""
    infos = [registry.get(n, kind="source") for n in registry.names("source") if n not in registry.conflicts()]
    builtins = sorted((i.name for i in infos if i.distribution == BUILTIN_DISTRIBUTION),
                      key=lambda n: (BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER), n))
    others = sorted(n for n in registry.names("source") if n not in builtins)
    text = f"expected one of {', '.join(repr(n) for n in builtins) or '(none)'} (got {kind!r})"
    if others:
        text += f" or a source plugin installed beside them: {', '.join(repr(n) for n in others)}"
    close = difflib.get_close_matches(kind, builtins + others, n=1)
    return text + (f'; did you mean "{close[0]}"?' if close else "")


def validate_sources(tables: dict[str, Any], registry: Registry, problems: list[str],
                     describe: Callable[..., str], hint: Callable[[str, list[str]], str]) -> dict[str, tuple[Any, Any]]:
    """``{NAME: (source plugin class, its validated Config)}`` for every ``[data.NAME]`` table
    whose plugin validates it; every problem appended to ``problems`` as one line."""
    out: dict[str, tuple[Any, Any]] = {}
    for name, table in tables.items():
        if not isinstance(table, dict) or not isinstance(table.get("type"), str):
            continue  # the core schema reports it
        kind = table["type"]
        try:
            info = registry.get(kind, kind="source")
        except UserError as exc:
            unknown = str(exc).startswith("unknown source plugin")
            problems.append(describe({"type": "value_error", "loc": (name, "type"), "msg": unknown_type(registry, kind)
                                      if unknown else str(exc)}, {name: table}, prefix="data"))
            continue
        cls = info.cls
        keys = {**table, "type": info.name}  # "DIST:NAME" chose the distribution
        try:
            config = cls.Config.model_validate(keys)
        except ValidationError as err:
            for e in err.errors():
                problem = describe({**e, "loc": (name, *e["loc"])}, {name: keys}, prefix="data")
                if e["type"] == "extra_forbidden":
                    problem = hint(problem, sorted(cls.Config.model_fields))
                problems.append(problem)
            continue
        mode = "streaming" if config.streaming else "map"
        if mode not in cls.modes:
            problems.append(f"data.{name}.streaming: source {info.name!r} reads its rows "
                            f"{'map-style only (streaming = false)' if mode == 'streaming' else 'as a stream only (streaming = true)'}")
        problems.extend(f"data.{name}.{p}" for p in cls.check(config, registry))
        out[name] = (cls, config)
    return out
