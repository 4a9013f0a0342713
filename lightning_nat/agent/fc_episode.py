"""Function-calling episodes for the one episode engine (:func:`lightning_nat.agent.engine.run_pool`).

:class:`FunctionCallingAgent` has the interface the engine drives (``new_episode``,
``episode_prompt``, ``advance``, ``trajectory``, ``turn_limit``, ``prompt``, ``policy``),
so ``nat eval`` and ``nat collect`` run it in the same pool as ReAct agents. Its episode is
a list of chat messages: the model's turns carry structured ``tool_calls``, each answered
by a ``tool`` message (:func:`lightning_nat.agent.fc_agent.step`); the turn with no call is the
final answer. The prompt head (instruction, NAT marker, question) is the task's, as for
ReAct; the tools are the task's own Python functions, offered as JSON schemas.

A policy's reply may be an API message (``{"content", "tool_calls"}``, the OpenAI policy),
a :class:`~lightning_nat.agent.fc_agent.Turn` already parsed (the local policy), or plain text,
read with the template family's parser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lightning_nat.agent.fc_agent import StepCounts, Turn, from_openai_reply, parse_turn, step, tool_schemas
from lightning_nat.agent.react import ReActAgent, _Episode
from lightning_nat.core.trajectory import Trajectory

AGENTS = ("react", "function-calling")


def calculate(expression: str) -> str:
    """Evaluates arithmetic safely: numbers, + - * / // % **, parentheses, pi and e.

    Args:
        expression: the arithmetic to evaluate, e.g. '(12 + 7) * 3 / 4'
    """
    from lightning_nat.core.tools import calculate as safe_calculate

    return safe_calculate(expression)


def task_functions(tool_names: Sequence[str]) -> list[Callable[..., Any]]:
    """The plain Python functions behind a task's tools (``finish`` is the reply without a call, not a tool).

    >>> [f.__name__ for f in task_functions(["calculate", "finish"])]
    ['calculate']
    """
    from lightning_nat.core.tools import find_tool

    out: list[Callable[..., Any]] = []
    for name in tool_names:
        if name == "finish":
            continue
        if name == "calculate":
            out.append(calculate)  # the built-in, with a docstring a schema can be made from
            continue
        spec = find_tool(name)
        if spec is None:
            raise ValueError(f"tool {name!r} has no Python function to call (function-calling agents call the "
                             "task's own functions; `search` is a ReAct tool only)")
        out.append(spec.function)
    return out


def task_timeouts(tool_names: Sequence[str]) -> dict[str, float | None]:
    """Seconds per call of each tool: a registered tool's own (a task's ``tool_timeout``), else the default.

    >>> task_timeouts(["calculate", "finish"])
    {'calculate': 10.0}
    """
    from lightning_nat.core.safe_tool import DEFAULT_TIMEOUT_S
    from lightning_nat.core.tools import find_tool

    out: dict[str, float | None] = {}
    for name in tool_names:
        if name != "finish":
            spec = find_tool(name)
            out[name] = spec.timeout if spec is not None else DEFAULT_TIMEOUT_S
    return out


def schemas_of(functions: Sequence[Callable[..., Any]]) -> list[dict[str, Any]]:
    """The functions' schemas, or an error naming the function whose docstring cannot give one."""
    out = []
    for f in functions:
        try:
            out.extend(tool_schemas([f]))
        except Exception as exc:  # transformers' DocstringParsingException / TypeHintParsingException
            raise ValueError(f"tool {f.__name__!r}: no JSON schema from its signature and docstring "
                             f"({type(exc).__name__}: {exc}); give every argument a type hint and an 'Args:' "
                             "line") from None
    return out


@dataclass
class _FCEpisode(_Episode):
    counts: StepCounts = field(default_factory=StepCounts)


@dataclass
class FunctionCallingAgent(ReActAgent):
    """A task's function-calling episodes with a policy, run by the engine's pool.

    Args (besides :class:`~lightning_nat.agent.react.ReActAgent`'s ``task``, ``policy``, ``max_turns``,
    ``on_parse_error``, ``prompt_spec``; ``tools`` is unused):
        functions: the tools as plain Python functions (default: the task's, :func:`task_functions`).
        family: the template family that reads a plain-text reply (``hermes`` or ``llama31``).

    The policy is given the tools' schemas (``policy.use_tools(schemas)``): a policy that cannot
    send them is refused here, before any episode runs.
    """

    functions: Sequence[Callable[..., Any]] | None = None
    family: str = "hermes"
    # Seconds per call by tool name (default: the task's tool_timeout, 10 s for built-ins).
    timeouts: dict[str, float | None] | None = None
    schemas: list[dict[str, Any]] = field(default_factory=list)
    calls: StepCounts = field(default_factory=StepCounts)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "react":
            raise ValueError("a function-calling agent acts through tools; --mode cot has none")
        if self.functions is None:
            self.functions = task_functions(self.task.tools)
        if self.timeouts is None:
            self.timeouts = task_timeouts([f.__name__ for f in self.functions])
        self.schemas = schemas_of(self.functions)
        use = getattr(self.policy, "use_tools", None)
        if use is None:
            raise ValueError(f"{type(self.policy).__name__} cannot offer tools to the model; use the openai policy "
                             "or the hf policy with --agent function-calling")
        use(self.schemas)

    def new_episode(self, record: dict) -> _FCEpisode:
        return _FCEpisode(dict(record))

    def _advance(self, ep: _Episode, reply: Any) -> None:
        assert isinstance(ep, _FCEpisode)
        if reply is None:
            ep.done, ep.end = True, "failed"
            return
        if isinstance(reply, Turn):
            turn = reply
        elif isinstance(reply, dict):
            turn = Turn(*from_openai_reply(reply, ep.turns))
        else:
            turn = Turn(*parse_turn(str(reply), self.family, ep.turns))
        before = ep.counts.parse_errors
        over = step(ep.messages, turn.content, turn.calls, turn.errors, self.functions or (), ep.counts, self.timeouts)
        new_errors = ep.counts.parse_errors - before
        ep.parse_errors += new_errors
        self.stats.parse_errors += new_errors
        if new_errors and self.on_parse_error == "stop":
            ep.done, ep.end = True, "parse_error"
        elif over:
            ep.prediction = turn.content
            ep.done, ep.end = True, "finished" if turn.content.strip() else "no_answer"

    def _trajectory(self, ep: _Episode) -> Trajectory:
        assert isinstance(ep, _FCEpisode)
        traj = super()._trajectory(ep)
        for key in ("calls", "parse_errors", "tool_errors"):
            setattr(self.calls, key, getattr(self.calls, key) + getattr(ep.counts, key))
        meta = {**traj.meta, "agent": "function-calling", "calls": ep.counts.calls,
                "tool_errors": ep.counts.tool_errors}
        return replace(traj, tools=self.schemas, meta=meta)
