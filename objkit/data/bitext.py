"""Bitext files: one file holds both sides of each pair.

* ``.tsv``: ``src<TAB>tgt[<TAB>score]`` a line, the layout of CCMatrix, NLLB and WikiMatrix
  dumps (CCMatrix puts the score first: ``columns = ["score", "src", "tgt"]``); pairs whose
  score is below ``min_score`` are dropped.
* ``.tmx`` (OPUS): ``<tu>`` units holding one ``<tuv xml:lang=...><seg>`` per language; the two
  languages of the ``pairs`` entry are picked (``en`` also matches ``en-US`` / ``en_GB``).

Both may be compressed (.gz, .xz, .bz2) and are read as a stream of lines / XML events, so a
file of any size is never held in memory. Every problem is one :class:`UserError` naming the
recipe key, the file and the 1-based line: a line with the wrong number of fields, a score
that is not a number, bytes that are not UTF-8, XML that does not parse, a unit without both
languages.
"""

from __future__ import annotations

import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.parsers import expat

from objkit.data.files import COMPRESSION, open_binary, utf8_problem
from objkit.contract.errors import UserError

_XML_LANG = "http://www.w3.org/XML/1998/namespace lang"
_CHUNK = 1 << 20


def bitext_format(path: Path) -> str | None:
    """``"tsv"`` / ``"tmx"`` for a bitext file (after an optional compression suffix), else None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    return {".tsv": "tsv", ".tmx": "tmx"}.get(ext)


def iter_bitext(path: Path, pair: Any, key: str) -> Iterator[tuple[str, str]]:
    """(src, tgt) texts of a ``.tsv`` or ``.tmx`` file, in file order (filtered by ``min_score``)."""
    fmt = bitext_format(path)
    if fmt == "tsv":
        return _iter_tsv(path, pair, key)
    if fmt == "tmx":
        return _iter_tmx(path, pair, key)
    raise UserError(f"{key}: {path} is not a bitext file (expected .tsv or .tmx, maybe {', '.join(COMPRESSION)}; "
                    "line-aligned files go in src and tgt)")


def count_bitext(path: Path, pair: Any, key: str) -> int:
    """Read the whole file once, raising the first problem; the number of pairs kept."""
    return sum(1 for _ in iter_bitext(path, pair, key))


def _iter_tsv(path: Path, pair: Any, key: str) -> Iterator[tuple[str, str]]:
    columns = list(pair.columns) if pair.columns is not None else None
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    _, what = utf8_problem(raw, exc, 0)
                    raise UserError(f"{key}: {path}: line {number}: {what} (expected UTF-8 text)") from None
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                if "\x00" in line:
                    raise UserError(f"{key}: {path}: line {number}: NUL byte at column {line.index(chr(0)) + 1} "
                                    "(expected text; is it a binary file?)")
                fields = line.split("\t")
                if columns is None:  # the first line decides: src, tgt[, score]
                    columns = ["src", "tgt", "score"][: max(2, min(3, len(fields)))]
                if len(fields) != len(columns):
                    raise UserError(f"{key}: {path}: line {number}: {len(fields)} tab-separated field(s), expected "
                                    f"{len(columns)} ({', '.join(columns)})")
                row = dict(zip(columns, fields))
                if "score" in row:
                    try:
                        score = float(row["score"])
                    except ValueError:
                        raise UserError(f"{key}: {path}: line {number}: score {row['score'][:30]!r} is not a number "
                                        f"(columns: {', '.join(columns)})") from None
                    if pair.min_score is not None and score < pair.min_score:
                        continue
                elif pair.min_score is not None:
                    raise UserError(f"{key}: {path}: line {number}: no score column for min_score "
                                    "(expected src<TAB>tgt<TAB>score, or name the columns)")
                yield row["src"], row["tgt"]
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _lang_matches(code: str, wanted: str) -> bool:
    code, wanted = code.lower().replace("_", "-"), wanted.lower().replace("_", "-")
    return code == wanted or code.startswith(wanted + "-")


class _TmxReader:
    """Expat handlers collecting ``<seg>`` texts per ``<tuv>`` language of each ``<tu>``."""

    def __init__(self, pair: Any, key: str, path: Path) -> None:
        self.pair, self.key, self.path = pair, key, path
        self.parser = expat.ParserCreate(namespace_separator=" ")
        self.parser.StartElementHandler = self.start
        self.parser.EndElementHandler = self.end
        self.parser.CharacterDataHandler = self.text
        self.ready: list[tuple[str, str]] = []
        self.unit: dict[str, str] | None = None
        self.unit_line = 0
        self.lang: str | None = None
        self.seg: list[str] | None = None

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = name.rsplit(" ", 1)[-1]
        if local == "tu":
            self.unit, self.unit_line = {}, self.parser.CurrentLineNumber
        elif local == "tuv" and self.unit is not None:
            self.lang = attrs.get(_XML_LANG) or attrs.get("lang") or attrs.get("xml:lang")
        elif local == "seg" and self.lang is not None:
            self.seg = []

    def text(self, data: str) -> None:
        if self.seg is not None:
            self.seg.append(data)

    def end(self, name: str) -> None:
        local = name.rsplit(" ", 1)[-1]
        if local == "seg" and self.seg is not None and self.unit is not None and self.lang is not None:
            self.unit[self.lang] = "".join(self.seg)
            self.seg = None
        elif local == "tuv":
            self.lang = None
        elif local == "tu" and self.unit is not None:
            sides = []
            for wanted in (self.pair.src_lang, self.pair.tgt_lang):
                found = [text for code, text in self.unit.items() if _lang_matches(code, wanted)]
                if not found:
                    have = ", ".join(sorted(self.unit)) or "none"
                    raise UserError(f"{self.key}: {self.path}: line {self.unit_line}: <tu> has no {wanted!r} segment "
                                    f"(languages: {have}; expected both {self.pair.src_lang!r} and "
                                    f"{self.pair.tgt_lang!r})")
                sides.append(found[0])
            self.ready.append((sides[0], sides[1]))
            self.unit = None


def _iter_tmx(path: Path, pair: Any, key: str) -> Iterator[tuple[str, str]]:
    reader = _TmxReader(pair, key, path)
    try:
        with open_binary(path) as handle:
            while True:
                block = handle.read(_CHUNK)
                try:
                    reader.parser.Parse(block, not block)
                except expat.ExpatError as exc:
                    raise UserError(f"{key}: {path}: line {exc.lineno}: {expat.ErrorString(exc.code)} at column "
                                    f"{exc.offset + 1} (expected TMX: UTF-8 XML)") from None
                yield from reader.ready
                reader.ready.clear()
                if not block:
                    return
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise UserError(f"{key}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
