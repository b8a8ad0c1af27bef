"""Module structure: the import graph of `tracenas` has no cycles (module-level imports, read with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "tracenas"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: top level, and inside top-level try/if (not TYPE_CHECKING)."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the `tracenas` modules it imports at import time (`from pkg import mod` counts as pkg.mod)."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files:  # `import tracenas.x.y` of a name inside a module
                    t = t.rpartition(".")[0]
                if t and t != module and t.split(".")[0] == PACKAGE:
                    graph[module].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_real_imports():
    graph = import_graph()
    assert "tracenas.proxy" in graph["tracenas.zero_cost"]  # zero_cost builds on the trace probes
    assert "tracenas.proxy_registry" in graph["tracenas.search.config"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_proxy_and_zero_cost():
    graph = import_graph()
    assert "tracenas.zero_cost" not in graph["tracenas.proxy"]
    assert not any({"tracenas.proxy", "tracenas.zero_cost"} <= set(c) for c in cycles(graph))


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []


def test_the_proxy_registry_imports_no_scoring_module():
    graph = import_graph()
    assert graph["tracenas.proxy_registry"] <= {"tracenas.errors"}


# The layers of docs/architecture.md, bottom first; a module may import only from its own layer or below.
LAYERS = [
    ("shared", ("errors", "config", "budget", "device", "lazy", "logs", "rundir", "losses", "data", "tasks", "proxy_registry",
                "llamacpp", "search.registry", "bench_config", "eval_config", "distributed")),
    ("models", ("models",)),
    ("arch", ("arch",)),
    ("masking", ("masking", "reconstruct", "database", "sliced", "memory")),
    ("proxies", ("proxy", "zero_cost")),
    ("strategies", ("search.strategy", "search.operators", "search.evolution", "search.strategies", "search.state",
                    "search.config", "search.darwinlm", "search")),
    ("stages", ("search.runner", "search.plan", "search.darwinlm_eval", "search.darwinlm_recipe",
                "search.tyr_recipe", "search.depth_recipe",
                "export", "gguf_export", "gguf_tokenizer", "gguf_verify", "recover", "evaluate", "bench",
                "validate", "report")),
    ("pipeline", ("pipeline",)),
    ("cli", ("cli", "commands", "__main__", "")),
]


def layer_of(module: str) -> int:
    name = module.removeprefix(PACKAGE).removeprefix(".")
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if name == p or (p and name.startswith(p + ".")):
                if best is None or len(p) > best[1]:
                    best = (rank, len(p))
    assert best is not None, f"{module} is in no layer of docs/architecture.md"
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m, targets in graph.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]


def test_imports_go_down_the_layers():
    assert upward_imports({"tracenas.arch": {"tracenas.masking"}, "tracenas.masking": {"tracenas.arch"}}) == [
        "tracenas.arch (arch) imports tracenas.masking (masking)"]
    assert layer_of("tracenas.models.families.qwen3") == 1 and layer_of("tracenas.search.runner") == 6
    assert upward_imports(import_graph()) == []
