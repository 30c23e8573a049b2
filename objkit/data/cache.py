"""A tokenized cache shared by ranks and runs (``objkit prepare``, ``data.cache_dir``).

Each enabled objective whose source is map-style gets one entry, ``CACHE_DIR/<objective>/``:
``rows/`` (the objective-ready rows: tokenized, and packed where the objective packs, as
``datasets`` Arrow files written by ``save_to_disk``) and ``key.json``, what determined them:
the source's definition, its files with their sizes and SHA-256 of their content, the tokenizer
(a hash of its vocabulary and pipeline), ``model.max_length``, the objective's plugin, version
and keys, and the versions of objkit and ``datasets``. An entry whose key differs from the
recipe's is never used: :func:`open_entry` says which key differs, a data file that changed in
words. A file is hashed again only when its size, mtime, ctime or inode changed since it was
last hashed (``CACHE_DIR/.objkit-hashes.json``): an edit that restores size and mtime
(``cp -p``, ``touch -r``) still changes the ctime, which no program can set back.

An entry is built holding ``CACHE_DIR/.NAME.lock`` (a second ``objkit prepare`` or run waits,
saying who holds it, then finds the entry built) in a private temporary folder renamed into
place (:func:`objkit.data.ownership.write_folder`), so a killed build leaves no half-written entry,
and an existing ``NAME`` folder is replaced only when objkit wrote it.

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

from objkit.data import ownership
from objkit.contract.errors import UserError
from objkit.data.runlock import hold_lock

CACHE_FORMAT = 2  # 2: files keyed by content (SHA-256), not mtime
KEY_FILE = "key.json"
HASHES = ".objkit-hashes.json"
WRITER = "objkit prepare"


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
    difference = describe_difference(old, key)
    if difference is not None:
        raise UserError(f"data.cache_dir: {entry} was built from other inputs ({difference}); run "
                        f"`objkit prepare RECIPE -o {cache_dir}` again, or remove {entry} to let the run rebuild it")
    try:
        return datasets.load_from_disk(str(entry / "rows"))
    except Exception as exc:  # a damaged entry: never used
        raise UserError(f"data.cache_dir: {entry}/rows cannot be read ({str(exc).splitlines()[0][:120]}); "
                        f"remove {entry} or run objkit prepare again") from None


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two keys, in words for the data files (which file changed, was
    added or is no longer read), else as :func:`first_difference` says it."""
    if old.get("format") != new.get("format"):
        return f"an earlier cache format ({old.get('format')}; now {new.get('format')})"
    old_files, new_files = old.get("files"), new.get("files")
    if isinstance(old_files, list) and isinstance(new_files, list) and old_files != new_files:
        before = {str(f[0]): f for f in old_files if isinstance(f, list) and f}
        now = {str(f[0]): f for f in new_files if isinstance(f, list) and f}
        for path, entry in now.items():
            if path not in before:
                return f"data file {path} was not read when the cache was built"
            if before[path] != entry:
                size = "" if before[path][1:2] == entry[1:2] else f", {before[path][1]} bytes then, {entry[1]} now"
                return f"data file {path} changed since the cache was built (its content differs{size})"
        for path in before:
            if path not in now:
                return f"data file {path} was read when the cache was built and is not read now"
    return first_difference(old, new)


def write_entry(cache_dir: Path, name: str, key: dict[str, Any], rows: datasets.Dataset,
                num_proc: int | None = None) -> datasets.Dataset:
    """Write ``rows`` as objective ``name``'s entry atomically (a private temporary folder,
    renamed), replacing an entry objkit wrote (never a folder of the user's); the rows read back.
    Call it holding :func:`entry_lock`."""
    entry = Path(cache_dir) / name
    _adopt_legacy(entry)

    def build(tmp: Path) -> None:
        rows.save_to_disk(str(tmp / "rows"), num_proc=num_proc if num_proc and num_proc > 1 and len(rows) > 100_000
                          else None)
        (tmp / KEY_FILE).write_text(json.dumps(key, indent=1) + "\n", encoding="utf-8")

    ownership.write_folder(entry, build, WRITER, "-o (the cache directory)")
    if _legacy_tmp(entry):
        shutil.rmtree(entry.with_name(entry.name + ".tmp"), ignore_errors=True)
    return datasets.load_from_disk(str(entry / "rows"))


def _adopt_legacy(entry: Path) -> None:
    """An entry written before manifests (``key.json`` of objkit's and ``rows/``, nothing else)
    is objkit's: record it so it may be replaced."""
    if not entry.is_dir() or (entry / ownership.MANIFEST).exists():
        return
    names = {p.name for p in entry.iterdir()}
    key = read_key(entry) if KEY_FILE in names else None
    if names <= {KEY_FILE, "rows"} and isinstance(key, dict) and "format" in key and "objkit" in key:
        ownership.claim(entry, names, WRITER)


def _legacy_tmp(entry: Path) -> bool:
    """``NAME.tmp`` left by a killed build of an earlier objkit (its key.json and rows only)."""
    tmp = entry.with_name(entry.name + ".tmp")
    return tmp.is_dir() and {p.name for p in tmp.iterdir()} <= {KEY_FILE, "rows"}


def entry_lock(cache_dir: Path, name: str) -> Any:
    """``with entry_lock(cache_dir, name):`` -- hold objective ``name``'s entry while building it;
    a second builder waits (saying who holds it)."""
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    lock = Path(cache_dir) / f".{name}.lock"
    return hold_lock(lock, f"data.cache_dir: {Path(cache_dir) / name} is being built by {{holder}}; waiting for it")


def content_files(files: list[list[Any]], cache_dir: Path | None) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` rows (``source_files``) as ``[path, size, "sha256:..."]`` for the
    local files among them (others, such as a hub id, unchanged). A file is hashed again only when
    its size, mtime, ctime or inode changed since ``cache_dir``'s record of it."""
    memo_path = Path(cache_dir) / HASHES if cache_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_path is not None:
        try:
            memo = json.loads(memo_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}
    out, changed = [], False
    for row in files:
        path = Path(str(row[0])) if row else None
        if path is None or len(row) != 3 or not path.is_absolute() or not path.is_file():
            out.append(row)
            continue
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = memo.get(str(path))
        if isinstance(known, list) and len(known) == 2 and known[0] == stamp:
            digest = known[1]
        else:
            digest = "sha256:" + file_sha256(path)
            memo[str(path)] = [stamp, digest]
            changed = True
        out.append([str(path), st.st_size, digest])
    if changed and memo_path is not None and memo_path.parent.is_dir():
        try:
            ownership.write_file(memo_path, json.dumps(memo, indent=0) + "\n", WRITER, "-o (the cache directory)")
        except (OSError, UserError):
            pass  # a record to save time only
    return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def files_unchanged(cache_dir: Path, names: list[str], source: dict[str, Any], files: list[list[Any]]) -> bool:
    """True when every one of ``names`` has an entry built from this source definition and these
    very files (sizes and content): the files were checked when it was built."""
    want = {k: v for k, v in source.items() if k != "sampling_alpha"}
    keyed: list[list[Any]] | None = None
    for name in names:
        key = read_key(Path(cache_dir) / name)
        if key is None or key.get("format") != CACHE_FORMAT or key.get("source") != want:
            return False
        keyed = content_files(files, cache_dir) if keyed is None else keyed
        if key.get("files") != keyed:
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
