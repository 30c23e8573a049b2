"""Read a recipe's data sources into tokenized ``datasets`` rows (see :data:`objkit.interfaces.DataKind`).

Where the raw text comes from is one module per kind of source: local files
(:mod:`objkit.data.files`: .txt, Moses-style .en/.de, .jsonl, .parquet, maybe compressed),
bitext files (:mod:`objkit.data.bitext`: .tsv, .tmx), anything ``datasets`` loads
(:mod:`objkit.data.hf`) and the embedded CLDR corpus (:mod:`objkit.data.cldr`). This module
has them tokenized (:mod:`objkit.data.tokenize`: plain text files in one pass, the rest with a
batched ``map``; cached for file-backed, non-streaming data) and concatenates them in recipe
order. Rows carry a
``group`` column: the language (text) or ``"src-tgt"`` (parallel), used for α-sampling and
by packing.

Bad input is refused before anything is read or trained (:func:`check_source_files`, one
line naming the recipe key, the file and, where there is one, the line). Lines longer than
the model's ``max_length`` are truncated, and counted (a warning per file).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import datasets

from objkit.data.bitext import bitext_format, count_bitext, iter_bitext
from objkit.data.cldr import cldr_dataset, iter_cldr_texts, language_pairs, parse_locale
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
from objkit.data.hf import open_hf, raw_rows
from objkit.data.tokenize import (
    PARALLEL_FEATURES,
    TEXT_FEATURES,
    encoder_for,
    tokenize_map,
    tokenize_pairs,
    tokenize_text,
    tokenize_text_file,
)
from objkit.errors import UserError, first_line
from objkit.schema import CldrSource, HfSource, ParallelPair, ParallelSource, TextSource

__all__ = [  # scan_text_file and utf8_problem are used by eval tasks and tests from here
    "check_source_files", "expand", "iter_source_texts", "load_source", "load_source_groups", "locate_stream_error",
    "scan_text_file", "source_files", "source_group_sizes", "source_groups", "utf8_problem",
]


Source: TypeAlias = TextSource | ParallelSource | CldrSource | HfSource

RAW_PAIR_FEATURES = datasets.Features({"src_text": datasets.Value("string"), "tgt_text": datasets.Value("string")})


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
        ds = tokenize_map(raw, tokenize_text, kwargs, TEXT_FEATURES, num_proc, f"tokenizing data.{name}",
                          ["text", "lang"], label=f"data.{name}")
        return ds, list(dict.fromkeys(source.locales))
    kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": None, "tgt_lang": None, "mismatch": ""}
    ds = tokenize_map(raw, tokenize_pairs, kwargs, PARALLEL_FEATURES, num_proc, f"tokenizing data.{name}",
                      ["src_text", "tgt_text", "src_lang", "tgt_lang"], label=f"data.{name}")
    return ds, [f"{a}-{b}" for a, b in language_pairs(source)]


def _hf(name: str, source: HfSource, tokenizer: Any, max_tokens: int, num_proc: int, base_dir: Path | None,
        cache_dir: str | None) -> tuple[str, AnyDataset]:
    """The tokenized rows of an ``hf`` source and its group (``"*"`` when rows carry their own)."""
    ds, columns = raw_rows(name, source, open_hf(name, source, base_dir=base_dir, cache_dir=cache_dir))
    label, desc = f"data.{name}: {source.path}", f"tokenizing data.{name}"
    if source.kind == "text":
        kwargs: dict[str, Any] = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": source.lang}
        return source.lang or "*", tokenize_map(ds, tokenize_text, kwargs, TEXT_FEATURES, num_proc, desc, columns,
                                                label)
    kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "src_lang": source.src_lang,
              "tgt_lang": source.tgt_lang, "mismatch": f"data.{name}: a row of {source.path} lacks a side"}
    return (f"{source.src_lang}-{source.tgt_lang}",
            tokenize_map(ds, tokenize_pairs, kwargs, PARALLEL_FEATURES, num_proc, desc, columns, label))


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
                parts.append((group, tokenize_map(both, tokenize_pairs, {**kwargs, "mismatch": mismatch},
                                                  PARALLEL_FEATURES, num_proc, f"tokenizing {path.name}",
                                                  ["src_text", "tgt_text"],
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
            parts.append((group, tokenize_map(both, tokenize_pairs, {**kwargs, "mismatch": mismatch},
                                              PARALLEL_FEATURES, num_proc, f"tokenizing {s_path.name}",
                                              ["src_text", "tgt_text"], label=f"{key}: {s_name} / {t_name}")))
    return parts


def load_source_groups(name: str, source: Source, tokenizer: Any, *, max_tokens: int, num_proc: int = 1,
                       base_dir: Path | None = None, cache_dir: str | None = None) -> dict[str, AnyDataset]:
    """Tokenized rows of one source, one dataset per group (in order of first appearance).

    :func:`load_source` is their concatenation; streaming callers can hand this dict to
    :class:`objkit.data.sampling.ExampleStream` so that no group's stream reads another's files.
    An ``hf`` source with ``lang_column`` is one dataset under ``"*"`` (its rows carry their group).
    """
    tokenizer = encoder_for(tokenizer, threads=num_proc)
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
                    parts.append((entry.lang, tokenize_text_file(path, key, entry.lang, tokenizer, max_tokens,
                                                                 source.max_lines, cache_dir)))
                    continue
                raw = read_file(path, key, entry.field, "text", **common)
                kwargs = {"tokenizer": tokenizer, "max_tokens": max_tokens, "lang": entry.lang}
                parts.append((entry.lang, tokenize_map(raw, tokenize_text, kwargs, TEXT_FEATURES, num_proc,
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
        return _cldr(name, source, encoder_for(tokenizer, threads=num_proc), max_tokens, num_proc)[0]
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
