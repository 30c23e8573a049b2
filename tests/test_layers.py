"""The core's layering, read from the source: module-level imports form no cycle, and the
pure layers (the recipe schema, the data layer, the encoders, the parallel strategy) do not
reach up into the loader, the registry or the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import objkit

PACKAGE = Path(objkit.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports() -> dict[str, set[str]]:
    """objkit modules each module imports when it is imported: top-level statements (and
    try/except around them), not imports inside functions or ``if TYPE_CHECKING``."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        deps: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            nodes = [node]
            if isinstance(node, ast.Try):
                nodes = node.body + [n for handler in node.handlers for n in handler.body]
            for stmt in nodes:
                if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.split(".")[0] == "objkit":
                    deps.update(f"objkit.{a.name}" for a in stmt.names) if stmt.module == "objkit" else deps.add(stmt.module)
                elif isinstance(stmt, ast.Import):
                    deps.update(a.name for a in stmt.names if a.name.split(".")[0] == "objkit")
        graph[_module_name(path)] = deps
    modules = set(graph)

    def owner(name: str) -> str:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    return {m: {owner(d) for d in deps if owner(d) in modules and owner(d) != m} for m, deps in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_module_level_imports_form_no_cycle():
    graph = _module_level_imports()
    assert "objkit.train.step" in graph and "objkit.distributed.strategy" in graph
    cycle = _cycle({m: deps - {"objkit"} for m, deps in graph.items()})  # the root re-exports the API
    assert cycle is None, " -> ".join(cycle or [])


def test_the_pure_layers_do_not_reach_up():
    graph = _module_level_imports()
    upper = {"objkit.recipe.loader", "objkit.contract.registry", "objkit.train.build", "objkit.train.step", "objkit.train.trainer", "objkit.train.runner"}
    for module in ("objkit.recipe.schema", "objkit.data.sources", "objkit.data.hf", "objkit.data.bitext", "objkit.blocks.encoder",
                   "objkit.bert", "objkit.distributed.strategy", "objkit.distributed.fsdp", "objkit.train.metrics"):
        assert not _reachable(graph, module) & upper, (module, sorted(_reachable(graph, module) & upper))
    assert _reachable(graph, "objkit.recipe.schema") <= {"objkit.contract.interfaces", "objkit.contract.encoder", "objkit.contract.errors"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
