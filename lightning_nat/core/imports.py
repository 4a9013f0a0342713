"""Import paths in task declarations (``package.module:attr`` or ``file.py:attr``), and reading them safely.

A file path is resolved against the declaration's folder. A task file is code (as in lm-evaluation-harness),
so it may name its own files, the user's project and this package, but not an installed module
(``os:system`` as a tool would run the model's action as a shell command) unless the user trusts it:
``--trust-task-imports`` or ``NAT_TRUST_TASK_IMPORTS=1``. Installed packages register entry points instead.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

import yaml

TRUST_ENV = "NAT_TRUST_TASK_IMPORTS"


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


def trust_task_imports() -> None:
    """Let task declarations name installed modules (the user vouched for their task files)."""
    os.environ[TRUST_ENV] = "1"


def installed_module(name: str) -> bool:
    """Whether module ``name`` is built in or lives in the standard library or site-packages (not this package).

    >>> installed_module("os"), installed_module("sys"), installed_module("lightning_nat.core.metrics")
    (True, True, False)
    """
    if name == "lightning_nat" or name.startswith("lightning_nat."):
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False  # the import itself fails later, with its own message
    if spec is None:
        return False
    if spec.origin in (None, "built-in", "frozen"):
        return True
    origin = Path(spec.origin).resolve()
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(origin.is_relative_to(Path(r).resolve()) for r in roots)


def resolve_import(spec: str, source: str, field: str, base_dir: str | Path | None = None) -> Any:
    """The object an import path names, or a :class:`DeclarationError` naming ``source`` and ``field``.

    >>> resolve_import("lightning_nat.core.metrics:normalize_answer", "task.yaml", "metric")("The Cat")
    'cat'
    >>> resolve_import("os:system", "task.yaml", "tools[0]")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_nat.core.imports.DeclarationError: task.yaml: field 'tools[0]': 'os:system' is an installed module's ...
    """
    if not isinstance(spec, str) or not is_import_path(spec):
        raise DeclarationError(source, field, f"expected an import path 'module:function', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(base_dir or "") / module_name  # an absolute path stays itself
            if not path.is_file():
                raise DeclarationError(source, field, f"{spec!r}: no such file {path}")
            module = _load_file_module(path.resolve())
        else:
            if installed_module(module_name) and os.environ.get(TRUST_ENV) != "1":
                raise DeclarationError(source, field, f"{spec!r} is an installed module's (the standard library or "
                                       "site-packages); a task file may name its own files (file.py:function), your "
                                       "project's modules or registered entry points. A task file is code: if you "
                                       f"trust this one, pass --trust-task-imports (or set {TRUST_ENV}=1)")
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


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases: a few lines of ``&a [*b, *b, ...]`` expand to billions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"an alias (*{self.peek_event().anchor}) at line {mark.line + 1}: aliases are not "
                                 "accepted in task files; write the value out")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> Any:
    """A task file's YAML (aliases refused), or a :class:`DeclarationError` naming the file."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DeclarationError(str(path), "(file)", f"not valid YAML ({' '.join(str(exc).split())})") from None


def entry_points_of(group: str) -> list[tuple[str, Any, str]]:
    """``(name, loaded object, where)`` of every installed entry point of ``group``; a broken one is a located error."""
    from importlib.metadata import entry_points  # imported when a name is not found: slow to import

    out = []
    for ep in entry_points(group=group):
        where = f"entry point {ep.name} = {ep.value}"
        try:
            out.append((ep.name, ep.load(), where))
        except Exception as exc:  # a broken plug-in is named, not hidden
            raise DeclarationError(where, "value", f"cannot load ({type(exc).__name__}: {exc})") from None
    return out
