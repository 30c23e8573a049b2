"""Tokenization of raw text into the data layer's Arrow rows.

Text rows are ``{"input_ids", "lang", "group"}``, parallel rows ``{"src_ids", "tgt_ids",
"src_lang", "tgt_lang", "group"}``: ids without special tokens, cut to ``max_tokens``, blank
texts (and pairs with a blank side) dropped. :func:`tokenize_map` runs the batch functions
over a raw ``datasets`` dataset (SentencePiece on threads in this process, other tokenizers in
``num_proc`` worker processes); :func:`tokenize_text_file` reads a plain or compressed text
file, tokenizes and writes it in one pass (a read-ahead thread, SentencePiece encoding the next
batch while this one is written), cached by the file's stamp and the encoder's hash.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher, get_temporary_cache_files_directory

from objkit.data.encode import TextEncoder, gc_paused, list_array
from objkit.data.files import AnyDataset, open_binary, read_error
from objkit.contract.errors import UserError

log = logging.getLogger(__name__)

TEXT_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "lang": datasets.Value("string"),
     "group": datasets.Value("string")}
)
PARALLEL_FEATURES = datasets.Features(
    {"src_ids": datasets.Sequence(datasets.Value("int32")), "tgt_ids": datasets.Sequence(datasets.Value("int32")),
     "src_lang": datasets.Value("string"), "tgt_lang": datasets.Value("string"), "group": datasets.Value("string")}
)


def encoder_for(tokenizer: Any, threads: int = 1) -> TextEncoder:
    return tokenizer if isinstance(tokenizer, TextEncoder) else TextEncoder(tokenizer, threads=threads)


def tokenize_text(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, lang: str | None) -> pa.Table:
    texts = [t.strip() if t else "" for t in batch["text"]]
    return id_rows(*encoder_for(tokenizer).encode_flat(texts), max_tokens, lang if lang is not None else batch["lang"])


def id_rows(values: np.ndarray, lengths: np.ndarray, max_tokens: int, lang: str | list[str]) -> pa.Table:
    """Text rows from the ids of stripped texts (flat ``values``, row ``lengths``): blank texts,
    which encode to no ids, dropped; a ``truncated`` flag per row; ``lang``: one language, or
    one per text."""
    rows = lengths > 0
    if isinstance(lang, str):
        groups = pa.array([lang] * int(rows.sum()), pa.string())
    else:
        groups = pa.array(lang, pa.string()).filter(pa.array(rows))
    return pa.table({"input_ids": list_array(values, lengths, max_tokens, keep=rows), "lang": groups,
                     "group": groups, "truncated": pa.array(lengths[rows] > max_tokens)})


def tokenize_pairs(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, src_lang: str | None,
                   tgt_lang: str | None, mismatch: str) -> pa.Table:
    src, tgt = batch["src_text"], batch["tgt_text"]
    if any(s is None for s in src) or any(t is None for t in tgt):
        raise UserError(mismatch)  # streaming: one side ended first
    encoder = encoder_for(tokenizer)
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


def tokenize_map(ds: AnyDataset, fn: Any, kwargs: dict[str, Any], features: datasets.Features, num_proc: int,
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
    encoder = encoder_for(kwargs["tokenizer"])
    procs = 1 if encoder.threaded else min(num_proc, len(ds) // MIN_ROWS_PER_PROCESS)
    settings = {k: v for k, v in kwargs.items() if k != "tokenizer"}
    fingerprint = Hasher.hash([ds._fingerprint, fn.__name__, encoder.fingerprint, settings, with_flag, columns])
    out = ds.map(fn, batched=True, fn_kwargs=kwargs, remove_columns=columns, features=with_flag,
                 num_proc=procs if procs > 1 else None, desc=desc, new_fingerprint=fingerprint)
    truncated = _count_truncated(out.data.table) if len(out) else 0
    _warn_truncated(label or desc, truncated, len(out), kwargs["max_tokens"])
    return out.remove_columns(["truncated"])


def _count_truncated(table: pa.Table) -> int:
    return int(pc.sum(table.column("truncated")).as_py() or 0)


def _warn_truncated(label: str, truncated: int, rows: int, max_tokens: int) -> None:
    if truncated:
        log.warning(f"{label}: {truncated} of {rows} lines longer than {max_tokens} tokens "
                    "(model.max_length - 2) were truncated")


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


def tokenize_text_file(path: Path, key: str, entry_lang: str, encoder: TextEncoder, max_tokens: int,
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
                table = id_rows(values, lengths, max_tokens, entry_lang)
                truncated += _count_truncated(table)
                writer.write_table(table.drop_columns(["truncated"]))
            writer.finalize()
        os.replace(tmp, target)
    except UnicodeDecodeError as exc:
        raise read_error(path, key, exc) from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    ds = datasets.Dataset.from_file(str(target))
    _warn_truncated(f"{key}: {path}", truncated, len(ds), max_tokens)
    return ds
