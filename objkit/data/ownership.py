"""What objkit wrote, so that it removes or replaces nothing else.

Every folder objkit writes into holds a manifest, ``.objkit-owned.json``: the names of the
entries (files or folders) in that folder that objkit wrote, and which command wrote them.
objkit removes or replaces an entry only when the manifest of its folder names it, or when the
entry is a folder whose own manifest says objkit wrote all of it. Anything else in the way is a
:class:`~objkit.contract.errors.UserError` (one line naming it, exit 2) raised before anything is touched.

The building blocks:

- :func:`claim` records entries objkit has just written (atomically: the manifest is never half
  written);
- :func:`check_replaceable` refuses a path objkit cannot prove it wrote;
- :func:`remove_owned` removes such a path after the check;
- :func:`write_folder` builds a whole output folder in a private temporary sibling and renames it
  into place, replacing an earlier folder only when objkit wrote all of it;
- :func:`write_file` writes one file (temporary file, rename) where nothing but an earlier file
  objkit wrote stands, and records it;
- :func:`follow_umask` gives what a library wrote with a fixed mode (safetensors: 0600) the
  modes the umask asks for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from objkit.contract.errors import UserError

MANIFEST = ".objkit-owned.json"

__all__ = [
    "MANIFEST", "check_replaceable", "claim", "follow_umask", "foreign_entries", "is_owned", "owned_entries",
    "remove_owned", "unclaim", "write_file", "write_folder", "write_report",
]


def owned_entries(folder: Path) -> dict[str, str]:
    """``{entry name: writer}`` from ``folder``'s manifest (empty when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {str(k): str(v) for k, v in entries.items() if isinstance(k, str) and "/" not in k and k not in ("", ".", "..")}


def claim(folder: Path, names: Iterable[str], writer: str) -> None:
    """Record that ``writer`` (e.g. ``"objkit run"``) wrote ``folder/NAME`` for each name."""
    folder = Path(folder)
    entries = owned_entries(folder)
    new = {name: writer for name in names}
    for name in new:
        if "/" in name or name in ("", ".", "..", MANIFEST):
            raise ValueError(f"claim: {name!r} is not an entry name of {folder}")
    if all(entries.get(k) == v for k, v in new.items()) and (folder / MANIFEST).is_file():
        return
    entries.update(new)
    _write_manifest(folder, entries)


def unclaim(folder: Path, names: Iterable[str]) -> None:
    """Forget ``folder/NAME`` (objkit removed it): a later file of that name is not objkit's."""
    folder = Path(folder)
    entries = owned_entries(folder)
    if any(name in entries for name in names):
        _write_manifest(folder, {k: v for k, v in entries.items() if k not in set(names)})


def _write_manifest(folder: Path, entries: dict[str, str]) -> None:
    payload = json.dumps({"written_by": "objkit", "entries": dict(sorted(entries.items()))}, indent=1) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=MANIFEST + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def follow_umask(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open``/``mkdir`` would: files
    ``0666`` (``0777`` where executable) and folders ``0777``, less the umask."""
    root = Path(root)
    files, folders = _umask_mode(0o666), _umask_mode(0o777)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        os.chmod(path, folders if path.is_dir() or mode & 0o111 else files)


def foreign_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that objkit cannot prove it wrote (sorted; the manifest itself excluded)."""
    folder = Path(folder)
    owned = owned_entries(folder)
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in owned)


DIGEST = "; sha256="  # a writer recorded with the file's hash: objkit's only while unchanged


def _digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _changed(path: Path, writer: str) -> bool:
    """A file recorded with its hash (``write_file(..., digest=True)``) that no longer has it."""
    if DIGEST not in writer:
        return False
    try:
        return not path.is_file() or path.is_symlink() or _digest(path) != writer.split(DIGEST, 1)[1]
    except OSError:
        return True


def is_owned(path: Path) -> bool:
    """``path`` is named by its parent folder's manifest (and, where recorded with its hash, is
    unchanged), or is a folder all of whose entries its own manifest names (a folder objkit
    wrote as a whole). A folder with a manifest of its own is owned only while that manifest names
    everything in it, whatever its parent records: a user's file put into an export is theirs."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file():
        return not foreign_entries(path)
    writer = owned_entries(path.parent).get(path.name)
    if writer is not None:
        return not _changed(path, writer)
    return False


def check_replaceable(path: Path, what: str) -> None:
    """Raise a one-line :class:`UserError` unless ``path`` is absent, an empty folder, or owned."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        try:
            if not any(path.iterdir()):
                return
        except OSError:
            pass
    if is_owned(path):
        return
    detail = ""
    if path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file():
        foreign = foreign_entries(path)
        detail = f" ({foreign[0]}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''} not written by objkit)"
    elif path.name in owned_entries(path.parent):
        raise UserError(f"{path}: changed since objkit wrote it; objkit replaces only what it wrote "
                        f"(move it away or choose another {what})")
    raise UserError(
        f"{path}: exists and objkit did not write it{detail}; objkit replaces only what it wrote "
        f"(move it away or choose another {what})"
    )


def remove_owned(path: Path) -> None:
    """Remove ``path`` after :func:`check_replaceable` (a no-op when absent)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def write_folder(target: Path, build: Callable[[Path], None], writer: str, what: str = "-o") -> Path:
    """Build ``target`` as a whole: ``build(tmp)`` fills a private temporary sibling, which gets a
    manifest naming all it holds and is renamed to ``target``. An existing ``target`` is replaced
    only when objkit wrote it (or it is empty); otherwise nothing is touched and a one-line error
    names it. A failed build leaves ``target`` as it was."""
    target = Path(target)
    check_replaceable(target, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".objkit-tmp", dir=target.parent))
    os.chmod(tmp, _umask_mode(0o777))
    old: Path | None = None
    try:
        build(tmp)
        follow_umask(tmp)
        claim(tmp, [p.name for p in tmp.iterdir() if p.name != MANIFEST], writer)
        if os.path.lexists(target):
            check_replaceable(target, what)  # again: it may have changed while we built
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".objkit-old", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(target):
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def write_file(path: Path, data: str | bytes, writer: str, what: str, digest: bool = False) -> Path:
    """Write ``path`` whole (a temporary file in its folder, fsync, rename) and record it in the
    folder's manifest. An existing ``path`` is replaced only when objkit wrote it; otherwise
    nothing is touched and a one-line error names it (``what``: the option that chose it).
    ``digest``: record the content's hash too, so that once the user edits the file it is
    theirs (for files meant to be edited: a report, a plugin skeleton)."""
    path = Path(path)
    check_replaceable(path, what)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".objkit-tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode(0o666))
        claim(folder, [path.name], f"{writer}{DIGEST}{_digest(Path(tmp))}" if digest else writer)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(path: Path, text: str, writer: str, option: str) -> Path:
    """A command's output file (``eval --markdown``, ``--json`` to a file): :func:`write_file`
    with the content's hash recorded (a report the user edited is theirs), any ``OSError`` as
    one line naming ``option``."""
    try:
        return write_file(path, text, writer, option, digest=True)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write ({exc.strerror or exc})") from None
