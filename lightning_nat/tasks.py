"""The task registry: one small declaration per task, looked up by name.

A task says which tools its agent has, how its instruction reads, where its
questions come from and how an answer is scored. Code elsewhere asks the
registry (``TASKS[name]``) instead of branching on task names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import metrics

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


def instruction_for(what: str, tools: tuple[str, ...], answer_hint: str) -> str:
    """The task instruction: what to solve, the action format and the tools.

    >>> print(instruction_for("a math word problem", ("calculate", "finish"), "a number"))  # doctest: +ELLIPSIS
    Solve a math word problem. Work step by step...
    """
    lines = [f"- {_TOOL_HELP[t]}" for t in tools]
    return (f"Solve {what}. " + _ACTION_RULES + "\n".join(lines)
            + f"\nThe answer given to finish must be {answer_hint}, with nothing else.")


@dataclass(frozen=True)
class Task:
    """One evaluation or training task."""

    name: str
    tools: tuple[str, ...]
    instruction: str
    metric: Callable[[str | None, object], dict[str, float]]
    gold: Callable[[dict], object] = field(default=lambda rec: rec["answer"])
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str = "test"

    @property
    def primary_metric(self) -> str:
        return next(iter(self.metric("", "")))


_MATH_INSTRUCTION = instruction_for("a math word problem", ("calculate", "finish"), "a single number")
_QA_INSTRUCTION = instruction_for("a question that may need several facts", ("search", "finish"), "a short phrase")
_YESNO_INSTRUCTION = instruction_for("a yes/no question that needs implicit reasoning", ("search", "finish"), "yes or no")


def _math(name: str, hub_id: str | None = None, hub_config: str | None = None, split: str = "test") -> Task:
    return Task(name, ("calculate", "finish"), _MATH_INSTRUCTION, metrics.math_metric,
                gold=lambda rec: metrics.extract_gold_number(rec["answer"]), hub_id=hub_id, hub_config=hub_config,
                hub_split=split)


TASKS: dict[str, Task] = {
    "gsm8k": _math("gsm8k", "openai/gsm8k", "main"),
    "asdiv": _math("asdiv", "EleutherAI/asdiv", split="validation"),
    "svamp": _math("svamp", "ChilleD/SVAMP"),
    "multiarith": _math("multiarith", "ChilleD/MultiArith"),
    "hotpotqa": Task("hotpotqa", ("search", "finish"), _QA_INSTRUCTION, metrics.qa_metric,
                     hub_id="hotpotqa/hotpot_qa", hub_config="distractor", hub_split="validation"),
    "strategyqa": Task("strategyqa", ("search", "finish"), _YESNO_INSTRUCTION, metrics.yesno_metric,
                       hub_id="ChilleD/StrategyQA"),
}


def get_task(name: str) -> Task:
    """The registered task ``name``, or a clear error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
