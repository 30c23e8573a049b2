"""Third-party plugins installed for real: a broken one, a scaffold from ``new-plugin``, the
example distribution. Each runs ``objkit`` in a subprocess, so entry points are discovered
from installed ``.dist-info`` metadata as in a user's environment."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from objkit.contract.hookspecs import PLUGIN_API_VERSION
from tiny_recipes import tiny_recipe

ROOT = Path(__file__).parent.parent

TINY_RECIPE = tiny_recipe(parallel=False) + """
[objectives.mlm]
data = "mono"
[train]
steps = 2
batch_size = 4
lr = 1e-3
log_every = 1
"""


def objkit(*args: str, site: Path | None = None, env: dict[str, str] | None = None, cwd: Path | None = None):
    environ = {**os.environ, **(env or {})}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "objkit", *args], capture_output=True, text=True, check=False, env=environ, cwd=cwd
    )


def fake_distribution(site: Path, dist: str, version: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A real installed distribution as pip would leave it: modules plus a .dist-info with
    METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[objkit]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    )
    for name, source in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(source))


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    fake_distribution(
        site, "objkit-broken-demo", "0.0.1",
        {"objkit_broken_demo": "import objkit_dependency_that_is_not_installed\n"},
        {"broken_demo": "objkit_broken_demo"},
    )
    fake_distribution(
        site, "objkit-future-demo", "3.0.0",
        {"objkit_future_demo": """
            from typing import ClassVar
            import torch
            from objkit import Objective, ObjectiveOutput, hookimpl

            class Future(Objective):
                name: ClassVar[str] = "future_demo"
                plugin_api: ClassVar[str] = "2.0"
                data_kind = "text"
                def collate(self, examples, generator):
                    return {}
                def compute(self, batch, ctx):
                    return ObjectiveOutput(torch.zeros(()), 0)

            @hookimpl
            def objkit_plugins():
                return [Future]
        """},
        {"future_demo": "objkit_future_demo"},
    )
    return site


def test_list_plugins_marks_broken_plugins_and_lists_the_others(broken_site):
    result = objkit("list-plugins", "--json", site=broken_site)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"mlm", "tlm", "xlco"} <= {n for n, r in rows.items() if r["status"] == "ok"}
    broken = rows["broken_demo"]
    assert broken["status"] == "broken" and broken["distribution"] == "objkit-broken-demo" and broken["version"] == "0.0.1"
    assert broken["error"] == "ModuleNotFoundError: No module named 'objkit_dependency_that_is_not_installed'"
    future = rows["future_demo"]
    assert future["status"] == "broken"
    assert '"future_demo" from objkit-future-demo 3.0.0 needs objkit plugin API 2.0' in future["error"]
    assert f"provides plugin API {PLUGIN_API_VERSION}" in future["error"]



def test_run_works_beside_a_broken_plugin(broken_site, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    result = objkit("run", str(recipe), "-o", str(tmp_path / "run"), "--no-progress", site=broken_site)
    assert result.returncode == 0, result.stderr
    assert 'error loading objkit plugin "broken_demo" from objkit-broken-demo 0.0.1' in result.stderr  # warned
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]



# the same installed site, in this process (sys.path), for the cheaper variations
@pytest.fixture
def on_path(broken_site, monkeypatch):
    from objkit.contract.registry import load_registry

    monkeypatch.syspath_prepend(str(broken_site))
    load_registry.cache_clear()
    yield broken_site
    load_registry.cache_clear()


def main(capsys, *argv: str) -> tuple[int, str, str]:
    from objkit.cli import main as cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(list(argv))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_recipe_naming_a_broken_plugin_gets_its_error(on_path, capsys, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE + '[objectives.broken_demo]\ndata = "mono"\n')
    code, _, err = main(capsys, "validate", str(recipe))
    assert code == 2 and "Traceback" not in err
    assert (
        'objectives.broken_demo.plugin: objective plugin "broken_demo" from objkit-broken-demo 0.0.1 failed to load: '
        "ModuleNotFoundError: No module named 'objkit_dependency_that_is_not_installed'"
    ) in err


def test_loading_controls_with_broken_plugins(on_path, capsys, monkeypatch):
    code, out, _ = main(capsys, "list-plugins")
    assert code == 0
    assert 'broken: error loading objkit plugin "broken_demo" from objkit-broken-demo 0.0.1: ModuleNotFoundError' in out
    assert any(line.split()[:2] == ["future_demo", "-"] and line.split()[-1] == "broken" for line in out.splitlines())

    code, out, _ = main(capsys, "--plugin", "no:broken_demo", "--plugin", "no:objkit-future-demo", "list-plugins", "--json")
    statuses = {row["name"]: row["status"] for row in json.loads(out)}
    assert statuses["broken_demo"] == statuses["future_demo"] == "disabled" and statuses["mlm"] == "ok"

    monkeypatch.setenv("OBJKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, out, _ = main(capsys, "list-plugins", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["broken_demo"]["status"] == rows["future_demo"]["status"] == "disabled"
    assert "--plugin broken_demo" in rows["broken_demo"]["reason"] and rows["xlco"]["status"] == "ok"
    code, out, _ = main(capsys, "--plugin", "broken_demo", "list-plugins", "--json")
    statuses = {row["name"]: row["status"] for row in json.loads(out)}
    assert statuses["broken_demo"] == "broken" and statuses["future_demo"] == "disabled"


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="building the scaffold needs setuptools")
def test_new_plugin_scaffold_installs_and_passes_its_tests(tmp_path, capsys):
    plugin = tmp_path / "objkit-scaffold-demo"
    code, out, _ = main(capsys, "new-plugin", "scaffold_demo", "-o", str(plugin))
    assert code == 0 and "wrote 5 files" in out
    assert (plugin / "pyproject.toml").exists() and (plugin / "tests" / "test_scaffold_demo_conformance.py").exists()
    generated = (plugin / "objkit_scaffold_demo" / "objective.py").read_text(encoding="utf-8")
    # masks from each example's sample_seed (rank invariance), not from the per-rank generator
    assert "example_seeds(examples, generator)" in generated and "seeds=seeds)" in generated
    assert "from objkit." not in generated and "import objkit." not in generated
    (plugin / "README.md").write_text("my own notes\n")  # a file the user changed is never replaced
    code, _, err = main(capsys, "new-plugin", "scaffold_demo", "-o", str(plugin))
    assert code == 2 and "README.md: changed since objkit wrote it" in err
    code, _, err = main(capsys, "new-plugin", "mlm", "-o", str(tmp_path / "x"))
    assert code == 2 and 'plugin name "mlm" is taken by objkit' in err
    code, _, err = main(capsys, "new-plugin", "Bad-Name", "-o", str(tmp_path / "y"))
    assert code == 2 and "NAME must be a lowercase identifier" in err

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(plugin)],
        capture_output=True, text=True, check=False,
    )
    assert install.returncode == 0, install.stderr
    # its conformance test checks registration through the installed entry point and distribution
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        capture_output=True, text=True, check=False, cwd=plugin,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout.splitlines()[-1] and "failed" not in tests.stdout


def _installed(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@pytest.mark.skipif(
    _installed("objkit-translation-ranking") is None,
    reason="example plugin not installed (make install does: pip install -e examples/objkit-translation-ranking)",
)
def test_example_plugin_is_listed_with_its_distribution(capsys):
    code, out, _ = main(capsys, "list-plugins", "--json")
    row = {r["name"]: r for r in json.loads(out)}["translation_ranking"]
    assert row["kind"] == "objective" and row["status"] == "ok"
    assert (row["distribution"], row["version"]) == ("objkit-translation-ranking", _installed("objkit-translation-ranking"))
    assert row["module"] == "objkit_translation_ranking.objective" and row["plugin_api"] == "1.2"


# ----------------------------------------------------------------------------- two plugins, one name
@pytest.fixture
def impostor_site(tmp_path, monkeypatch):
    """An installed distribution whose objective also calls itself "mlm" (its entry point sorts
    before the built-in's, as in the report: it used to win silently)."""
    from objkit.contract.registry import load_registry

    site = tmp_path / "site"
    fake_distribution(
        site, "objkit-impostor", "0.1",
        {"objkit_impostor": """
            from typing import ClassVar
            import torch
            from objkit import Objective, ObjectiveOutput, hookimpl

            class Impostor(Objective):
                name: ClassVar[str] = "mlm"
                plugin_api: ClassVar[str] = "1.0"
                data_kind = "text"
                def collate(self, examples, generator):
                    return {}
                def compute(self, batch, ctx):
                    return ObjectiveOutput(torch.zeros(()), 0)

            @hookimpl
            def objkit_plugins():
                return [Impostor]
        """},
        {"aaa_impostor": "objkit_impostor"},
    )
    monkeypatch.syspath_prepend(str(site))
    load_registry.cache_clear()
    yield site
    load_registry.cache_clear()


def test_two_distributions_with_one_plugin_name_are_an_error_unless_one_is_chosen(impostor_site, capsys, tmp_path):
    version = md.version("objkit")
    code, out, _ = main(capsys, "list-plugins", "--json")
    rows = [r for r in json.loads(out) if r["name"] == "mlm"]
    assert code == 0 and {(r["distribution"], r["status"]) for r in rows} == {("objkit", "conflict"),
                                                                              ("objkit-impostor", "conflict")}
    expected = (f'plugin name "mlm" is provided by 2 distributions, objkit {version} (objkit_plugins.mlm) and '
                'objkit-impostor 0.1 (objkit_impostor): choose one with plugin = "objkit:mlm" or '
                '"objkit-impostor:mlm" in the recipe, or --plugin objkit:mlm')
    assert rows[0]["error"] == expected

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    code, out, err = main(capsys, "run", str(recipe), "-o", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and err.strip() == f"{recipe}: plugins: {expected}"
    assert not (tmp_path / "run").exists()

    code, out, err = main(capsys, "--plugin", "objkit:mlm", "validate", str(recipe))  # chosen on the command line
    assert code == 0, err
    code, out, _ = main(capsys, "--plugin", "objkit:mlm", "list-plugins", "--json")
    statuses = {r["distribution"]: r["status"] for r in json.loads(out) if r["name"] == "mlm"}
    assert statuses == {"objkit": "ok", "objkit-impostor": "disabled"}

    recipe.write_text(TINY_RECIPE.replace('[objectives.mlm]\n', '[objectives.mlm]\nplugin = "objkit:mlm"\n'))
    code, out, err = main(capsys, "validate", str(recipe))  # chosen in the recipe
    assert code == 0 and 'plugin = "objkit:mlm"' in out, err
    from objkit.contract.registry import default_registry

    assert default_registry().get("objkit:mlm", kind="objective").module == "objkit_plugins.mlm"
    assert default_registry().get("objkit-impostor:mlm").module == "objkit_impostor"
