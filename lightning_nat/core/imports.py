"""Import paths in task declarations: ``package.module:attr`` or ``file.py:attr``.

A declaration names its own code (a tool, a metric, an answer extractor) by an
import path. A file path is resolved against the declaration's folder, so a task
folder can hold its tools beside its YAML without being an installed package.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


class DeclarationError(ValueError):
    """A task declaration that cannot be used; the message names the file and the field."""

    def __init__(self, source: str, field: str, problem: str):
        self.source, self.field, self.problem = source, field, problem
        super().__init__(f"{source}: field '{field}': {problem}")


def is_import_path(text: str) -> bool:
    """Whether ``text`` looks like ``module:attr`` (as opposed to a registered name).

    >>> is_import_path("mypkg.units:convert"), is_import_path("tools.py:convert"), is_import_path("calculate")
    (True, True, False)
    """
    module, sep, attr = text.partition(":")
    return bool(sep and module and attr and attr.replace(".", "").replace("_", "").isalnum())


def _load_file_module(path: Path) -> Any:
    # A stable, path-derived module name: the same file imported twice is one module.
    name = "_nat_decl_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + path.stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def resolve_import(spec: str, source: str, field: str, base_dir: str | Path | None = None) -> Any:
    """The object an import path names, or a :class:`DeclarationError` naming ``source`` and ``field``.

    >>> resolve_import("math:sqrt", "task.yaml", "metric")(4.0)
    2.0
    >>> resolve_import("math:nope", "task.yaml", "metric")
    Traceback (most recent call last):
    ...
    lightning_nat.core.imports.DeclarationError: task.yaml: field 'metric': 'math:nope': module 'math' has no attribute 'nope'
    """
    if not isinstance(spec, str) or not is_import_path(spec):
        raise DeclarationError(source, field, f"expected an import path 'module:function', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            if not path.is_file():
                raise DeclarationError(source, field, f"{spec!r}: no such file {path}")
            module = _load_file_module(path.resolve())
        else:
            module = importlib.import_module(module_name)
    except DeclarationError:
        raise
    except Exception as exc:  # any failure to import is the declaration's problem, reported as such
        raise DeclarationError(source, field, f"cannot import {spec!r} ({type(exc).__name__}: {exc})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DeclarationError(source, field, f"{spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj
