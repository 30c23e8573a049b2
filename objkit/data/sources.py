"""Read a recipe's data sources into tokenized ``datasets`` rows (see :data:`objkit.interfaces.DataKind`).

Where the raw text comes from is one module per kind of source: local files
(:mod:`objkit.data.files`: .txt, Moses-style .en/.de, .jsonl, .parquet, maybe compressed),
bitext files (:mod:`objkit.data.bitext`: .tsv, .tmx), anything ``datasets`` loads
(:mod:`objkit.data.hf`) and the embedded CLDR corpus (:mod:`objkit.data.cldr`). This module
tokenizes them with a batched ``map`` (``num_proc`` processes; cached by ``datasets`` for
file-backed, non-streaming data) and concatenates them in recipe order. Rows carry a
``group`` column: the language (text) or ``"src-tgt"`` (parallel), used for α-sampling and
by packing.

Bad input is refused before anything is read or trained (:func:`check_source_files`, one
line naming the recipe key, the file and, where there is one, the line). Lines longer than
the model's ``max_length`` are truncated, and counted (a warning per file).
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeAlias

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher, get_temporary_cache_files_directory

from objkit.data.bitext import bitext_format, count_bitext, iter_bitext
from objkit.data.cldr import cldr_dataset, iter_cldr_texts, language_pairs, parse_locale
from objkit.data.encode import TextEncoder, gc_paused, list_array
from objkit.data.files import (
    AnyDataset,
    check_file,
    expand,
    file_format,
    open_binary,
    read_error,
    read_file,
    scan_text_file,
    show,
    utf8_problem,
)
from objkit.data.hf import open_hf, raw_rows
from objkit.errors import UserError, first_line
from objkit.schema import CldrSource, HfSource, ParallelPair, ParallelSource, TextSource

__all__ = [  # scan_text_file and utf8_problem are used by eval tasks and tests from here
    "check_source_files", "expand", "iter_source_texts", "load_source", "load_source_groups", "locate_stream_error",
    "scan_text_file", "source_files", "source_group_sizes", "source_groups", "utf8_problem",
]

log = logging.getLogger(__name__)

Source: TypeAlias = TextSource | ParallelSource | CldrSource | HfSource

TEXT_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "lang": datasets.Value("string"),
     "group": datasets.Value("string")}
)
PARALLEL_FEATURES = datasets.Features(
    {"src_ids": datasets.Sequence(datasets.Value("int32")), "tgt_ids": datasets.Sequence(datasets.Value("int32")),
     "src_lang": datasets.Value("string"), "tgt_lang": datasets.Value("string"), "group": datasets.Value("string")}
)
RAW_PAIR_FEATURES = datasets.Features({"src_text": datasets.Value("string"), "tgt_text": datasets.Value("string")})


# ----------------------------------------------------------------------------- tokenization
def _encoder(tokenizer: Any, threads: int = 1) -> TextEncoder:
    return tokenizer if isinstance(tokenizer, TextEncoder) else TextEncoder(tokenizer, threads=threads)


def _tokenize_text(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, lang: str | None) -> pa.Table:
    return _text_rows([t.strip() if t else "" for t in batch["text"]], _encoder(tokenizer), max_tokens,
                      lang if lang is not None else batch["lang"])


def _text_rows(texts: list[str], encoder: TextEncoder, max_tokens: int, lang: str | list[str]) -> pa.Table:
    """Stripped texts as rows (blank ones encode to no ids and are dropped), with a
    ``truncated`` flag per row; ``lang``: one language, or one per text."""
    return _id_rows(*encoder.encode_flat(texts), max_tokens, lang)


def _id_rows(values: np.ndarray, lengths: np.ndarray, max_tokens: int, lang: str | list[str]) -> pa.Table:
    """:func:`_text_rows` from the texts' ids (flat values, row lengths)."""
    rows = lengths > 0
    if isinstance(lang, str):
        groups = pa.array([lang] * int(rows.sum()), pa.string())
    else:
        groups = pa.array(lang, pa.string()).filter(pa.array(rows))
    return pa.table({"input_ids": list_array(values, lengths, max_tokens, keep=rows), "lang": groups,
                     "group": groups, "truncated": pa.array(lengths[rows] > max_tokens)})


def _tokenize_pairs(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, src_lang: str | None,
                    tgt_lang: str | None, mismatch: str) -> pa.Table:
    src, tgt = batch["src_text"], batch["tgt_text"]
    if any(s is None for s in src) or any(t is None for t in tgt):
        raise UserError(mismatch)  # streaming: one side ended first
    encoder = _encoder(tokenizer)
    s_values, s_lengths = encoder.encode_flat([s.strip() for s in src])
    t_values, t_lengths = encoder.encode_flat([t.strip() for t in tgt])
    rows = (s_lengths > 0) & (t_lengths > 0)  # a blank side drops the pair
    kept = int(rows.sum())
    mask = pa.array(rows)
    s_langs = pa.array(batch["src_lang"], pa.string()).filter(mask) if src_lang is None else \
        pa.array([src_lang] * kept, pa.string())
    t_langs = pa.array(batch["tgt_lang"], pa.string()).filter(mask) if tgt_lang is None else \
        pa.array([tgt_lang] * kept, pa.string())
    return pa.table({
        "src_ids": list_array(s_values, s_lengths, max_tokens, keep=rows),
        "tgt_ids": list_array(t_values, t_lengths, max_tokens, keep=rows),
        "src_lang": s_langs, "tgt_lang": t_langs,
        "group": pc.binary_join_element_wise(s_langs, t_langs, "-"),
        "truncated": pa.array((s_lengths[rows] > max_tokens) | (t_lengths[rows] > max_tokens)),
    })


def _as_columns(batch: dict[str, list[Any]], *, tokenize: Any, **kwargs: Any) -> dict[str, list[Any]]:
    """A tokenize function's table as Python columns (what a streamed ``map`` takes)."""
    return tokenize(batch, **kwargs).to_pydict()


MIN_ROWS_PER_PROCESS = 20_000
"""Rows per tokenizing process below which ``map`` runs in this process."""


def _map(ds: AnyDataset, fn: Any, kwargs: dict[str, Any], features: datasets.Features, num_proc: int,
         desc: str, columns: list[str], label: str = "") -> AnyDataset:
    """Batched ``map`` replacing the raw ``columns`` (known by construction: streamed text files
    have no declared features) with the tokenized ``features``. Rows cut to ``max_tokens`` are
    counted (map-style data) and reported as one warning naming ``label``."""
    with_flag = datasets.Features({**features, "truncated": datasets.Value("bool")})
    if isinstance(ds, datasets.IterableDataset):
        out = ds.map(_as_columns, batched=True, fn_kwargs={"tokenize": fn, **kwargs}, remove_columns=columns,
                     features=with_flag)
        return out.remove_columns(["truncated"])
    # SentencePiece tokenizes on threads in this process; otherwise worker processes, only where
    # each gets enough rows to pay for its start-up (and small runs, the tests among them, keep
    # Ctrl-C handling free of a process pool)
    encoder = _encoder(kwargs["tokenizer"])
    procs = 1 if encoder.threaded else min(num_proc, len(ds) // MIN_ROWS_PER_PROCESS)
    settings = {k: v for k, v in kwargs.items() if k != "tokenizer"}
    fingerprint = Hasher.hash([ds._fingerprint, fn.__name__, encoder.fingerprint, settings, with_flag, columns])
    out = ds.map(fn, batched=True, fn_kwargs=kwargs, remove_columns=columns, features=with_flag,
                 num_proc=procs if procs > 1 else None, desc=desc, new_fingerprint=fingerprint)
    truncated = int(pc.sum(out.data.column("truncated")).as_py() or 0) if len(out) else 0
    if truncated:
        log.warning(f"{label or desc}: {truncated} of {len(out)} lines longer than {kwargs['max_tokens']} tokens "
                    "(model.max_length - 2) were truncated")
    return out.remove_columns(["truncated"])


def _text_lines(path: Path, max_lines: int | None) -> Iterator[list[str]]:
    """The stripped lines of a text file in batches of about ``_READ_CHARS`` characters, split
    as ``datasets``' ``text`` reader splits them (universal newlines, on ``\\n`` only)."""
    left = max_lines
    with io.TextIOWrapper(open_binary(path), encoding="utf-8", newline=None) as handle:
        while left is None or left > 0:
            lines = handle.readlines(_READ_CHARS)
            if not lines:
                return
            if left is not None:
                lines, left = lines[:left], left - len(lines)
            yield [line.strip() for line in lines]


def _read_ahead(batches: Iterator[list[str]]) -> Iterator[list[str]]:
    """``batches``, each next one read on a worker thread while this one is tokenized
    (SentencePiece releases the GIL while it encodes)."""
    with ThreadPoolExecutor(1, thread_name_prefix="objkit-read") as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


_READ_CHARS = 1 << 22


def _tokenized_text_file(path: Path, key: str, entry_lang: str, encoder: TextEncoder, max_tokens: int,
                         max_lines: int | None, cache_dir: str | None) -> datasets.Dataset:
    """A plain (or compressed) text file read, tokenized and written as Arrow rows in one pass:
    the raw lines never become a dataset of their own (what ``load_dataset("text")`` + ``map``
    costs twice over). Cached like ``map``'s results: by the file's path, size and mtime, the
    encoder and the settings, under ``cache_dir`` (or the ``datasets`` cache); a temporary
    file when ``datasets`` caching is off."""
    st = path.stat()
    fingerprint = Hasher.hash(["objkit-text-rows/1", str(path.resolve()), st.st_size, st.st_mtime_ns,
                               encoder.fingerprint, max_tokens, entry_lang, max_lines])
    if datasets.is_caching_enabled():
        folder = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "objkit-tokenized"
    else:
        folder = Path(get_temporary_cache_files_directory())
    target = folder / f"text-{fingerprint}.arrow"
    if target.is_file():
        return datasets.Dataset.from_file(str(target))
    folder.mkdir(parents=True, exist_ok=True)
    truncated = 0
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=target.name, suffix=".tmp")
    os.close(handle)
    try:
        with ArrowWriter(features=TEXT_FEATURES, path=tmp) as writer, gc_paused():
            for _, values, lengths in encoder.encode_batches(_read_ahead(_text_lines(path, max_lines))):
                table = _id_rows(values, lengths, max_tokens, entry_lang)
                truncated += int(pc.sum(table.column("truncated")).as_py() or 0)
                writer.write_table(table.drop_columns(["truncated"]))
            writer.finalize()
        os.replace(tmp, target)
    except UnicodeDecodeError as exc:
        raise read_error(path, key, exc) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    ds = datasets.Dataset.from_file(str(target))
    if truncated:
        log.warning(f"{key}: {path}: {truncated} of {len(ds)} lines longer than {max_tokens} tokens "
                    "(model.max_length - 2) were truncated")
    return ds


# ----------------------------------------------------------------------------- raw pairs
def expand_pair(pair: ParallelPair, key: str, base_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """The (src, tgt) files of one line-aligned ``pairs`` entry, matched in sorted order; globs
    on both sides must match the same number of files."""
    assert pair.src is not None and pair.tgt is not None
    srcs, tgts = expand(pair.src, f"{key}.src", base_dir), expand(pair.tgt, f"{key}.tgt", base_dir)
    if len(srcs) != len(tgts):
        raise UserError(f"{key}: src '{pair.src}' matches {len(srcs)} files but tgt '{pair.tgt}' "
                        f"matches {len(tgts)}")
    return list(zip(srcs, tgts))


def _bitext_rows(path: str, pair: dict[str, Any], key: str, stamp: str) -> Iterator[dict[str, str]]:
    """Generator for ``Dataset.from_generator`` (``stamp``, the file's size and mtime, is in its
    arguments so that ``datasets``' cache of it changes when the file does; no argument is a
    list: ``datasets`` would shard the generator over it)."""
    for src, tgt in iter_bitext(Path(path), ParallelPair.model_validate(pair), key):
        yield {"src_text": src, "tgt_text": tgt}


def _user_error_in(exc: BaseException) -> UserError | None:
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _read_bitext(path: Path, pair: ParallelPair, key: str, *, streaming: bool, max_lines: int | None,
                 cache_dir: str | None) -> AnyDataset:
    st = path.stat()
    kwargs = {"path": str(path), "pair": pair.model_dump(mode="json"), "key": key,
              "stamp": f"{st.st_size}:{st.st_mtime_ns}"}
    if streaming:
        ids: AnyDataset = datasets.IterableDataset.from_generator(_bitext_rows, features=RAW_PAIR_FEATURES,
                                                                  gen_kwargs=kwargs)
        return ids.take(max_lines) if max_lines is not None else ids
    try:
        ds = datasets.Dataset.from_generator(_bitext_rows, features=RAW_PAIR_FEATURES, gen_kwargs=kwargs,
                                             cache_dir=cache_dir)
    except Exception as exc:  # datasets wraps the generator's error
        located = _user_error_in(exc)
        if located is not None:
            raise located from None
        raise UserError(f"{key}: cannot read {path}: {first_line(exc)}") from None
    return ds.select(range(min(max_lines, len(ds)))) if max_lines is not None else ds


# ----------------------------------------------------------------------------- public API
def _cldr(name: str, source: CldrSource, tokenizer: Any, max_tokens: int,
          num_proc: int) -> tuple[AnyDataset, list[str]]:
    """The tokenized CLDR corpus (one in-memory dataset) and its groups."""
    raw: AnyDataset = cldr_dataset(name, source)
    if source.streaming:
        raw = raw.to_iterable_dataset()
    if source.kind == "text":
        kwargs: dict[str, Any] = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": None}
        ds = _map(raw, _tokenize_text, kwargs, TEXT_FEATURES, num_proc, f"tokenizing data.{name}", ["text", "lang"],
                  label=f"data.{name}")
        return ds, list(dict.fromkeys(source.locales))
    kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": None, "tgt_lang": None, "mismatch": ""}
    ds = _map(raw, _tokenize_pairs, kwargs, PARALLEL_FEATURES, num_proc, f"tokenizing data.{name}",
              ["src_text", "tgt_text", "src_lang", "tgt_lang"], label=f"data.{name}")
    return ds, [f"{a}-{b}" for a, b in language_pairs(source)]


def _hf(name: str, source: HfSource, tokenizer: Any, max_tokens: int, num_proc: int, base_dir: Path | None,
        cache_dir: str | None) -> tuple[str, AnyDataset]:
    """The tokenized rows of an ``hf`` source and its group (``"*"`` when rows carry their own)."""
    ds, columns = raw_rows(name, source, open_hf(name, source, base_dir=base_dir, cache_dir=cache_dir))
    label, desc = f"data.{name}: {source.path}", f"tokenizing data.{name}"
    if source.kind == "text":
        kwargs: dict[str, Any] = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": source.lang}
        return source.lang or "*", _map(ds, _tokenize_text, kwargs, TEXT_FEATURES, num_proc, desc, columns, label)
    kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": source.src_lang,
              "tgt_lang": source.tgt_lang, "mismatch": f"data.{name}: a row of {source.path} lacks a side"}
    return (f"{source.src_lang}-{source.tgt_lang}",
            _map(ds, _tokenize_pairs, kwargs, PARALLEL_FEATURES, num_proc, desc, columns, label))


def _pair_parts(name: str, source: ParallelSource, tokenizer: Any, max_tokens: int, num_proc: int,
                base_dir: Path | None, cache_dir: str | None) -> list[tuple[str, AnyDataset]]:
    parts: list[tuple[str, AnyDataset]] = []
    common: dict[str, Any] = {"streaming": source.streaming, "max_lines": source.max_lines, "cache_dir": cache_dir}
    for i, pair in enumerate(source.pairs):
        key = f"data.{name}.pairs[{i}]"
        group = f"{pair.src_lang}-{pair.tgt_lang}"
        kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": pair.src_lang, "tgt_lang": pair.tgt_lang}
        if pair.path is not None:
            for path in expand(pair.path, f"{key}.path", base_dir):
                both = _read_bitext(path, pair, f"{key}.path", **common)
                mismatch = f"{key}.path: {show(path, base_dir)} has a pair without both sides"
                parts.append((group, _map(both, _tokenize_pairs, {**kwargs, "mismatch": mismatch}, PARALLEL_FEATURES,
                                          num_proc, f"tokenizing {path.name}", ["src_text", "tgt_text"],
                                          label=f"{key}.path: {show(path, base_dir)}")))
            continue
        for s_path, t_path in expand_pair(pair, key, base_dir):
            s = read_file(s_path, f"{key}.src", pair.src_field, "src_text", **common)
            t = read_file(t_path, f"{key}.tgt", pair.tgt_field, "tgt_text", **common)
            s_name, t_name = show(s_path, base_dir), show(t_path, base_dir)
            if not source.streaming and len(s) != len(t):
                raise UserError(f"{key}: {s_name} has {len(s)} lines but {t_name} has {len(t)}")
            mismatch = f"{key}: {s_name} and {t_name} have different line counts (found while streaming)"
            both = datasets.concatenate_datasets([s, t], axis=1)
            parts.append((group, _map(both, _tokenize_pairs, {**kwargs, "mismatch": mismatch}, PARALLEL_FEATURES,
                                      num_proc, f"tokenizing {s_path.name}", ["src_text", "tgt_text"],
                                      label=f"{key}: {s_name} / {t_name}")))
    return parts


def load_source_groups(name: str, source: Source, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                       base_dir: Path | None = None, cache_dir: str | None = None) -> dict[str, AnyDataset]:
    """Tokenized rows of one source, one dataset per group (in order of first appearance).

    :func:`load_source` is their concatenation; streaming callers can hand this dict to
    :class:`objkit.data.sampling.ExampleStream` so that no group's stream reads another's files.
    An ``hf`` source with ``lang_column`` is one dataset under ``"*"`` (its rows carry their group).
    """
    tokenizer = _encoder(tokenizer, threads=num_proc)
    if isinstance(source, CldrSource):
        ds, groups = _cldr(name, source, tokenizer, max_tokens, num_proc)
        if len(groups) == 1:
            return {groups[0]: ds}
        return {g: ds.filter(_in_group, fn_kwargs={"group": g}) for g in groups}
    if isinstance(source, HfSource):
        group, ds = _hf(name, source, tokenizer, max_tokens, num_proc, base_dir, cache_dir)
        return {group: ds}
    parts: list[tuple[str, AnyDataset]] = []
    if isinstance(source, TextSource):
        common: dict[str, Any] = {"streaming": source.streaming, "max_lines": source.max_lines, "cache_dir": cache_dir}
        for i, entry in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            for path in expand(entry.path, key, base_dir):
                if not source.streaming and file_format(path, key) == "text":
                    parts.append((entry.lang, _tokenized_text_file(path, key, entry.lang, tokenizer, max_tokens,
                                                                   source.max_lines, cache_dir)))
                    continue
                raw = read_file(path, key, entry.field, "text", **common)
                kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": entry.lang}
                parts.append((entry.lang, _map(raw, _tokenize_text, kwargs, TEXT_FEATURES, num_proc,
                                               f"tokenizing {path.name}", ["text"], label=f"{key}: {path}")))
    else:
        parts = _pair_parts(name, source, tokenizer, max_tokens, num_proc, base_dir, cache_dir)
    grouped: dict[str, list[AnyDataset]] = {}
    for group, ds in parts:
        grouped.setdefault(group, []).append(ds)
    return {g: dss[0] if len(dss) == 1 else datasets.concatenate_datasets(dss) for g, dss in grouped.items()}


def load_source(name: str, source: Source, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                base_dir: Path | None = None, cache_dir: str | None = None) -> AnyDataset:
    """Tokenized rows of one source (a ``datasets.IterableDataset`` when ``source.streaming``).

    Text rows: ``{"input_ids", "lang", "group"}`` (group = lang); parallel rows: ``{"src_ids",
    "tgt_ids", "src_lang", "tgt_lang", "group"}`` (group = ``"src-tgt"``). Ids carry no special
    tokens and are truncated to ``max_tokens``. Empty lines, and pairs with an empty side, are
    dropped after alignment. Relative paths are resolved against ``base_dir`` (default: the
    working directory); ``cache_dir`` goes to ``load_dataset`` (default: the HF cache).
    Problems raise a one-line :class:`UserError` naming the recipe key and file.
    """
    if isinstance(source, CldrSource):
        return _cldr(name, source, _encoder(tokenizer, threads=num_proc), max_tokens, num_proc)[0]
    parts = list(load_source_groups(name, source, tokenizer, max_tokens=max_tokens, num_proc=num_proc,
                                    base_dir=base_dir, cache_dir=cache_dir).values())
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def source_groups(source: Source) -> list[str]:
    """The ``group`` values a source yields, known from the recipe alone (an ``hf`` source with
    ``lang_column``: ``["*"]``, its rows carry their own)."""
    if isinstance(source, CldrSource):
        if source.kind == "text":
            return list(dict.fromkeys(source.locales))
        return [f"{a}-{b}" for a, b in language_pairs(source)]
    if isinstance(source, HfSource):
        return [source.lang or "*"] if source.kind == "text" else [f"{source.src_lang}-{source.tgt_lang}"]
    if isinstance(source, TextSource):
        return list(dict.fromkeys(f.lang for f in source.files))
    return list(dict.fromkeys(f"{p.src_lang}-{p.tgt_lang}" for p in source.pairs))


def _entry_files(name: str, source: TextSource | ParallelSource,
                 base_dir: Path | None) -> list[tuple[str, str, Path]]:
    """(group, recipe key, file) for every file a file-based source reads."""
    out: list[tuple[str, str, Path]] = []
    if isinstance(source, TextSource):
        for i, f in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            out += [(f.lang, key, p) for p in expand(f.path, key, base_dir)]
        return out
    for i, pair in enumerate(source.pairs):
        group, key = f"{pair.src_lang}-{pair.tgt_lang}", f"data.{name}.pairs[{i}]"
        if pair.path is not None:
            out += [(group, f"{key}.path", p) for p in expand(pair.path, f"{key}.path", base_dir)]
        else:
            for s_path, t_path in expand_pair(pair, key, base_dir):
                out += [(group, f"{key}.src", s_path), (group, f"{key}.tgt", t_path)]
    return out


def source_group_sizes(name: str, source: Source, base_dir: Path | None = None) -> dict[str, int]:
    """Size of each group without reading the data: bytes on disk of its files (both sides for
    parallel), or row counts for CLDR; an ``hf`` source is one group. The α-sampling hint for
    streaming sources."""
    if isinstance(source, CldrSource):
        raw = cldr_dataset(name, source)
        col = raw["lang"] if source.kind == "text" else [f"{a}-{b}" for a, b in zip(raw["src_lang"], raw["tgt_lang"])]
        counts = Counter(col)
        return {g: counts[g] for g in source_groups(source)}
    if isinstance(source, HfSource):
        return dict.fromkeys(source_groups(source), 1)
    sizes = dict.fromkeys(source_groups(source), 0)
    for group, _, path in _entry_files(name, source, base_dir):
        sizes[group] += path.stat().st_size
    return sizes


def source_files(name: str, source: Source, base_dir: Path | None = None) -> list[list[Any]]:
    """(path, size, mtime_ns) of every file a source reads, for cache keys; CLDR: the babel
    version; an ``hf`` source: its files when local, else its hub id and revision."""
    if isinstance(source, CldrSource):
        import babel

        return [["babel", babel.__version__, 0]]
    if isinstance(source, HfSource):
        local = Path(source.path).expanduser()
        if not local.is_absolute() and base_dir is not None:
            local = base_dir / local
        if not local.exists():
            return [["hub", source.path, source.revision or "main", datasets.__version__]]
        # datasets writes its map caches (cache-*.arrow) beside a save_to_disk folder's data: not input
        paths = sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith("cache-")) \
            if local.is_dir() else [local]
        return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]
    stats = []
    for _, _, path in _entry_files(name, source, base_dir):
        st = path.stat()
        stats.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
    return stats


def _iter_file(path: Path, key: str, field: str, max_lines: int | None) -> Iterator[str]:
    ds = read_file(path, key, field, "text", streaming=True, max_lines=max_lines, cache_dir=None)
    rows = iter(ds)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as exc:  # streamed files fail while read: one line naming the file
            raise read_error(path, key, exc) from None
        text = (row["text"] or "").strip()
        if text:
            yield text


def _roundrobin(iterators: Sequence[Iterator[str]]) -> Iterator[str]:
    active = list(iterators)
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)


def iter_source_texts(source: Source, limit: int, *, name: str = "source",
                      base_dir: Path | None = None) -> Iterator[str]:
    """Up to ``limit`` raw, non-empty sentences of a source, for tokenizer training.

    Parallel sources give both sides (src, tgt alternately). Entries (``files[i]`` /
    ``pairs[i]``) are read round-robin, each entry's files in sorted order, so a small
    ``limit`` still covers every language.
    """
    if isinstance(source, CldrSource):
        yield from itertools.islice(iter_cldr_texts(name, source), limit)
        return
    if isinstance(source, HfSource):
        ds, columns = raw_rows(name, source, open_hf(name, source, base_dir=base_dir))
        texts = (str(row[c]).strip() for row in ds for c in columns if c != "lang" and row[c])
        yield from itertools.islice((t for t in texts if t), limit)
        return
    entries: list[Iterator[str]] = []
    if isinstance(source, TextSource):
        for i, f in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            files = expand(f.path, key, base_dir)
            entries.append(itertools.chain.from_iterable(
                _iter_file(p, key, f.field, source.max_lines) for p in files))
    else:
        for i, pair in enumerate(source.pairs):
            key = f"data.{name}.pairs[{i}]"
            if pair.path is not None:
                paths = expand(pair.path, f"{key}.path", base_dir)
                pairs = itertools.chain.from_iterable(
                    itertools.islice(iter_bitext(p, pair, f"{key}.path"), source.max_lines) for p in paths)
                entries.append(text for both in pairs for text in both if text.strip())
                continue
            srcs, tgts = zip(*expand_pair(pair, key, base_dir))
            sides = [itertools.chain.from_iterable(_iter_file(p, f"{key}.src", pair.src_field, source.max_lines)
                                                   for p in srcs),
                     itertools.chain.from_iterable(_iter_file(p, f"{key}.tgt", pair.tgt_field, source.max_lines)
                                                   for p in tgts)]
            entries.append(_roundrobin(sides))
    yield from itertools.islice(_roundrobin(entries), limit)


def _in_group(row: dict[str, Any], group: str) -> bool:
    return row["group"] == group


# ----------------------------------------------------------------------------- checking input
def check_source_files(name: str, source: Source, base_dir: Path | None = None) -> None:
    """Refuse bad input before anything is read, trained or written: every file exists and is
    not empty; text and JSON-lines files are UTF-8 (the message names the line) and not only
    blank lines; line-aligned parallel text files have the same number of lines (both files
    and both counts named); bitext files parse (fields, scores, TMX units with both languages);
    an ``hf`` source loads and has the columns the recipe names. Streamed sources, read lazily
    because they are huge, get the existence and size checks only (and an ``hf`` one its
    columns). One-line :class:`UserError` on the first problem."""
    if isinstance(source, CldrSource):  # the language codes are its input: each must be a CLDR locale
        for i, code in enumerate(source.locales):
            parse_locale(code, f"data.{name}.locales[{i}]")
        if source.kind == "parallel" and source.pivot is not None:
            parse_locale(source.pivot, f"data.{name}.pivot")
        return
    if isinstance(source, HfSource):
        open_hf(name, source, base_dir=base_dir)
        return
    scan = not source.streaming
    if isinstance(source, TextSource):
        for i, entry in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            for path in expand(entry.path, key, base_dir):
                check_file(path, key, scan=scan)
        return
    for i, pair in enumerate(source.pairs):
        key = f"data.{name}.pairs[{i}]"
        if pair.path is not None:
            for path in expand(pair.path, f"{key}.path", base_dir):
                if bitext_format(path) is None:
                    iter_bitext(path, pair, f"{key}.path")  # raises: not a bitext file
                check_file(path, f"{key}.path", scan=False)
                if scan and count_bitext(path, pair, f"{key}.path") == 0:
                    raise UserError(f"{key}.path: {show(path, base_dir)} holds no pair"
                                    + (f" with score >= {pair.min_score}" if pair.min_score is not None else ""))
            continue
        for s_path, t_path in expand_pair(pair, key, base_dir):
            s_lines = check_file(s_path, f"{key}.src", scan=scan)
            t_lines = check_file(t_path, f"{key}.tgt", scan=scan)
            if s_lines is None or t_lines is None:
                continue
            if source.max_lines is not None:
                s_lines, t_lines = min(s_lines, source.max_lines), min(t_lines, source.max_lines)
            if s_lines != t_lines:
                raise UserError(f"{key}: {show(s_path, base_dir)} has {s_lines} lines but "
                                f"{show(t_path, base_dir)} has {t_lines} (src and tgt must be line-aligned)")


def locate_stream_error(name: str, source: Source, exc: BaseException, base_dir: Path | None = None) -> UserError:
    """A streamed source's reader failed mid-run (a byte that is not UTF-8, a line that is not
    JSON, a malformed bitext line): the one-line error naming the file and the line. Bitext
    readers raise it themselves; for text and JSON files every file of the source is scanned
    until the one at fault is found."""
    located = _user_error_in(exc)
    if located is not None:
        return located
    if isinstance(source, (TextSource, ParallelSource)):
        for _, key, path in _entry_files(name, source, base_dir):
            if bitext_format(path) is None:
                found = read_error(path, key, exc)
                if f"{key}: cannot read" not in str(found):
                    return found
    return UserError(f"data.{name}: reading the stream failed: {first_line(exc)}")
