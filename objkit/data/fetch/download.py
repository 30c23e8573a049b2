"""Downloads (urllib: the proxy variables apply) with a progress bar and sha256 checks, and the
output folder that appears whole or not at all.

Everything is written into a hidden folder beside ``DIR`` and renamed to ``DIR`` at the end; on
any failure the hidden folder is removed and ``DIR`` is as it was. ``DIR`` must be new, empty, or
a folder this command wrote before (its ``.objkit-data.json`` lists every file in it): objkit never
replaces a folder it cannot prove it wrote.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from objkit.contract.errors import UserError, first_line
from objkit.data.fetch.catalog import Spec

MARKER = ".objkit-data.json"
TIMEOUT_S = 30.0
_CHUNK = 1 << 16


def _hint(spec: Spec, dest: Path) -> str:
    return (f"to place the files by hand, {spec.by_hand.replace('DIR', str(dest))} ({spec.layout}), or set "
            f"{spec.url_variable} to a mirror")


class Downloader:
    """Fetches ``spec.url()/relative`` into files under ``work`` (a folder of the temporary output),
    one progress bar for the whole data set."""

    def __init__(self, spec: Spec, dest: Path, work: Path) -> None:
        self.spec, self.dest, self.work = spec, dest, work
        self.bar = None  # shown from the first byte on: an unreachable source prints its one line only
        self.files = 0

    def _progress(self, count: int, name: str) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=self.spec.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.2)
        self.bar.set_postfix_str(name, refresh=False)
        self.bar.update(count)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.files} file{'s' * (self.files != 1)}", refresh=False)
            self.bar.close()

    def fetch(self, relative: str, into: Path, sha256: str | None = None) -> Path:
        """Download one file to ``into`` (checking ``sha256`` when given) and return ``into``."""
        url = f"{self.spec.url()}/{relative}"
        into.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "objkit-data-get"})
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, into.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    self._progress(len(chunk), relative.rsplit("/", 1)[-1])
        except urllib.error.HTTPError as err:
            why = "not found" if err.code == 404 else first_line(err)
            raise UserError(f"cannot download {url} (HTTP {err.code}: {why}); {_hint(self.spec, self.dest)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
            if isinstance(err, OSError) and err.filename:  # the local side: cannot write
                raise UserError(f"{err.filename}: cannot write ({err.strerror or err})") from None
            # refused, unknown host, timeout, reset, cut short, not a URL
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            why = reason if isinstance(reason, str) else (getattr(reason, "strerror", None) or first_line(reason))
            raise UserError(f"cannot download {url} ({why}); {_hint(self.spec, self.dest)}") from None
        self.files += 1
        if sha256 is not None and digest.hexdigest() != sha256:
            raise UserError(f"{url}: sha256 {digest.hexdigest()}, expected {sha256} (changed upstream or damaged "
                            f"in transit); nothing was written to {self.dest}")
        return into

    def text(self, relative: str, sha256: str | None = None) -> str:
        """A downloaded UTF-8 text file's content (BOM and CR line ends removed); the file is not kept."""
        path = self.fetch(relative, self.work / ".downloads" / relative.replace("/", "__"), sha256)
        try:
            return path.read_bytes().decode("utf-8-sig").replace("\r\n", "\n")
        except UnicodeDecodeError as err:
            raise UserError(f"{self.spec.url()}/{relative}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        finally:
            path.unlink()


# ----------------------------------------------------------------------------- the output folder
def written_by_objkit(dest: Path) -> dict | None:
    """The marker of a folder ``objkit data get`` wrote, if ``dest`` is one and holds nothing else."""
    try:
        marker = json.loads((dest / MARKER).read_text(encoding="utf-8"))
        listed = set(marker["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    found = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if not p.is_dir()}
    return marker if found <= listed else None


def check_destination(dest: Path, name: str) -> None:
    """Refuse, before anything is downloaded, a ``DIR`` that would be unsafe to fill."""
    if dest.exists() and not dest.is_dir():
        raise UserError(f"-o {dest}: exists and is not a directory (expected a new or empty directory)")
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    marker = written_by_objkit(dest)
    if marker is None:
        first = sorted(p.name for p in dest.iterdir())[0]
        raise UserError(f"-o {dest}: not empty (holds {first!r}) and not written by `objkit data get`; "
                        f"choose a new or empty directory (nothing was changed)")
    if marker.get("dataset") != name:
        raise UserError(f"-o {dest}: holds data set {marker.get('dataset')!r} (written by `objkit data get`), not "
                        f"{name!r}; choose another directory (nothing was changed)")


@contextlib.contextmanager
def staged(dest: Path, name: str) -> Iterator[Path]:
    """A hidden temporary folder beside ``dest``; moved to ``dest`` when the block succeeds, removed
    when it fails (``dest`` untouched)."""
    check_destination(dest, name)
    dest = Path(os.path.abspath(dest))  # "-o ." has a name and a parent too
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.objkit-partial-", dir=dest.parent))
    try:
        yield work
        shutil.rmtree(work / ".downloads", ignore_errors=True)
        publish(work, dest, name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def write_marker(work: Path, spec: Spec, languages: tuple[str, ...], source: str) -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        objkit_version = version("objkit")
    except PackageNotFoundError:
        objkit_version = "unknown"
    files = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file() and p.name != MARKER)
    marker = {"dataset": spec.name, "source": source, "languages": list(languages), "files": files,
              "fetched": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "objkit": objkit_version}
    (work / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def publish(work: Path, dest: Path, name: str) -> None:
    """Rename ``work`` to ``dest``: into a new or empty ``dest``, or in place of one this command
    wrote (checked again now; the old folder is removed only after the new one is in place)."""
    check_destination(dest, name)
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if not dest.exists():
        os.rename(work, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.objkit-old-", dir=dest.parent))
    os.rename(dest, old / dest.name)
    try:
        os.rename(work, dest)
    except OSError:
        os.rename(old / dest.name, dest)
        raise
    shutil.rmtree(old)
