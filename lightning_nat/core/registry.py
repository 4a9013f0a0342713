"""Where tasks and tools are registered: built-ins, Python calls, YAML files and entry points.

Python users call :func:`register_task` / :func:`register_tool`. Installed packages can
register through the entry point groups ``lightning_nat.tasks`` (an entry point loading
a :class:`~lightning_nat.core.tasks.Task`, a declaration dict, a YAML path, a list of those,
or a zero-argument callable returning any of them) and ``lightning_nat.tools`` (a plain
function; the entry point's name is the tool's name). Entry points are loaded the
first time a name is not found. Everywhere a task name is taken, a path to a task YAML
works too (:func:`resolve_task`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_nat.core.safe_tool import DEFAULT_TIMEOUT_S, guard

TASK_GROUP = "lightning_nat.tasks"  # entry point group names: a public contract, kept when the modules moved
TOOL_GROUP = "lightning_nat.tools"
# Tools the agent loop and `make_tools` provide themselves.
BUILTIN_TOOLS = ("calculate", "search", "finish")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: the guarded callable the agent gets, its help line, and the user's function."""

    name: str
    call: Callable[[str], str]
    help: str
    function: Callable[..., Any]
    # Seconds per call (a function-calling agent applies it to the function itself).
    timeout: float | None = DEFAULT_TIMEOUT_S


TOOLS: dict[str, ToolSpec] = {}
_entry_points_loaded: set[str] = set()


def default_help(name: str, fn: Callable[..., Any]) -> str:
    """The instruction line of a tool: ``name[argument]:`` and the first line of its docstring.

    >>> def convert(text):
    ...     '''Converts a quantity between units, e.g. 5 km to mi.'''
    >>> default_help("convert", convert)
    'convert[argument]: Converts a quantity between units, e.g. 5 km to mi.'
    """
    doc = (fn.__doc__ or "").strip().splitlines()
    return f"{name}[argument]: {doc[0].strip() if doc else 'a tool.'}"


def register_tool(name: str, function: Callable[[str], Any], help: str | None = None,
                  timeout: float | None = DEFAULT_TIMEOUT_S, replace: bool = False) -> ToolSpec:
    """Register ``function`` as the tool ``name[...]``, under the tool contract (:mod:`lightning_nat.core.safe_tool`).

    Names are lower case (the agent reads tool names case-insensitively); the built-in
    ``calculate``, ``search`` and ``finish`` cannot be replaced. Registering the same
    function again is a no-op; another function under a taken name needs ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"tool name {name!r}: use lower-case letters, digits and underscores")
    if name in BUILTIN_TOOLS:
        raise ValueError(f"tool name {name!r} is built in; choose another name")
    if not callable(function):
        raise ValueError(f"tool {name!r}: {function!r} is not callable")
    old = TOOLS.get(name)
    if old is not None and old.function is not function and not replace:
        raise ValueError(f"tool {name!r} is already registered ({_where(old.function)}); choose another name")
    spec = ToolSpec(name, guard(function, name, timeout), help or default_help(name, function), function, timeout)
    TOOLS[name] = spec
    return spec


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}"


def find_tool(name: str) -> ToolSpec | None:
    """A registered tool, loading the tool entry points if needed; ``None`` when unknown."""
    if name not in TOOLS:
        _load_entry_points(TOOL_GROUP)
    return TOOLS.get(name)


def tool_help(name: str) -> str:
    """The instruction line of a built-in or registered tool."""
    from lightning_nat.core.tasks import _TOOL_HELP

    if name in _TOOL_HELP:
        return _TOOL_HELP[name]
    spec = find_tool(name)
    if spec is None:
        raise KeyError(f"unknown tool {name!r}")
    return spec.help


def register_task(task: Any, replace: bool = False) -> Any:
    """Register a :class:`~lightning_nat.core.tasks.Task`, a declaration dict or a task YAML path; returns the Task.

    Loading the same declaration again is a no-op; another task under a taken name
    needs ``replace=True``.
    """
    from lightning_nat.core.task_spec import load_task_file, task_from_dict
    from lightning_nat.core.tasks import TASKS, Task

    if isinstance(task, dict):
        # The same declaration registered twice is one task; another one under its name is a clash.
        digest = hashlib.sha256(repr(sorted(task.items())).encode()).hexdigest()[:12]
        task = task_from_dict(task, source=f"register_task({task.get('name', '?')!r}, declaration {digest})")
    elif isinstance(task, (str, Path)):
        task = load_task_file(task)
    if not isinstance(task, Task):
        raise TypeError(f"register_task takes a Task, a declaration dict or a YAML path, got {type(task).__name__}")
    old = TASKS.get(task.name)
    if old is not None and old is not task and not replace and not _same_source(old.source, task.source):
        raise ValueError(f"task name {task.name!r} is already registered (from {old.source or 'Python'}); "
                         "choose another name")
    TASKS[task.name] = task
    return task


def _same_source(a: str, b: str) -> bool:
    """Whether two declarations came from the same place (one file however its path was written)."""
    if not a or not b:
        return False
    return a == b or (Path(a).is_file() and Path(b).is_file() and Path(a).resolve() == Path(b).resolve())


def is_task_file(name: str) -> bool:
    """Whether a ``--task`` value is a declaration file rather than a name.

    >>> is_task_file("gsm8k"), is_task_file("examples/custom_task/task.yaml")
    (False, True)
    """
    return name.endswith((".yaml", ".yml", ".json")) or "/" in name or "\\" in name


def find_task(name: str) -> Any:
    """The task registered as ``name`` (loading task entry points if needed), or ``None``."""
    from lightning_nat.core.tasks import TASKS

    if name not in TASKS:
        _load_entry_points(TASK_GROUP)
    return TASKS.get(name)


def resolve_task(name_or_path: Any) -> Any:
    """A Task from a Task, a registered name, or a task YAML path (which is loaded and registered)."""
    from lightning_nat.core.tasks import TASKS, Task

    if isinstance(name_or_path, Task):
        return name_or_path
    name = str(name_or_path)
    if is_task_file(name):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no such task file: {name}")
        return register_task(name)
    task = find_task(name)
    if task is None:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
                       "(or give the path of a task YAML)")
    return task


def _load_entry_points(group: str) -> None:
    """Register what installed packages declare under ``group`` (once per process)."""
    if group in _entry_points_loaded:
        return
    _entry_points_loaded.add(group)
    from importlib.metadata import entry_points

    from lightning_nat.core.imports import DeclarationError

    for ep in entry_points(group=group):
        where = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in is named, not hidden
            raise DeclarationError(where, "value", f"cannot load ({type(exc).__name__}: {exc})") from None
        if group == TOOL_GROUP:
            register_tool(ep.name, obj)
            continue
        _register_plugin_tasks(obj, ep.name, where)


def _register_plugin_tasks(obj: Any, name: str, where: str) -> None:
    from lightning_nat.core.imports import DeclarationError
    from lightning_nat.core.tasks import Task

    if callable(obj) and not isinstance(obj, Task):
        obj = obj()
    for item in obj if isinstance(obj, (list, tuple)) else [obj]:
        if isinstance(item, dict):
            item = {"name": name, **item}
        try:
            register_task(item)
        except (TypeError, ValueError) as exc:
            raise DeclarationError(where, "value", str(exc)) from None
