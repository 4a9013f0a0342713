"""No task is special-cased: built-in task names appear in the package only in their own declarations."""

import ast
import re
from pathlib import Path

import yaml

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_nat"
DECLARATIONS = PACKAGE / "taskdefs"
# The demo's task is declared by the demo, in this module.
OTHER_DECLARATIONS = {"arith": PACKAGE / "demo" / "synthetic.py"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def mentions(source: str, names: set[str]) -> list[tuple[int, str, str]]:
    """``(line, name, text)`` for every identifier or string (docstrings aside) that names a task."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names))) + r")\b", re.IGNORECASE)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, (ast.arg, ast.keyword)):
            text = node.arg or ""
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            text = node.name
        else:
            continue
        for match in pattern.finditer(text):
            found.append((getattr(node, "lineno", 0), match.group(1).lower(), text))
    return found


def builtin_names() -> set[str]:
    names = {yaml.safe_load(p.read_text())["name"] for p in DECLARATIONS.glob("*.yaml")}
    assert names, "no built-in declarations found"
    return names | set(OTHER_DECLARATIONS)


def test_the_check_catches_special_casing():
    code = 'def f(task):\n    """Unlike gsm8k, ..."""\n    if task.name == "hotpotqa":\n        return TASKS["arith"]\n'
    assert [(line, name) for line, name, _ in mentions(code, {"hotpotqa", "arith", "gsm8k"})] == \
        [(3, "hotpotqa"), (4, "arith")]


def test_no_builtin_task_name_outside_its_declaration():
    names = builtin_names()
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, name, text in mentions(path.read_text(), names):
            if OTHER_DECLARATIONS.get(name) != path:
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {name!r} in {text!r}")
    for path in sorted(DECLARATIONS.glob("*.yaml")):
        for name in names - {yaml.safe_load(path.read_text())["name"]}:
            if re.search(rf"\b{name}\b", path.read_text(), re.IGNORECASE):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}: {name!r}")
    assert not offenders, "task names special-cased outside their declarations:\n" + "\n".join(offenders)
