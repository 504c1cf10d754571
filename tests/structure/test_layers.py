"""The package's imports flow one way (docs/architecture.md, "Layers").

Every ``import`` in every module of ``spaedge`` is read, those inside
functions included: a module may import only its own layer or lower ones,
and no modules may import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import spaedge

PACKAGE = Path(spaedge.__file__).parent

# Lowest first. A module belongs to the layer of the longest prefix naming it.
LAYERS = [
    # the foundation: no torch (the device side is built from these)
    [
        "spaedge",
        "spaedge.errors",
        "spaedge.argtypes",
        "spaedge.progress",
        "spaedge.download",
        "spaedge.runtime",
        "spaedge.images",
        "spaedge._runtime",
        "spaedge.pack",
        "spaedge.pack.format",
        "spaedge.pack.layout",
        "spaedge.pack.families",
        "spaedge.pack.quantize",
    ],
    ["spaedge.tasks", "spaedge.models"],
    ["spaedge.adapters"],
    [
        "spaedge.pruning",
        "spaedge.pack.bundle",
        "spaedge.pack.materialize",
        "spaedge.pack.export",
        "spaedge.pack.calibrate",
    ],
    ["spaedge.train"],
    ["spaedge.experiment", "spaedge.bench"],
    ["spaedge.cli"],
]


def layer_of(module: str) -> int:
    best, rank = "", None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, rank = name, i
    if rank is None:
        raise KeyError(module)
    return rank


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported spaedge module, line) for every import statement of the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub if sub in known else base, node.lineno))
    return [(m, line) for m, line in found if m == "spaedge" or m.startswith("spaedge.")]


@pytest.fixture(scope="module")
def graph():
    mods = modules()
    # compiled modules (spaedge._runtime) are modules too, importing nothing of ours
    compiled = {f"spaedge.{p.name.split('.')[0]}" for p in PACKAGE.glob("*.so")} | {
        "spaedge._runtime"
    }
    known = set(mods) | compiled
    return {m: imports(m, p, known) for m, p in mods.items()}


def test_every_module_has_a_layer(graph):
    unplaced = []
    for m in graph:
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, (
        f"modules without a layer (add them to LAYERS and docs/architecture.md): {unplaced}"
    )


def test_no_module_imports_a_higher_layer(graph):
    bad = [
        f"{m}:{line} imports {target} (layer {layer_of(target)} > {layer_of(m)})"
        for m, edges in graph.items()
        for target, line in edges
        if layer_of(target) > layer_of(m)
    ]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    # Tarjan's strongly connected components over module -> imported module.
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(t == v for t, _ in graph.get(v, [])):
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"modules importing each other in a circle: {cycles}"


def test_the_checker_sees_what_it_must(tmp_path):
    """The reader itself: function-level and relative imports count."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from spaedge.train import pipeline\n    from . import sibling\n")
    found = imports("spaedge.tasks.m", src, {"spaedge.train.pipeline", "spaedge.tasks.sibling"})
    assert found == [("spaedge.train.pipeline", 2), ("spaedge.tasks.sibling", 3)]
    assert layer_of("spaedge.train.pipeline") > layer_of("spaedge.tasks.m")
