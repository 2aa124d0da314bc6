"""The package's import graph: no circles, and every import runs down the layer order declared here.

The layer table is the one place the order is declared (docs/ARCHITECTURE.md points here). A module may
import modules of its own layer or of a lower one; the extra rules below forbid what the order alone
would allow. The graph is read with the standard library's `ast` (imports inside functions included).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first, one subpackage per layer: the folder tree is the layer order (docs/ARCHITECTURE.md).
# What each layer may not know is in its name: infrastructure knows no math and reads no files, the
# method (the paper's math) reads no files, fetches nothing and knows no loop. A module's layer is that
# of the longest entry it starts with ("lct" itself: only the package's __init__).
LAYERS: list[tuple[str, set[str]]] = [
    ("infrastructure", {"lct", "lct.infra"}),
    ("config", {"lct.config"}),
    ("method", {"lct.method"}),
    ("files", {"lct.files"}),
    ("weights", {"lct.weights"}),
    ("data", {"lct.data"}),
    ("run", {"lct.run"}),
    ("evaluation", {"lct.evaluation"}),
    ("report", {"lct.report"}),
    ("workflow", {"lct.workflow"}),
    ("command line", {"lct.cli", "lct.__main__"}),
]
# Imports the order allows but the design does not: evaluation, the reports and the workflow never
# reach into the training loop; the random weights of the tests are imported by no product module
# (the CLI names them as a string).
FORBIDDEN = [
    ({"lct.evaluation", "lct.report", "lct.workflow", "lct.run.sample", "lct.run.stats"}, {"lct.run.train"}),
    ({"*"}, {"lct.weights.random_weights"}),
]


def within(module: str, prefixes: set[str]) -> bool:
    """`module` is one of `prefixes` or inside one of them ("*": every module)."""
    return "*" in prefixes or any(module == p or (p != "lct" and module.startswith(p + ".")) for p in prefixes)


def layer_of(module: str) -> int | None:
    hits = [(len(p), i) for i, (_, ps) in enumerate(LAYERS) for p in ps
            if module == p or (p != "lct" and module.startswith(p + "."))]
    return max(hits)[1] if hits else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph(root: Path = ROOT / "lct") -> dict[str, set[str]]:
    """module -> the lct modules it imports (at any depth of its code)."""
    graph: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        name, deps = module_name(f), set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module == "lct" or node.module.startswith("lct."):
                    # `from lct.pkg import mod` imports the module lct.pkg.mod (and the package lct.pkg)
                    deps |= {f"{node.module}.{a.name}" for a in node.names} | ({node.module} - {"lct"})
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name == "lct" or a.name.startswith("lct.")}
        graph[name] = deps - {name}
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (strongly connected component of more than one module), Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    names = [n for n, _ in LAYERS]
    bad = [f"{m}: not in the layer table of tests/test_imports.py" for m in sorted(graph) if layer_of(m) is None]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            lm, ld = layer_of(m), layer_of(d)
            if lm is not None and ld is not None and ld > lm:
                bad.append(f"{m} ({names[lm]}) imports {d} ({names[ld]}), a higher layer")
            for sources, targets in FORBIDDEN:
                if within(m, sources) and within(d, targets) and not within(m, targets):
                    bad.append(f"{m} imports {d}, which the design forbids")
    return bad


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_imports_run_down_the_layers():
    assert layer_violations(import_graph()) == []


def test_the_checks_catch_the_circles_of_before():
    """Negative control: the two circles the package had (config <-> curriculum; fetch -> random_weights ->
    losses -> fetch) and the wrong-way arrows they were made of are reported."""
    g = import_graph()
    g["lct.config.curriculum"] = g["lct.config.curriculum"] | {"lct.config"}
    g["lct.weights.fetch"] = g["lct.weights.fetch"] | {"lct.weights.random_weights"}
    g["lct.weights.random_weights"] = g["lct.weights.random_weights"] | {"lct.method.losses"}
    g["lct.method.losses"] = g["lct.method.losses"] | {"lct.weights.fetch"}
    assert sorted(cycles(g)) == [["lct.config", "lct.config.curriculum"],
                                 ["lct.method.losses", "lct.weights.fetch", "lct.weights.random_weights"]]
    bad = layer_violations(g)
    assert any(b.startswith("lct.method.losses (method) imports lct.weights.fetch (weights)") for b in bad)
    assert any(b == "lct.weights.fetch imports lct.weights.random_weights, which the design forbids" for b in bad)


@pytest.mark.parametrize("edge", [("lct.evaluation.evaluate", "lct.run.train"), ("lct.method.objectives", "lct.files.checkpoint")])
def test_a_wrong_arrow_is_reported(edge):
    g = import_graph()
    g[edge[0]] = g[edge[0]] | {edge[1]}
    assert any(b.startswith(f"{edge[0]}") and edge[1] in b for b in layer_violations(g))


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 80


def test_modules_and_functions_stay_small():
    """One concern per file, functions of a screenful: no module of lct/ over 450 lines, no function over 80."""
    long_modules, long_functions = [], []
    for f in sorted((ROOT / "lct").rglob("*.py")):
        text = f.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{f.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text, str(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert long_modules == [] and long_functions == []
