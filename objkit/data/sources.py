"""Read a recipe's data sources into tokenized ``datasets`` rows (see :data:`objkit.interfaces.DataKind`).

Files are read with ``datasets.load_dataset`` (``json`` for .jsonl/.json, ``parquet``, and
``text`` for anything else: .txt, Moses-style .en/.de; text and json may be compressed:
.gz, .bz2, .xz), one file at a time so that
per-file line counts (parallel alignment) and ``max_lines`` hold, then tokenized with a
batched ``map`` (cached by ``datasets`` for file-backed, non-streaming data) and
concatenated in recipe order. Rows carry a ``group`` column: the language (text) or
``"src-tgt"`` (parallel), used for α-sampling and by packing.

Bad input is refused before anything is read or trained (:func:`check_source_files`, one
line naming the recipe key, the file and, for bytes that are not UTF-8, the line): a
missing file, an empty one, parallel files whose line counts differ. Lines longer than the
model's ``max_length`` are truncated, and counted (a warning per file).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import itertools
import json
import logging
import lzma
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeAlias

import datasets
import pyarrow.compute as pc

from objkit.data.cldr import cldr_dataset, iter_cldr_texts, language_pairs, parse_locale
from objkit.errors import UserError, first_line
from objkit.recipe import CldrSource, ParallelPair, ParallelSource, TextSource

log = logging.getLogger(__name__)

AnyDataset: TypeAlias = datasets.Dataset | datasets.IterableDataset
Source: TypeAlias = TextSource | ParallelSource | CldrSource

_COMPRESSION = (".gz", ".bz2", ".xz")
_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_UNSUPPORTED = {".csv", ".tsv", ".arrow", ".zip", ".tar", ".xlsx", ".pdf", ".html", ".xml"}

TEXT_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "lang": datasets.Value("string"),
     "group": datasets.Value("string")}
)
PARALLEL_FEATURES = datasets.Features(
    {"src_ids": datasets.Sequence(datasets.Value("int32")), "tgt_ids": datasets.Sequence(datasets.Value("int32")),
     "src_lang": datasets.Value("string"), "tgt_lang": datasets.Value("string"), "group": datasets.Value("string")}
)


# ----------------------------------------------------------------------------- files
def file_format(path: Path, key: str) -> str:
    """``datasets`` builder for a file, from its extension (after an optional .gz/.bz2/.xz):
    .jsonl/.json -> json, .parquet -> parquet, tabular/archive types -> error, anything else
    (.txt, Moses-style .en/.de, ...) -> text, one sentence a line."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in _COMPRESSION
    ext = (suffixes[:-1] if compressed else suffixes)[-1:] or [""]
    fmt = _FORMATS.get(ext[0], "text")
    if ext[0] in _UNSUPPORTED or (compressed and fmt == "parquet"):
        raise UserError(f"{key}: unsupported file type '{path.name}' (use text files, .jsonl, .json or .parquet; "
                        f"text and json may end in {', '.join(_COMPRESSION)})")
    return fmt


def expand(pattern: str, key: str, base_dir: Path | None = None) -> list[Path]:
    """Files matching ``pattern`` (relative to ``base_dir``), sorted; none -> :class:`UserError`."""
    full = Path(pattern).expanduser()
    if not full.is_absolute() and base_dir is not None:
        full = Path(base_dir) / full
    files = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(f"{key}: no file matches '{pattern}'")
    return files


def expand_pair(pair: ParallelPair, key: str, base_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """The (src, tgt) files of one ``pairs`` entry, matched in sorted order; globs on both
    sides must match the same number of files."""
    srcs, tgts = expand(pair.src, f"{key}.src", base_dir), expand(pair.tgt, f"{key}.tgt", base_dir)
    if len(srcs) != len(tgts):
        raise UserError(f"{key}: src '{pair.src}' matches {len(srcs)} files but tgt '{pair.tgt}' "
                        f"matches {len(tgts)}")
    return list(zip(srcs, tgts))


def _read_file(path: Path, key: str, field: str, column: str, *, streaming: bool, max_lines: int | None,
               cache_dir: str | None) -> AnyDataset:
    """One file as a dataset with the single string column ``column``."""
    fmt = file_format(path, key)
    try:
        ds = datasets.load_dataset(fmt, data_files=[str(path)], split="train", streaming=streaming,
                                   cache_dir=cache_dir)
    except Exception as exc:  # unreadable / malformed file: one line naming the key and file
        raise read_error(path, key, exc) from None
    if fmt == "text":
        field = "text"
    elif ds.column_names is not None and field not in ds.column_names:
        raise UserError(f"{key}: {path} has no column {field!r} (columns: {', '.join(ds.column_names)})")
    if ds.column_names is not None and ds.column_names != [field]:
        ds = ds.select_columns([field])
    if field != column:
        ds = ds.rename_column(field, column)
    if max_lines is not None:
        ds = ds.take(max_lines) if streaming else ds.select(range(min(max_lines, len(ds))))
    return ds


# ----------------------------------------------------------------------------- tokenization
def _tokenize_text(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, lang: str | None) -> dict:
    langs = batch["lang"] if lang is None else [lang] * len(batch["text"])
    keep = [(t.strip(), g) for t, g in zip(batch["text"], langs) if t is not None and t.strip()]
    ids = tokenizer([t for t, _ in keep], add_special_tokens=False)["input_ids"] if keep else []
    rows = [(i, g) for i, (_, g) in zip(ids, keep) if i]
    return {"input_ids": [i[:max_tokens] for i, _ in rows], "lang": [g for _, g in rows],
            "group": [g for _, g in rows], "truncated": [len(i) > max_tokens for i, _ in rows]}


def _tokenize_pairs(batch: dict[str, list[Any]], *, tokenizer: Any, max_tokens: int, src_lang: str | None,
                    tgt_lang: str | None, mismatch: str) -> dict:
    src, tgt = batch["src_text"], batch["tgt_text"]
    if any(s is None for s in src) or any(t is None for t in tgt):
        raise UserError(mismatch)  # streaming: one side ended first
    n = len(src)
    src_langs = batch["src_lang"] if src_lang is None else [src_lang] * n
    tgt_langs = batch["tgt_lang"] if tgt_lang is None else [tgt_lang] * n
    keep = [i for i in range(n) if src[i].strip() and tgt[i].strip()]

    def encode(texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    s_ids, t_ids = encode([src[i].strip() for i in keep]), encode([tgt[i].strip() for i in keep])
    rows = [(s, t, src_langs[i], tgt_langs[i]) for i, s, t in zip(keep, s_ids, t_ids) if s and t]
    return {"src_ids": [r[0][:max_tokens] for r in rows], "tgt_ids": [r[1][:max_tokens] for r in rows],
            "src_lang": [r[2] for r in rows], "tgt_lang": [r[3] for r in rows],
            "group": [f"{r[2]}-{r[3]}" for r in rows],
            "truncated": [len(r[0]) > max_tokens or len(r[1]) > max_tokens for r in rows]}


def _map(ds: AnyDataset, fn: Any, kwargs: dict[str, Any], features: datasets.Features, num_proc: int,
         desc: str, columns: list[str], label: str = "") -> AnyDataset:
    """Batched ``map`` replacing the raw ``columns`` (known by construction: streamed text files
    have no declared features) with the tokenized ``features``. Rows cut to ``max_tokens`` are
    counted (map-style data) and reported as one warning naming ``label``."""
    with_flag = datasets.Features({**features, "truncated": datasets.Value("bool")})
    if isinstance(ds, datasets.IterableDataset):
        out = ds.map(fn, batched=True, fn_kwargs=kwargs, remove_columns=columns, features=with_flag)
        return out.remove_columns(["truncated"])
    out = ds.map(fn, batched=True, fn_kwargs=kwargs, remove_columns=columns, features=with_flag,
                 num_proc=num_proc if num_proc > 1 and len(ds) > 1 else None, desc=desc)
    truncated = int(pc.sum(out.data.column("truncated")).as_py() or 0) if len(out) else 0
    if truncated:
        log.warning(f"{label or desc}: {truncated} of {len(out)} lines longer than {kwargs['max_tokens']} tokens "
                    "(model.max_length - 2) were truncated")
    return out.remove_columns(["truncated"])


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


def load_source_groups(name: str, source: Source, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                       base_dir: Path | None = None, cache_dir: str | None = None) -> dict[str, AnyDataset]:
    """Tokenized rows of one source, one dataset per group (in order of first appearance).

    :func:`load_source` is their concatenation; streaming callers can hand this dict to
    :class:`objkit.data.sampling.ExampleStream` so that no group's stream reads another's files.
    """
    if isinstance(source, CldrSource):
        ds, groups = _cldr(name, source, tokenizer, max_tokens, num_proc)
        if len(groups) == 1:
            return {groups[0]: ds}
        return {g: ds.filter(_in_group, fn_kwargs={"group": g}) for g in groups}
    parts: list[tuple[str, AnyDataset]] = []
    common: dict[str, Any] = {"streaming": source.streaming, "max_lines": source.max_lines, "cache_dir": cache_dir}
    if isinstance(source, TextSource):
        for i, entry in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            for path in expand(entry.path, key, base_dir):
                raw = _read_file(path, key, entry.field, "text", **common)
                kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": entry.lang}
                parts.append((entry.lang, _map(raw, _tokenize_text, kwargs, TEXT_FEATURES, num_proc,
                                               f"tokenizing {path.name}", ["text"], label=f"{key}: {path}")))
    else:
        for i, pair in enumerate(source.pairs):
            key = f"data.{name}.pairs[{i}]"
            for s_path, t_path in expand_pair(pair, key, base_dir):
                s = _read_file(s_path, f"{key}.src", pair.src_field, "src_text", **common)
                t = _read_file(t_path, f"{key}.tgt", pair.tgt_field, "tgt_text", **common)
                s_name, t_name = _show(s_path, base_dir), _show(t_path, base_dir)
                if not source.streaming and len(s) != len(t):
                    raise UserError(f"{key}: {s_name} has {len(s)} lines but {t_name} has {len(t)}")
                kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": pair.src_lang,
                          "tgt_lang": pair.tgt_lang, "mismatch": f"{key}: {s_name} and {t_name} have different "
                          "line counts (found while streaming)"}
                both = datasets.concatenate_datasets([s, t], axis=1)
                parts.append((f"{pair.src_lang}-{pair.tgt_lang}", _map(
                    both, _tokenize_pairs, kwargs, PARALLEL_FEATURES, num_proc, f"tokenizing {s_path.name}",
                    ["src_text", "tgt_text"], label=f"{key}: {s_name} / {t_name}")))
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
        return _cldr(name, source, tokenizer, max_tokens, num_proc)[0]
    parts = list(load_source_groups(name, source, tokenizer, max_tokens=max_tokens, num_proc=num_proc,
                                    base_dir=base_dir, cache_dir=cache_dir).values())
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def source_groups(source: Source) -> list[str]:
    """The ``group`` values a source yields, known from the recipe alone."""
    if isinstance(source, CldrSource):
        if source.kind == "text":
            return list(dict.fromkeys(source.locales))
        return [f"{a}-{b}" for a, b in language_pairs(source)]
    if isinstance(source, TextSource):
        return list(dict.fromkeys(f.lang for f in source.files))
    return list(dict.fromkeys(f"{p.src_lang}-{p.tgt_lang}" for p in source.pairs))


def source_group_sizes(name: str, source: Source, base_dir: Path | None = None) -> dict[str, int]:
    """Size of each group without reading the data: bytes on disk of its files (both sides for
    parallel), or row counts for CLDR. The α-sampling hint for streaming sources."""
    if isinstance(source, CldrSource):
        raw = cldr_dataset(name, source)
        col = raw["lang"] if source.kind == "text" else [f"{a}-{b}" for a, b in zip(raw["src_lang"], raw["tgt_lang"])]
        counts = Counter(col)
        return {g: counts[g] for g in source_groups(source)}
    sizes = dict.fromkeys(source_groups(source), 0)
    if isinstance(source, TextSource):
        for i, f in enumerate(source.files):
            sizes[f.lang] += sum(p.stat().st_size for p in expand(f.path, f"data.{name}.files[{i}].path", base_dir))
    else:
        for i, pair in enumerate(source.pairs):
            files = expand(pair.src, f"data.{name}.pairs[{i}].src", base_dir)
            files += expand(pair.tgt, f"data.{name}.pairs[{i}].tgt", base_dir)
            sizes[f"{pair.src_lang}-{pair.tgt_lang}"] += sum(p.stat().st_size for p in files)
    return sizes


def _iter_file(path: Path, key: str, field: str, max_lines: int | None) -> Iterator[str]:
    ds = _read_file(path, key, field, "text", streaming=True, max_lines=max_lines, cache_dir=None)
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
            srcs, tgts = expand(pair.src, f"{key}.src", base_dir), expand(pair.tgt, f"{key}.tgt", base_dir)
            sides = [itertools.chain.from_iterable(_iter_file(p, f"{key}.src", pair.src_field, source.max_lines)
                                                   for p in srcs),
                     itertools.chain.from_iterable(_iter_file(p, f"{key}.tgt", pair.tgt_field, source.max_lines)
                                                   for p in tgts)]
            entries.append(_roundrobin(sides))
    yield from itertools.islice(_roundrobin(entries), limit)


def _in_group(row: dict[str, Any], group: str) -> bool:
    return row["group"] == group


def _show(path: Path, base_dir: Path | None) -> str:
    """A file as messages show it: relative to ``base_dir`` when under it."""
    if base_dir is not None:
        try:
            return str(path.relative_to(base_dir))
        except ValueError:
            pass
    return str(path)


# ----------------------------------------------------------------------------- checking input
_CHUNK = 1 << 24


def _open_binary(path: Path) -> IO[bytes]:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    return path.open("rb")


def utf8_problem(piece: bytes, exc: UnicodeDecodeError, lines_before: int) -> tuple[int, str]:
    """(1-based line, "byte 0x.. at column C is not valid UTF-8") of a decoding error in ``piece``,
    which follows ``lines_before`` lines of its file."""
    line = lines_before + piece.count(b"\n", 0, exc.start) + 1
    column = exc.start - (piece.rfind(b"\n", 0, exc.start) + 1) + 1
    return line, f"byte 0x{piece[exc.start]:02x} at column {column} is not valid UTF-8"


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _line_problem(text: str, jsonl: bool) -> tuple[int, str] | None:
    """(0-based line in ``text``, what is wrong) for the first line holding a NUL character or,
    in JSON lines, not holding one JSON value; None when every line is fine."""
    if not jsonl and "\x00" not in text:
        return None
    for i, line in enumerate(_LINE_BREAK.split(text)):
        if "\x00" in line:
            return i, f"NUL byte at column {line.index(chr(0)) + 1} (expected text; is it a binary file?)"
        if jsonl and line.strip():
            try:
                json.loads(line)
            except ValueError as exc:
                what = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                return i, f"not valid JSON ({what}{column}; expected one JSON object a line)"
    return None


def scan_text_file(path: Path, key: str, jsonl: bool = False) -> tuple[int, bool]:
    """(line count as the ``text`` reader splits lines, whether any line is non-blank).

    Raises a one-line :class:`UserError` naming ``key``, the file and the 1-based line when the
    file is not UTF-8, holds a NUL byte, has a line that is not JSON (``jsonl``), or cannot be read.
    """
    count, nonblank, carry = 0, False, b""
    try:
        with _open_binary(path) as handle:
            while True:
                block = handle.read(_CHUNK)
                data = carry + block
                if not block:
                    piece, carry = data, b""
                else:
                    cut = data.rfind(b"\n") + 1  # decode whole lines only (no split characters)
                    piece, carry = data[:cut], data[cut:]
                if piece:
                    try:
                        text = piece.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        line, what = utf8_problem(piece, exc, count)
                        raise UserError(f"{key}: {path}: line {line}: {what} (expected UTF-8 text)") from None
                    problem = _line_problem(text, jsonl)
                    if problem is not None:
                        raise UserError(f"{key}: {path}: line {count + problem[0] + 1}: {problem[1]}")
                    nonblank = nonblank or bool(text.strip())
                    # universal newlines, as the reader: \n, \r\n and a lone \r end a line
                    count += text.count("\n") + text.count("\r") - text.count("\r\n")
                    if not block and not text.endswith(("\n", "\r")):
                        count += 1  # a last line without a line break
                if not block:
                    return count, nonblank
    except (OSError, EOFError, lzma.LZMAError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UserError(f"{key}: cannot read {path}: {reason}") from None


def _check_file(path: Path, key: str, *, scan: bool) -> int | None:
    """Size and content checks of one data file; its line count when it is a scanned text file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UserError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None
    if size == 0:
        raise UserError(f"{key}: {path} is empty (expected one sentence or record a line)")
    fmt = file_format(path, key)
    if not scan or fmt == "parquet":
        return None
    lines, nonblank = scan_text_file(path, key, jsonl=_is_jsonl(path))
    if not nonblank:
        raise UserError(f"{key}: {path} has only blank lines (expected one sentence or record a line)")
    return lines if fmt == "text" else None


def check_source_files(name: str, source: Source, base_dir: Path | None = None) -> None:
    """Refuse bad input before anything is read, trained or written: every file exists and is
    not empty; text and JSON-lines files are UTF-8 (the message names the line) and not only
    blank lines; line-aligned parallel text files have the same number of lines (both files
    and both counts named). Streamed sources, read lazily because they are huge, get the
    existence and size checks only. One-line :class:`UserError` on the first problem."""
    if isinstance(source, CldrSource):  # the language codes are its input: each must be a CLDR locale
        for i, code in enumerate(source.locales):
            parse_locale(code, f"data.{name}.locales[{i}]")
        if source.kind == "parallel" and source.pivot is not None:
            parse_locale(source.pivot, f"data.{name}.pivot")
        return
    scan = not source.streaming
    if isinstance(source, TextSource):
        for i, entry in enumerate(source.files):
            key = f"data.{name}.files[{i}].path"
            for path in expand(entry.path, key, base_dir):
                _check_file(path, key, scan=scan)
        return
    for i, pair in enumerate(source.pairs):
        key = f"data.{name}.pairs[{i}]"
        for s_path, t_path in expand_pair(pair, key, base_dir):
            s_lines = _check_file(s_path, f"{key}.src", scan=scan)
            t_lines = _check_file(t_path, f"{key}.tgt", scan=scan)
            if s_lines is None or t_lines is None:
                continue
            if source.max_lines is not None:
                s_lines, t_lines = min(s_lines, source.max_lines), min(t_lines, source.max_lines)
            if s_lines != t_lines:
                raise UserError(f"{key}: {_show(s_path, base_dir)} has {s_lines} lines but "
                                f"{_show(t_path, base_dir)} has {t_lines} (src and tgt must be line-aligned)")


def _is_jsonl(path: Path) -> bool:
    """A JSON-lines file (``.jsonl``, maybe compressed): one JSON value a line, checked line by line."""
    suffixes = [x.lower() for x in path.suffixes]
    return ".jsonl" in suffixes[-2:]


def read_error(path: Path, key: str, exc: BaseException) -> UserError:
    """A reader's exception as one line naming the file (and the line, for bytes that are not
    UTF-8 and for JSON lines that do not parse)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, UnicodeDecodeError) or _is_jsonl(path):
            try:
                scan_text_file(path, key, jsonl=_is_jsonl(path))  # finds the line and raises with it
            except UserError as located:
                return located
            break
        cause = cause.__cause__ or cause.__context__
    return UserError(f"{key}: cannot read {path}: {first_line(exc)}")
