"""Packaging, without building: setup.py's package discovery finds every package folder of the
tree (objkit/distributed was once left out of a hand-written list, and a non-editable install
failed at import), every recipe is package data, the version moves with the plugin API, and
the release files are there. .ci/wheel_check.sh builds and installs the real wheel."""

from __future__ import annotations

import fnmatch
import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _setup_module():
    spec = importlib.util.spec_from_file_location("objkit_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def _python_folders(folder: Path) -> list[Path]:
    """``folder`` and every folder below it holding a .py file (caches left out)."""
    return sorted({p.parent for p in folder.rglob("*.py") if "__pycache__" not in p.parts})


def _installed_name(folder: Path, mapping: dict[str, str]) -> str:
    rel = folder.relative_to(ROOT).parts
    for name, source in mapping.items():
        if rel[: len(Path(source).parts)] == Path(source).parts:
            return ".".join([name, *rel[len(Path(source).parts):]])
    return ".".join(rel)


def test_discovery_finds_every_package_folder():
    packages = set(_setup_module().packages())
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    assert mapping == {"objkit_plugins": "plugins", "objkit_recipes": "recipes"}
    folders = _python_folders(ROOT / "objkit") + [f for source in mapping.values()
                                                  for f in _python_folders(ROOT / source)]
    expected = {_installed_name(f, mapping): f for f in folders}
    assert "objkit.distributed" in expected and "objkit_plugins" in expected and "objkit_recipes" in expected
    missing = {name: str(f.relative_to(ROOT)) for name, f in expected.items() if name not in packages}
    assert not missing, f"left out of the wheel (no __init__.py?): {missing}"
    assert packages == set(expected), f"packages without a folder: {packages - set(expected)}"
    assert "packages" not in PYPROJECT["tool"]["setuptools"]  # derived in setup.py, not listed by hand


def test_every_recipe_is_package_data_and_read_through_the_package():
    from objkit.recipe.files import packaged_names, recipes_dir

    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["objkit_recipes"]
    recipes = sorted((ROOT / "recipes").glob("*.toml"))
    assert len(recipes) >= 10
    for recipe in recipes:
        assert any(fnmatch.fnmatch(recipe.name, p) for p in patterns), f"{recipe.name} is not package data"
    # the sdist (python -m build makes the wheel from it) carries them too
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8")
    assert "recursive-include recipes *.toml" in manifest
    for name in ("LICENSE", "CHANGELOG.md", "CITATION.cff"):
        assert (ROOT / name).is_file() and name in manifest
    # what `objkit run NAME` finds: the package objkit_recipes, by importlib.resources
    assert packaged_names() == [p.stem for p in recipes]
    assert recipes_dir().resolve() == (ROOT / "recipes").resolve()  # this checkout's editable install


def test_version_moves_with_the_plugin_api():
    """objkit 0.(N+1).x provides plugin API 1.N: a new API minor without a version bump fails."""
    from objkit import PLUGIN_API_VERSION

    major, minor = (int(x) for x in PLUGIN_API_VERSION.split("."))
    version = PYPROJECT["project"]["version"]
    import objkit

    assert objkit.__version__ == version  # what a model card and versions.json record
    assert major == 1 and version.split(".")[:2] == ["0", str(minor + 1)], (version, PLUGIN_API_VERSION)
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## [{version}]" in changelog
    for api_minor in range(minor + 1):
        assert f"| 1.{api_minor}        | 0.{api_minor + 1}.0" in changelog
    docs = (ROOT / "docs" / "plugin-api.md").read_text(encoding="utf-8")
    assert f"| 1.{minor} | 0.{minor + 1}.0 |" in docs


def test_release_metadata():
    yaml = pytest.importorskip("yaml")
    project = PYPROJECT["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert {"build", "twine"} <= {dep.split(">")[0].split("=")[0] for dep in project["optional-dependencies"]["dev"]}
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["version"] == project["version"]
    assert {"message", "title", "authors"} <= set(cff)
    paper = cff["references"][0]
    assert paper["title"].startswith("InfoXLM") and paper["year"] == 2021 and paper["authors"][0]["family-names"] == "Chi"
