"""The layers go one way: pipeline -> stages -> engines, and no two modules import each other.

Inside `pipeline`, the sub-packages (and its top modules `api` and `summary`) go one way too,
each importing only those after it in this order:

    cluster -> cli -> api -> observability -> runtime -> sinks -> config, summary, assets

The cluster command uses the CLI's exit codes; the CLI and the cluster use `api`, which
assembles a run; observability reads a run through `Pipeline.snapshot()`; the runtime knows
sinks through the `Sink` protocol; the sinks write `pipeline.summary`'s values and read their
config. `config`, `summary` and `assets` import no other part of `pipeline`.

Read from the source with `ast`, every import counted: top-level, inside functions and under
`if TYPE_CHECKING:` (a type-only import is a dependency too; where one would point the wrong
way, the importing module declares the little it needs as a Protocol instead).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "engines")
# What each layer may import from the project: only itself and the layers below it.
ALLOWED = {"engines": {"engines"}, "stages": {"stages", "engines"}, "pipeline": {"pipeline", "stages", "engines"}}
# The parts of `pipeline`, top first (see the module docstring); a part imports only parts below it.
PIPELINE_PARTS = (("cluster",), ("cli",), ("api",), ("observability",), ("runtime",), ("sinks",),
                  ("config", "summary", "assets"))  # fmt: skip


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _graph() -> dict[str, set[str]]:
    files = {p: _module(p) for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    modules = set(files.values())
    graph: dict[str, set[str]] = {}
    for path, module in files.items():
        names = _imports(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py")
        # `from pipeline.cli import engine` names a module; `from stages.types import Frame` names one too.
        graph[module] = {n if n in modules else n.rpartition(".")[0] for n in names} & modules - {module}
    return graph


def test_no_layer_imports_a_layer_above_it() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]]
    ]
    assert upward == []


def _part(module: str) -> str | None:
    """The part of `pipeline` a module belongs to ("runtime", "api", ...); None outside it."""
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def _part_graph() -> dict[str, set[str]]:
    """Which parts of `pipeline` import which others."""
    graph: dict[str, set[str]] = {}
    for module, targets in _graph().items():
        part = _part(module)
        if part is not None:
            graph.setdefault(part, set()).update(p for p in map(_part, targets) if p not in (None, part))
    return graph


def test_the_parts_of_pipeline_import_one_way() -> None:
    rank = {part: level for level, parts in enumerate(PIPELINE_PARTS) for part in parts}
    assert set(_part_graph()) == set(rank), "a new part of pipeline: give it its place in PIPELINE_PARTS"
    against = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _part(module) and _part(target) and _part(module) != _part(target)
        and rank[_part(target)] <= rank[_part(module)]
    ]
    assert against == []
    assert _cycles(_part_graph()) == []  # what the order implies, said outright


def test_no_two_modules_import_each_other_through_any_chain() -> None:
    assert _cycles(_graph()) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of `graph`: Tarjan's strongly connected components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser the tests above rely on finds imports at any depth, TYPE_CHECKING ones too."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from stages.types import Frame\n"
        "if TYPE_CHECKING:\n    from pipeline.config import RunConfig\n"
        "def f():\n    from pipeline.api import run\n"
    )
    assert _imports(ast.parse(source), "engines.x", False) == {
        "stages.types", "stages.types.Frame", "pipeline.config", "pipeline.config.RunConfig",
        "pipeline.api", "pipeline.api.run",
    }
