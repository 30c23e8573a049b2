"""The package list for setuptools, derived rather than written by hand; everything else is
in pyproject.toml. objkit's packages are found on disk (a new subpackage cannot be left out
of the wheel), and each folder pyproject.toml's ``[tool.setuptools.package-dir]`` installs
under another name (``plugins/`` -> ``objkit_plugins``, ``recipes/`` -> ``objkit_recipes``)
is added with its subpackages. tests/test_packaging.py checks the result against the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir mapping: installed name -> folder."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def packages() -> list[str]:
    found = find_packages(str(ROOT), include=["objkit", "objkit.*"])
    for name, folder in package_dirs().items():
        found += [name] + [f"{name}.{sub}" for sub in find_packages(str(ROOT / folder))]
    return found


if __name__ == "__main__":
    setup(packages=packages())
