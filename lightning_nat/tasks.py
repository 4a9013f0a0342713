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

    def score(self, prediction: str | None, record: dict) -> tuple[bool, float, dict[str, float]]:
        """``(reward, score, all metrics)`` of a prediction for a question record."""
        values = self.metric(prediction, self.gold(record))
        return values[self.reward_key] == 1.0, values[self.score_key], values


_MATH = ("a math word problem", "a single number")
_QA = ("a question that may need several facts", "a short phrase")
_YESNO = ("a yes/no question that needs implicit reasoning", "yes or no")


def _math(name: str, local_file: str, hub_id: str, hub_config: str | None = None, split: str = "test",
          from_hub: Callable[[dict], dict] = lambda rec: rec) -> Task:
    return Task(name, ("calculate", "finish"), instruction_for(_MATH[0], ("calculate", "finish"), _MATH[1]),
                cot_instruction_for(*_MATH), metrics.math_metric, local_file,
                gold=lambda rec: metrics.extract_gold_number(rec["answer"]), hub_id=hub_id, hub_config=hub_config,
                hub_split=split, from_hub=from_hub)


TASKS: dict[str, Task] = {
    "gsm8k": _math("gsm8k", "gsm8k/test.jsonl", "openai/gsm8k", "main"),
    "asdiv": _math("asdiv", "asdiv/test.jsonl", "EleutherAI/asdiv", split="validation",
                   from_hub=lambda r: {"question": f"{r['body']} {r['question']}", "answer": r["answer"].split(" (")[0]}),
    "svamp": _math("svamp", "svamp/test.jsonl", "ChilleD/SVAMP",
                   from_hub=lambda r: {"question": f"{r['Body']} {r['Question']}", "answer": str(r["Answer"])}),
    "multiarith": _math("multiarith", "multiarith/test.jsonl", "ChilleD/MultiArith",
                        from_hub=lambda r: {"question": r["question"], "answer": str(r["final_ans"])}),
    "hotpotqa": Task("hotpotqa", ("search", "finish"), instruction_for(_QA[0], ("search", "finish"), _QA[1]),
                     cot_instruction_for(*_QA), metrics.qa_metric, "hotpotqa/dev_500.json", reward_key="em",
                     score_key="f1", hub_id="hotpotqa/hotpot_qa", hub_config="distractor", hub_split="validation"),
    "strategyqa": Task("strategyqa", ("search", "finish"), instruction_for(_YESNO[0], ("search", "finish"), _YESNO[1]),
                       cot_instruction_for(*_YESNO), metrics.yesno_metric, "strategyqa/test_500.jsonl",
                       hub_id="ChilleD/StrategyQA"),
}


def load_questions_for(task: Task, path: str | None = None, data_dir: str | None = None, limit: int | None = None,
                       hub: bool = False) -> list[dict]:
    """Question records ``{"id", "question", "answer", ...}`` of a task.

    From ``path``, else ``data_dir/<task.local_file>`` (the layout of ``../shared/data``), else,
    with ``hub=True``, the task's Hub dataset (needs network).
    """
    from pathlib import Path

    from .readers import load_questions

    if path is None and data_dir is not None:
        path = str(Path(data_dir) / task.local_file)
    if path is not None:
        records = list(load_questions(path).values())
    elif hub and task.hub_id:
        import datasets

        ds = datasets.load_dataset(task.hub_id, task.hub_config, split=task.hub_split)
        records = [{"id": str(i), **task.from_hub(dict(r))} for i, r in enumerate(ds)]
    else:
        raise ValueError(f"no questions for {task.name}: give a file, a data folder, or allow the Hub")
    return records[:limit] if limit else records


def get_task(name: str) -> Task:
    """The registered task ``name``, or a clear error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
