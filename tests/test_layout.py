"""The package's layout, read from its source: imports run one way (refinement -> {selection, head} ->
{persistence, transport} -> core, topology -> {persistence, transport} -> core, mebin -> persistence ->
core), there is no import cycle, and no ``reference`` module imports a fast path (only core, types and configs, and
lower stages' references)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import topoot_gpu

PACKAGE = Path(topoot_gpu.__file__).resolve().parent
STAGES = ("core", "persistence", "transport", "selection", "head", "refinement", "topology", "mebin")
#: What each stage's modules may import: its own modules, the stages below it, the compiled core
#: (below everything; core's allocator frees the compiled kernels' kept scratch).
ALLOWED = {
    "core": {"core", "_C"},
    "persistence": {"persistence", "core", "_C"},
    "transport": {"transport", "core", "_C"},
    "selection": {"selection", "persistence", "transport", "core"},
    "head": {"head", "core", "_C"},
    "refinement": {"refinement", "selection", "head", "core"},
    "topology": {"topology", "persistence", "transport", "core"},
    "mebin": {"mebin", "persistence", "core"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return name == "topoot_gpu._C" or path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(source: str, name: str, is_package: bool = False) -> set[str]:
    """The topoot_gpu modules that the module ``name`` imports anywhere (function bodies included)."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "topoot_gpu"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "topoot_gpu":
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.add(full if is_module(full) else base)
    return out


def stage(name: str) -> str:
    parts = name.split(".")
    if name == "topoot_gpu._C":
        return "_C"
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "top"


def is_fast_path(name: str) -> bool:
    """Dispatch and backend modules: a stage's ``api``, ``op``, ``padded`` and its private modules."""
    last = name.rpartition(".")[2]
    return last in ("api", "op", "padded") or last.startswith("_")


def graph() -> dict[str, set[str]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        out[name] = imports_of(path.read_text(), name, path.name == "__init__.py")
    return out


def test_every_stage_imports_only_downwards():
    wrong = []
    for name, targets in graph().items():
        if stage(name) in ALLOWED:
            wrong += [f"{name} -> {t}" for t in sorted(targets) if stage(t) not in ALLOWED[stage(name)]]
    assert not wrong, "imports against the stage order:\n" + "\n".join(wrong)


def test_no_reference_module_imports_a_fast_path():
    references = {n: t for n, t in graph().items() if n.endswith(".reference")}
    assert {stage(n) for n in references} == set(STAGES) - {"core"}
    wrong = [f"{n} -> {t}" for n, targets in references.items() for t in sorted(targets) if is_fast_path(t)]
    assert not wrong, "reference modules importing a fast path:\n" + "\n".join(wrong)


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_checks_see_what_they_forbid():
    # The import reader on sources that break each rule: relative and absolute, in a function body.
    src = "def f():\n    from ..persistence import _cpp\n    import topoot_gpu.refinement.api\n"
    found = imports_of(src, "topoot_gpu.selection.reference")
    assert found == {"topoot_gpu.persistence._cpp", "topoot_gpu.refinement.api"}
    assert all(is_fast_path(t) for t in found)
    assert stage("topoot_gpu.refinement.api") not in ALLOWED["selection"]
    assert imports_of("from . import api\n", "topoot_gpu.head", is_package=True) == {"topoot_gpu.head.api"}
    assert imports_of("from .. import _C\n", "topoot_gpu.head._cpp") == {"topoot_gpu._C"}
