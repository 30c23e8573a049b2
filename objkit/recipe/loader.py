"""Loading recipes: TOML files validated against :mod:`objkit.recipe.schema` and the plugin registry.

Loading: :func:`load_recipe` reads the file, follows ``extends`` (relative paths, deep
merge), applies ``--set dotted.key=VALUE`` overrides, validates the core tables, then
validates each objective's own keys with its plugin's ``Config``. All problems are
collected and raised together as one :class:`RecipeError`, one line each.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ValidationError

from objkit.contract.errors import UserError, one_line
from objkit.contract.interfaces import EncoderConfig
from objkit.recipe.files import RecipeError, deep_merge, read_toml as _read_toml, resolve_recipe
from objkit.contract.registry import Registry, did_you_mean
from objkit.recipe.sources import validate_sources
from objkit.recipe.schema import (
    ModelConfig,
    ObjectiveEntry,
    Recipe,
    UNSET,
    RequiredDistribution,
)


_TOML_COLUMN = re.compile(r"column (\d+)")


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a","b","c"], value); VALUE is a TOML value, else a plain string."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(one_line(f"--set {assignment}: expected dotted.key=VALUE"))
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        if text.strip()[:1] in ("[", "{", '"', "'"):  # meant as a TOML array, table or string: say why not
            where = _TOML_COLUMN.sub(lambda m: f"column {int(m.group(1)) - 4}", str(exc))  # past "v = "
            raise UserError(one_line(f"--set {assignment}: the value is not valid TOML ({where})")) from None
        value = text  # a bare word: a string
    return [part.strip() for part in key.strip().split(".")], value


def apply_overrides(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    result = copy.deepcopy(raw)
    for assignment in assignments:
        path, value = parse_override(assignment)
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(one_line(f"--set {assignment}: {part} is not a table"))
            node = child
        node[path[-1]] = value
    return result


def _fmt_loc(loc: tuple[Any, ...], raw: Any) -> str:
    """Dotted key path; drops the union/discriminator tags pydantic puts into ``loc``."""
    parts: list[str] = []
    node = raw
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict):
            pass  # a missing key: keep its name
        else:
            continue  # a union member tag, not a key
        parts.append(_show_key(part))
    return ".".join(parts) or "(top level)"


def _show_key(part: Any) -> str:
    """A key as messages show it: bare when unambiguous, quoted otherwise (empty, dots, spaces...)."""
    text = str(part)
    if isinstance(part, int) or (text and text.isprintable() and not any(c in text for c in " .[]='\"")):
        return text
    return repr(text)


def _describe(error: dict[str, Any], raw: Any, prefix: str = "") -> str:
    if tuple(error["loc"][:2]) == ("eval", "evaluators"):  # [eval.NAME] tables sit in [eval] itself
        error = {**error, "loc": ("eval", *error["loc"][2:])}
    loc = _fmt_loc(error["loc"], raw)
    dotted = f"{prefix}.{loc}" if prefix and loc != "(top level)" else (prefix or loc)
    msg = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"{dotted}: unknown key"
    if error["type"] == "missing":
        return f"{dotted}: required key missing"
    if error["type"] == "union_tag_invalid":
        ctx = error.get("ctx", {})
        return f"{dotted}.{ctx.get('discriminator', 'type').strip(chr(39))}: expected one of {ctx.get('expected_tags')} (got {ctx.get('tag')!r})"
    if error["type"] == "value_error":
        return f"{dotted}: {msg.removeprefix('Value error, ')}"
    got = error.get("input")
    shown = "a table" if isinstance(got, dict) else repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{dotted}: {msg} (got {shown})"


def _unknown_key_hint(problem: str, valid: list[str]) -> str:
    key = problem.split(":", 1)[0].rsplit(".", 1)[-1]
    return f"{problem}; {did_you_mean(key, valid)}"


def _fill_plugin_defaults(raw: dict[str, Any]) -> None:
    for section in ("objectives", "callbacks"):
        tables = raw.get(section)
        if isinstance(tables, dict):
            for name, table in tables.items():
                if isinstance(table, dict):
                    table.setdefault("plugin", name)


def _recipe_choices(raw: dict[str, Any]) -> set[str]:
    """Plugin names the recipe chooses a distribution for (``plugin = "DIST:NAME"``, ``model.encoder``,
    a source's ``type``)."""
    tables = raw.get("objectives") if isinstance(raw.get("objectives"), dict) else {}
    refs = [t.get("plugin") for t in tables.values() if isinstance(t, dict)]
    refs.append(raw["model"].get("encoder") if isinstance(raw.get("model"), dict) else None)
    sources = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    refs += [t.get("type") for t in sources.values() if isinstance(t, dict)]
    return {ref.rpartition(":")[2] for ref in refs if isinstance(ref, str) and ":" in ref}


def _requirement(entry: Any) -> tuple[str, str, str | None] | None:
    """(distribution, specifier, install hint) of one ``requires`` entry; None if malformed
    (model validation then reports it)."""
    try:
        table = RequiredDistribution.model_validate(entry)
    except ValidationError:
        return None
    return table.distribution, table.version or "", table.install


def requirement_problems(requires: Any) -> list[str]:
    """One ``requires: ...`` line per distribution that is missing or too old/new."""
    import importlib.metadata as md

    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    problems: list[str] = []
    for entry in requires if isinstance(requires, list) else []:
        parsed = _requirement(entry)
        if parsed is None:
            continue
        name, spec, hint = parsed
        wanted = f"{name}{spec}"
        how = hint or (f"pip install '{wanted}'" if spec else f"pip install {name}")
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            problems.append(f"requires: {name} is not installed; install {wanted} ({how})")
            continue
        try:
            ok = not spec or SpecifierSet(spec).contains(installed, prereleases=True)
        except InvalidSpecifier:
            problems.append(f"requires: {name}: not a version specifier such as '>=0.1' (got {spec!r})")
            continue
        if not ok:
            problems.append(f"requires: {wanted}, but {name} {installed} is installed; install {wanted} ({how})")
    return problems


def validate_recipe(raw: dict[str, Any], registry: Registry, source: str = "recipe") -> ResolvedRecipe:
    raw = copy.deepcopy(raw)
    _fill_plugin_defaults(raw)
    # a missing plugin distribution explains every later "unknown plugin": report it alone
    missing = requirement_problems(raw.get("requires"))
    if missing:
        raise RecipeError(source, missing)
    # a plugin name two distributions provide is never resolved silently (registry.conflicts)
    unresolved = [n for n in registry.conflicts() if n not in _recipe_choices(raw)]
    if unresolved:
        raise RecipeError(source, [f"plugins: {registry.conflict_line(n)}" for n in unresolved])
    problems: list[str] = []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            problem = _describe(err, raw)
            if err["type"] == "extra_forbidden":
                problem = _unknown_key_hint(problem, _valid_keys(err["loc"]))
            problems.append(problem)
        # still check objective plugins so one pass reports everything
        recipe = None
    objective_configs: dict[str, Any] = {}
    objectives = raw.get("objectives") if isinstance(raw.get("objectives"), dict) else {}
    core = set(ObjectiveEntry.model_fields)
    data_tables = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    sources = validate_sources(data_tables, registry, problems, _describe, _unknown_key_hint)
    for name, table in objectives.items():
        if not isinstance(table, dict):
            continue
        plugin = table.get("plugin", name)
        try:
            info = registry.get(str(plugin), kind="objective")
        except UserError as exc:
            problems.append(f"objectives.{name}.plugin: {exc}")
            continue
        keys = {k: v for k, v in table.items() if k not in core}
        try:
            objective_configs[name] = info.cls.Config.model_validate(keys)
            problems.extend(f"objectives.{name}.{p}" for p in info.cls.check(objective_configs[name], registry))
        except ValidationError as exc:
            for err in exc.errors():
                problem = _describe(err, keys, prefix=f"objectives.{name}")
                if err["type"] == "extra_forbidden":
                    problem = _unknown_key_hint(problem, sorted(core | set(info.cls.Config.model_fields)))
                problems.append(problem)
        data_name = table.get("data")
        if isinstance(data_name, str):
            problem = _data_reference_problem(data_tables, sources, data_name, info.cls.data_kind, str(plugin))
            if problem:
                problems.append(f"objectives.{name}.data: {problem}")
    if recipe is not None:
        recipe.data.update({name: config for name, (_, config) in sources.items()})  # the plugins' configs
        for name, entry in recipe.enabled_objectives().items():
            if name in objective_configs and entry.data in sources:
                cls = registry.get(entry.plugin, kind="objective").cls
                source_cls, source_config = sources[entry.data]
                try:
                    langs = source_cls.languages(source_config)
                except UserError:  # a source that finds its languages in its files: checked before a run
                    langs = []
                problems.extend(f"objectives.{name}.{p}" for p in cls.check_languages(
                    objective_configs[name], entry.data, langs))
        if not recipe.enabled_objectives():
            problems.append("objectives: every objective is disabled")
        if recipe.train.checkpoint_async and recipe.train.checkpoint_format != "sharded":
            problems.append('train.checkpoint_async: needs train.checkpoint_format = "sharded" (single-file '
                            f'checkpoints are written synchronously; got {recipe.train.checkpoint_format!r})')
        names = recipe.train.activation_checkpointing
        for name in names if isinstance(names, list) else []:
            if name not in recipe.objectives:
                problems.append(f"train.activation_checkpointing: {name!r} is not an objective of this recipe; "
                                f"{did_you_mean(name, list(recipe.objectives))}")
    encoder_config = None
    model_table = raw.get("model")
    if isinstance(model_table, dict) and isinstance(model_table.get("encoder", "xlmr"), str):
        try:
            info = registry.get(model_table.get("encoder", "xlmr"), kind="encoder")
        except UserError as exc:
            problems.append(f"model.encoder: {exc}")
        else:
            encoder_config = _validate_encoder_table(info.cls, model_table, problems, registry)
    if recipe is not None and isinstance(encoder_config, EncoderConfig):
        recipe.model.tokenizer = encoder_config.tokenizer  # the encoder may choose the tokenizer algorithm
    callback_configs = _validate_plugin_tables(raw, "callbacks", "callback", {"plugin"}, registry, problems)
    optimizer_config = _validate_optimizer(raw, registry, problems)
    eval_configs = _validate_evaluators(recipe, registry, problems) if recipe is not None and recipe.eval else {}
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    if isinstance(train.get("schedule", "linear"), str):
        try:
            registry.get(train.get("schedule", "linear"), kind="schedule")
        except UserError as exc:
            problems.append(f"train.schedule: {exc}")
    problems = list(dict.fromkeys(problems))  # a generic [model] key is checked by the core and the encoder
    if problems:
        raise RecipeError(source, problems)
    assert recipe is not None
    resolved = ResolvedRecipe(recipe=recipe, objective_configs=objective_configs, source=source,
                              encoder_config=encoder_config, callback_configs=callback_configs,
                              optimizer_config=optimizer_config)
    resolved.eval_configs = eval_configs
    resolved.unset = unset_keys(raw)
    return resolved


def _validate_plugin_tables(raw: dict[str, Any], section: str, kind: str, core: set[str], registry: Registry,
                            problems: list[str]) -> dict[str, Any]:
    """``[SECTION.NAME]`` tables of plugins of ``kind``: each one's keys but ``core`` through its Config."""
    configs: dict[str, Any] = {}
    tables = raw.get(section) if isinstance(raw.get(section), dict) else {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            continue
        try:
            info = registry.get(str(table.get("plugin", name)), kind=kind)
        except UserError as exc:
            problems.append(f"{section}.{name}.plugin: {exc}")
            continue
        keys = {k: v for k, v in table.items() if k not in core}
        try:
            configs[name] = info.cls.Config.model_validate(keys)
        except ValidationError as exc:
            for err in exc.errors():
                problem = _describe(err, keys, prefix=f"{section}.{name}")
                if err["type"] == "extra_forbidden":
                    problem = _unknown_key_hint(problem, sorted(core | set(info.cls.Config.model_fields)))
                problems.append(problem)
            continue
        problems.extend(f"{section}.{name}.{p}" for p in info.cls.check(configs[name], registry))
    return configs


def _validate_evaluators(recipe: Recipe, registry: Registry, problems: list[str]) -> dict[str, Any]:
    """Each ``[eval.NAME]`` table (and deprecated ``[eval.sets.NAME]`` / ``[eval.transfer.NAME]``)
    through its evaluator plugin's Config: ``{NAME: validated config}``."""
    assert recipe.eval is not None
    configs: dict[str, Any] = {}
    for name, (key, entry) in recipe.eval.entries().items():
        try:
            cls = registry.get(entry.plugin, kind="evaluator").cls
        except UserError as exc:
            problems.append(f"{key}{'.plugin' if key == f'eval.{name}' else ''}: {exc}")
            continue
        if not cls.during_training:
            problems.append(f"{key}: evaluator {entry.plugin!r} runs only as objkit eval {entry.plugin}, not during "
                            "training")
            continue
        try:
            configs[name] = cls.Config.model_validate(entry.plugin_keys)
        except ValidationError as exc:
            for err in exc.errors():
                problem = _describe(err, entry.plugin_keys, prefix=key)
                if err["type"] == "extra_forbidden":
                    problem = _unknown_key_hint(problem, sorted({"plugin", "every", *cls.Config.model_fields}))
                problems.append(problem)
            continue
        problems.extend(f"{key}.{p}" for p in cls.check(configs[name], registry))
    return configs


def _validate_optimizer(raw: dict[str, Any], registry: Registry, problems: list[str]) -> Any:
    """``[train.optimizer]``'s keys but ``name`` through the named optimizer plugin's Config."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    table = train.get("optimizer", {})
    if not isinstance(table, dict) or not isinstance(table.get("name", "adamw"), str):
        return None
    wrapped = _validate_plugin_tables({"optimizer": {"optimizer": {"plugin": table.get("name", "adamw"), **table}}},
                                      "optimizer", "optimizer", {"plugin", "name"}, registry, found := [])
    problems.extend(p.replace("optimizer.optimizer.plugin", "train.optimizer.name", 1)
                    .replace("optimizer.optimizer.", "train.optimizer.", 1) for p in found)
    return wrapped.get("optimizer")


def _validate_encoder_table(cls: type, table: dict[str, Any], problems: list[str], registry: Registry) -> Any:
    """The encoder plugin's ``Config`` over ``[model]``: the whole table when it derives from
    :class:`EncoderConfig` (plugin API 1.2), else only the keys the core does not know."""
    whole = issubclass(cls.Config, EncoderConfig)
    keys = table if whole else {k: v for k, v in table.items() if k not in ModelConfig.model_fields}
    try:
        config = cls.Config.model_validate(keys)
    except ValidationError as exc:
        for err in exc.errors():
            problem = _describe(err, keys, prefix="model")
            if err["type"] == "extra_forbidden":
                problem = _unknown_key_hint(problem, sorted(set(ModelConfig.model_fields) | set(cls.Config.model_fields)))
            problems.append(problem)
        return None
    problems.extend(f"model.{p}" for p in cls.check(config, registry))
    if not whole and table.get("init") is None and table.get("tokenizer") is None:
        problems.append("model: a fresh model needs model.tokenizer (a path, or a table to train one)")
    return config


def _data_reference_problem(data_tables: dict[str, Any], sources: dict[str, Any], data_name: str, wanted: str,
                            plugin: str) -> str | None:
    if data_name not in data_tables:
        return f"no data source named {data_name!r}; {did_you_mean(data_name, list(data_tables))}"
    if data_name not in sources:
        return None  # the source's own problem is reported
    source_cls, config = sources[data_name]
    kind = source_cls.data_kind(config)
    if kind in ("text", "parallel") and kind != wanted:
        return f"plugin {plugin!r} consumes {wanted} data, source {data_name!r} is {kind}"
    return None


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at ``loc[:-1]`` (for did-you-mean on unknown keys)."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                continue
            model = _inner_model(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        inner = _inner_model(arg)
        if inner is not None and not (isinstance(inner, tuple)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


class ResolvedRecipe:
    """A validated recipe plus each objective's validated plugin config."""

    def __init__(self, recipe: Recipe, objective_configs: dict[str, Any], source: str,
                 encoder_config: Any = None, callback_configs: dict[str, Any] | None = None,
                 optimizer_config: Any = None) -> None:
        self.recipe = recipe
        self.objective_configs = objective_configs
        self.source = source
        self.encoder_config = encoder_config
        """The encoder plugin's validated ``Config`` of ``[model]`` (what ``Encoder.build`` gets)."""
        self.callback_configs = callback_configs or {}
        self.optimizer_config = optimizer_config
        self.eval_configs: dict[str, Any] = {}
        """Each evaluator's validated ``Config`` by ``[eval]`` NAME (:meth:`EvalConfig.entries`)."""
        self.unset: list[str] = []
        """Keys still holding the ``UNSET`` marker (``\"???\"``), for the user to fill in."""
        self.packaged = False
        """Loaded by name from objkit's packaged recipes (not from a file the user gave)."""

    def check_complete(self) -> None:
        """Refuse, in one line naming the keys, a recipe with keys left ``UNSET`` (before a run or
        ``prepare`` reads data; ``validate`` and ``--dry-run`` show such a recipe)."""
        if not self.unset:
            return
        first = self.unset[0]
        how = (f"--set '{first.partition('[')[0]}=[...]' (a list is set whole)" if "[" in first
               else f"--set {first}=VALUE")
        where = (f"in a copy (objkit recipes cp {self.source} FILE)" if self.packaged else f"in {self.source}")
        raise RecipeError(self.source, [f"{', '.join(self.unset)}: not set ({UNSET!r} in the recipe); "
                                        f"fill in with {how} or {where}"])

    def to_dict(self) -> dict[str, Any]:
        data = self.recipe.dump()
        if isinstance(self.encoder_config, EncoderConfig):
            data["model"] = self.encoder_config.model_dump(mode="json", exclude_none=True)
        if self.optimizer_config is not None:
            name = data["train"]["optimizer"]["name"]
            data["train"]["optimizer"] = {"name": name, **self.optimizer_config.model_dump(mode="json", exclude_none=True)}
        for name, cfg in self.callback_configs.items():
            data["callbacks"][name] = {"plugin": data["callbacks"][name]["plugin"],
                                       **cfg.model_dump(mode="json", exclude_none=True)}
        if not data.get("callbacks"):
            data.pop("callbacks", None)  # recipes without callbacks record what they did before
        for name, cfg in self.eval_configs.items():
            if self.recipe.eval is not None and name in self.recipe.eval.evaluators:
                entry = data["eval"][name]
                core = {k: entry[k] for k in ("plugin", "every") if k in entry}
                data["eval"][name] = core | cfg.model_dump(mode="json", exclude_none=True)
        for name, cfg in self.objective_configs.items():
            entry = data["objectives"][name]
            core = {k: entry[k] for k in ObjectiveEntry.model_fields if k in entry}
            data["objectives"][name] = core | cfg.model_dump(mode="json", exclude_none=True)
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def load_recipe(path: str | Path, overrides: list[str] | None = None, registry: Registry | None = None) -> ResolvedRecipe:
    """The recipe file ``path`` (or, when no such file exists, the packaged recipe of that name)
    with ``overrides``, validated. Keys left at ``UNSET`` load (``validate``, ``--dry-run``);
    :meth:`ResolvedRecipe.check_complete` refuses them before anything reads data."""
    from objkit.contract.registry import default_registry

    path, label = resolve_recipe(path)
    raw = _read_toml(path)
    raw = apply_overrides(raw, overrides or [])
    resolved = validate_recipe(raw, registry or default_registry(), source=label)
    resolved.packaged = label != str(path)
    return resolved


def unset_keys(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys (``data.mono.files[0].path``) whose value is the ``UNSET`` marker."""
    if isinstance(node, dict):
        return [k for key, value in node.items()
                for k in unset_keys(value, f"{prefix}.{_show_key(key)}" if prefix else _show_key(key))]
    if isinstance(node, list):
        return [k for i, value in enumerate(node) for k in unset_keys(value, f"{prefix}[{i}]")]
    return [prefix] if node == UNSET else []
