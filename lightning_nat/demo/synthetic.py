"""A synthetic arithmetic task and a scripted ReAct teacher with realistic failure modes.

The problems are multi-step word problems with integer answers, generated from a seed.
The teacher plays GPT-3.5's part in the paper: it reasons step by step and calls the
real calculator, and at configurable rates (higher at higher temperature) it makes the
mistakes agents make: a wrong operand, a wrong operator, a skipped step, finishing
early, or copying a stale intermediate number. The real agent loop and metric then label
its trajectories, so many come out negative.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from lightning_nat.core.prompts import make_spec, split_prompt

NAMES = ["Mia", "Leo", "Ava", "Sam", "Zoe", "Ben", "Ivy", "Max", "Eva", "Tom", "Lily", "Noah"]
ITEMS = ["apple", "marble", "coin", "card", "book", "shell", "sticker", "pencil", "cookie", "stamp"]
START = ["{name} has {a} {item}s.", "{name} starts with {a} {item}s.", "There are {a} {item}s in {name}'s box."]
PHRASES = {
    "+": ["{name} buys {b} more {item}s.", "{name} finds {b} more.", "A friend gives {name} {b} {item}s."],
    "-": ["{name} gives away {b} {item}s.", "{name} loses {b} of them.", "{name} sells {b} {item}s."],
    "*": ["Then the number of {item}s grows {b} times.", "{name} ends up with {b} times as many."],
    "/": ["{name} shares them equally among {b} friends and keeps one share.", "{name} splits them into {b} equal "
          "piles and keeps one pile."],
}
# The teacher restates the sentence it acts on, then names the operation.
VERBS = {"+": "add", "-": "subtract", "*": "multiply by", "/": "divide by"}
QUESTION = ["How many {item}s does {name} have now?", "How many {item}s are left?", "What is the number of {item}s now?"]

# The demo's task, declared like any user task. Its instruction is short on purpose: the demo's tiny model
# trains on CPU, where every token costs.
ARITH_DECLARATION = {
    "name": "arith",
    "instruction": "Solve the word problem step by step: one 'Thought:' and one 'Action:' per turn, "
                   "using calculate[expression], then finish[number].",
    "cot_instruction": "Solve a math word problem. Think step by step in plain text, then end with one line of the "
                       "form 'Final answer: <answer>', where the answer is a single number. "
                       "Write 'Final answer: <answer>'.",
    "tools": ["calculate", "finish"],
    "metric": "math",
    "answer": {"gold": "number"},
    "data": {"local": "arith/test.jsonl"},
}


def arith_task():  # -> lightning_nat.core.tasks.Task (imported lazily: the table of tasks loads entry points)
    """The demo's task, registered (also the ``lightning_nat.tasks`` entry point ``arith``)."""
    from lightning_nat.core.tasks import register_task

    return register_task(ARITH_DECLARATION)


@dataclass
class Problem:
    id: str
    question: str
    answer: int
    start: int
    steps: list[tuple[str, int]]
    clauses: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {"id": self.id, "question": self.question, "answer": str(self.answer)}


def make_problem(rng: random.Random, pid: str, min_steps: int = 2, max_steps: int = 4) -> Problem:
    """One problem of ``min_steps`` to ``max_steps`` operations whose every intermediate is a small positive integer.

    >>> p = make_problem(random.Random(0), "p0"); p.start, p.steps, p.answer
    (3, [('/', 3), ('+', 17), ('*', 4)], 72)
    """
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = start = rng.randint(2, 30)
    steps: list[tuple[str, int]] = []
    for _ in range(rng.randint(min_steps, max_steps)):
        choices = ["+", "-"] + (["*"] if value <= 40 else []) + ([d for d in (2, 3, 4, 5) if value % d == 0] and ["/"])
        op = rng.choice(choices)
        if op == "-" and value <= 2:
            op = "+"
        if op == "+":
            b = rng.randint(2, 20)
        elif op == "-":
            b = rng.randint(1, value - 1)
        elif op == "*":
            b = rng.randint(2, 4)
        else:
            b = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
        steps.append((op, b))
        value = apply_op(value, op, b)
    clauses = [rng.choice(PHRASES[op]).format(name=name, b=b, item=item) for op, b in steps]
    parts = [rng.choice(START).format(name=name, a=start, item=item), *clauses,
             rng.choice(QUESTION).format(name=name, item=item)]
    return Problem(pid, " ".join(parts), value, start, steps, clauses)


def apply_op(value: float, op: str, b: float) -> float:
    """``value op b``, division floored (one of the problems' exact divisions, or a mistaken one); ``/ 0`` keeps it.

    >>> apply_op(7, "/", 2), apply_op(7.0, "/", 0), apply_op(7, "-", 9)
    (3, 7.0, -2)
    """
    return {"+": value + b, "-": value - b, "*": value * b, "/": value // b if b else value}[op]


def make_problems(n: int, seed: int, min_steps: int = 2, max_steps: int = 4, prefix: str = "p") -> list[Problem]:
    """``n`` distinct problems, deterministic from ``seed``."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        p = make_problem(rng, f"{prefix}{len(out)}", min_steps, max_steps)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


FAILURE_MODES = ("wrong_operand", "wrong_operator", "skip_step", "finish_early", "stale_number")


@dataclass
class ScriptedTeacher:
    """A ReAct policy for the synthetic task with injected mistakes.

    An episode goes wrong with probability ``error_rate * (0.5 + temperature)``; the kind
    of mistake is drawn from ``mode_weights``. Choices are seeded by question, temperature
    and how often the question was asked, so runs are reproducible.
    """

    problems: dict[str, Problem]
    error_rate: float = 0.5
    mode_weights: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in FAILURE_MODES})
    temperature: float = 0.0
    seed: int = 0
    _plans: dict = field(default_factory=dict, repr=False)

    def _plan(self, question: str) -> tuple[str | None, int, random.Random]:
        key = (question, self.temperature)
        if key not in self._plans:
            rng = random.Random(f"{self.seed}|{question}|{self.temperature}|{len(self._plans)}")
            p = min(1.0, self.error_rate * (0.5 + self.temperature))
            mode = None
            if rng.random() < p:
                modes = list(self.mode_weights)
                mode = rng.choices(modes, weights=[self.mode_weights[m] for m in modes])[0]
            n = len(self.problems[question].steps)
            self._plans[key] = (mode, rng.randrange(n), rng)
        return self._plans[key]

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        return [self._turn(p) for p in prompts]

    def _turn(self, messages: list[dict[str, str]]) -> str:
        question, turns = split_prompt(make_spec(arith_task()), messages)
        prob = self.problems[question]
        done = [m for m in turns if m["role"] == "assistant"]
        if not done:
            self._plans.pop((question, self.temperature), None)  # a new episode of this question
        mode, where, rng = self._plan(question)
        observed = [m["content"].split(":", 1)[1].strip() for m in turns if m["role"] == "user"]
        values = [prob.start] + [int(float(v)) for v in observed if _is_number(v)]
        steps = list(zip(prob.steps, prob.clauses))  # (operation, the sentence it comes from)
        if mode == "skip_step" and len(steps) > 1:
            steps.pop(where)
        if mode == "finish_early":
            steps = steps[: max(1, where)] if len(steps) > 1 else steps
        k = len(done)
        current = values[-1]
        if k >= len(steps):
            return f"Thought: So the answer is {current}.\nAction: finish[{current}]"
        (op, b), clause = steps[k]
        if k == where:
            if mode == "wrong_operand":
                b = max(1, b + rng.choice([-3, -2, -1, 1, 2, 3]))
            elif mode == "wrong_operator":
                op = rng.choice([o for o in ("+", "-", "*") if o != op])
            elif mode == "stale_number" and len(values) > 1:
                current = values[-2]
        return f"Thought: {clause} So I {VERBS[op]} {b}.\nAction: calculate[{current} {op} {b}]"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
