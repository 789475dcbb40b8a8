"""The package import graph: no cycles, no private names across modules, one-way data flow.

Built from the source with :mod:`ast` (nothing is imported), over every module of
``checkpoints``, ``dynamics`` and ``store``; lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("checkpoints", "dynamics", "store")
# Allowed arrows against the data flow checkpoints -> dynamics -> store: the shared error types.
SHARED_ERRORS = "dynamics.errors"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """``(imported module, names taken from it)`` for every import of a project module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module not in modules:
                continue
            names = []
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:  # `from package import module`
                    found.append((submodule, []))
                else:
                    names.append(alias.name)
            found.append((node.module, names))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _ in imports_of(path, modules):
            if target != name:
                graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_loose_modules_beside_the_subpackages():
    """dynamics keeps its code in subpackages by role; only the shared error types sit at its top."""
    loose = sorted(p.name for p in (ROOT / "dynamics").glob("*.py") if p.name not in ("__init__.py", "errors.py"))
    assert loose == []


def test_the_graph_is_built_from_every_package():
    graph = import_graph()
    assert {"checkpoints.source", "dynamics.scan.driver", "dynamics.study.driver", "store.cube"} <= set(graph)
    assert "dynamics.scan.worker" in graph["dynamics.scan.driver"]
    assert "checkpoints.stream" in graph["dynamics.scan.worker"]  # the scan prefetches through checkpoints.stream


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_private_names_imported_across_modules():
    modules = project_modules()
    private = [
        f"{name} imports {target}.{imported}"
        for name, path in modules.items()
        for target, names in imports_of(path, modules)
        for imported in names
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


def test_data_flows_one_way():
    """checkpoints -> dynamics -> store: checkpoints and store use nothing of dynamics but its errors."""
    upward = [
        f"{name} -> {target}"
        for name, targets in import_graph().items()
        for target in targets
        if name.split(".")[0] in ("checkpoints", "store")
        and target.split(".")[0] == "dynamics"
        and target not in (SHARED_ERRORS, "dynamics")
    ]
    assert upward == []


def test_subpackages_do_not_lean_on_each_other_both_ways():
    """Between two sibling subpackages of dynamics at most one direction of imports exists."""

    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "dynamics" and len(parts) > 2 else module

    arrows = {
        (package(a), package(b)) for a, targets in import_graph().items() for b in targets if package(a) != package(b)
    }
    both_ways = sorted(f"{a} <-> {b}" for a, b in arrows if (b, a) in arrows and a < b)
    assert both_ways == []


def test_the_shared_layer_never_imports_a_command():
    """errors, config, models, execution, ablation, stats and syntax serve the commands, not the reverse
    (the commands: scan, study, report, toy, the command line, and the benchmark and GPU-check support)."""
    commands = ("dynamics.scan", "dynamics.study", "dynamics.report", "dynamics.toy", "dynamics.cli", "dynamics.bench")

    def is_command(module: str) -> bool:
        return any(module == c or module.startswith(c + ".") for c in commands)

    upward = sorted(
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if a.startswith("dynamics.") and not is_command(a) and is_command(b)
    )
    assert upward == []
    sideways = sorted(
        f"{a} -> {b}"
        for a, targets in import_graph().items()
        for b in targets
        if (a.startswith("dynamics.scan") and b.startswith("dynamics.study"))
        or (a.startswith("dynamics.study") and b.startswith("dynamics.scan"))
        or (a.startswith("dynamics.report") and (b.startswith("dynamics.scan") or b.startswith("dynamics.study")))
    )
    assert sideways == []
