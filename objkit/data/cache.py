"""A tokenized cache shared by ranks and runs (``objkit prepare``, ``data.cache_dir``).

Each enabled objective whose source is map-style gets one entry, ``CACHE_DIR/<objective>/``:
``rows/`` (the objective-ready rows: tokenized, and packed where the objective packs, as
``datasets`` Arrow files written by ``save_to_disk``) and ``key.json``, what determined them:
the source's definition, its files with their sizes and mtimes, the tokenizer (a hash of its
vocabulary and pipeline), ``model.max_length``, the objective's plugin, version and keys, and
the versions of objkit and ``datasets``. An entry whose key differs from the recipe's is never
used: :func:`open_entry` says which key differs. Entries are written into ``NAME.tmp`` and
renamed into place, so a killed build leaves no half-written entry.

Streamed sources are not cached: they are read as they are trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import datasets

from objkit.errors import UserError

CACHE_FORMAT = 1
KEY_FILE = "key.json"


def cores() -> int:
    """CPU cores this process may use (tokenization's ``num_proc``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 (16 hex digits) of what makes a tokenizer's ids: its serialized pipeline and
    vocabulary (fast tokenizers) or its vocabulary and class (slow ones)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def entry_key(*, source: dict[str, Any], files: list[list[Any]], tokenizer: str, max_length: int,
              prepare: dict[str, Any]) -> dict[str, Any]:
    """The cache key of one objective's rows (JSON-serialisable)."""
    from objkit import __version__

    source = {k: v for k, v in source.items() if k != "sampling_alpha"}  # sampling does not change the rows
    return {"format": CACHE_FORMAT, "objkit": __version__, "datasets": datasets.__version__, "source": source,
            "files": files, "tokenizer": tokenizer, "max_length": max_length, "prepare": prepare}


def first_difference(old: Any, new: Any, path: str = "") -> str | None:
    """``"files[2]: [...] in the cache, [...] now"`` for the first key that differs, else None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old or k not in new:
                return f"{sub}: {'not set' if k not in old else _short(old[k])} in the cache, " \
                       f"{'not set' if k not in new else _short(new[k])} now"
            found = first_difference(old[k], new[k], sub)
            if found:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            if i >= len(old) or i >= len(new):
                return f"{path}[{i}]: {'not set' if i >= len(old) else _short(old[i])} in the cache, " \
                       f"{'not set' if i >= len(new) else _short(new[i])} now"
            found = first_difference(old[i], new[i], f"{path}[{i}]")
            if found:
                return found
        return None
    return None if old == new else f"{path}: {_short(old)} in the cache, {_short(new)} now"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def read_key(entry: Path) -> dict[str, Any] | None:
    try:
        return json.loads((entry / KEY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UserError(f"data.cache_dir: {entry / KEY_FILE} is unreadable ({exc}); remove {entry} or run "
                        "objkit prepare again") from None


def open_entry(cache_dir: Path, name: str, key: dict[str, Any]) -> datasets.Dataset | None:
    """The cached rows of objective ``name`` when their key is ``key``; None when there is no
    entry. An entry built from other inputs is refused with one line naming the key."""
    entry = Path(cache_dir) / name
    old = read_key(entry)
    if old is None:
        return None
    difference = first_difference(old, key)
    if difference is not None:
        raise UserError(f"data.cache_dir: {entry} was built from other inputs ({difference}); run "
                        f"`objkit prepare RECIPE -o {cache_dir}` again, or remove {entry} to let the run rebuild it")
    try:
        return datasets.load_from_disk(str(entry / "rows"))
    except Exception as exc:  # a damaged entry: never used
        raise UserError(f"data.cache_dir: {entry}/rows cannot be read ({str(exc).splitlines()[0][:120]}); "
                        f"remove {entry} or run objkit prepare again") from None


def write_entry(cache_dir: Path, name: str, key: dict[str, Any], rows: datasets.Dataset,
                num_proc: int | None = None) -> datasets.Dataset:
    """Write ``rows`` as objective ``name``'s entry (replacing any), atomically; the rows read back."""
    entry = Path(cache_dir) / name
    tmp, old = entry.with_name(entry.name + ".tmp"), entry.with_name(entry.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows.save_to_disk(str(tmp / "rows"), num_proc=num_proc if num_proc and num_proc > 1 and len(rows) > 100_000
                      else None)
    (tmp / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")
    if entry.exists():
        os.replace(entry, old)
    os.replace(tmp, entry)
    shutil.rmtree(old, ignore_errors=True)
    return datasets.load_from_disk(str(entry / "rows"))


def files_unchanged(cache_dir: Path, names: list[str], source: dict[str, Any], files: list[list[Any]]) -> bool:
    """True when every one of ``names`` has an entry built from this source definition and these
    very files (sizes and mtimes): the files were checked when it was built."""
    want = {k: v for k, v in source.items() if k != "sampling_alpha"}
    for name in names:
        key = read_key(Path(cache_dir) / name)
        if key is None or key.get("source") != want or key.get("files") != files:
            return False
    return bool(names)


def count_tokens(rows: datasets.Dataset) -> int:
    """Tokens in tokenized rows (``input_ids``, or ``src_ids`` + ``tgt_ids``), from Arrow offsets."""
    import pyarrow.compute as pc

    total = 0
    table = rows.with_format("arrow")
    for column in ("input_ids", "src_ids", "tgt_ids"):
        if column in rows.column_names:
            total += int(pc.sum(pc.list_value_length(table[column])).as_py() or 0)
    return total


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
