"""The package's imports point one way: no cycle between rmpeft modules or between its packages, and
no import from a layer to a layer above it (:data:`LAYERS`, shown in docs/architecture.md), counting
imports made inside functions too (a function-level import must not hide a cycle or an upward import)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rmpeft"

# The layers, lowest first: a module imports only from its own layer and the layers below it. Each
# entry is a top-level module or subpackage of rmpeft (a subpackage's modules share its layer).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("errors", "identity", "config", "optim", "validation", "checkpoints", "run_folder", "records",
              "resume", "loss_scaling", "metrics", "cpu_allocator", "run_stats", "loggers", "lr_auto")),
    ("data and models", ("data", "vision", "sparse", "gguf_models", "families", "models", "base_model", "resolve")),
    ("methods", ("methods",)),
    ("scoring and objectives", ("scoring", "objectives")),
    ("run building", ("run", "lifecycle")),
    ("evaluation", ("evaluation", "analysis")),
    ("trainer and delta operations", ("trainer", "job", "deltas")),
    ("commands and reporting", ("train", "identity_cli", "hessian_cli", "lr_cli", "migrate", "params", "preview",
                                "theory", "reporting", "sweeps", "bench")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """rmpeft modules imported anywhere in the file (``from pkg import sub`` counts as ``pkg.sub``)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def layer_of(module: str) -> int:
    """The index in :data:`LAYERS` of an rmpeft module (``rmpeft`` itself and unlisted units: -1)."""
    unit = module.split(".")[1] if "." in module else ""
    for index, (_, units) in enumerate(LAYERS):
        if unit in units:
            return index
    return -1


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import from a module to a module of a higher layer, as readable lines."""
    out = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module) >= 0:
                out.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                           f"({LAYERS[layer_of(target)][0]})")
    return out


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_rmpeft():
    cycle = find_cycle(graph())
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


def test_a_submodule_importing_its_own_package_counts():
    edges = graph()
    assert all(m in edges for m in ("rmpeft.records", "rmpeft.identity"))
    assert "rmpeft.identity" in edges["rmpeft.records"]


def test_every_module_has_a_layer():
    unlisted = sorted(m for m in graph() if m != "rmpeft" and layer_of(m) < 0)
    assert not unlisted, f"modules in no layer of LAYERS: {', '.join(unlisted)}"


def test_the_checker_finds_an_upward_import():
    edges = {"rmpeft.records": {"rmpeft.trainer"}, "rmpeft.trainer": {"rmpeft.records"}}
    assert upward_imports(edges) == ["rmpeft.records (core) imports rmpeft.trainer (trainer and delta operations)"]


def test_no_import_from_a_lower_layer_to_a_higher_one():
    found = upward_imports(graph())
    if found:
        pytest.fail(f"{len(found)} upward import(s):\n" + "\n".join(found))


def unit_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The imports between units (top-level modules and subpackages of rmpeft)."""
    def unit(module: str) -> str:
        return ".".join(module.split(".")[:2])

    out: dict[str, set[str]] = {}
    for module, targets in edges.items():
        out.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return out


def test_no_import_cycle_between_packages():
    cycle = find_cycle(unit_graph(graph()))
    if cycle:
        pytest.fail("package import cycle: " + " -> ".join(cycle))
