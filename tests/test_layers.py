"""The core's layering, read from the source (docs/development.md, "Layers").

objkit/ is a stack of subpackages, bottom-up in LAYERS; a module in layer k imports nothing from a
layer above k, and no imports form a cycle. Every import counts -- module level, inside functions
and methods, in ``try`` blocks -- except those under ``if TYPE_CHECKING:`` (never run). A failure
names the import and its file:line."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

import objkit
from objkit import _aliases

PACKAGE = Path(objkit.__file__).parent
REPO = PACKAGE.parent

# bottom-up: each subpackage imports only from those before it
LAYERS = ["contract", "blocks", "recipe", "data", "distributed", "eval", "train", "testing", "cli"]
# the modules at the top of objkit/: the public facade (its names are imported lazily, each import
# below counts as one from the module that defines the name), the old-path aliases, and entry points
TOP = {"objkit": "contract", "objkit._aliases": "contract", "objkit.bert": "cli", "objkit.__main__": "cli"}


@dataclass(frozen=True)
class Import:
    target: str  # the objkit module imported
    file: Path
    line: int
    statement: str

    def where(self) -> str:
        return f"{self.file}:{self.line}: {self.statement}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: all of them, ``if TYPE_CHECKING:`` bodies excepted."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def lazy_tables(packages: list[str]) -> dict[str, dict[str, str]]:
    """The names each package imports on first use (PEP 562: its ``_LAZY`` table)."""
    tables = {}
    for name in packages:
        table = getattr(importlib.import_module(name), "_LAZY", None)
        if table:
            tables[name] = table
    return tables


def import_graph(root: Path = PACKAGE, lazy: dict[str, dict[str, str]] | None = None) -> dict[str, list[Import]]:
    """module -> the objkit modules it imports (``root`` is the package folder). ``from PKG import
    NAME`` counts as an import of ``PKG.NAME`` when that is a module, else of the module that
    defines NAME when PKG imports its names lazily (``lazy``: the facade, objkit.data, ...), else
    of ``PKG``."""
    top = root.name
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    if lazy is None:
        lazy = lazy_tables([name for name, path in paths.items() if path.name == "__init__.py"])
    graph: dict[str, list[Import]] = {}
    for name, path in paths.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        is_package = path.name == "__init__.py"
        imports = []
        for node in _import_nodes(ast.parse(source)):
            statement = " ".join(line.strip() for line in lines[node.lineno - 1:node.end_lineno])
            rel = path.relative_to(root.parent)
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                targets = []
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in paths:
                        targets.append(full)
                    elif alias.name in lazy.get(base, {}):
                        targets.append(lazy[base][alias.name])
                    else:
                        targets.append(base)
            for target in targets:
                if target.split(".")[0] != top:
                    continue
                while target not in paths and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in paths and target != name:
                    imports.append(Import(target, rel, node.lineno, statement))
        graph[name] = imports
    return graph


def layer_of(module: str, layers: list[str] = LAYERS, top: dict[str, str] = TOP) -> int:
    if module in top:
        return layers.index(top[module])
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in layers:
        raise LookupError(module)
    return layers.index(parts[1])


def layer_violations(graph: dict[str, list[Import]], layers: list[str] = LAYERS,
                     top: dict[str, str] = TOP) -> list[str]:
    out = []
    for module, imports in sorted(graph.items()):
        for imp in imports:
            mine, theirs = layer_of(module, layers, top), layer_of(imp.target, layers, top)
            if theirs > mine:
                out.append(f"{imp.where()}  -- {module} (layer {mine}, {layers[mine]}) imports {imp.target} "
                           f"(layer {theirs}, {layers[theirs]}), a layer above it")
    return out


def find_cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle as the imports that close it, or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    path: list[Import] = []

    def visit(node: str) -> list[Import] | None:
        state[node] = 1
        for imp in sorted(graph.get(node, []), key=lambda i: (i.target, i.line)):
            if state.get(imp.target) == 1:
                start = next((k for k, p in enumerate(path) if module_of(p) == imp.target), len(path))
                return path[start:] + [imp]
            if imp.target not in state:
                path.append(imp)
                if found := visit(imp.target):
                    return found
                path.pop()
        state[node] = 2
        return None

    def module_of(imp: Import) -> str:  # the importing module of an edge on the path
        return owners[imp]

    owners = {imp: module for module, imports in graph.items() for imp in imports}
    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_is_in_a_layer():
    graph = import_graph()
    assert "objkit.train.step" in graph and "objkit.distributed.strategy" in graph
    unplaced = []
    for module in graph:
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert not unplaced, f"modules outside the layer subpackages {LAYERS}: {unplaced}"


def test_no_import_cycle_function_level_imports_included():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle:\n" + "\n".join(imp.where() for imp in cycle or [])


def test_no_module_imports_from_a_layer_above_its_own():
    violations = layer_violations(import_graph())
    assert not violations, "imports from a layer above:\n" + "\n".join(violations)


# ----------------------------------------------------------------------------- the checks can fail
def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "objkit"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_the_layer_check_names_a_function_level_import_from_above(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "", "contract/__init__.py": "", "train/__init__.py": "",
        "contract/kinds.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from objkit.train.step import Step\n\n"
                             "def f():\n    from objkit.train.step import run\n    return run\n",
        "train/step.py": "from objkit.contract import kinds\n",
    })
    violations = layer_violations(import_graph(root, lazy={}))
    assert len(violations) == 1, violations
    assert violations[0].startswith(str(Path("objkit/contract/kinds.py")) + ":6: from objkit.train.step import run")
    assert "objkit.contract.kinds (layer 0, contract) imports objkit.train.step (layer 6, train)" in violations[0]


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    root = _fake_package(tmp_path, {
        "__init__.py": "", "distributed/__init__.py": "",
        "distributed/strategy.py": "def pick():\n    from objkit.distributed.fsdp import FSDP\n",
        "distributed/fsdp.py": "from objkit.distributed.strategy import pick\n",
    })
    cycle = find_cycle(import_graph(root, lazy={}))
    assert cycle is not None
    assert [imp.where() for imp in cycle] == [
        f"{Path('objkit/distributed/fsdp.py')}:1: from objkit.distributed.strategy import pick",
        f"{Path('objkit/distributed/strategy.py')}:2: from objkit.distributed.fsdp import FSDP",
    ]
    (root / "distributed/strategy.py").write_text("def pick():\n    return None\n", encoding="utf-8")
    assert find_cycle(import_graph(root, lazy={})) is None


def test_lazy_package_names_count_as_imports_of_their_defining_module(tmp_path):
    root = _fake_package(tmp_path, {"__init__.py": "", "contract/__init__.py": "", "train/__init__.py": "",
                                    "train/trainer.py": "", "contract/x.py": "from objkit import Trainer\n"})
    [imp] = import_graph(root, lazy={"objkit": {"Trainer": "objkit.train.trainer"}})["objkit.contract.x"]
    assert imp.target == "objkit.train.trainer"


# ----------------------------------------------------------------------------- old module paths
def test_an_old_module_path_still_imports_and_warns_naming_the_new_one():
    new = importlib.import_module("objkit.train.trainer")
    sys.modules.pop("objkit.trainer", None)  # layers-move: keep (the old path, on purpose)
    with pytest.warns(DeprecationWarning, match=r"objkit\.trainer moved to objkit\.train\.trainer") as record:
        old = importlib.import_module("objkit.trainer")  # layers-move: keep
    assert old is new and old.__spec__.name == "objkit.train.trainer"
    assert record[0].filename == __file__  # the warning points at the importing line
    for name in ("objkit.fetch", "objkit.fetch.catalog"):  # layers-move: keep (a moved package's submodule)
        sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match=r"objkit\.fetch\.catalog moved to objkit\.data\.fetch\.catalog"):
        catalog = importlib.import_module("objkit.fetch.catalog")  # layers-move: keep
    assert catalog is importlib.import_module("objkit.data.fetch.catalog")  # one module, not a second copy


def test_the_old_recipe_module_names_import_from_the_recipe_package():
    from objkit.recipe.loader import load_recipe

    import objkit.recipe as package

    with pytest.warns(DeprecationWarning, match=r"objkit\.recipe\.load_recipe moved to objkit\.recipe\.loader"):
        assert package.load_recipe is load_recipe
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_python_dash_m_on_an_old_path_runs_the_new_module(tmp_path):
    page = tmp_path / "recipe.md"
    result = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-m", "objkit.docgen",  # layers-move: keep
                             "-o", str(page)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "objkit.docgen moved to objkit.recipe.docgen" in result.stderr  # layers-move: keep
    assert page.read_text(encoding="utf-8").startswith("#")


def _is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def old_paths_in(line: str) -> list[str]:
    """The old module paths a line uses (each would warn on import)."""
    found = []
    for match in re.finditer(r"(?<![\w.\-/])objkit((?:\.\w+)+)", line):
        parts = ["objkit", *match.group(1)[1:].split(".")]
        n = len(parts)
        while n > 1 and not _is_module(".".join(parts[:n])):
            n -= 1
        name = ".".join(parts[:n])
        if n == 1:  # no module of that name: an old one?
            found += [old for k in range(len(parts), 1, -1)
                      if (new := _aliases.new_name(old := ".".join(parts[:k]))) and _is_module(new)][:1]
        elif name in _aliases.MOVED:  # a package that took an old module's name (objkit.recipe)
            after = re.match(r"\s+import\s+\(?\s*(\w+)", line[match.end():]) if n == len(parts) else None
            attribute = parts[n] if n < len(parts) else after.group(1) if after else None
            if attribute and not _is_module(f"{name}.{attribute}") and attribute not in {"__getattr__"}:
                found.append(f"{name}.{attribute}")
    return found


def test_the_old_path_finder_finds_old_paths():
    assert old_paths_in("from objkit.trainer import Trainer") == ["objkit.trainer"]  # layers-move: keep
    assert old_paths_in("x = objkit.fetch.catalog.DATASETS") == ["objkit.fetch.catalog"]  # layers-move: keep
    assert old_paths_in("from objkit.recipe import load_recipe") == ["objkit.recipe.load_recipe"]  # layers-move: keep
    assert old_paths_in("from objkit.recipe.loader import load_recipe; objkit.recipe.schema.Recipe") == []
    assert old_paths_in("objkit.UserError, objkit.train.trainer.Trainer, from objkit.recipe import schema") == []


def test_nothing_in_the_repository_uses_an_old_module_path():
    found = []
    for folder in ("objkit", "plugins", "tests", "benchmarks", "examples", "docs"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix not in {".py", ".md"} or path == Path(_aliases.__file__) or ".venv" in path.parts:
                continue
            deprecated = False
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if path.suffix == ".md" and line.startswith("#"):
                    deprecated = "deprecat" in line.lower()  # a section on deprecated names names them
                if "layers-move: keep" in line or deprecated:
                    continue
                found += [f"{path.relative_to(REPO)}:{number}: {name}" for name in old_paths_in(line)]
    assert not found, "old module paths (each warns on import):\n" + "\n".join(found)


def test_importing_objkit_imports_no_layer_beyond_the_contract_errors():
    code = ("import sys, objkit; print(sorted(m for m in sys.modules if m.startswith('objkit')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["objkit", "objkit._aliases", "objkit.contract", "objkit.contract.errors"]  # noqa: S307
    code = "import sys, objkit; assert 'torch' not in sys.modules and 'pydantic' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("objkit.train.trainer")
