"""The type of an arithmetic episode's first mistake, read from its actions.

One classifier labels both the teacher's negatives (the mix the strategies train on) and the
trained models' test episodes, so the paper's §5.3 question, does NAT make fewer of the
negatives' kinds of error than NUT, can be asked of the demo. The types are the scripted
teacher's failure modes, plus ``made_up_number`` (an operand found nowhere in the episode so
far: a copying failure the teacher never makes), ``unfinished`` and ``other``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lightning_nat.demo.synthetic import apply_op

ERROR_TYPES = ("wrong_operand", "wrong_operator", "skip_step", "finish_early", "stale_number", "made_up_number",
               "unfinished", "other")
_CALC = re.compile(r"^\s*Action:\s*calculate\[\s*(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*\]\s*$", re.M)
_FINISH = re.compile(r"^\s*Action:\s*finish\[\s*(-?\d+(?:\.\d+)?)\s*\]\s*$", re.M)


def classify_episode(start: int, steps: Sequence[Sequence], messages: Sequence[dict]) -> str:
    """``correct`` or the type of the first action that leaves the correct procedure.

    ``steps`` are the problem's ``(operator, operand)`` pairs; ``messages`` the episode's turns.

    >>> good = [{"role": "assistant", "content": "Thought: x\\nAction: calculate[5 + 3]"},
    ...         {"role": "user", "content": "Observation: 8"},
    ...         {"role": "assistant", "content": "Thought: y\\nAction: finish[8]"}]
    >>> classify_episode(5, [("+", 3)], good)
    'correct'
    >>> classify_episode(5, [("+", 3)], [{"role": "assistant", "content": "Action: calculate[5 * 3]"}])
    'wrong_operator'
    >>> classify_episode(5, [("+", 3), ("-", 2)], [{"role": "assistant", "content": "Action: calculate[5 - 2]"}])
    'skip_step'
    >>> classify_episode(5, [("+", 3), ("-", 2)], [{"role": "assistant", "content": "Action: calculate[47 + 3]"}])
    'made_up_number'
    >>> classify_episode(5, [("+", 3), ("-", 2)], [{"role": "assistant", "content": "Action: finish[5]"}])
    'finish_early'
    """
    value: float = start
    seen = [float(start)]
    k = 0
    for text in (m["content"] for m in messages if m["role"] == "assistant"):
        finish, calc = _FINISH.search(text), _CALC.search(text)
        if finish:
            if float(finish.group(1)) != value:
                return "other"
            return "correct" if k == len(steps) else "finish_early"
        if not calc or k >= len(steps):
            return "other"
        x, op, y = float(calc.group(1)), calc.group(2), float(calc.group(3))
        want_op, want_b = steps[k][0], float(steps[k][1])
        if x != value:
            return "stale_number" if x in seen else "made_up_number"
        if (op, y) != (want_op, want_b):
            if k + 1 < len(steps) and (op, y) == (steps[k + 1][0], float(steps[k + 1][1])):
                return "skip_step"
            if op == want_op:
                return "wrong_operand"
            if y == want_b:
                return "wrong_operator"
            return "other"
        value = apply_op(value, op, y)
        seen.append(value)
        k += 1
    return "unfinished"


def error_mix(labels: Sequence[str]) -> dict[str, float]:
    """The share of ``labels`` that is each error type (over all of them, ``correct`` ones included).

    >>> error_mix(["correct", "skip_step", "skip_step", "other"])["skip_step"]
    0.5
    """
    n = len(labels)
    return {t: round(sum(lab == t for lab in labels) / n, 4) if n else 0.0 for t in ERROR_TYPES}
