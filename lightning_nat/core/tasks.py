"""The task registry: one small declaration per task, looked up by name.

A task says which tools its agent has, how its instruction reads, where its
questions come from and how an answer is scored. Code elsewhere asks the
registry (``TASKS[name]``) instead of branching on task names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_ACTION_RULES = (
    "Work step by step. Each of your turns is a short 'Thought:' line with your reasoning, "
    "followed by exactly one 'Action:' line. After each action you receive an 'Observation:' "
    "with its result. Available actions:\n"
)
_TOOL_HELP = {
    "calculate": "calculate[expression]: evaluates an arithmetic expression such as (12 + 7) * 3 / 4 and returns the number.",
    "search": "search[query]: looks the query up and returns the most relevant passages.",
    "finish": "finish[answer]: gives your final answer and ends the task.",
}


def instruction_for(what: str, tools: tuple[str, ...], answer_hint: str,
                    help: Callable[[str], str] | None = None) -> str:
    """The task instruction: what to solve, the action format and the tools.

    ``help`` gives a tool's instruction line (default: the built-in tools' lines).

    >>> print(instruction_for("a math word problem", ("calculate", "finish"), "a number"))  # doctest: +ELLIPSIS
    Solve a math word problem. Work step by step...
    """
    lines = [f"- {help(t) if help else _TOOL_HELP[t]}" for t in tools]
    return (f"Solve {what}. " + _ACTION_RULES + "\n".join(lines)
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
    """One evaluation or training task.

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
    # Declarations (lightning_nat.core.task_spec) also set these.
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


def _builtin_tasks() -> dict[str, Task]:
    """The built-in tasks: the YAML declarations in ``lightning_nat/taskdefs``."""
    from lightning_nat.core.task_spec import load_builtin_tasks

    return load_builtin_tasks()


# Filled from the declarations; `lightning_nat.core.registry.register_task` adds to it.
TASKS: dict[str, Task] = _builtin_tasks()


def load_questions_for(task: Task, path: str | None = None, data_dir: str | None = None, limit: int | None = None,
                       hub: bool = False) -> list[dict]:
    """Question records ``{"id", "question", "answer", ...}`` of a task.

    From ``path``, else ``data_dir/<task.local_file>`` (the layout of ``../shared/data``), else,
    with ``hub=True``, the task's Hub dataset (needs network).
    """
    from pathlib import Path

    from lightning_nat.core.readers import load_questions

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
    import os

    env = os.environ.get("NAT_SHARED_DATA")
    checkout = Path(__file__).resolve().parent.parent
    candidates = [Path(env)] if env else [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if (c / "README.md").is_file()), None)


def get_task(name: str) -> Task:
    """The registered task ``name`` (or the task YAML at that path), or a clear error listing the known ones."""
    from lightning_nat.core.registry import resolve_task

    return resolve_task(name)
