"""The recipe reference (``docs/reference/recipe.md``), generated from the recipe schema and
the built-in plugins' config models: every key, its type, default, bounds and description.

    python -m objkit.recipe.docgen            # rewrite docs/reference/recipe.md
    python -m objkit.recipe.docgen --check    # exit 1 if it is stale (CI: tests/test_docs.py)
    python -m objkit.recipe.docgen -o FILE    # write elsewhere

Only objkit's own plugins are documented (not whatever third-party plugins happen to be
installed), so the page is the same on every machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from objkit.recipe import schema
from objkit.contract.interfaces import EncoderKeys, PluginConfig, TokenizerTraining

PAGE = Path("docs") / "reference" / "recipe.md"
_KINDS = {  # plugin kind -> (title, where its table sits in a recipe)
    "encoder": ("Encoders", "[model] with encoder = \"{name}\""),
    "objective": ("Objectives", "[objectives.NAME] with plugin = \"{name}\" (NAME defaults the plugin)"),
    "negative_store": ("Negative stores", "[objectives.NAME.negatives.{name}]"),
    "augmentation": ("Augmentations", "[objectives.NAME.augment.{name}]"),
    "optimizer": ("Optimizers", "[train.optimizer] with name = \"{name}\""),
    "schedule": ("Schedules", "train.schedule = \"{name}\""),
    "callback": ("Callbacks", "[callbacks.NAME] with plugin = \"{name}\""),
    "evaluator": ("Evaluators", "[eval.NAME] with plugin = \"{name}\" (NAME defaults the plugin); objkit eval {name}"),
}
_NAMES = {int: "integer", float: "float", str: "string", bool: "boolean", type(None): "none"}
# What a key means where its model declares no description (``Class.field``, looked up along
# the class's MRO). A description in the model itself always wins: prefer adding it there.
_MEANING = {
    "Recipe.name": "free text: the recipe's name",
    "Recipe.description": "free text: what the recipe trains",
    "TextFile.lang": "language code of the file's text, e.g. en",
    "ParallelPair.tgt": "file or glob, line-aligned with src",
    "ParallelPair.src_lang": "language code of the source side",
    "ParallelPair.tgt_lang": "language code of the target side",
    "ParallelPair.src_field": "column holding the source text in .jsonl/.parquet files",
    "ParallelPair.tgt_field": "column holding the target text in .jsonl/.parquet files",
    "TextSource.type": "source type", "ParallelSource.type": "source type",
    "CldrSource.type": "source type", "HfSource.type": "source type",
    "TextSource.files": "the files, each with its language",
    "ParallelSource.pairs": "line-aligned file pairs or bitext files",
    "CldrSource.kind": "text: every name as monolingual text; parallel: names paired across locales",
    "CldrSource.locales": "CLDR locales to read",
    "HfSource.split": "the split to read",
    "HfSource.revision": "git revision of a hub dataset",
    "HfSource.data_files": "load_dataset's data_files",
    "HfSource.text_column": "text rows: the column holding the text",
    "HfSource.lang": "text rows: the language of every row",
    "HfSource.lang_column": "text rows: the column holding each row's language",
    "HfSource.src_column": "parallel rows: the column of the source side",
    "HfSource.tgt_column": "parallel rows: the column of the target side",
    "HfSource.translation_column": "parallel rows: a column of {lang: text} dicts",
    "HfSource.src_lang": "parallel rows: the source language",
    "HfSource.tgt_lang": "parallel rows: the target language",
    "ObjectiveEntry.plugin": "objective plugin name (default: the table's NAME)",
    "ObjectiveEntry.weight": "weight of the objective's loss in the sum",
    "ObjectiveEntry.enabled": "false: the objective is left out of the run",
    "TrainConfig.lr": "peak learning rate",
    "TrainConfig.warmup_steps": "steps of linear warmup to lr",
    "TrainConfig.optimizer": "[train.optimizer]: the optimizer plugin and its keys",
    "TrainConfig.clip_norm": "clip the global gradient norm to this (unset: no clipping)",
    "TrainConfig.precision": "auto: bf16 on CUDA, fp32 on CPU",
    "TrainConfig.device": "auto: CUDA when available, else CPU",
    "TrainConfig.log_every": "steps between metrics.jsonl records",
    "TrainConfig.checkpoint_every": "steps between checkpoints",
    "TrainConfig.keep_checkpoints": "newest checkpoints kept",
    "TrainConfig.normalization": "mean: each objective's per-unit mean times its weight; reference: fairseq's sum "
                                 "of all per-unit losses over the total units",
    "TrainConfig.backward": "per_objective: one backward pass per objective; joint: one of the summed loss",
    "TrainConfig.report_to": "where metrics go: jsonl (metrics.jsonl), tensorboard (RUN_DIR/tensorboard)",
    "EvalConfig.pooling": "mean: the tokens' mean (specials included); cls: the first token",
    "EvalConfig.batch_size": "sentences per encoder batch",
    "EvalSet.src": "sentences, one a line",
    "EvalSet.tgt": "their translations, line-aligned with src",
    "EvalSet.max_lines": "use the first N lines",
    "TransferEvalSet.task": "the task's format (objkit eval transfer --task)",
    "TransferEvalSet.data_dir": "the task's data directory (objkit data get NAME -o DIR writes one)",
    "TransferEvalSet.train_langs": "languages fine-tuned on",
    "TransferEvalSet.setting": "cross-lingual: fine-tune on train_langs; translate-train-all: on every language",
    "TransferEvalSet.seeds": "fine-tuning seeds; scores are their mean",
    "TransferEvalSet.epochs": "fine-tuning epochs",
    "TransferEvalSet.lr": "fine-tuning learning rate",
    "TransferEvalSet.batch_size": "fine-tuning batch size",
    "TransferEvalSet.max_length": "tokens per example",
    "TransferEvalSet.warmup": "warmup: a fraction of the steps if < 1, else steps",
    "TransferEvalSet.select": "train-dev: keep the checkpoint with the best dev score of train_langs; avg-dev: of "
                              "all languages",
    "CallbackEntry.plugin": "callback plugin name (default: the table's NAME)",
    "TokenizerTraining.vocab_size": "ids of the trained tokenizer",
    "TokenizerTraining.max_sentences": "sentences read to train it, round-robin over the sources",
    "TokenizerTraining.character_coverage": "SentencePiece's character_coverage; for wordpiece, the alphabet kept",
    "PresetEncoderConfig.num_layers": "fresh model: transformer blocks (over the preset's)",
    "PresetEncoderConfig.hidden_size": "fresh model: hidden size (over the preset's)",
    "PresetEncoderConfig.num_heads": "fresh model: attention heads (over the preset's)",
    "PresetEncoderConfig.intermediate_size": "fresh model: feed-forward size (over the preset's)",
    "AdamWConfig.betas": "Adam's (β1, β2)",
    "AdamWConfig.eps": "Adam's ε",
    "AdamWConfig.weight_decay": "decoupled weight decay, on every parameter",
    "ConstantMomentum.type": "schedule type", "LinearMomentum.type": "schedule type",
    "ExponentialMomentum.type": "schedule type", "ConstantWithRefresh.type": "schedule type",
    "ConstantMomentum.m": "momentum", "ConstantWithRefresh.m": "momentum",
    "ConstantWithRefresh.every": "updates between exact copies",
    "LinearMomentum.begin": "step the ramp starts", "LinearMomentum.end": "step the ramp ends",
    "LinearMomentum.min": "momentum before begin", "LinearMomentum.max": "momentum from end on",
    "ExponentialMomentum.alpha": "exponent", "ExponentialMomentum.min": "lower clip",
    "ExponentialMomentum.max": "upper clip",
    "XlcoConfig.masking": "how XLCO's inputs are masked (when mask_inputs)",
}


# ----------------------------------------------------------------------------- rendering
def type_name(annotation: Any) -> str:
    """A TOML-minded name of a field's type: ``integer``, ``"a" or "b"``, ``list of string``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is Literal:
        return " or ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        shown = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(shown))
    if origin in (list, tuple, set, frozenset):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(type_name(a) for a in args)}]"
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {type_name(args[1])}" if args else "table"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value, ensure_ascii=False)}`"


def bounds_text(field: FieldInfo) -> str:
    parts = []
    for m in field.metadata:
        for cls, sign, attr in ((annotated_types.Gt, ">", "gt"), (annotated_types.Ge, "≥", "ge"),
                                (annotated_types.Lt, "<", "lt"), (annotated_types.Le, "≤", "le")):
            if isinstance(m, cls):
                parts.append(f"{sign} {getattr(m, attr):,}".replace(",", " "))
        if isinstance(m, annotated_types.MinLen) and m.min_length:
            parts.append(f"at least {m.min_length} entr{'y' if m.min_length == 1 else 'ies'}")
    return ", ".join(parts)


def _meaning(model: type[BaseModel], name: str) -> str:
    for cls in model.__mro__:
        if f"{cls.__name__}.{name}" in _MEANING:
            return _MEANING[f"{cls.__name__}.{name}"]
    return ""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def key_table(model: type[BaseModel], skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None,
              extra_rows: list[tuple[str, str, str, str]] = ()) -> list[str]:
    """A table of ``model``'s keys (its own and inherited), in declaration order."""
    rows = [*extra_rows]
    for name, field in model.model_fields.items():
        if name in skip or (only is not None and name not in only) or field.exclude:
            continue
        desc = field.description or _meaning(model, name)
        bounds = bounds_text(field)
        rows.append((f"`{field.alias or name}`", type_name(field.annotation), default_text(field),
                     f"{desc}{' (' + bounds + ')' if bounds else ''}"))
    if not rows:
        return ["No keys of its own.", ""]
    out = ["| key | type | default | description |", "|---|---|---|---|"]
    out += [f"| {' | '.join(_cell(c) for c in row)} |" for row in rows]
    return [*out, ""]


def _doc(obj: type) -> str:
    text = (obj.__doc__ or "").strip()
    if not text or obj.__doc__ is BaseModel.__doc__ or obj.__doc__ is PluginConfig.__doc__:
        return ""
    text = " ".join(text.split("\n\n")[0].split()).replace("``", "`")
    return re.sub(r":(?:attr|class|mod|meth|func|data):`~?([^`]+)`", r"`\1`", text)


def _nested(model: type[BaseModel], prefix: str, seen: set[type]) -> list[str]:
    """Sections for the keys of ``model`` that are tables of a model of their own."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        for sub in _models_in(field.annotation):
            if sub in seen or issubclass(sub, TokenizerTraining):
                continue
            seen.add(sub)
            tag = f" (`type = {json.dumps(sub.model_fields['type'].default)}`)" if "type" in sub.model_fields else ""
            out += [f"#### `{prefix}.{name}`{tag}", ""]
            if (doc := _doc(sub)):
                out += [doc, ""]
            out += key_table(sub)
            out += _nested(sub, f"{prefix}.{name}", seen)
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


# ----------------------------------------------------------------------------- the page
def builtin_plugins() -> dict[str, list[Any]]:
    """objkit's own plugins by kind (entry points of the ``objkit`` distribution only)."""
    from objkit.contract.registry import PluginSelection, Registry

    registry = Registry.from_entry_points(selection=PluginSelection.parse((), environ={}))
    by_kind: dict[str, list[Any]] = {kind: [] for kind in _KINDS}
    for info in sorted(registry.infos(), key=lambda i: i.name):
        if info.distribution == "objkit" and info.kind in by_kind:
            by_kind[info.kind].append(info)
    return by_kind


def builtin_sources() -> list[Any]:
    """The Config models of objkit's own source plugins, in the reference's order."""
    from objkit.recipe.sources import BUILTIN_ORDER
    from objkit.contract.registry import PluginSelection, Registry

    registry = Registry.from_entry_points(selection=PluginSelection.parse((), environ={}))
    infos = [i for i in registry.infos() if i.kind == "source" and i.distribution == "objkit"]
    infos.sort(key=lambda i: (BUILTIN_ORDER.index(i.name) if i.name in BUILTIN_ORDER else len(BUILTIN_ORDER), i.name))
    return [i.cls.Config for i in infos]


def render() -> str:
    s = schema
    out = [
        "# Recipe reference",
        "",
        "<!-- generated by `python -m objkit.recipe.docgen` from objkit/recipe/schema.py and the built-in plugins' "
        "config models; do not edit: tests/test_docs.py fails when this page is stale -->",
        "",
        "Every key a recipe may hold, with its type, default and meaning. A recipe is TOML; "
        "`objkit validate RECIPE` prints it with every default filled in. \"required\" keys have no "
        "default; \"unset\" means the key may be left out (the description says what happens then). "
        "Unknown keys are errors. The [recipes guide](../guides/recipes.md) shows the keys in context.",
        "",
        "## Top level",
        "",
        *key_table(s.Recipe, skip=("model", "data", "objectives", "train", "eval", "callbacks"), extra_rows=[
            ("`extends`", "string", "unset", "a recipe this one starts from: a packaged recipe's name or a path "
             "relative to this file; its tables are deep-merged under this file's"),
            ("`model`", "table", "required", "[model]: the encoder (below)"),
            ("`data`", "table of tables", "required", "[data.NAME]: named data sources (below)"),
            ("`objectives`", "table of tables", "required", "[objectives.NAME]: the objectives (below)"),
            ("`train`", "table", "required", "[train]: the training loop (below)"),
            ("`eval`", "table", "unset", "[eval]: evaluation during training (below)"),
            ("`callbacks`", "table of tables", "`{}`", "[callbacks.NAME]: trainer callbacks, in order (below)"),
        ]),
        "### `[[requires]]`",
        "",
        _doc(s.RequiredDistribution) + " A string such as `\"objkit-foo>=0.1\"` is short for the table.",
        "",
        *key_table(s.RequiredDistribution),
        "## `[model]`",
        "",
        "The keys every encoder shares; the encoder plugin's own config validates the whole table, "
        "its own keys included ([encoders](#encoders) below).",
        "",
        *key_table(EncoderKeys),
        "### `[model.tokenizer]` (a table: train a tokenizer)",
        "",
        _doc(TokenizerTraining),
        "",
        *key_table(TokenizerTraining),
        "## `[data]`",
        "",
        "`[data]` holds named sources, `[data.NAME]`, each with a `type`; objectives name the source "
        "they read (`data = \"NAME\"`). Beside the sources:",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        f"| `cache_dir` | string | unset | {_cell(s.Recipe.model_fields['data_cache_dir'].description or '')} |",
        "",
    ]
    out += ["`type` names a source plugin (plugin kind `source`): objkit's own, below, or one a third-party "
            "distribution installs (`objkit list-plugins` lists them; each documents its own keys).", ""]
    for source in builtin_sources():
        kind = source.model_fields["type"].annotation
        out += [f"### `[data.NAME]` with `type = {json.dumps(get_args(kind)[0])}`", ""]
        if (doc := _doc(source)):
            out += [doc, ""]
        out += key_table(source)
        out += _nested(source, "data.NAME", set())
    out += ["## `[objectives.NAME]`", "",
            "The keys every objective has; every other key of the table belongs to the objective "
            "plugin's config ([objectives](#objectives) below).", "",
            *key_table(s.ObjectiveEntry, extra_rows=[]),
            "`plugin` defaults to the table's NAME; `\"DIST:NAME\"` chooses one distribution's plugin "
            "when two provide NAME.", ""]
    out += ["## `[train]`", "", *key_table(s.TrainConfig)]
    out += ["### `[train.optimizer]`", "",
            "`name` picks an optimizer plugin; its other keys belong to that plugin's config "
            "([optimizers](#optimizers) below).", "", *key_table(s.OptimizerConfig)]
    out += ["## `[eval]`", "", _doc(s.EvalConfig), "",
            *key_table(s.EvalConfig, skip=("sets", "transfer", "evaluators"), extra_rows=[
                ("`NAME`", "table", "unset", "[eval.NAME]: an evaluator plugin run during training (below)"),
                ("`sets`", "table of tables", "`{}`", "deprecated: [eval.sets.NAME], line-aligned files to score "
                 "retrieval on; write [eval.NAME] with plugin = \"retrieval\""),
                ("`transfer`", "table of tables", "`{}`", "deprecated: [eval.transfer.NAME], zero-shot transfer "
                 "runs; write [eval.NAME] with plugin = \"transfer\""),
            ])]
    out += ["### `[eval.NAME]`", "", _doc(s.EvalEntry), "", *key_table(s.EvalEntry),
            "The evaluator's own keys: [evaluators](#evaluators) below, or the plugin's documentation.", ""]
    out += ["### `[eval.sets.NAME]` (deprecated)", "",
            "As `[eval.NAME]` with `plugin = \"retrieval\"`, its `layer`, `pooling` and `batch_size` taken from "
            "`[eval]`.", "", *key_table(s.EvalSet)]
    out += ["### `[eval.transfer.NAME]` (deprecated)", "", _doc(s.TransferEvalSet),
            "As `[eval.NAME]` with `plugin = \"transfer\"`.", "", *key_table(s.TransferEvalSet)]
    out += ["## `[callbacks.NAME]`", "", _doc(s.CallbackEntry), "", *key_table(s.CallbackEntry)]
    out += ["## Built-in plugins", "",
            "The keys of objkit's own plugins' config tables (a third-party plugin documents its own; "
            "`objkit list-plugins` lists what is installed).", ""]
    for kind, infos in builtin_plugins().items():
        if not infos:
            continue
        title, where = _KINDS[kind]
        out += [f"### {title}", ""]
        for info in infos:
            config = info.cls.Config
            place = f"In a recipe: `{where.format(name=info.name)}`."
            if kind == "evaluator" and not info.cls.during_training:
                place = f"`objkit eval {info.name}` only (not during training)."
            out += [f"#### `{info.name}`", "", place, ""]
            if (doc := _doc(info.cls)):
                out += [doc, ""]
            skip = tuple(EncoderKeys.model_fields) if kind == "encoder" else ()
            out += key_table(config, skip=skip)
            out += _nested(config, info.name, set())
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m objkit.recipe.docgen", description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", type=Path, default=PAGE, help=f"the page to write (default: {PAGE})")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page differs")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m objkit.recipe.docgen", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
