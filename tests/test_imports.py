"""The package's import graph: no cycle at import time, no new lazy cycle, light imports where `nat fit` starts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_nat"
# Lazy (function-level) imports that still go round: none may (the list can only stay empty).
KNOWN_LAZY_CYCLES: list[set[str]] = []


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _type_checking_nodes(tree: ast.Module) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:``: never run, so never part of a cycle."""
    skip: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(ast.walk(child))
    return skip


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, all edges) between the package's modules; importing a.b.c also runs a.b."""
    mods = _modules()
    top: dict[str, set[str]] = {m: set() for m in mods}
    every: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if node in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            targets = set()
            for name in names:
                parts = name.split(".")
                targets.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in mods)
            targets.discard(mod)
            every[mod] |= targets
            if node in tree.body:
                top[mod] |= targets
    return top, every


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v] & edges.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports():
    top, every = import_graph()
    assert "lightning_nat.core.jsonl" in top["lightning_nat.core.trajectory"]
    assert "lightning_nat.train.tokenization" in top["lightning_nat.train.model"]  # `from ...tokenization import IGNORE_INDEX`
    assert "lightning_nat.data.build" in every["lightning_nat.demo.run"] - top["lightning_nat.demo.run"]  # a lazy import
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle():
    top, every = import_graph()
    assert cycles(top) == []
    assert sorted(map(sorted, cycles(every))) == sorted(map(sorted, KNOWN_LAZY_CYCLES))
    assert not cycles({m: every[m] for m in ("lightning_nat.core.readers", "lightning_nat.core.trajectory")})
    assert "lightning_nat.core.readers" not in every["lightning_nat.core.trajectory"]  # the record does not know its readers
    assert "lightning_nat.callbacks" not in every["lightning_nat.report.plot"]  # plotting needs no Lightning callback
    assert "lightning_nat.agent.react" not in every["lightning_nat.agent.policies"]  # the policies need STOP, not the agent
    assert not {"lightning_nat.agent.function_calling", "lightning_nat.agent.config"} & every["lightning_nat.agent.react"]


def test_every_module_imports_in_a_fresh_interpreter():
    code = ("import importlib, pkgutil, lightning_nat\n"
            "for m in pkgutil.walk_packages(lightning_nat.__path__, 'lightning_nat.'):\n"
            "    importlib.import_module(m.name)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_callbacks_import_lazily():
    code = ("import sys\nimport lightning_nat.callbacks\n"
            "print(sorted(m for m in ('sympy', 'lightning_nat.agent.react', 'lightning_nat.core.tools') if m in sys.modules))\n"
            "from lightning_nat.callbacks import DevPerplexity, ExportHF\n"
            "print(sorted(m for m in ('lightning_nat.agent.react', 'lightning_nat.core.tools') if m in sys.modules))\n"
            "from lightning_nat.callbacks import ReActEval\n"
            "print(ReActEval.__module__, 'lightning_nat.agent.react' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["[]", "[]", "lightning_nat.agent.react_eval True"]
