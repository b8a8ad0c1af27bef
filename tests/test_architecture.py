"""Module structure (read with `ast`): no import cycles, imports go down the layers of docs/architecture.md, stages
never import each other, at most ten modules at the package root, and search/strategies/ imports without torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
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


def _imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import a module can execute: top level, inside try/if, and inside functions and classes (a
    function-local import is still a dependency); imports under `if TYPE_CHECKING:` are skipped."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        else:
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]
    return out


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


def import_graph(local: bool = False) -> dict[str, set[str]]:
    """module -> the `tracenas` modules it imports at import time (`from pkg import mod` counts as pkg.mod);
    with `local`, also those its functions import when they run."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for node in (_imports(tree) if local else _top_level_imports(tree)):
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
    assert "tracenas.proxies.traces" in graph["tracenas.proxies.zero_cost"]  # zero_cost builds on the trace probes
    assert "tracenas.proxies.registry" in graph["tracenas.search.config"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_proxy_and_zero_cost():
    graph = import_graph()
    assert "tracenas.proxies.zero_cost" not in graph["tracenas.proxies.traces"]
    assert not any({"tracenas.proxies.traces", "tracenas.proxies.zero_cost"} <= set(c) for c in cycles(graph))


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []


def test_the_proxy_registry_imports_no_scoring_module():
    graph = import_graph()
    assert graph["tracenas.proxies.registry"] <= {"tracenas.runtime.errors"}


# The layers of docs/architecture.md, bottom first, named by folder (a name covers the folder or module and all
# below it; the longest name wins). A module may import only from its own layer or below, function-local
# imports included.
LAYERS = [
    ("runtime", ("runtime", "budget", "data", "proxies.registry")),
    ("models", ("models",)),
    ("arch", ("arch",)),
    ("prune", ("prune",)),
    ("proxies", ("proxies",)),
    ("strategies", ("search.strategies", "search.config", "search.registry")),
    ("stages", STAGES := ("search", "export", "recover", "eval", "bench", "validate")),
    ("pipeline", ("pipeline",)),
    ("cli", ("cli", "commands", "__main__", "")),
]
STAGE_LAYER = 6


def _match(module: str, prefixes) -> tuple[int, str] | None:
    name = module.removeprefix(PACKAGE).removeprefix(".")
    hits = [(len(p), p) for p in prefixes if name == p or (p and name.startswith(p + ".")) or (not p and not name)]
    return max(hits) if hits else None


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        hit = _match(module, prefixes)
        if hit is not None and (best is None or hit[0] > best[1]):
            best = (rank, hit[0])
    assert best is not None, f"{module} is in no layer of docs/architecture.md"
    return best[0]


def stage_of(module: str) -> str | None:
    """The stage folder a module belongs to, None below the stage layer (search/strategies is the search's
    torch-free lower half, a layer of its own)."""
    if layer_of(module) != STAGE_LAYER:
        return None
    return _match(module, STAGES)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
            for m, targets in graph.items() for t in sorted(targets) if layer_of(t) > layer_of(m)]


def cross_stage_imports(graph: dict[str, set[str]]) -> list[str]:
    """Stages never import each other: what two stages share lives in a layer below them."""
    return [f"{m} (stage {stage_of(m)}) imports {t} (stage {stage_of(t)})"
            for m, targets in graph.items() for t in sorted(targets)
            if stage_of(m) and stage_of(t) and stage_of(m) != stage_of(t)]


def test_layers_name_folders():
    assert layer_of("tracenas.models.families.qwen3") == 1 and layer_of("tracenas.search.recipes.runner") == 6
    assert layer_of("tracenas.search.strategies.tyr") == 5 and layer_of("tracenas.proxies.registry") == 0
    assert layer_of("tracenas.export.gguf.writer") == 6 and layer_of("tracenas") == 8
    assert stage_of("tracenas.export.gguf.writer") == "export" and stage_of("tracenas.search.strategies.base") is None


def test_imports_go_down_the_layers():
    assert upward_imports({"tracenas.arch": {"tracenas.prune.masking"}, "tracenas.prune.masking": {"tracenas.arch"}}) == [
        "tracenas.arch (arch) imports tracenas.prune.masking (prune)"]
    assert upward_imports(import_graph(local=True)) == []


def test_stages_never_import_each_other():
    # the check itself: one stage-to-stage edge (recover importing the export stage) is reported
    assert cross_stage_imports({"tracenas.recover.save": {"tracenas.export.checkpoint", "tracenas.models.pruned"},
                                "tracenas.search.recipes.runner": {"tracenas.search.plots"}}) == [
        "tracenas.recover.save (stage recover) imports tracenas.export.checkpoint (stage export)"]
    assert cross_stage_imports(import_graph(local=True)) == []


def test_the_graph_reads_function_local_imports():
    top, local = import_graph(), import_graph(local=True)
    assert "tracenas.prune.sliced" not in top["tracenas.search.recipes.runner"]  # imported inside a method
    assert "tracenas.prune.sliced" in local["tracenas.search.recipes.runner"]
    assert all(top[m] <= local[m] for m in top)


def test_at_most_ten_modules_at_the_package_root():
    root = sorted(p.name for p in (SRC / PACKAGE).glob("*.py"))
    assert len(root) <= 10, root


def test_strategies_import_without_torch():
    """Every module of search/strategies/ imports with torch and transformers blocked (a fresh interpreter)."""
    names = sorted(p.stem for p in (SRC / PACKAGE / "search" / "strategies").glob("*.py") if p.stem != "__init__")
    code = textwrap.dedent(f"""
        import importlib, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "safetensors"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        for name in {names!r}:
            importlib.import_module("tracenas.search.strategies." + name)
        assert "torch" not in sys.modules
        print(len({names!r}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                          "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(len(names)) and len(names) >= 8


def long_functions(limit: int = 80) -> list[str]:
    """Functions (methods included) of the package longer than `limit` lines, docstrings included."""
    out = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    out.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_over_eighty_lines():
    assert long_functions() == []


TORCH = ("torch", "transformers", "safetensors")


def torch_modules() -> set[str]:
    """The package modules that import torch, transformers or safetensors when imported (directly, or through
    another package module)."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    direct = set()
    for module, path in files.items():
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if isinstance(node, ast.Import) or node.level == 0:
                if any(n.split(".")[0] in TORCH for n in names):
                    direct.add(module)
    graph, heavy = import_graph(), set(direct)
    while True:
        more = {m for m, targets in graph.items() if targets & heavy} - heavy
        if not more:
            return heavy
        heavy |= more


def test_strategies_reach_no_torch_even_inside_functions():
    """search/strategies/ stays torch-free when its functions run too: no import there, function-local ones
    included, reaches a module that imports torch (DarwinLM's `for_plan` once imported the database for its
    default levels)."""
    heavy, local = torch_modules(), import_graph(local=True)
    assert "tracenas.prune.database" in heavy and "tracenas.search.strategies.levels" not in heavy
    files = {_module_name(p): p for p in (SRC / PACKAGE / "search" / "strategies").glob("*.py")}
    found = [f"{m} imports {t}" for m in files for t in sorted(local[m]) if t in heavy]
    for module, path in files.items():
        for node in _imports(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{module} imports {n}" for n in names if n.split(".")[0] in TORCH]
    assert found == []
