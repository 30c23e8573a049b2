"""``type = "hf"`` sources: anything ``datasets`` reads, as raw text rows.

``path`` is a ``save_to_disk`` directory (read with ``datasets.load_from_disk``), a local
folder of data files or a hub id (``datasets.load_dataset`` with ``name``, ``split``,
``revision``, ``data_files``). Loading scripts are refused: ``datasets`` 4 and later no longer
run them, and a recipe never imports code. When the hub cannot be reached (decided once,
quickly, as for models: :mod:`objkit.hub`), only the local ``datasets`` cache is tried and a
dataset that is not in it is one line at once instead of minutes of retries.

The rows handed on hold ``text`` (+ ``lang``) or ``src_text``/``tgt_text``: a
``translation_column`` of ``{lang: text}`` dicts (``wmt*``, ``opus100``, ``opus_books``) gives
the two languages of the recipe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets

from objkit.data.files import AnyDataset
from objkit.errors import UserError, first_line
from objkit.schema import HfSource

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
        from objkit.hub import hub_unreachable_reason

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
