"""The ReAct agent: parse a step, run its tool, batch the episodes.

The model writes ``Thought: ...`` and ``Action: tool[args]``; the environment answers
``Observation: ...`` until ``finish[answer]`` or the turn limit. All live episodes of
a batch generate together each turn; finished ones leave the batch. Every episode
becomes a :class:`Trajectory`, so evaluation output feeds straight back into
``nat build``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .answers import cot_answer
from .prompts import PromptSpec, head_messages, make_spec
from .tasks import Task
from .trajectory import Trajectory

STOP = "Observation:"
# One optional whitespace run before the colon: two adjacent `\s*` made a long run without a colon quadratic.
_ACTION = re.compile(r"Action\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_TOOL_CALL = re.compile(r"\b([A-Za-z_][A-Za-z_0-9]*)\s*\[")


class Policy(Protocol):
    """Anything that continues a batch of chat prompts (stopping at ``Observation:``).

    ``None`` in place of a completion means the request failed for good (after retries):
    that episode ends as ``failed``, which is neither a positive nor a negative.
    """

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]: ...


@dataclass
class Step:
    """One parsed model turn: the text kept in the trajectory and the action in it."""

    text: str
    tool: str | None = None
    argument: str | None = None
    error: str | None = None


def _bracket_argument(text: str, start: int) -> tuple[str, bool]:
    """The text inside the bracket opening at ``start``, honouring nesting; ``(arg, closed)``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], True
    rest = text[start + 1:].split("\n", 1)[0]
    return rest.rstrip().rstrip("]"), False


def parse_step(text: str, tools: Sequence[str]) -> Step:
    """Parse a model turn into thought and action, robustly.

    Accepts a missing ``Thought:`` line, extra text after the action, nested or
    unbalanced brackets; an unknown tool or no action at all is an error step.
    Whatever the model wrote after ``Observation:`` is cut off.

    >>> s = parse_step("Thought: add them.\\nAction: calculate[(2 + 3) * [4]]\\nthanks!", ["calculate", "finish"])
    >>> s.tool, s.argument, s.text
    ('calculate', '(2 + 3) * [4]', 'Thought: add them.\\nAction: calculate[(2 + 3) * [4]]')
    >>> parse_step("Action: finish[42", ["finish"]).argument
    '42'
    >>> parse_step("I think it is 5.", ["finish"]).error
    'no action found'
    >>> parse_step("Action: browse[x]", ["search", "finish"]).error
    "unknown tool 'browse' (available: search, finish)"
    """
    text = text.split(STOP, 1)[0].strip()
    known = list(tools)
    match = None
    for m in _ACTION.finditer(text):
        match = m  # the last Action: line is the one the model commits to
    segment_start = match.end() if match else 0
    call = _TOOL_CALL.search(text, segment_start)
    if match is None:
        # No "Action:" line: accept a bare known tool call anywhere.
        call = next((c for c in _TOOL_CALL.finditer(text) if c.group(1).lower() in known), None)
        if call is None:
            return Step(text, error="no action found")
    if call is None:
        return Step(text, error="the action is not of the form tool[argument]")
    tool = call.group(1).lower()
    argument, closed = _bracket_argument(text, call.end() - 1)
    end = text.find("\n", call.end()) if not closed else call.end() + len(argument) + 1
    kept = text[: end if end > 0 else len(text)].rstrip()
    if tool not in known:
        return Step(kept, tool=tool, argument=argument, error=f"unknown tool '{tool}' (available: {', '.join(known)})")
    return Step(kept, tool=tool, argument=argument.strip())


def final_answer(text: str) -> str | None:
    """The answer of a chain-of-thought turn: its final-answer line (``Final answer:``, ``####``, ...), if any.

    >>> final_answer("3 + 4 = 7.\\nFinal answer: 7 apples"), final_answer("no idea")
    ('7 apples', None)
    """
    return cot_answer(text)


@dataclass
class EpisodeStats:
    """How episodes ended, for the evaluation table."""

    finished: int = 0
    turn_limit: int = 0
    parse_errors: int = 0
    episodes_with_parse_error: int = 0
    stopped_on_error: int = 0
    failed: int = 0


@dataclass
class _Episode:
    record: dict
    messages: list[dict[str, str]] = field(default_factory=list)
    prediction: str | None = None
    done: bool = False
    parse_errors: int = 0
    end: str = "turn_limit"


@dataclass
class ReActAgent:
    """Runs a task's ReAct episodes in batches with a policy.

    Args:
        task: the task (instruction, tools, metric).
        policy: the LLM.
        tools: callable tools by name (``make_tools``); ``finish`` is built in.
        max_turns: model turns per episode (the reference allows 7: ``--protocol reference``).
        on_parse_error: ``observe`` answers a malformed step with an error observation;
            ``stop`` ends the episode.
        mode: ``react`` (tools) or ``cot`` (one reasoning turn ending in ``Final answer:``).
        prompt_spec: the prompt the model was trained with (:mod:`lightning_nat.prompts`); its positive
            class is used. Default: the task's default style, preset ``nat``.
        lockstep: call the policy every turn even with no live episode (with a stand-in prompt), so
            that ranks sharing sharded weights (ZeRO-3) run the same number of forward passes.
    """

    task: Task
    policy: Policy
    tools: dict[str, Callable[[str], str]]
    max_turns: int = 6
    on_parse_error: Literal["observe", "stop"] = "observe"
    mode: Literal["react", "cot"] = "react"
    prompt_spec: PromptSpec | None = None
    lockstep: bool = False
    stats: EpisodeStats = field(default_factory=EpisodeStats)

    def __post_init__(self) -> None:
        if self.prompt_spec is None:
            self.prompt_spec = make_spec(self.task.name, mode=self.mode)
        elif self.prompt_spec.mode != self.mode:
            raise ValueError(f"the prompt spec is for {self.prompt_spec.mode} episodes, the agent runs {self.mode}")

    def prompt(self, question: str, record: dict | None = None) -> list[dict[str, str]]:
        msgs = head_messages(self.prompt_spec, question)  # type: ignore[arg-type]
        if self.task.instruction_from_data:
            # The task's instruction is the data's own system prompt: the question record's `system` field.
            system = (record or {}).get("system")
            if not isinstance(system, str) or not system.strip():
                raise ValueError(f"task {self.task.name!r} takes its instruction from the data, but question "
                                 f"{(record or {}).get('id')!r} has no 'system' field")
            if msgs and msgs[0]["role"] == "system":
                msgs[0] = {"role": "system", "content": system}
            else:
                msgs.insert(0, {"role": "system", "content": system})
        return msgs

    def run(self, records: Sequence[dict], batch_size: int = 16,
            on_episode: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        """Episodes for ``records`` (``{"id", "question", "answer", ...}``), in input order.

        ``on_episode`` is called with each trajectory as soon as its episode ends.
        """
        out: list[Trajectory] = []
        for s in range(0, len(records), batch_size):
            out += self._run_batch(records[s:s + batch_size], on_episode)
        return out

    def _run_batch(self, records: Sequence[dict], on_episode: Callable[[Trajectory], None] | None) -> list[Trajectory]:
        episodes = [_Episode(dict(r)) for r in records]
        done: dict[int, Trajectory] = {}

        def emit() -> None:
            for i, e in enumerate(episodes):
                if e.done and i not in done:
                    done[i] = self._trajectory(e)
                    if on_episode:
                        on_episode(done[i])

        turns = 1 if self.mode == "cot" else self.max_turns
        for _ in range(turns):
            live = [e for e in episodes if not e.done]
            if not live and not self.lockstep:
                break
            prompts = [self.prompt(str(e.record["question"]), e.record) + e.messages for e in live]
            outputs = self.policy.generate(prompts or [self.prompt("(idle)", dict(records[0]) if records else None)])
            for ep, text in zip(live, outputs):
                self._advance(ep, text)
            emit()
        for e in episodes:
            e.done = True
        emit()
        return [done[i] for i in range(len(episodes))]

    def _advance(self, ep: _Episode, text: str | None) -> None:
        if text is None:
            ep.done, ep.end = True, "failed"
            return
        if self.mode == "cot":
            content = text.split(STOP, 1)[0].strip()
            ep.messages.append({"role": "assistant", "content": content})
            ep.prediction = final_answer(content)
            ep.done, ep.end = True, "finished" if ep.prediction is not None else "no_answer"
            return
        step = parse_step(text, [*self.tools, "finish"])
        ep.messages.append({"role": "assistant", "content": step.text or text.strip()})
        if step.error:
            ep.parse_errors += 1
            self.stats.parse_errors += 1
            if self.on_parse_error == "stop":
                ep.done, ep.end = True, "parse_error"
                return
            ep.messages.append({"role": "user", "content": f"{STOP} Invalid action: {step.error}. Reply with "
                                f"'Action: tool[argument]' using one of: {', '.join([*self.tools, 'finish'])}."})
            return
        if step.tool == "finish":
            ep.prediction = step.argument or ""
            ep.messages.append({"role": "user", "content": f"{STOP} Episode finished"})
            ep.done, ep.end = True, "finished"
            return
        try:
            observation = self.tools[step.tool](step.argument or "")  # type: ignore[index]
        except Exception as exc:  # a misbehaving tool must not end the evaluation
            observation = f"Error: {type(exc).__name__}"
        ep.messages.append({"role": "user", "content": f"{STOP} {observation}"})

    def _trajectory(self, ep: _Episode) -> Trajectory:
        if ep.end == "finished":
            self.stats.finished += 1
        elif ep.end == "failed":
            self.stats.failed += 1
        elif ep.end == "parse_error":
            self.stats.stopped_on_error += 1
        else:
            self.stats.turn_limit += 1
        if ep.parse_errors:
            self.stats.episodes_with_parse_error += 1
        reward, score, values = self.task.score(ep.prediction, ep.record)
        messages = ep.messages or [{"role": "assistant", "content": ""}]
        qid = str(ep.record.get("id", ""))
        return Trajectory(
            id=f"{self.task.name}:{qid}", task=self.task.name, question=str(ep.record["question"]), messages=messages,
            reward=reward, score=score, prediction=ep.prediction, answer=_jsonable(ep.record.get("answer")),
            question_id=qid, meta={"end": ep.end, "parse_errors": ep.parse_errors, "metrics": values, "mode": self.mode},
        )


def _jsonable(x: object) -> object:
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


def summarize(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Mean metrics and episode-end rates over a task's trajectories."""
    n = len(trajs)
    if not n:
        return {"episodes": 0}
    sums: Counter = Counter()
    for t in trajs:
        sums.update(t.meta.get("metrics", {}))
    ends = Counter(t.meta.get("end") for t in trajs)
    out: dict[str, float] = {k: v / n for k, v in sums.items()}
    out.update({"episodes": n, "finished": ends["finished"] / n, "turn_limit": ends["turn_limit"] / n,
                "failed": ends["failed"] / n,
                "parse_error_rate": sum(1 for t in trajs if t.meta.get("parse_errors")) / n})
    return out
