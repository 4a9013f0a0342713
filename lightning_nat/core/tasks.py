"""The one table of tasks: built-in declarations, Python registrations, YAML files and entry points.

Code asks this table instead of branching on task names. Python users call :func:`register_task`; installed
packages use the entry point group ``lightning_nat.tasks`` (a Task, a declaration dict, a YAML path, a list of
those, or a callable returning any of them), loaded the first time a name is not found. Wherever a task
name is taken, a task YAML path works too (:func:`get_task`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from lightning_nat.core.imports import DeclarationError, entry_points_of
from lightning_nat.core.readers import load_questions
from lightning_nat.core.task_spec import Task, load_task_file, task_from_dict

TASK_GROUP = "lightning_nat.tasks"  # the entry point group: a public contract
# Filled from the built-in declarations (lightning_nat/taskdefs/*.yaml); register_task adds to it.
TASKS = {t.name: t for t in map(load_task_file, sorted((Path(__file__).parent.parent / "taskdefs").glob("*.yaml")))}
_entry_points_loaded = False


def register_task(task: Task | dict | str | Path, replace: bool = False) -> Task:
    """Register a Task, a declaration dict or a task YAML path; returns the Task.

    The same declaration again is a no-op; another task under a taken name needs ``replace=True``.
    """
    if isinstance(task, dict):
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

    >>> is_task_file("gsm8k"), is_task_file("examples/custom_task/task.yaml"), is_task_file("../../x")
    (False, True, True)
    """
    return name.endswith((".yaml", ".yml", ".json")) or "/" in name or "\\" in name


def find_task(name: str) -> Task | None:
    """The task registered as ``name`` (loading task entry points if needed), or ``None``."""
    global _entry_points_loaded
    if name not in TASKS and not _entry_points_loaded:
        _entry_points_loaded = True
        for ep_name, obj, where in entry_points_of(TASK_GROUP):
            _register_plugin(obj, ep_name, where)
    return TASKS.get(name)


def get_task(name_or_path: Task | str) -> Task:
    """A Task from a Task, a registered name, or a task YAML path (loaded and registered); else a clear error."""
    if isinstance(name_or_path, Task):
        return name_or_path
    name = str(name_or_path)
    if is_task_file(name):
        if not Path(name).is_file():
            raise FileNotFoundError(f"no such task file: {name}")
        return register_task(name)
    task = find_task(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))} "
                         "(or give the path of a task YAML)")
    return task


def _register_plugin(obj: Any, name: str, where: str) -> None:
    if callable(obj) and not isinstance(obj, Task):
        obj = obj()
    for item in obj if isinstance(obj, (list, tuple)) else [obj]:
        if isinstance(item, dict):
            item = {"name": name, **item}
        try:
            register_task(item)
        except (TypeError, ValueError) as exc:
            raise DeclarationError(where, "value", str(exc)) from None


def load_questions_for(task: Task, path: str | None = None, data_dir: str | None = None, limit: int | None = None,
                       hub: bool = False) -> list[dict]:
    """Question records ``{"id", "question", "answer", ...}`` of a task.

    From ``path``, else ``data_dir/<task.local_file>`` (the layout of ``../shared/data``), else the
    task's own file, else, with ``hub=True``, the task's Hub dataset (needs network).
    """
    if path is None and data_dir is not None and task.local_file:
        path = str(Path(data_dir) / task.local_file)
    if path is None and task.data_file:
        path = task.data_file
    if path is not None:
        records = list(load_questions(path, dict(task.fields)).values())
    elif hub and task.hub_id:
        import datasets

        ds = datasets.load_dataset(task.hub_id, task.hub_config, split=task.hub_split)
        records = [{"id": str(i), **task.from_hub(dict(r))} for i, r in enumerate(ds)]
    else:
        raise ValueError(f"no questions for {task.name}: give a file, a data folder, or allow the Hub")
    return records[:limit] if limit else records


def default_data_dir() -> Path | None:
    """The folder laid out like ``../shared/data`` when no ``--data-dir`` is given, or None.

    ``NAT_SHARED_DATA`` names it; else ``../shared/data`` beside the source checkout or the working folder.
    """
    env = os.environ.get("NAT_SHARED_DATA")
    checkout = Path(__file__).resolve().parent.parent
    candidates = [Path(env)] if env else [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if (c / "README.md").is_file()), None)
