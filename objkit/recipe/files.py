"""Recipe files: reading one (TOML, ``extends`` followed and deep-merged) and finding the
recipes objkit ships. Light on purpose (no torch, no pydantic): ``objkit recipes`` lists
recipes through it.

The recipes objkit ships: the TOML files of the repository's ``recipes/`` folder, installed
as the package ``objkit_recipes`` (pyproject.toml's package-dir) and read through
:mod:`importlib.resources`, so a wheel install finds them by name outside any checkout.

A recipe argument (``objkit run ARG``, ``objkit validate ARG``) or an ``extends`` value is a
file when such a file exists (a path wins), else the name of a packaged recipe
(``infoxlm_base`` or ``infoxlm_base.toml``); anything else is a one-line error listing the
close names. Validation is :mod:`objkit.recipe.loader`'s.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from objkit.contract.errors import UserError, one_line

PACKAGE = "objkit_recipes"


def recipes_dir() -> Path:
    """The folder holding the packaged ``*.toml`` recipes."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        raise UserError(f"the packaged recipes ({PACKAGE}) are not installed; reinstall objkit") from None
    if not isinstance(root, Path):  # e.g. a zipped install: not supported
        raise UserError(f"the packaged recipes ({PACKAGE}) are not a folder on disk ({root}); install objkit unzipped")
    return root


def packaged_names() -> list[str]:
    """Every packaged recipe's name (its file name without ``.toml``), sorted."""
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def packaged_path(name: str) -> Path | None:
    """The packaged recipe ``name`` (``NAME`` or ``NAME.toml``, no folder part), or None."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    stem = name.removesuffix(".toml")
    path = recipes_dir() / f"{stem}.toml"
    return path if path.is_file() else None


def close_names(name: str, n: int = 3) -> str:
    """``did you mean "a", "b"? `` (or nothing) for a name that is not a packaged recipe."""
    stem = Path(name).name.removesuffix(".toml")
    close = difflib.get_close_matches(stem, packaged_names(), n=n, cutoff=0.5)
    quoted = ", ".join(f'"{c}"' for c in close)
    return f"did you mean {quoted}? " if close else ""


def looks_like_name(text: str) -> bool:
    """A bare name (no folder, no ``.toml``): what ``objkit run NAME`` means by a packaged recipe."""
    return bool(text) and not any(c in text for c in "/\\") and not text.endswith(".toml")


def resolve_recipe(arg: str | Path) -> tuple[Path, str]:
    """``(file, label)`` for a recipe argument: an existing file (label: its path), else a
    packaged recipe (label: its name). Neither: a one-line :class:`UserError`, exit 2."""
    text = str(arg)
    path = Path(arg)
    try:
        exists = path.exists()
    except (OSError, ValueError):  # an impossible path (NUL byte, too long): the reader reports it
        return path, str(path)
    if exists:
        return path, str(path)
    packaged = packaged_path(text)
    if packaged is not None:
        return packaged, text.removesuffix(".toml")
    if looks_like_name(text):
        raise UserError(one_line(
            f"{text}: no such file and no packaged recipe of that name; {close_names(text)}"
            f"objkit recipes lists the {len(packaged_names())} packaged recipes"))
    stem = path.name.removesuffix(".toml")
    if packaged_path(stem) is not None:
        raise UserError(one_line(
            f"{text}: file not found; objkit ships a recipe named {stem!r}: give the name alone "
            f"({stem}) to use it, or objkit recipes cp {stem} FILE to edit a copy"))
    return path, str(path)  # the reader's "file not found", as for any path


class RecipeError(UserError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(one_line(f"{source}: {p}") for p in problems))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_toml(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    label = str(path)
    try:
        resolved = path.resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
        raise RecipeError(label, [f"cannot read: {exc}"]) from None
    if resolved in chain:
        raise RecipeError(label, [f"extends: cycle through {' -> '.join(str(p) for p in chain)}"])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(label, ["file not found"]) from None
    except IsADirectoryError:
        raise RecipeError(label, ["is a directory, not a recipe file"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(label, [f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(label, [f"not valid TOML: {exc}"]) from None
    except (OSError, ValueError) as exc:  # unreadable, or an impossible path (e.g. a NUL byte)
        raise RecipeError(label, [f"cannot read: {getattr(exc, 'strerror', None) or exc}"]) from None
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise RecipeError(label, [f"extends: expected a relative path or a packaged recipe's name (got {parent!r})"])
    target = path.parent / parent
    if not target.exists():  # a path relative to this file wins; else a packaged recipe's name
        target = packaged_path(parent) or target
    if not target.exists():
        hint = f"; {close_names(parent)}objkit recipes lists the packaged recipes" if looks_like_name(parent) else ""
        raise RecipeError(label, [f"extends: {parent!r} not found (looked for {target}; paths are relative to this "
                                  f"file, a bare name is a packaged recipe){hint}" if hint else
                                  f"extends: {parent!r} not found (looked for {target}; paths are relative to this file)"])
    base = read_toml(target, chain + (resolved,))
    return deep_merge(base, raw)
