"""One registry for every plugin kind, fed by pluggy through the ``objkit`` entry points."""

from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import pluggy
from pydantic import BaseModel

from objkit import hookspecs
from objkit.errors import PluginError
from objkit.interfaces import PLUGIN_KINDS, Plugin


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    cls: type
    distribution: str
    version: str
    module: str

    def as_dict(self) -> dict[str, str]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
        }


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"{hint}valid: {', '.join(sorted(choices)) or '(none)'}"


def plugin_kind(cls: type) -> str:
    for kind, base in PLUGIN_KINDS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return kind
    raise PluginError(f"{cls!r} derives from none of {', '.join(PLUGIN_KINDS)}")


class Registry:
    """Plugins by name. Load with :meth:`from_entry_points`; inspect with :meth:`get`/:meth:`infos`.

    ``load_errors`` holds one line per entry point that failed to import; the others still load.
    """

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self.load_errors: list[str] = []

    @classmethod
    def from_entry_points(cls, group: str = hookspecs.ENTRY_POINT_GROUP) -> Registry:
        registry = cls()
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "<unknown>"
            version = ep.dist.version if ep.dist else ""
            try:
                module = ep.load()
            except Exception as exc:  # any import failure is reported, never fatal to the others
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                registry.load_errors.append(
                    f'error loading objkit plugin "{ep.name}" from {dist} {version}: {reason}'
                )
                continue
            registry.register_module(module, name=ep.name, distribution=dist, version=version)
        return registry

    def register_module(self, module: ModuleType | object, *, name: str, distribution: str, version: str) -> None:
        """Register a module (or object) implementing the ``objkit_plugins`` hook."""
        if self.manager.has_plugin(name):
            raise PluginError(f'objkit entry point "{name}" registered twice (from {distribution} {version})')
        self.manager.register(module, name=name)
        for impl in self.manager.hook.objkit_plugins.get_hookimpls():
            if impl.plugin is not module:
                continue
            for plugin_cls in impl.function():
                self.add(plugin_cls, distribution=distribution, version=version)

    def add(self, cls: type, *, distribution: str, version: str) -> PluginInfo:
        """Check and add one plugin class."""
        kind = plugin_kind(cls)
        name = getattr(cls, "name", None)
        where = f"{cls.__module__}.{cls.__qualname__} from {distribution} {version}".rstrip()
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"plugin {where}: name must be an identifier (got {name!r})")
        config = getattr(cls, "Config", None)
        if not (inspect.isclass(config) and issubclass(config, BaseModel)):
            raise PluginError(f'plugin "{name}" ({where}): Config must be a pydantic model')
        if config.model_config.get("extra") != "forbid":
            raise PluginError(f'plugin "{name}" ({where}): Config must forbid extra keys (extra="forbid")')
        if kind == "objective" and getattr(cls, "data_kind", None) not in ("text", "parallel"):
            raise PluginError(f'plugin "{name}" ({where}): data_kind must be "text" or "parallel"')
        if inspect.isabstract(cls):
            raise PluginError(f'plugin "{name}" ({where}): abstract methods not implemented')
        if name in self._plugins:
            other = self._plugins[name]
            raise PluginError(
                f'duplicate objkit plugin name "{name}": from {other.distribution} {other.version} '
                f"({other.module}) and from {distribution} {version} ({cls.__module__})"
            )
        info = PluginInfo(name, kind, cls, distribution, version, cls.__module__)
        self._plugins[name] = info
        return info

    def get(self, name: str, kind: str | None = None) -> PluginInfo:
        info = self._plugins.get(name)
        if info is None or (kind is not None and info.kind != kind):
            label = f"{kind} plugin" if kind else "plugin"
            raise PluginError(f'unknown {label} "{name}": {did_you_mean(name, self.names(kind))}')
        return info

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n, i in self._plugins.items() if kind is None or i.kind == kind)

    def infos(self) -> Iterator[PluginInfo]:
        return iter(sorted(self._plugins.values(), key=lambda i: (i.kind, i.name)))

    def versions(self) -> dict[str, str]:
        return {i.name: f"{i.distribution} {i.version}".strip() for i in self.infos()}


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed distributions' plugins (loaded once per process)."""
    registry = Registry.from_entry_points()
    for line in registry.load_errors:
        print(line, file=sys.stderr)
    return registry


__all__ = ["PluginInfo", "Registry", "default_registry", "did_you_mean", "Plugin"]
