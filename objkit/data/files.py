"""Local data files: which ``datasets`` builder reads a file, globs, and the up-front checks.

A text/JSON-lines file is scanned once before training (:func:`scan_text_file`): UTF-8 (the
message names the line and column), no NUL byte, one JSON value a line, and its line count
(parallel alignment). Readers that fail later (streamed files) are turned into the same
one-line error by :func:`read_error`, which rescans the file to find the line.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import re
from pathlib import Path
from typing import IO, TypeAlias

import datasets

from objkit.contract.errors import UserError, first_line

AnyDataset: TypeAlias = datasets.Dataset | datasets.IterableDataset

COMPRESSION = (".gz", ".bz2", ".xz")
_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_UNSUPPORTED = {".csv", ".arrow", ".zip", ".tar", ".xlsx", ".pdf", ".html", ".xml"}

# ----------------------------------------------------------------------------- files
def file_format(path: Path, key: str) -> str:
    """``datasets`` builder for a file, from its extension (after an optional .gz/.bz2/.xz):
    .jsonl/.json -> json, .parquet -> parquet, tabular/archive types -> error, anything else
    (.txt, Moses-style .en/.de, ...) -> text, one sentence a line."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = bool(suffixes) and suffixes[-1] in COMPRESSION
    ext = (suffixes[:-1] if compressed else suffixes)[-1:] or [""]
    fmt = _FORMATS.get(ext[0], "text")
    if ext[0] in _UNSUPPORTED or (compressed and fmt == "parquet"):
        raise UserError(f"{key}: unsupported file type '{path.name}' (use text files, .jsonl, .json or .parquet; "
                        f"text and json may end in {', '.join(COMPRESSION)})")
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


def read_file(path: Path, key: str, field: str, column: str, *, streaming: bool, max_lines: int | None,
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


def show(path: Path, base_dir: Path | None) -> str:
    """A file as messages show it: relative to ``base_dir`` when under it."""
    if base_dir is not None:
        try:
            return str(path.relative_to(base_dir))
        except ValueError:
            pass
    return str(path)


# ----------------------------------------------------------------------------- checking input
_CHUNK = 1 << 24


def open_binary(path: Path) -> IO[bytes]:
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
                value = json.loads(line)
            except ValueError as exc:
                what = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                column = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
                return i, f"not valid JSON ({what}{column}; expected one JSON object a line)"
            if not isinstance(value, dict):
                kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
                return i, f"a JSON {kind}, not an object (expected one JSON object a line)"
    return None


def scan_text_file(path: Path, key: str, jsonl: bool = False) -> tuple[int, bool]:
    """(line count as the ``text`` reader splits lines, whether any line is non-blank).

    Raises a one-line :class:`UserError` naming ``key``, the file and the 1-based line when the
    file is not UTF-8, holds a NUL byte, has a line that is not JSON (``jsonl``), or cannot be read.
    """
    count, nonblank, carry = 0, False, b""
    try:
        with open_binary(path) as handle:
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


def check_file(path: Path, key: str, *, scan: bool) -> int | None:
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
    lines, nonblank = scan_text_file(path, key, jsonl=is_jsonl(path))
    if not nonblank:
        raise UserError(f"{key}: {path} has only blank lines (expected one sentence or record a line)")
    return lines if fmt == "text" else None


def is_jsonl(path: Path) -> bool:
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
        if isinstance(cause, UnicodeDecodeError) or is_jsonl(path):
            try:
                scan_text_file(path, key, jsonl=is_jsonl(path))  # finds the line and raises with it
            except UserError as located:
                return located
            break
        cause = cause.__cause__ or cause.__context__
    return UserError(f"{key}: cannot read {path}: {first_line(exc)}")
