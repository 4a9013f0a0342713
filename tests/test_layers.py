"""The package's rooms follow the pipeline: no import (lazy ones included) runs back up the stages."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_nat"
# A stage may import from itself and from the stages before it; core is below them all.
ORDER = {"core": 0, "data": 1, "train": 2, "agent": 3, "report": 4, "demo": 5}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lightning_nat"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("lightning_nat")]
    return found


def _stage_modules() -> list[Path]:
    return sorted(p for stage in ORDER for p in (PACKAGE / stage).rglob("*.py"))


def test_every_stage_exists():
    assert all((PACKAGE / stage / "__init__.py").is_file() for stage in ORDER)
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert flat == ["__init__.py", "cli.py"], f"modules outside the stage rooms: {flat}"


@pytest.mark.parametrize("path", _stage_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_back_up_the_stages(path):
    stage = path.relative_to(PACKAGE).parts[0]
    for line, module in _imports(path):
        assert not module.startswith("."), f"{path.name}:{line}: relative import {module} (use lightning_nat.<stage>...)"
        parts = module.split(".")
        target = parts[1] if len(parts) > 1 else "(the package root)"
        assert target in ORDER, f"{path.name}:{line}: {stage} imports {module}, outside the stage rooms"
        assert ORDER[target] <= ORDER[stage], f"{path.name}:{line}: {stage} imports the later stage {module}"
