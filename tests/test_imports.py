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

# Lowest first. What each layer may not know is in its name: infrastructure knows no math and reads no
# files, the method (the paper's math) reads no files, fetches nothing and knows no loop.
LAYERS: list[tuple[str, set[str]]] = [
    ("infrastructure", {"lct", "lct._compat", "lct.device", "lct.memory", "lct.suites", "lct.distributed"}),
    ("method", {"lct.curriculum", "lct.config", "lct.schedules", "lct.losses", "lct.ot", "lct.nn", "lct.nn.norms",
                "lct.nn.unet", "lct.nn.params", "lct.precond", "lct.objectives", "lct.samplers"}),
    ("files", {"lct.download", "lct.checkpoint", "lct.trainlog"}),
    ("weights", {"lct.fetch", "lct.random_weights"}),
    ("data", {"lct.vae", "lct.data", "lct.encode"}),
    ("run", {"lct.model", "lct.batches", "lct.train", "lct.sample", "lct.stats"}),
    ("evaluation", {"lct.classifier", "lct.metrics", "lct.evaluate"}),
    ("workflow config", {"lct.wfsite", "lct.wfconfig"}),
    ("report", {"lct.estimate", "lct.figures", "lct.report", "lct.sweep"}),
    ("workflow", {"lct.wfrules"}),
    ("command line", {"lct.cli", "lct.__main__"}),
]
# Imports the order allows but the design does not: evaluation and the reports never reach into the
# training loop; the random weights of the tests are imported by no product module (the CLI names
# them as a string).
FORBIDDEN = [
    ({"lct.evaluate", "lct.metrics", "lct.classifier", "lct.figures", "lct.report", "lct.sweep", "lct.estimate", "lct.sample",
      "lct.stats", "lct.wfrules", "lct.wfconfig", "lct.wfsite"}, {"lct.train"}),
    ({m for _, ms in LAYERS for m in ms} - {"lct.random_weights"}, {"lct.random_weights"}),
]


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
                if node.module == "lct":
                    deps |= {f"lct.{a.name}" for a in node.names}
                elif node.module.startswith("lct."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name == "lct" or a.name.startswith("lct.")}
        graph[name] = deps - {name}
    return graph


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
    layer = {m: i for i, (_, ms) in enumerate(LAYERS) for m in ms}
    names = [n for n, _ in LAYERS]
    bad = [f"{m}: not in the layer table of tests/test_imports.py" for m in sorted(graph) if m not in layer]
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            if m in layer and d in layer and layer[d] > layer[m]:
                bad.append(f"{m} ({names[layer[m]]}) imports {d} ({names[layer[d]]}), a higher layer")
            for sources, targets in FORBIDDEN:
                if m in sources and d in targets:
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
    g["lct.curriculum"] = g["lct.curriculum"] | {"lct.config"}
    g["lct.fetch"] = g["lct.fetch"] | {"lct.random_weights"}
    g["lct.random_weights"] = g["lct.random_weights"] | {"lct.losses"}
    g["lct.losses"] = g["lct.losses"] | {"lct.fetch"}
    assert sorted(cycles(g)) == [["lct.config", "lct.curriculum"], ["lct.fetch", "lct.losses", "lct.random_weights"]]
    bad = layer_violations(g)
    assert any(b.startswith("lct.losses (method) imports lct.fetch (weights)") for b in bad)
    assert any(b == "lct.fetch imports lct.random_weights, which the design forbids" for b in bad)


@pytest.mark.parametrize("edge", [("lct.evaluate", "lct.train"), ("lct.objectives", "lct.checkpoint")])
def test_a_wrong_arrow_is_reported(edge):
    g = import_graph()
    g[edge[0]] = g[edge[0]] | {edge[1]}
    assert any(b.startswith(f"{edge[0]}") and edge[1] in b for b in layer_violations(g))
