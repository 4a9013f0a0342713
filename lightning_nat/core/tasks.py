"""Tasks: their declarations, and the one table of them.

A task is a YAML file (or dict) that says everything it needs:

::

    name: units                      # default: the file's stem
    instruction:                     # text ({tools} is replaced by the tools' lines), or
      what: a unit conversion question   #   what + answer: the built-in instruction layout, or
      answer: a number in the asked unit #   from_data: the data's own system turn(s), or
    # instruction: {from: "mypkg.prompts:UNITS"}  # an import path to a string
    prompt_style: native             # optional: reference | native (default: reference where reference_prompts)
    reference_prompts: math          # optional: the paper's prompt family, math | multihop_qa | yesno_qa
    tools: [units.py:convert, calculate]  # built-in names, registered names or import paths
    tool_timeout: 5                  # seconds per call of the task's own tools (default 10)
    metric: units.py:close_enough    # math | qa | yesno | exact, or an import path -> (reward, score)
    extra_metric: reference_exact_math   # optional: reported beside the metric, on the raw answer field
    answer: {gold: number, prediction: none}   # answer extraction: none | number | import path
    data: {file: questions.jsonl, fields: {question: q, answer: a}}   # or {local: x/test.jsonl}
    hub: {id: org/name, config: main, split: test, question: "{body} {question}", answer: "{answer}"}

File paths (``data.file``, ``tools.py:function``) are relative to the YAML's folder.
Every problem is a :class:`~lightning_nat.core.imports.DeclarationError` naming the file and
the field. The built-in tasks are declarations of the same kind (``lightning_nat/taskdefs``).

Code asks the table (:data:`TASKS`) instead of branching on task names. Python users call :func:`register_task`;
installed packages use the entry point group ``lightning_nat.tasks`` (a Task, a declaration dict, a YAML path, a
list of those, or a callable returning any of them), loaded the first time a name is not found. Wherever a task
name is taken, a task YAML path works too (:func:`get_task`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_nat.core import metrics
from lightning_nat.core.imports import DeclarationError, entry_points_of, is_import_path, load_yaml, resolve_import
from lightning_nat.core.prompts import FAMILIES, STYLES
from lightning_nat.core.readers import load_questions
from lightning_nat.core.safe_tool import DEFAULT_TIMEOUT_S
from lightning_nat.core.tools import BUILTIN_TOOLS, TOOLS, find_tool, register_tool, tool_help

FROM_DATA = "from_data"
# name -> (metric, the key of its reward, the key of its graded score)
METRICS: dict[str, tuple[Callable[[str | None, object], dict[str, float]], str, str]] = {
    "math": (metrics.math_metric, "accuracy", "accuracy"),
    "qa": (metrics.qa_metric, "em", "f1"),
    "yesno": (metrics.yesno_metric, "accuracy", "accuracy"),
    "exact": (metrics.exact_match_metric, "accuracy", "accuracy"),
}
# name -> a metric reported beside the main one (on the record's raw answer)
EXTRA_METRICS: dict[str, Callable[[str | None, object], dict[str, float]]] = {
    "reference_exact_math": metrics.reference_exact_math}
EXTRACTORS: dict[str, Callable[[Any], Any] | None] = {"none": None, "number": metrics.extract_gold_number}
_KEYS = {"name", "description", "instruction", "cot_instruction", "prompt_style", "tools", "tool_timeout", "metric",
         "extra_metric", "reference_prompts",
         "answer", "data", "hub"}
_GENERIC_COT = ("Think step by step in plain text, then end with one line of the form 'Final answer: <answer>'. "
                "Write 'Final answer: <answer>'.")


def instruction_for(what: str, tools: tuple[str, ...], answer_hint: str) -> str:
    """The task instruction: what to solve, the action format and the tools' help lines.

    >>> print(instruction_for("a math word problem", ("calculate", "finish"), "a number"))  # doctest: +ELLIPSIS
    Solve a math word problem. Work step by step...
    """
    return (f"Solve {what}. Work step by step. Each of your turns is a short 'Thought:' line with your reasoning, "
            "followed by exactly one 'Action:' line. After each action you receive an 'Observation:' "
            "with its result. Available actions:\n" + "\n".join(f"- {tool_help(t)}" for t in tools)
            + f"\nThe answer given to finish must be {answer_hint}, with nothing else.")


def cot_instruction_for(what: str, answer_hint: str) -> str:
    """The chain-of-thought instruction (no tools): reasoning, then one final-answer line.

    >>> cot_instruction_for("a math word problem", "a single number").endswith("'Final answer: <answer>'.")
    True
    """
    return (f"Solve {what}. Think step by step in plain text, then end with one line of the form "
            f"'Final answer: <answer>', where the answer is {answer_hint}. Write 'Final answer: <answer>'.")


@dataclass(frozen=True)
class Task:
    """One evaluation or training task, as its declaration made it.

    ``reward_key`` names the metric whose value 1.0 makes a trajectory positive;
    ``score_key`` the graded one stored as its score (F1 on HotpotQA).
    """

    name: str
    tools: tuple[str, ...]
    instruction: str
    cot_instruction: str
    metric: Callable[[str | None, object], dict[str, float]]
    local_file: str
    reward_key: str = "accuracy"
    score_key: str = "accuracy"
    gold: Callable[[dict], object] = field(default=lambda rec: rec["answer"])
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "test"
    from_hub: Callable[[dict], dict] = field(default=lambda rec: rec)
    # An extra metric reported beside the main one, on the raw record answer (the reference's exact string).
    extra_metric: Callable[[str | None, object], dict[str, float]] | None = None
    instruction_from_data: bool = False  # the instruction is the data's own system turn(s)
    prompt_style: str | None = None  # a named prompt style (lightning_nat.core.prompts.STYLES)
    reference_prompts: str | None = None  # the reference code's prompt family (lightning_nat.core.prompts.FAMILIES)
    data_file: str | None = None  # the task's own question file (absolute), used without --data-dir
    fields: tuple[tuple[str, str], ...] = ()  # (our field, the file's field) renames of question records
    extract_prediction: Callable[[str | None], str | None] | None = None
    source: str = ""  # where the declaration came from (a YAML path), for messages and re-registration

    def score(self, prediction: str | None, record: dict) -> tuple[bool, float, dict[str, float]]:
        """``(reward, score, all metrics)`` of a prediction for a question record."""
        if self.extract_prediction is not None:
            prediction = self.extract_prediction(prediction)
            if prediction is not None and not isinstance(prediction, str):
                raise TypeError(f"the answer extractor returned {type(prediction).__name__} {prediction!r}; it must "
                                "return a string or None")
        values = self.metric(prediction, self.gold(record))
        if self.extra_metric is not None:
            values = {**values, **self.extra_metric(prediction, record.get("answer"))}
        return values[self.reward_key] == 1.0, values[self.score_key], values


def adapt_metric(fn: Callable[..., Any], where: str) -> Callable[[str | None, object], dict[str, float]]:
    """A user metric as a task metric: ``(reward, score)``, a bool, or ``{"reward", "score", ...}`` in;
    ``{"accuracy": reward, "score": score, ...}`` out. Without a gold answer (``nat solve``) the
    user's function is not called: no gold, no reward.

    >>> adapt_metric(lambda p, g: (p == g, 0.5), "m")("a", "a")
    {'accuracy': 1.0, 'score': 0.5}
    >>> adapt_metric(lambda p, g: {"reward": False, "score": 0.2, "close": 1}, "m")("a", "b")
    {'close': 1.0, 'accuracy': 0.0, 'score': 0.2}
    >>> adapt_metric(lambda p, g: float(g), "m")("a", "")
    {'accuracy': 0.0, 'score': 0.0}
    """

    def metric(prediction: str | None, gold: object) -> dict[str, float]:
        if gold is None or gold == "":
            return {"accuracy": 0.0, "score": 0.0}
        out = fn(prediction, gold)
        extra: dict[str, float] = {}
        if isinstance(out, dict) and "reward" in out:
            reward, score = out["reward"], out.get("score", float(bool(out["reward"])))
            extra = {k: float(v) for k, v in out.items() if k not in ("reward", "score")}
        elif isinstance(out, (tuple, list)) and len(out) == 2:
            reward, score = out
        elif isinstance(out, (bool, int, float)):
            reward, score = bool(out), float(out)
        else:
            raise TypeError(f"metric {where} returned {out!r}; expected (reward, score), a bool, "
                            "or a dict with 'reward' and 'score'")
        return {**extra, "accuracy": float(bool(reward)), "score": float(score)}

    return metric


def _tools(decl: dict, source: str, base: Path | None) -> tuple[str, ...]:
    entries = decl.get("tools", ["finish"])
    if not isinstance(entries, list):
        raise DeclarationError(source, "tools", f"expected a list, got {entries!r}")
    timeout = decl.get("tool_timeout", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < math.inf:
        raise DeclarationError(source, "tool_timeout", f"expected a positive number of seconds, got {timeout!r}")
    names: list[str] = []
    for i, entry in enumerate(entries):
        where = f"tools[{i}]"
        spec: dict[str, Any] = entry if isinstance(entry, dict) else {"function": entry}
        ref = spec.get("function")
        if not isinstance(ref, str):
            raise DeclarationError(source, where, f"expected a tool name or 'module:function', got {entry!r}")
        if is_import_path(ref):
            fn = resolve_import(ref, source, where, base)
            name = spec.get("name") or getattr(fn, "__name__", "")
            try:
                register_tool(name, fn, help=spec.get("help"), timeout=float(spec.get("timeout", timeout)))
            except ValueError as exc:
                raise DeclarationError(source, where, str(exc)) from None
        elif ref in BUILTIN_TOOLS or find_tool(ref) is not None:
            name = ref
        else:
            known = ", ".join([*BUILTIN_TOOLS, *sorted(TOOLS)])
            raise DeclarationError(source, where, f"unknown tool {ref!r} (known: {known}); "
                                   "or give an import path 'module:function' or 'file.py:function'")
        names.append(name)
    return tuple(dict.fromkeys([*names, "finish"]))


def _metric(decl: dict, source: str, base: Path | None) -> tuple[Callable, str, str]:
    ref = decl.get("metric")
    if ref is None:
        raise DeclarationError(source, "metric", f"missing; give one of {', '.join(METRICS)} or an import path")
    if isinstance(ref, str) and ref in METRICS:
        return METRICS[ref]
    if isinstance(ref, str) and is_import_path(ref):
        fn = resolve_import(ref, source, "metric", base)
        if not callable(fn):
            raise DeclarationError(source, "metric", f"{ref!r} is not callable")
        return adapt_metric(fn, ref), "accuracy", "score"
    raise DeclarationError(source, "metric", f"unknown metric {ref!r}; expected one of {', '.join(METRICS)} "
                           "or an import path 'module:function' returning (reward, score)")


def _named(ref: Any, table: dict[str, Any], source: str, field: str, base: Path | None) -> Any:
    """A built-in of ``table`` by name, or a callable by import path; None when not given."""
    if ref is None or (isinstance(ref, str) and ref in table):
        return table.get(ref)
    if isinstance(ref, str) and is_import_path(ref):
        fn = resolve_import(ref, source, field, base)
        if callable(fn):
            return fn
    raise DeclarationError(source, field, f"expected one of {', '.join(table)} or an import path, got {ref!r}")


def _instruction(decl: dict, tools: tuple[str, ...], source: str, base: Path | None) -> tuple[str, str, bool]:
    """``(instruction, chain-of-thought instruction, from the data?)``."""
    value = decl.get("instruction")
    cot = decl.get("cot_instruction")
    if cot is not None and not isinstance(cot, str):
        raise DeclarationError(source, "cot_instruction", f"expected text, got {cot!r}")
    if value == FROM_DATA:
        return "", cot or _GENERIC_COT, True
    if isinstance(value, dict) and set(value) == {"what", "answer"}:
        what, hint = str(value["what"]), str(value["answer"])
        return instruction_for(what, tools, hint), cot or cot_instruction_for(what, hint), False
    if isinstance(value, dict) and set(value) == {"from"}:
        obj = resolve_import(value["from"], source, "instruction.from", base)
        text = obj() if callable(obj) else obj
        if not isinstance(text, str) or not text.strip():
            raise DeclarationError(source, "instruction.from", f"{value['from']!r} gave {text!r}, not text")
        value = text
    if isinstance(value, str) and value.strip():
        return value.replace("{tools}", "\n".join(f"- {tool_help(t)}" for t in tools)), cot or _GENERIC_COT, False
    raise DeclarationError(source, "instruction", f"expected text, '{FROM_DATA}', {{what, answer}} or {{from: "
                           f"'module:NAME'}}, got {value!r}")


def _mapping(decl: dict, key: str, source: str, allowed: set[str]) -> dict:
    value = decl.get(key) or {}
    if not isinstance(value, dict):
        raise DeclarationError(source, key, f"expected a mapping, got {value!r}")
    unknown = set(value) - allowed
    if unknown:
        raise DeclarationError(source, f"{key}.{sorted(unknown)[0]}", f"unknown field; expected {', '.join(sorted(allowed))}")
    return value


def task_from_dict(decl: dict, source: str = "<dict>", base_dir: str | Path | None = None) -> Task:
    """A :class:`Task` from a declaration (see the module doc)."""
    if not isinstance(decl, dict):
        raise DeclarationError(source, "(top level)", f"expected a mapping, got {type(decl).__name__}")
    unknown = set(decl) - _KEYS
    if unknown:
        raise DeclarationError(source, sorted(unknown)[0], f"unknown field; expected {', '.join(sorted(_KEYS))}")
    base = Path(base_dir) if base_dir is not None else None
    name = decl.get("name")
    if not isinstance(name, str) or not name.strip() or ":" in name:
        raise DeclarationError(source, "name", f"expected a task name without ':', got {name!r}")
    tools = _tools(decl, source, base)
    instruction, cot, from_data = _instruction(decl, tools, source, base)
    metric, reward_key, score_key = _metric(decl, source, base)
    answer = _mapping(decl, "answer", source, {"gold", "prediction"})
    gold_fn = _named(answer.get("gold"), EXTRACTORS, source, "answer.gold", base)
    pred_fn = _named(answer.get("prediction"), EXTRACTORS, source, "answer.prediction", base)
    data = _mapping(decl, "data", source, {"file", "local", "fields"})
    fields = data.get("fields") or {}
    if not isinstance(fields, dict) or not all(isinstance(v, str) for v in fields.values()) \
            or not set(fields) <= {"id", "question", "answer", "system"}:
        raise DeclarationError(source, "data.fields", f"expected a mapping of id/question/answer/system to field "
                               f"names, got {fields!r}")
    data_file = None
    if data.get("file"):
        path = Path(str(data["file"]))
        path = path if path.is_absolute() or base is None else base / path
        if not path.is_file():
            raise DeclarationError(source, "data.file", f"no such file {path}")
        data_file = str(path.resolve())
    hub = _mapping(decl, "hub", source, {"id", "config", "split", "question", "answer"})
    extra: dict[str, Any] = {}
    if gold_fn is not None:
        extra["gold"] = lambda rec, f=gold_fn: f(rec["answer"])
    if "question" in hub or "answer" in hub:
        q, a = str(hub.get("question", "{question}")), str(hub.get("answer", "{answer}"))
        extra["from_hub"] = lambda rec: {"question": q.format_map(rec), "answer": a.format_map(rec)}
    for key, what, allowed in (("prompt_style", "style", STYLES), ("reference_prompts", "family", FAMILIES)):
        if decl.get(key) is not None and decl[key] not in allowed:
            raise DeclarationError(source, key, f"unknown {what} {decl[key]!r}; expected one of {', '.join(allowed)}")
    return Task(name=name, tools=tools, instruction=instruction, cot_instruction=cot, metric=metric,
                local_file=str(data.get("local") or ""), reward_key=reward_key, score_key=score_key,
                hub_id=hub.get("id"), hub_config=hub.get("config"), hub_split=str(hub.get("split", "test")),
                instruction_from_data=from_data, prompt_style=decl.get("prompt_style"),
                reference_prompts=decl.get("reference_prompts"), data_file=data_file,
                fields=tuple(sorted(fields.items())), extract_prediction=pred_fn, source=source,
                extra_metric=_named(decl.get("extra_metric"), EXTRA_METRICS, source, "extra_metric", base), **extra)


def load_task_file(path: str | Path) -> Task:
    """The Task a YAML (or JSON) declaration file describes; its name defaults to the file's stem."""
    path = Path(path)
    decl = load_yaml(path)
    if isinstance(decl, dict):
        decl.setdefault("name", path.stem)
    return task_from_dict(decl, source=str(path), base_dir=path.resolve().parent)


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
