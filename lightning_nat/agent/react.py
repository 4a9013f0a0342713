"""The ReAct agent's rules (parse a step, run its tool, score the episode) and the one episode scheduler.

The model writes ``Thought: ...`` and ``Action: tool[args]``; the environment answers ``Observation: ...``
until ``finish[answer]`` or the turn limit. Every episode becomes a :class:`Trajectory`, which ``nat build``
reads back. Every command runs its episodes, ReAct or function-calling, through :func:`run_pool`.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lightning_nat.core.prompts import STOP, PromptSpec, head_messages, make_spec
from lightning_nat.core.tasks import Task
from lightning_nat.core.trajectory import Trajectory, bracket_argument, cot_answer

# One optional whitespace run before the colon: two adjacent `\s*` made a long run without a colon quadratic.
_ACTION = re.compile(r"Action\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_TOOL_CALL = re.compile(r"\b([A-Za-z_][A-Za-z_0-9]*)\s*\[")


class Policy(Protocol):
    """Anything that continues a batch of chat prompts (stopping at ``Observation:``); ``None`` for a request that
    failed for good ends that episode as ``failed``, neither a positive nor a negative."""

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]: ...


@dataclass
class Step:
    """One parsed model turn: the text kept in the trajectory and the action in it."""

    text: str
    tool: str | None = None
    argument: str | None = None
    error: str | None = None


def parse_step(text: str, tools: Sequence[str]) -> Step:
    """Parse a model turn into thought and action, robustly (no ``Thought:``, text after the action, unbalanced
    brackets are accepted; what follows ``Observation:`` is cut); an unknown tool or no action is an error step.

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
    argument, closed = bracket_argument(text, call.end() - 1)
    end = text.find("\n", call.end()) if not closed else call.end() + len(argument) + 1
    kept = text[: end if end > 0 else len(text)].rstrip()
    if tool not in known:
        return Step(kept, tool=tool, argument=argument, error=f"unknown tool '{tool}' (available: {', '.join(known)})")
    return Step(kept, tool=tool, argument=argument.strip())


@dataclass
class StepCounts:
    """Per-episode counts of what went wrong (reported beside the score); ``calls`` and ``tool_errors`` are a
    function-calling episode's."""

    calls: int = 0
    parse_errors: int = 0
    tool_errors: int = 0


@dataclass
class _Episode:
    record: dict
    messages: list[dict[str, str]] = field(default_factory=list)
    prediction: str | None = None
    done: bool = False
    counts: StepCounts = field(default_factory=StepCounts)
    turns: int = 0
    end: str = "turn_limit"


@dataclass
class ReActAgent:
    """A task's ReAct episodes with a policy, run by the engine's pool.

    Args:
        task: the task (instruction, tools, metric).
        policy: the LLM.
        tools: callable tools by name (``make_tools``); ``finish`` is built in.
        max_turns: model turns per episode (the reference allows 7: ``--protocol reference``).
        on_parse_error: ``observe`` answers a malformed step with an error observation;
            ``stop`` ends the episode.
        mode: ``react`` (tools) or ``cot`` (one reasoning turn ending in ``Final answer:``).
        prompt_spec: the prompt the model was trained with (:mod:`lightning_nat.core.prompts`); its positive
            class is used. Default: the task's default style, preset ``nat``.
    """

    task: Task
    policy: Policy
    tools: dict[str, Callable[[str], str]]
    max_turns: int = 6
    on_parse_error: Literal["observe", "stop"] = "observe"
    mode: Literal["react", "cot"] = "react"
    prompt_spec: PromptSpec | None = None

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")
        if self.prompt_spec is None:
            self.prompt_spec = make_spec(self.task, mode=self.mode)
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

    def episode_prompt(self, ep: _Episode) -> list[dict[str, str]]:
        """What the policy continues: the task's head messages and the episode so far."""
        return self.prompt(str(ep.record["question"]), ep.record) + ep.messages

    def advance(self, ep: _Episode, text: Any) -> None:
        """Apply one model turn (``None``: the request failed for good, the episode ``failed``); the episode ends (as
        ``turn_limit``) once it has had ``max_turns`` turns (a ``cot`` episode ends with its one turn)."""
        if text is None:
            ep.done, ep.end = True, "failed"
        else:
            self.apply(ep, text)
        ep.turns += 1
        ep.done = ep.done or ep.turns >= self.max_turns

    def run(self, records: Sequence[dict], batch_size: int = 16,
            on_episode: Callable[[Trajectory], None] | None = None,
            progress: Callable[[int, int], None] | None = None,
            any_live: Callable[[bool], bool] | None = None) -> list[Trajectory]:
        """Episodes for ``records`` (``{"id", "question", "answer", ...}``) in input order, ``batch_size`` live at once
        (:func:`run_pool`); ``on_episode`` gets each trajectory as soon as its episode ends."""
        return run_pool(self, records, pool_size=batch_size, on_episode=on_episode, progress=progress,
                        any_live=any_live)

    def apply(self, ep: _Episode, text: str) -> None:
        if self.mode == "cot":
            content = text.split(STOP, 1)[0].strip()
            ep.messages.append({"role": "assistant", "content": content})
            ep.prediction = cot_answer(content)
            ep.done, ep.end = True, "finished" if ep.prediction is not None else "no_answer"
            return
        step = parse_step(text, [*self.tools, "finish"])
        ep.messages.append({"role": "assistant", "content": step.text or text.strip()})
        if step.error:
            ep.counts.parse_errors += 1
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

    def trajectory(self, ep: _Episode) -> Trajectory:
        """The ended episode as a scored trajectory."""
        reward, score, values = checked_score(self.task, ep.prediction, ep.record)
        messages = ep.messages or [{"role": "assistant", "content": ""}]
        qid = str(ep.record.get("id", ""))
        return Trajectory(
            id=f"{self.task.name}:{qid}", task=self.task.name, question=str(ep.record["question"]), messages=messages,
            reward=reward, score=score, prediction=ep.prediction, answer=_jsonable(ep.record.get("answer")),
            question_id=qid, meta={"end": ep.end, "parse_errors": ep.counts.parse_errors, "metrics": values, "mode": self.mode},
        )


class ScoringError(ValueError):
    """A task's metric or answer extractor failed on a question, or gave a value that is not a score."""


def checked_score(task: Task, prediction: str | None, record: dict) -> tuple[bool, float, dict[str, float]]:
    """``task.score``, with its failures and values that are not scores (non-finite, a reward or score outside
    [0, 1]) made errors naming the task and question.

    >>> from dataclasses import replace
    >>> from lightning_nat.core.tasks import TASKS
    >>> checked_score(TASKS["gsm8k"], "4", {"id": "q", "answer": "#### 4"})[:2]
    (True, 1.0)
    >>> bad = replace(TASKS["gsm8k"], metric=lambda p, g: {"accuracy": float("nan")})
    >>> checked_score(bad, "4", {"id": "q7", "answer": "#### 4"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_nat.agent.react.ScoringError: task gsm8k, question 'q7': the metric gave accuracy=nan; every value ...
    """
    where = f"task {task.name}, question {str(record.get('id', ''))!r}"
    try:
        reward, score, values = task.score(prediction, record)
    except Exception as exc:  # a user's metric or extractor: its bug, located
        raise ScoringError(f"{where}: scoring failed ({type(exc).__name__}: {exc})") from exc
    for key, value in values.items():
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or (key in (task.reward_key, task.score_key) and not 0.0 <= value <= 1.0):
            raise ScoringError(f"{where}: the metric gave {key}={value!r}; every value must be a finite number, "
                               "the reward and score in [0, 1]")
    return reward, score, values


def _jsonable(x: object) -> object:
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)


# (episodes done, episodes live) after each step; the CLI's progress bar listens.
Progress = Callable[[int, int], None]


def run_pool(agent: ReActAgent, records: Sequence[dict], pool_size: int = 16,
             on_episode: Callable[[Trajectory], None] | None = None, progress: Progress | None = None,
             any_live: Callable[[bool], bool] | None = None) -> list[Trajectory]:
    """Every record's episode, in input order, with at most ``pool_size`` episodes live at once.

    Args:
        agent: the episode rules (prompt, tools, parser, scorer, turn limit) and the policy; a ReAct or a
            function-calling agent.
        records: ``{"id", "question", "answer", ...}`` questions.
        pool_size: episodes continued together per policy call.
        on_episode: called with each trajectory as soon as its episode ends.
        progress: called with (done, live) after every step.
        any_live: lock-step across ranks (ZeRO-3 / FSDP): given whether this rank still has a
            live episode, returns whether any rank has. While any rank does, every rank calls the
            policy once per step (a rank with nothing left sends a stand-in prompt), so sharded
            forward passes stay paired.
    """
    if pool_size < 1:
        raise ValueError(f"pool size must be at least 1, got {pool_size}")
    if hasattr(agent.policy, "session") and any_live is None:
        return asyncio.run(_run_pool_async(agent, records, pool_size, on_episode, progress))
    waiting = deque(enumerate(records))
    live: list[tuple[int, _Episode]] = []
    out: list[Trajectory | None] = [None] * len(records)
    while True:
        while waiting and len(live) < pool_size:
            index, record = waiting.popleft()
            live.append((index, _Episode(dict(record))))
        if not (any_live(bool(live)) if any_live is not None else live):
            break
        prompts = [agent.episode_prompt(ep) for _, ep in live]
        # A rank with nothing left keeps its ranks paired with a stand-in prompt.
        outputs = agent.policy.generate(prompts or [agent.prompt("(idle)", dict(records[0]) if records else None)])
        if len(outputs) != len(prompts) and prompts:
            raise RuntimeError(f"the policy returned {len(outputs)} completions for {len(prompts)} prompts")
        still = []
        for (index, ep), text in zip(live, outputs):
            agent.advance(ep, text)
            if ep.done:
                out[index] = traj = agent.trajectory(ep)
                if on_episode:
                    on_episode(traj)
            else:
                still.append((index, ep))
        live = still
        if progress:  # done: started and no longer live
            progress(len(records) - len(waiting) - len(live), len(live))
    return [t for t in out if t is not None]


async def _run_pool_async(agent: ReActAgent, records: Sequence[dict], pool_size: int,
                          on_episode: Callable[[Trajectory], None] | None, progress: Progress | None) -> list[Trajectory]:
    """The same pool for a policy that completes one request at a time (an API): each of ``pool_size`` places sends
    its episode's next request as soon as it needs it, nothing waits for a step."""
    waiting = deque(enumerate(records))
    out: list[Trajectory | None] = [None] * len(records)
    live = 0
    async with agent.policy.session(first_wave=min(pool_size, len(records))) as complete:

        async def place() -> None:
            nonlocal live
            while waiting:
                index, record = waiting.popleft()
                ep = _Episode(dict(record))
                live += 1
                while not ep.done:
                    agent.advance(ep, await complete(agent.episode_prompt(ep)))
                out[index] = traj = agent.trajectory(ep)
                live -= 1
                if on_episode:
                    on_episode(traj)
                if progress:
                    progress(len(records) - len(waiting) - live, live)

        await asyncio.gather(*[place() for _ in range(min(pool_size, len(records)))])
    return [t for t in out if t is not None]
