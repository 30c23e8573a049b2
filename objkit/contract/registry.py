"""One registry for every plugin kind, fed by pluggy through the ``objkit`` entry points.

Loading is controlled like pytest's plugin loading:

* every entry point in the ``objkit`` group is loaded (autoload), unless
  ``OBJKIT_DISABLE_PLUGIN_AUTOLOAD`` is set (to anything but ``""``/``0``/``false``/``no``):
  then only objkit's built-in plugins and those named with ``--plugin NAME`` load;
* ``--plugin NAME`` (CLI global option, repeatable) loads an entry point by name, all entry
  points of a distribution by distribution name, or an importable module by dotted path;
* ``--plugin no:NAME`` blocks an entry point (or a whole distribution), built-ins included;
* ``--plugin DIST:NAME`` chooses distribution DIST's plugin NAME where two distributions
  provide a plugin of that name (a recipe can choose too: ``plugin = "DIST:NAME"``).

Two distributions providing one plugin name is never resolved silently: both are kept, listed
by ``list-plugins``, and looking the name up (or validating a recipe) without a choice is a
one-line error naming both distributions.

An entry point that fails to import or register (import error, bad class, plugin API
mismatch, duplicate name) is kept as a *broken* record with a one-line error; the others
still load. ``objkit list-plugins`` shows broken and disabled entry points next to the
working ones, and a recipe naming a broken plugin gets its error instead of "unknown".
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata as md
import inspect
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy
from pydantic import BaseModel

from objkit.contract import hookspecs
from objkit.contract.errors import PluginError
from objkit.contract.hookspecs import PLUGIN_API_VERSION, api_compatible, parse_api_version
from objkit.contract.evaluator import Evaluator
from objkit.contract.events import Callback
from objkit.contract.interfaces import PLUGIN_KINDS as MODEL_KINDS
from objkit.contract.interfaces import Plugin
from objkit.contract.optim import Optimizer, Schedule
from objkit.contract.source import Source, check_source_class

PLUGIN_KINDS: dict[str, type[Plugin]] = {**MODEL_KINDS, "callback": Callback, "optimizer": Optimizer, "schedule": Schedule,
                                         "source": Source, "evaluator": Evaluator}
"""Every plugin kind: the model's (objective, negative_store, augmentation, encoder), the
trainer's (callback, optimizer, schedule; plugin API 1.2), the data's (source) and evaluators
(plugin API 1.6)."""

AUTOLOAD_ENV = "OBJKIT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "objkit"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    cls: type
    distribution: str
    version: str
    module: str
    plugin_api: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "plugin_api": self.plugin_api,
            "status": "ok",
        }


@dataclass(frozen=True)
class SkippedPlugin:
    """An entry point (or ``--plugin`` module) that provides nothing: ``broken`` or ``disabled``."""

    name: str
    """The entry-point name (by convention the plugin's name) or the ``--plugin`` argument."""
    distribution: str
    version: str
    module: str
    status: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": None,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "plugin_api": None,
            "status": self.status,
            "error" if self.status == "broken" else "reason": self.reason,
        }

    def line(self) -> str:
        where = f"{self.distribution} {self.version}".strip()
        if self.status == "broken":
            return f'error loading objkit plugin "{self.name}" from {where}: {self.reason}'
        return f'objkit plugin "{self.name}" from {where} is disabled ({self.reason})'


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class PluginSelection:
    """Which entry points load: ``--plugin`` arguments and the autoload switch."""

    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    autoload: bool = True
    choose: tuple[str, ...] = ()
    """``DIST:NAME`` choices between plugins of one name."""

    @classmethod
    def parse(cls, specs: Iterable[str] = (), environ: dict[str, str] | None = None) -> PluginSelection:
        """From ``--plugin`` values (``NAME`` / ``no:NAME``) and ``OBJKIT_DISABLE_PLUGIN_AUTOLOAD``."""
        env = os.environ if environ is None else environ
        enable: list[str] = []
        disable: list[str] = []
        choose: list[str] = []
        for spec in specs:
            spec = spec.strip()
            if spec.startswith("no:"):
                if spec[3:]:
                    disable.append(spec[3:])
            elif ":" in spec:
                choose.append(spec)
            elif spec:
                enable.append(spec)
        return cls(tuple(enable), tuple(disable), autoload=not _truthy(env.get(AUTOLOAD_ENV)), choose=tuple(choose))

    def why_disabled(self, entry_point: str, distribution: str) -> str | None:
        for name in (entry_point, distribution):
            if name in self.disable:
                return f"--plugin no:{name}"
        if self.autoload or distribution == BUILTIN_DISTRIBUTION:
            return None
        if entry_point in self.enable or distribution in self.enable:
            return None
        if any(same_distribution(c.partition(":")[0], distribution) for c in self.choose):
            return None
        return f"{AUTOLOAD_ENV} is set; load it with --plugin {entry_point}"


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    return f"{hint}valid: {', '.join(sorted(choices)) or '(none)'}"


def same_distribution(a: str, b: str) -> bool:
    """Distribution names as pip compares them (case, ``-``/``_``/``.`` alike)."""
    from packaging.utils import canonicalize_name

    return canonicalize_name(a) == canonicalize_name(b)


def plugin_kind(cls: type) -> str:
    for kind, base in PLUGIN_KINDS.items():
        if isinstance(cls, type) and issubclass(cls, base):
            return kind
    raise PluginError(f"{cls!r} derives from none of {', '.join(PLUGIN_KINDS)}")


def _objkit_version() -> str:
    from objkit import __version__

    return __version__


def check_plugin_api(cls: type, name: str, distribution: str, version: str) -> str:
    """The plugin's declared API version, or a PluginError naming plugin, distribution and both versions."""
    declared = getattr(cls, "plugin_api", None)
    where = f"{distribution} {version}".strip()
    provided = PLUGIN_API_VERSION
    if declared is None:
        raise PluginError(
            f'plugin "{name}" from {where} declares no plugin API version; add '
            f'plugin_api = "{provided}" to {cls.__qualname__} (the objkit plugin API it is written '
            f"against; objkit {_objkit_version()} provides {provided})"
        )
    if parse_api_version(declared) is None:
        raise PluginError(
            f'plugin "{name}" from {where}: plugin_api must be "MAJOR.MINOR" (got {declared!r}); '
            f"objkit {_objkit_version()} provides plugin API {provided}"
        )
    if not api_compatible(declared, provided):
        want, have = parse_api_version(declared), parse_api_version(provided)
        assert want is not None and have is not None
        if want > have:
            advice = f"upgrade objkit to a release providing plugin API {declared}, or install a release of {distribution} for plugin API {have[0]}.x"
        else:
            advice = f"install a release of {distribution} written for plugin API {have[0]}.x, or use an objkit release providing plugin API {declared}"
        raise PluginError(
            f'plugin "{name}" from {where} needs objkit plugin API {declared}, but objkit '
            f"{_objkit_version()} provides plugin API {provided}: {advice}"
        )
    return str(declared)


class Registry:
    """Plugins by name. Load with :meth:`from_entry_points`; inspect with :meth:`get`/:meth:`infos`.

    ``skipped`` holds the entry points that provide nothing (broken or disabled), by name.
    The public, stable part (docs/plugin-api.md) is :meth:`get`, :meth:`names` and
    :class:`PluginInfo`'s fields: what a plugin's ``check`` or ``__init__`` may use.
    """

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._plugins: dict[str, list[PluginInfo]] = {}  # by name; several when distributions collide
        self.chosen: dict[str, PluginInfo] = {}  # name -> the one ``--plugin DIST:NAME`` chose
        self.skipped: dict[str, SkippedPlugin] = {}
        self.selection = PluginSelection()

    @property
    def load_errors(self) -> list[str]:
        """One line per broken entry point (import or registration failure)."""
        return [s.line() for s in self.skipped.values() if s.status == "broken"]

    @classmethod
    def from_entry_points(
        cls, group: str = hookspecs.ENTRY_POINT_GROUP, selection: PluginSelection | None = None
    ) -> Registry:
        registry = cls()
        selection = selection or PluginSelection()
        registry.selection = selection
        matched: set[str] = set()
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "<unknown>"
            version = ep.dist.version if ep.dist else ""
            matched.update({ep.name, dist})
            reason = selection.why_disabled(ep.name, dist)
            if reason is not None:
                registry._skip(ep.name, dist, version, ep.value, "disabled", reason)
                continue
            try:
                module = ep.load()
                registry.register_module(module, name=ep.name, distribution=dist, version=version)
            except Exception as exc:  # any failure is reported, never fatal to the others
                registry._skip(ep.name, dist, version, ep.value, "broken", _one_line(exc))
        for spec in selection.enable:
            if spec not in matched and spec not in selection.disable:
                registry._load_module_path(spec)
        for spec in selection.choose:
            try:
                info = registry.get(spec)
            except PluginError as exc:
                registry._skip(spec, "<--plugin>", "", spec, "broken", f"--plugin {spec}: {exc}")
                continue
            registry.chosen[info.name] = info
        return registry

    def _skip(self, name: str, distribution: str, version: str, module: str, status: str, reason: str) -> None:
        key = name if name not in self.skipped else f"{name} ({distribution})"
        self.skipped[key] = SkippedPlugin(name, distribution, version, module, status, reason)

    def _load_module_path(self, spec: str) -> None:
        """``--plugin pkg.module``: a module that is not an entry point of any distribution."""
        try:
            module = importlib.import_module(spec)
        except Exception as exc:
            reason = _one_line(exc)
            if isinstance(exc, ModuleNotFoundError) and exc.name == spec.split(".")[0]:
                eps = md.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
                known = sorted({ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist})
                reason = (f"--plugin {spec}: no objkit entry point, distribution or importable module of that name; "
                          f"{did_you_mean(spec, known)}")
            self._skip(spec, "<--plugin>", "", spec, "broken", reason)
            return
        top = spec.split(".")[0]
        dists = md.packages_distributions().get(top, [])
        dist = dists[0] if dists else "<--plugin>"
        try:
            version = md.version(dist) if dists else ""
        except md.PackageNotFoundError:
            version = ""
        try:
            self.register_module(module, name=spec, distribution=dist, version=version)
        except Exception as exc:
            self._skip(spec, dist, version, spec, "broken", _one_line(exc))

    def register_module(self, module: ModuleType | object, *, name: str, distribution: str, version: str) -> None:
        """Register a module (or object) implementing the ``objkit_plugins`` hook; all of its
        plugins or none (a PluginError leaves the registry unchanged)."""
        if self.manager.has_plugin(name):
            raise PluginError(f'objkit entry point "{name}" registered twice (from {distribution} {version})')
        self.manager.register(module, name=name)
        try:
            infos: list[PluginInfo] = []
            impls = [i for i in self.manager.hook.objkit_plugins.get_hookimpls() if i.plugin is module]
            if not impls:
                raise PluginError(
                    f'objkit entry point "{name}" from {distribution} {version}: {getattr(module, "__name__", module)} '
                    "has no objkit_plugins() function marked with @objkit.hookimpl"
                )
            for impl in impls:
                classes = impl.function()
                if not isinstance(classes, (list, tuple)):
                    raise PluginError(
                        f'objkit entry point "{name}" from {distribution} {version}: objkit_plugins() must '
                        f"return a list of plugin classes (got {type(classes).__name__})"
                    )
                for plugin_cls in classes:
                    info = self._check(plugin_cls, distribution=distribution, version=version)
                    if any(i.name == info.name for i in infos):
                        raise PluginError(f'duplicate objkit plugin name "{info.name}" within {distribution} {version}')
                    infos.append(info)
        except BaseException:
            self.manager.unregister(module, name=name)
            raise
        for info in infos:
            self._plugins.setdefault(info.name, []).append(info)

    def _check(self, cls: type, *, distribution: str, version: str) -> PluginInfo:
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
        if kind in ("objective", "augmentation") and getattr(cls, "data_kind", None) not in ("text", "parallel"):
            raise PluginError(f'plugin "{name}" ({where}): data_kind must be "text" or "parallel"')
        if kind == "source":
            check_source_class(cls, name, where)
        if inspect.isabstract(cls):
            missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
            raise PluginError(f'plugin "{name}" ({where}): abstract methods not implemented: {missing}')
        api = check_plugin_api(cls, name, distribution, version)
        for other in self._plugins.get(name, []):
            if same_distribution(other.distribution, distribution):  # one distribution, one meaning
                raise PluginError(
                    f'duplicate objkit plugin name "{name}" within {distribution} {version}: '
                    f"{other.module} and {cls.__module__}"
                )
        return PluginInfo(name, kind, cls, distribution, version, cls.__module__, api)

    def add(self, cls: type, *, distribution: str, version: str) -> PluginInfo:
        """Check and add one plugin class."""
        info = self._check(cls, distribution=distribution, version=version)
        self._plugins.setdefault(info.name, []).append(info)
        return info

    def conflicts(self) -> dict[str, list[PluginInfo]]:
        """Names that several distributions provide and no ``--plugin DIST:NAME`` chose."""
        return {n: infos for n, infos in sorted(self._plugins.items())
                if len({i.kind for i in infos}) < len(infos) and n not in self.chosen}

    def conflict_line(self, name: str) -> str:
        """One line naming every distribution that provides plugin ``name`` and how to choose."""
        infos = sorted(self._plugins[name], key=lambda i: (i.distribution != BUILTIN_DISTRIBUTION, i.distribution))
        both = " and ".join(f"{i.distribution} {i.version}".strip() + f" ({i.module})" for i in infos)
        choices = " or ".join(f'"{i.distribution}:{name}"' for i in infos)
        return (f'plugin name "{name}" is provided by {len(infos)} distributions, {both}: choose one with '
                f"plugin = {choices} in the recipe, or --plugin {infos[0].distribution}:{name}")

    def get(self, name: str, kind: str | None = None) -> PluginInfo:
        """The plugin ``name``, or ``DIST:NAME`` for distribution DIST's plugin of that name.
        A name several distributions provide, with no choice made, is a :class:`PluginError`."""
        spec = name
        dist, _, name = name.rpartition(":")
        candidates = [i for i in self._plugins.get(name, []) if kind is None or i.kind == kind]
        if dist:
            candidates = [i for i in candidates if same_distribution(i.distribution, dist)]
            if not candidates and self._plugins.get(name):
                have = ", ".join(i.distribution for i in self._plugins[name])
                raise PluginError(f'no plugin "{name}" from distribution {dist} (it comes from {have})')
        elif name in self.chosen and self.chosen[name] in candidates:
            candidates = [self.chosen[name]]
        if len(candidates) > 1:
            raise PluginError(self.conflict_line(name))
        info = candidates[0] if candidates else None
        if info is None:
            label = f"{kind} plugin" if kind else "plugin"
            skipped = self.skipped.get(name) if info is None else None
            if skipped is not None and skipped.status == "broken":
                where = f"{skipped.distribution} {skipped.version}".strip()
                raise PluginError(f'{label} "{name}" from {where} failed to load: {skipped.reason}')
            if skipped is not None:
                where = f"{skipped.distribution} {skipped.version}".strip()
                raise PluginError(f'{label} "{name}" from {where} is disabled ({skipped.reason})')
            raise PluginError(f'unknown {label} "{spec}": {did_you_mean(name, self.names(kind))}')
        return info

    def names(self, kind: str | None = None) -> list[str]:
        return sorted(n for n, infos in self._plugins.items() if any(kind is None or i.kind == kind for i in infos))

    def infos(self) -> Iterator[PluginInfo]:
        """Every registered plugin, those of colliding names included."""
        every = [i for infos in self._plugins.values() for i in infos]
        return iter(sorted(every, key=lambda i: (i.kind, i.name, i.distribution)))

    def versions(self) -> dict[str, str]:
        """``{name: "dist version"}``; a name several distributions provide is keyed ``dist:name``
        for each, unless ``--plugin`` chose one."""
        out = {}
        for name, infos in self._plugins.items():
            infos = [self.chosen[name]] if name in self.chosen else infos
            for i in infos:
                out[name if len(infos) == 1 else f"{i.distribution}:{name}"] = f"{i.distribution} {i.version}".strip()
        return dict(sorted(out.items()))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, PluginError):
        return message
    return f"{type(exc).__name__}: {message}".rstrip(": ")


# ----------------------------------------------------------------------------- the process's registry
_cli_specs: tuple[str, ...] = ()
_reported: set[PluginSelection] = set()


def configure(specs: Iterable[str]) -> None:
    """Set the ``--plugin`` arguments that :func:`default_registry` applies (the CLI does this)."""
    global _cli_specs
    _cli_specs = tuple(specs)


def cli_specs() -> tuple[str, ...]:
    """The ``--plugin`` arguments given to this process (what :func:`configure` set)."""
    return _cli_specs


def current_selection() -> PluginSelection:
    return PluginSelection.parse(_cli_specs)


@functools.lru_cache(maxsize=8)
def load_registry(selection: PluginSelection) -> Registry:
    """The installed distributions' plugins under ``selection`` (loaded once per selection)."""
    return Registry.from_entry_points(selection=selection)


def default_registry() -> Registry:
    """The registry for this process: ``--plugin`` arguments and the environment applied.
    Broken entry points are reported on stderr, once."""
    selection = current_selection()
    registry = load_registry(selection)
    named = [s.reason if s.reason.startswith("--plugin ") else f"--plugin {s.name}: {s.reason}"
             for s in registry.skipped.values() if s.status == "broken" and s.distribution == "<--plugin>"]
    if named:  # a --plugin the user gave that does not load: nothing runs without it (list-plugins lists it)
        raise PluginError("\n".join(named))
    if selection not in _reported:
        _reported.add(selection)
        for line in registry.load_errors:
            print(line, file=sys.stderr)
    return registry


__all__ = [
    "PluginInfo",
    "PluginSelection",
    "Registry",
    "SkippedPlugin",
    "configure",
    "current_selection",
    "default_registry",
    "did_you_mean",
    "load_registry",
    "Plugin",
]
