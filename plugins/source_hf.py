"""``type = "hf"``: anything ``datasets`` reads, as raw text rows.

``path`` is a ``save_to_disk`` directory (read with ``datasets.load_from_disk``), a local
folder of data files or a hub id (``datasets.load_dataset`` with ``name``, ``split``,
``revision``, ``data_files``). Loading scripts are refused: ``datasets`` 4 and later no longer
run them, and a recipe never imports code. When the hub cannot be reached (decided once,
quickly, as for models: :mod:`objkit.blocks.hub`), only the local ``datasets`` cache is tried and a
dataset that is not in it is one line at once instead of minutes of retries.

The rows handed on hold ``text`` (+ ``lang``) or ``src_text``/``tgt_text``: a
``translation_column`` of ``{lang: text}`` dicts (``wmt*``, ``opus100``, ``opus_books``) gives
the two languages of the recipe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

import datasets
from pydantic import Field, model_validator

from objkit import (
    PLUGIN_API_VERSION,
    RowsPart,
    Source,
    SourceConfig,
    SourceContext,
    UserError,
    hookimpl,
    hub_unreachable_reason,
)

AnyDataset: TypeAlias = datasets.Dataset | datasets.IterableDataset


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "") or type(exc).__name__


class HfSource(SourceConfig):
    """Anything ``datasets.load_dataset`` reads (a hub id, a local script or folder of data files)
    or a ``save_to_disk`` directory (``datasets.load_from_disk``). Text rows name ``text_column``
    and ``lang`` or ``lang_column``; parallel rows name ``src_column``/``tgt_column``, or a
    ``translation_column`` of ``{lang: text}`` dicts, with ``src_lang``/``tgt_lang``."""

    type: Literal["hf"]
    path: str = Field(description="hub id, local dataset script or folder, or a save_to_disk directory")
    name: str | None = Field(None, description="the dataset's configuration (load_dataset's name)")
    split: str = "train"
    revision: str | None = None
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    text_column: str | None = None
    lang: str | None = None
    lang_column: str | None = None
    src_column: str | None = None
    tgt_column: str | None = None
    translation_column: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None

    @property
    def kind(self) -> Literal["text", "parallel"]:
        return "text" if self.text_column is not None else "parallel"

    @model_validator(mode="after")
    def _columns(self) -> HfSource:
        parallel = [k for k in ("src_column", "tgt_column", "translation_column") if getattr(self, k) is not None]
        if self.text_column is not None:
            if parallel:
                raise ValueError(f"give text_column (text) or {' / '.join(parallel)} (parallel), not both")
            if (self.lang is None) == (self.lang_column is None):
                raise ValueError("a text source needs exactly one of lang (every row) or lang_column")
            if self.lang_column is not None and self.streaming:
                raise ValueError("lang_column needs streaming = false (a stream's languages are not known up front); "
                                 "use lang")
            return self
        if not parallel:
            raise ValueError("give text_column (text rows) or src_column + tgt_column / translation_column "
                             "(parallel rows)")
        if self.translation_column is not None and (self.src_column or self.tgt_column):
            raise ValueError("give translation_column or src_column + tgt_column, not both")
        if self.translation_column is None and (self.src_column is None or self.tgt_column is None):
            raise ValueError("a parallel source needs both src_column and tgt_column")
        if self.src_lang is None or self.tgt_lang is None:
            raise ValueError("a parallel source needs src_lang and tgt_lang")
        return self

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _is_saved(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS)


def _local(spec: str, base_dir: Path | None) -> Path | None:
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path if path.exists() else None


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """``datasets`` reads HF_HUB_OFFLINE once, at import: flip its config for this load."""
    if not enabled:
        yield
        return
    before = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = before


def open_hf(name: str, source: HfSource, *, base_dir: Path | None = None, cache_dir: str | None = None,
            check: bool = True) -> AnyDataset:
    """The source's split as a ``datasets`` dataset (streamed when ``source.streaming``), its
    columns checked against the recipe (``check``). One-line :class:`UserError` otherwise."""
    key = f"data.{name}"
    local = _local(source.path, base_dir)
    ds: Any
    if local is not None and local.is_file() and local.suffix == ".py" or (
            local is not None and local.is_dir() and (local / f"{local.name}.py").is_file()):
        raise UserError(f"{key}.path: {source.path} is a dataset loading script; datasets {datasets.__version__} "
                        "no longer runs them and recipes never import code (save it with save_to_disk or as "
                        "parquet files and point path there)")
    if local is not None and _is_saved(local):
        try:
            ds = datasets.load_from_disk(str(local))
        except Exception as exc:  # a damaged save_to_disk folder
            raise UserError(f"{key}.path: cannot read the saved dataset {local}: {first_line(exc)}") from None
        if isinstance(ds, datasets.DatasetDict):
            if source.split not in ds:
                raise UserError(f"{key}.split: {local} has no split {source.split!r} (splits: {', '.join(ds)})")
            ds = ds[source.split]
        elif "split" in source.model_fields_set and source.split != (str(ds.split) if ds.split else None):
            saved = f"one split, {str(ds.split)!r}" if ds.split else "no splits"
            raise UserError(f"{key}.split: {local} is a single saved dataset with {saved}, not {source.split!r} "
                            "(remove split to use all its rows, or save a DatasetDict)")
        if source.streaming:
            ds = ds.to_iterable_dataset(num_shards=max(1, min(64, ds.num_rows // 10_000 or 1)))
    else:
        offline_reason = None if local is not None else hub_unreachable_reason()
        kwargs: dict[str, Any] = {"name": source.name, "split": source.split, "revision": source.revision,
                                  "data_files": source.data_files, "streaming": source.streaming,
                                  "cache_dir": cache_dir}
        try:
            with _offline(offline_reason is not None):
                ds = datasets.load_dataset(str(local) if local is not None else source.path,
                                           **{k: v for k, v in kwargs.items() if v is not None})
        except Exception as exc:
            if offline_reason is not None:
                raise UserError(f"{key}.path: {source.path!r} is not a local dataset and not in the datasets cache, "
                                f"and the hub cannot be reached ({offline_reason})") from None
            raise UserError(f"{key}.path: cannot load {source.path!r}: {first_line(exc)}") from None
    if source.max_lines is not None:
        ds = ds.take(source.max_lines) if source.streaming else ds.select(range(min(source.max_lines, len(ds))))
    if check:
        check_columns(name, source, ds)
    return ds


def _columns(ds: AnyDataset) -> dict[str, Any]:
    features = ds.features
    if features is None and isinstance(ds, datasets.IterableDataset):  # e.g. streamed json: peek at one row
        first = next(iter(ds.take(1)), {})
        return {k: None for k in first}
    return dict(features or {})


def check_columns(name: str, source: HfSource, ds: AnyDataset) -> None:
    """The columns (and, for a translation column, the languages) the recipe names exist."""
    key = f"data.{name}"
    columns = _columns(ds)
    have = ", ".join(columns) or "none"
    wanted = {k: getattr(source, k) for k in ("text_column", "lang_column", "src_column", "tgt_column",
                                              "translation_column") if getattr(source, k) is not None}
    for k, column in wanted.items():
        if column not in columns:
            raise UserError(f"{key}.{k}: {source.path} has no column {column!r} (columns: {have})")
    if source.translation_column is None:
        return
    feature = columns[source.translation_column]
    langs = getattr(feature, "languages", None) or (list(feature) if isinstance(feature, dict) else None)
    if langs is None:
        return  # schema unknown until read (streamed json): rows without a language are refused when read
    for k in ("src_lang", "tgt_lang"):
        if getattr(source, k) not in langs:
            raise UserError(f"{key}.{k}: {source.translation_column!r} of {source.path} has no language "
                            f"{getattr(source, k)!r} (languages: {', '.join(map(str, langs))})")


def raw_rows(name: str, source: HfSource, ds: AnyDataset) -> tuple[AnyDataset, list[str]]:
    """``ds`` with the columns the tokenizers read (``text`` [+ ``lang``], or ``src_text`` and
    ``tgt_text``) and the list of columns to drop after tokenizing."""
    if source.kind == "text":
        keep = {source.text_column: "text"}
        if source.lang_column is not None:
            keep[source.lang_column] = "lang"
    elif source.translation_column is None:
        keep = {source.src_column: "src_text", source.tgt_column: "tgt_text"}
    else:
        ds = ds.map(_split_translation, batched=True, fn_kwargs={
            "column": source.translation_column, "src": source.src_lang, "tgt": source.tgt_lang,
            "where": f"data.{name}.translation_column: {source.path}"})
        keep = {"src_text": "src_text", "tgt_text": "tgt_text"}
    ds = ds.select_columns(list(keep))
    renames = {old: new for old, new in keep.items() if old != new}
    if renames:
        ds = ds.rename_columns(renames)
    return ds, list(keep.values())


def _split_translation(batch: dict[str, list[Any]], *, column: str, src: str, tgt: str, where: str) -> dict:
    out: dict[str, list[str]] = {"src_text": [], "tgt_text": []}
    for row in batch[column]:
        if not isinstance(row, dict):
            raise UserError(f"{where}: a row holds {type(row).__name__}, expected a {{language: text}} dict")
        out["src_text"].append(row.get(src) or "")  # a missing side becomes an empty side: the pair is dropped
        out["tgt_text"].append(row.get(tgt) or "")
    return out


def input_files(source: HfSource, base_dir: Path | None) -> list[list[Any]]:
    """What keys the cache: the files of a local dataset, else its hub id and revision."""
    local = Path(source.path).expanduser()
    if not local.is_absolute() and base_dir is not None:
        local = base_dir / local
    if not local.exists():
        return [["hub", source.path, source.revision or "main", datasets.__version__]]
    # datasets writes its map caches (cache-*.arrow) beside a save_to_disk folder's data: not input
    paths = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("cache-")) \
        if local.is_dir() else [local]
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _load(name: str, source: HfSource, base_dir: Path | None, cache_dir: str | None) -> AnyDataset:
    return raw_rows(name, source, open_hf(name, source, base_dir=base_dir, cache_dir=cache_dir))[0]


def _check(name: str, source: HfSource, base_dir: Path | None) -> None:
    open_hf(name, source, base_dir=base_dir)  # loads, and has the columns the recipe names


def _texts(name: str, source: HfSource, base_dir: Path | None) -> Iterator[str]:
    ds, columns = raw_rows(name, source, open_hf(name, source, base_dir=base_dir))
    texts = (str(row[c]).strip() for row in ds for c in columns if c != "lang" and row[c])
    return (t for t in texts if t)


class HfDataset(Source):
    """One split of a ``datasets`` dataset: one group (``lang`` / ``src-tgt``), or rows that carry
    their language (``lang_column``)."""

    name: ClassVar[str] = "hf"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = HfSource

    @classmethod
    def data_kind(cls, config: Any) -> Literal["text", "parallel"]:
        return config.kind

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return [config.lang or "*"] if config.kind == "text" else [f"{config.src_lang}-{config.tgt_lang}"]

    @classmethod
    def languages(cls, config: Any) -> list[str]:
        codes = [config.lang] if config.kind == "text" else [config.src_lang, config.tgt_lang]
        return [c for c in codes if c is not None]

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[Any]:
        group = None if config.kind == "text" and config.lang is None else cls.groups(config)[0]
        return [RowsPart(group, ctx.key(), lambda streaming, cache_dir: _load(ctx.name, config, ctx.base_dir, cache_dir),
                         inputs=input_files(config, ctx.base_dir),
                         check=lambda: _check(ctx.name, config, ctx.base_dir),
                         texts=lambda: _texts(ctx.name, config, ctx.base_dir),
                         langs=None if group is None else tuple(cls.languages(config)), label=f"{ctx.key()}: {config.path}")]

    @classmethod
    def group_sizes(cls, config: Any, ctx: SourceContext) -> dict[str, int]:
        return dict.fromkeys(cls.groups(config), 1)


@hookimpl
def objkit_plugins() -> list[type]:
    return [HfDataset]
