"""Read a recipe's data sources into tokenized ``datasets`` rows (see :data:`objkit.contract.interfaces.DataKind`).

A source is a plugin (:class:`objkit.Source`, kind ``source``; ``type = NAME`` in the recipe):
its config says what to read as *parts* (:mod:`objkit.contract.source`), and this module reads them, the
same way for every source: local files (:mod:`objkit.data.files`: .txt, Moses-style .en/.de,
.jsonl, .parquet, maybe compressed), bitext files (:mod:`objkit.data.bitext`: .tsv, .tmx) and
rows the plugin produces itself (the ``hf`` and ``cldr`` built-ins). They are tokenized
(:mod:`objkit.data.tokenize`: plain text files in one pass, the rest with a batched ``map``;
cached for file-backed, non-streaming data) and concatenated in recipe order, grouped. Rows
carry a ``group`` column: the language (text) or ``"src-tgt"`` (parallel), used for
α-sampling and by packing.

Bad input is refused before anything is read or trained (:func:`check_source_files`, one
line naming the recipe key, the file and, where there is one, the line). Lines longer than
the model's ``max_length`` are truncated, and counted (a warning per file).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets

from objkit.data.bitext import bitext_format, count_bitext, iter_bitext
from objkit.data.files import (
    AnyDataset,
    check_file,
    expand,
    file_format,
    read_error,
    read_file,
    scan_text_file,
    show,
    utf8_problem,
)
from objkit.data.tokenize import (
    PARALLEL_FEATURES,
    TEXT_FEATURES,
    encoder_for,
    tokenize_map,
    tokenize_pairs,
    tokenize_text,
    tokenize_text_file,
)
from objkit.contract.errors import UserError, first_line
from objkit.contract.source import (
    AlignedFilesPart,
    BitextFilePart,
    RowsPart,
    Source,
    SourceContext,
    SourcePart,
    TextFilePart,
    source_plugin,
)

__all__ = [  # scan_text_file and utf8_problem are used by eval tasks and tests from here
    "check_source_files", "expand", "iter_source_texts", "load_source", "load_source_groups", "locate_stream_error",
    "scan_text_file", "source_files", "source_group_sizes", "source_groups", "utf8_problem",
]


RAW_PAIR_FEATURES = datasets.Features({"src_text": datasets.Value("string"), "tgt_text": datasets.Value("string")})


def _parts(name: str, source: Any, base_dir: Path | None) -> list[SourcePart]:
    return source_plugin(source).parts(source, SourceContext(name, base_dir))


def _files(part: SourcePart) -> list[tuple[str, Path]]:
    """(recipe key, file) of every local file a part reads."""
    if isinstance(part, AlignedFilesPart):
        return list(zip(part.keys, (part.src, part.tgt)))
    if isinstance(part, (TextFilePart, BitextFilePart)):
        return [(part.key, part.path)]
    return []


# ----------------------------------------------------------------------------- raw pairs
def _bitext_rows(path: str, pair: dict[str, Any], key: str, stamp: str) -> Iterator[dict[str, str]]:
    """Generator for ``Dataset.from_generator`` (``stamp``, the file's size and mtime, is in its
    arguments so that ``datasets``' cache of it changes when the file does; no argument is a
    list: ``datasets`` would shard the generator over it)."""
    options = BitextFilePart(Path(path), key, pair["src_lang"], pair["tgt_lang"],
                             tuple(pair["columns"].split(",")) if pair["columns"] else None, pair["min_score"])
    for src, tgt in iter_bitext(Path(path), options, key):
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


def _read_bitext(part: BitextFilePart, *, streaming: bool, max_lines: int | None, cache_dir: str | None) -> AnyDataset:
    st = part.path.stat()
    pair = {"src_lang": part.src_lang, "tgt_lang": part.tgt_lang, "min_score": part.min_score,
            "columns": ",".join(part.columns) if part.columns else None}
    kwargs = {"path": str(part.path), "pair": pair, "key": part.key, "stamp": f"{st.st_size}:{st.st_mtime_ns}"}
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
        raise UserError(f"{part.key}: cannot read {part.path}: {first_line(exc)}") from None
    return ds.select(range(min(max_lines, len(ds)))) if max_lines is not None else ds


# ----------------------------------------------------------------------------- reading parts
def _tokenize_part(name: str, part: SourcePart, kind: str, tokenizer: Any, max_tokens: int, num_proc: int,
                   common: dict[str, Any], base_dir: Path | None) -> AnyDataset:
    """One part's rows, tokenized (``common``: streaming, max_lines, cache_dir)."""
    streaming = common["streaming"]
    if isinstance(part, TextFilePart):
        path, key = part.path, part.key
        if not streaming and file_format(path, key) == "text":
            return tokenize_text_file(path, key, part.lang, tokenizer, max_tokens, common["max_lines"],
                                      common["cache_dir"])
        raw = read_file(path, key, part.field, "text", **common)
        kwargs: dict[str, Any] = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": part.lang}
        return tokenize_map(raw, tokenize_text, kwargs, TEXT_FEATURES, num_proc, f"tokenizing {path.name}", ["text"],
                            label=f"{key}: {path}")
    if isinstance(part, RowsPart):
        return _tokenize_rows(name, part, kind, tokenizer, max_tokens, num_proc, common)
    kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": part.src_lang, "tgt_lang": part.tgt_lang}
    if isinstance(part, BitextFilePart):
        both = _read_bitext(part, **common)
        mismatch = f"{part.key}: {show(part.path, base_dir)} has a pair without both sides"
        return tokenize_map(both, tokenize_pairs, {**kwargs, "mismatch": mismatch}, PARALLEL_FEATURES, num_proc,
                            f"tokenizing {part.path.name}", ["src_text", "tgt_text"],
                            label=f"{part.key}: {show(part.path, base_dir)}")
    s_key, t_key = part.keys
    s = read_file(part.src, s_key, part.src_field, "src_text", **common)
    t = read_file(part.tgt, t_key, part.tgt_field, "tgt_text", **common)
    s_name, t_name = show(part.src, base_dir), show(part.tgt, base_dir)
    if not streaming and len(s) != len(t):
        raise UserError(f"{part.key}: {s_name} has {len(s)} lines but {t_name} has {len(t)}")
    mismatch = f"{part.key}: {s_name} and {t_name} have different line counts (found while streaming)"
    both = datasets.concatenate_datasets([s, t], axis=1)
    return tokenize_map(both, tokenize_pairs, {**kwargs, "mismatch": mismatch}, PARALLEL_FEATURES, num_proc,
                        f"tokenizing {part.src.name}", ["src_text", "tgt_text"], label=f"{part.key}: {s_name} / {t_name}")


def _tokenize_rows(name: str, part: RowsPart, kind: str, tokenizer: Any, max_tokens: int, num_proc: int,
                   common: dict[str, Any]) -> AnyDataset:
    raw = part.load(common["streaming"], common["cache_dir"])
    desc, label = f"tokenizing data.{name}", part.label or part.key
    if kind == "text":
        columns = ["text"] + (["lang"] if part.group is None else [])
        kwargs: dict[str, Any] = {"tokenizer": tokenizer, "max_tokens": max_tokens,
                                  "lang": part.langs[0] if part.langs else part.group}
        fn, features = tokenize_text, TEXT_FEATURES
    else:
        columns = ["src_text", "tgt_text"] + (["src_lang", "tgt_lang"] if part.group is None else [])
        langs = part.langs or (tuple(part.group.split("-", 1)) if part.group is not None else (None, None))
        kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": langs[0], "tgt_lang": langs[1],
                  "mismatch": "" if part.group is None else f"{label}: a row lacks a side"}
        fn, features = tokenize_pairs, PARALLEL_FEATURES
    have = raw.column_names
    if have is not None:
        missing = [c for c in columns if c not in have]
        if missing:
            raise UserError(f"{part.key}: the source's rows lack {', '.join(missing)} (columns: {', '.join(have)})")
        if list(have) != columns:
            raw = raw.select_columns(columns)
    return tokenize_map(raw, fn, kwargs, features, num_proc, desc, columns, label=label)


# ----------------------------------------------------------------------------- public API
def load_source_groups(name: str, source: Any, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                       base_dir: Path | None = None, cache_dir: str | None = None) -> dict[str, AnyDataset]:
    """Tokenized rows of one source, one dataset per group (in order of first appearance).

    :func:`load_source` is their concatenation; streaming callers can hand this dict to
    :class:`objkit.data.sampling.ExampleStream` so that no group's stream reads another's files.
    Rows that carry their own group (a :class:`objkit.RowsPart` without one, such as an ``hf``
    source with ``lang_column``) are one dataset under ``"*"`` when the source's groups are ``["*"]``.
    """
    tokenizer = encoder_for(tokenizer, threads=num_proc)
    plugin = source_plugin(source)
    kind = plugin.data_kind(source)
    common: dict[str, Any] = {"streaming": source.streaming, "max_lines": source.max_lines, "cache_dir": cache_dir}
    parts = [(p.group, _tokenize_part(name, p, kind, tokenizer, max_tokens, num_proc, common, base_dir))
             for p in _parts(name, source, base_dir)]
    grouped: dict[str, list[AnyDataset]] = {}
    for group, ds in parts:
        if group is not None:
            grouped.setdefault(group, []).append(ds)
    carried = [ds for group, ds in parts if group is None]
    if carried:
        ds = carried[0] if len(carried) == 1 else datasets.concatenate_datasets(carried)
        groups = [g for g in source_groups(source, name, base_dir) if g not in grouped]
        if groups == ["*"] or (len(groups) == 1 and not grouped):
            grouped[groups[0]] = [ds]
        for g in groups if len(groups) > 1 or grouped else []:
            grouped.setdefault(g, []).append(ds.filter(_in_group, fn_kwargs={"group": g}))
    return {g: dss[0] if len(dss) == 1 else datasets.concatenate_datasets(dss) for g, dss in grouped.items()}


def load_source(name: str, source: Any, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                base_dir: Path | None = None, cache_dir: str | None = None) -> AnyDataset:
    """Tokenized rows of one source (a ``datasets.IterableDataset`` when ``source.streaming``).

    Text rows: ``{"input_ids", "lang", "group"}`` (group = lang); parallel rows: ``{"src_ids",
    "tgt_ids", "src_lang", "tgt_lang", "group"}`` (group = ``"src-tgt"``). Ids carry no special
    tokens and are truncated to ``max_tokens``. Empty lines, and pairs with an empty side, are
    dropped after alignment. Relative paths are resolved against ``base_dir`` (default: the
    working directory); ``cache_dir`` goes to ``load_dataset`` (default: the HF cache).
    Problems raise a one-line :class:`UserError` naming the recipe key and file.
    """
    parts = _parts(name, source, base_dir)
    if len(parts) == 1:  # as read (rows that carry their groups are not split and joined again)
        kind = source_plugin(source).data_kind(source)
        common = {"streaming": source.streaming, "max_lines": source.max_lines, "cache_dir": cache_dir}
        return _tokenize_part(name, parts[0], kind, encoder_for(tokenizer, threads=num_proc), max_tokens, num_proc,
                              common, base_dir)
    groups = list(load_source_groups(name, source, tokenizer, max_tokens=max_tokens, num_proc=num_proc,
                                     base_dir=base_dir, cache_dir=cache_dir).values())
    return groups[0] if len(groups) == 1 else datasets.concatenate_datasets(groups)


def source_groups(source: Any, name: str = "source", base_dir: Path | None = None) -> list[str]:
    """The ``group`` values a source yields, known from the recipe alone (``["*"]`` when its rows
    carry their own, e.g. an ``hf`` source with ``lang_column``); a plugin that does not say finds
    them in its parts (its files, relative to ``base_dir``)."""
    plugin = source_plugin(source)
    if plugin.groups.__func__ is not Source.groups.__func__:
        return plugin.groups(source)
    return list(dict.fromkeys(p.group or "*" for p in _parts(name, source, base_dir)))


def source_group_sizes(name: str, source: Any, base_dir: Path | None = None) -> dict[str, int]:
    """Size of each group without reading the data: the plugin's (CLDR: row counts), else bytes
    on disk of its files (both sides for parallel); parts that are not files count 1. The
    α-sampling hint for streaming sources."""
    plugin = source_plugin(source)
    sizes = plugin.group_sizes(source, SourceContext(name, base_dir))
    if sizes is not None:
        return sizes
    sizes = dict.fromkeys(source_groups(source, name, base_dir), 0)
    for part in _parts(name, source, base_dir):
        group = part.group or "*"
        files = _files(part)
        sizes[group] = sizes.get(group, 0) + (sum(path.stat().st_size for _, path in files) if files else 1)
    return sizes


def source_files(name: str, source: Any, base_dir: Path | None = None) -> list[list[Any]]:
    """(path, size, mtime_ns) of every file a source reads, for cache keys; parts that are not
    files give their plugin's ``inputs`` (CLDR: the babel version; ``hf``: local files, or the hub
    id and revision)."""
    stats: list[list[Any]] = []
    for part in _parts(name, source, base_dir):
        if isinstance(part, RowsPart):
            stats += [list(row) for row in part.inputs]
            continue
        for _, path in _files(part):
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


def _row_texts(part: RowsPart) -> Iterator[str]:
    if part.texts is not None:
        return part.texts()
    columns = ("text", "src_text", "tgt_text")
    texts = (str(row[c]).strip() for row in part.load(False, None) for c in columns if row.get(c))
    return (t for t in texts if t)


def _entry_texts(parts: list[SourcePart], max_lines: int | None) -> Iterator[str]:
    """The sentences of one recipe entry (parts sharing a key): files in order, the two sides of
    line-aligned files alternately."""
    first = parts[0]
    if isinstance(first, RowsPart):
        return itertools.chain.from_iterable(_row_texts(p) for p in parts if isinstance(p, RowsPart))
    if isinstance(first, TextFilePart):
        return itertools.chain.from_iterable(_iter_file(p.path, p.key, p.field, max_lines)
                                             for p in parts if isinstance(p, TextFilePart))
    if isinstance(first, BitextFilePart):
        pairs = itertools.chain.from_iterable(itertools.islice(iter_bitext(p.path, p, p.key), max_lines)
                                              for p in parts if isinstance(p, BitextFilePart))
        return (text for both in pairs for text in both if text.strip())
    aligned = [p for p in parts if isinstance(p, AlignedFilesPart)]
    sides = [itertools.chain.from_iterable(_iter_file(p.src, p.keys[0], p.src_field, max_lines) for p in aligned),
             itertools.chain.from_iterable(_iter_file(p.tgt, p.keys[1], p.tgt_field, max_lines) for p in aligned)]
    return _roundrobin(sides)


def iter_source_texts(source: Any, limit: int, *, name: str = "source",
                      base_dir: Path | None = None) -> Iterator[str]:
    """Up to ``limit`` raw, non-empty sentences of a source, for tokenizer training.

    Parallel sources give both sides (src, tgt alternately). Entries (``files[i]`` /
    ``pairs[i]``: the parts sharing a recipe key) are read round-robin, each entry's files in
    sorted order, so a small ``limit`` still covers every language.
    """
    entries: dict[tuple[str, type], list[SourcePart]] = {}
    for part in _parts(name, source, base_dir):
        entries.setdefault((part.key, type(part)), []).append(part)
    iterators = [_entry_texts(parts, source.max_lines) for parts in entries.values()]
    yield from itertools.islice(_roundrobin(iterators), limit)


def _in_group(row: dict[str, Any], group: str) -> bool:
    return row["group"] == group


# ----------------------------------------------------------------------------- checking input
def check_source_files(name: str, source: Any, base_dir: Path | None = None) -> None:
    """Refuse bad input before anything is read, trained or written: every file exists and is
    not empty; text and JSON-lines files are UTF-8 (the message names the line) and not only
    blank lines; line-aligned parallel text files have the same number of lines (both files
    and both counts named); bitext files parse (fields, scores, TMX units with both languages);
    a part the plugin reads itself passes the plugin's check (an ``hf`` source loads and has the
    columns the recipe names; CLDR locales exist). Streamed sources, read lazily because they
    are huge, get the existence and size checks only. One-line :class:`UserError` on the first
    problem."""
    scan = not source.streaming
    for part in _parts(name, source, base_dir):
        if isinstance(part, RowsPart):
            if part.check is not None:
                part.check()
        elif isinstance(part, TextFilePart):
            check_file(part.path, part.key, scan=scan)
        elif isinstance(part, BitextFilePart):
            path, key = part.path, part.key
            if bitext_format(path) is None:
                iter_bitext(path, part, key)  # raises: not a bitext file
            check_file(path, key, scan=False)
            if scan and count_bitext(path, part, key) == 0:
                raise UserError(f"{key}: {show(path, base_dir)} holds no pair"
                                + (f" with score >= {part.min_score}" if part.min_score is not None else ""))
        else:
            (s_key, t_key), s_path, t_path = part.keys, part.src, part.tgt
            s_lines = check_file(s_path, s_key, scan=scan)
            t_lines = check_file(t_path, t_key, scan=scan)
            if s_lines is None or t_lines is None:
                continue
            if source.max_lines is not None:
                s_lines, t_lines = min(s_lines, source.max_lines), min(t_lines, source.max_lines)
            if s_lines != t_lines:
                raise UserError(f"{part.key}: {show(s_path, base_dir)} has {s_lines} lines but "
                                f"{show(t_path, base_dir)} has {t_lines} (src and tgt must be line-aligned)")


def locate_stream_error(name: str, source: Any, exc: BaseException, base_dir: Path | None = None) -> UserError:
    """A streamed source's reader failed mid-run (a byte that is not UTF-8, a line that is not
    JSON, a malformed bitext line): the one-line error naming the file and the line. Bitext
    readers raise it themselves; for text and JSON files every file of the source is scanned
    until the one at fault is found."""
    located = _user_error_in(exc)
    if located is not None:
        return located
    for part in _parts(name, source, base_dir):
        for key, path in _files(part):
            if bitext_format(path) is None:
                found = read_error(path, key, exc)
                if f"{key}: cannot read" not in str(found):
                    return found
    return UserError(f"data.{name}: reading the stream failed: {first_line(exc)}")
