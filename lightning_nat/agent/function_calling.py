"""Function-calling episodes: the task's tools offered as JSON schemas, the model's calls run and answered.

:class:`FunctionCallingAgent` runs in the same pool as the ReAct agent (:func:`~lightning_nat.agent.react.run_pool`).
Its model turns carry structured ``tool_calls``, each answered by a ``tool`` message; the turn with no call is the
answer. A reply is an API message (the OpenAI policy) or model text read by :func:`parse_turn`. Model-written text
is untrusted: an unknown tool, bad arguments, a reused id, a tool that raises or hangs become a message saying so,
counted in :class:`StepCounts`, never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lightning_nat.agent.policies import END_OF_TURN
from lightning_nat.agent.react import ReActAgent, StepCounts, _Episode
from lightning_nat.core.safe_tool import DEFAULT_TIMEOUT_S, MAX_OBSERVATION_CHARS, ToolTimeout, _cut, call_with_timeout
from lightning_nat.core.secrets import mask
from lightning_nat.core.trajectory import Trajectory, TrajectoryFormatError, call_from_openai

_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_turn(text: str, family: str, turn: int = 0) -> tuple[str, list[dict[str, Any]], list[str]]:
    """A generated assistant turn as ``(content, canonical calls, parse errors)`` for a template family.

    ``hermes``: ``<tool_call>{"name", "arguments"}</tool_call>`` blocks, the rest is content;
    ``llama31``: the whole turn is ``{"name", "parameters"}``, else it is content.
    Calls get ids ``call_<turn>_<k>``.

    >>> parse_turn('Let me check.\\n<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\\n</tool_call>',
    ...            "hermes", 3)
    ('Let me check.', [{'id': 'call_3_0', 'name': 'get_weather', 'arguments': {'city': 'Oslo'}}], [])
    >>> parse_turn('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama31")[1][0]["arguments"]
    {'city': 'Oslo'}
    >>> parse_turn('<tool_call>{"name": "f", "arguments": {oops}</tool_call>', "hermes")[2]
    ['tool call 0 is not valid JSON']
    >>> parse_turn('<tool_call>\\n{"name": "f", "argu', "hermes")[2]
    ['a <tool_call> block is not closed with </tool_call>']
    """
    if family not in END_OF_TURN:
        raise ValueError(f"unknown template family {family!r}; expected one of {', '.join(END_OF_TURN)}")
    if family == "hermes":
        bodies = _HERMES_CALL.findall(text)
        content = _HERMES_CALL.sub("", text).strip()
        key = "arguments"
    else:
        stripped = text.strip()
        bodies = [stripped] if stripped.startswith("{") and '"name"' in stripped else []
        content = "" if bodies else stripped
        key = "parameters"
    calls, errors = [], []
    if family == "hermes" and "<tool_call>" in content:  # an unclosed block is a call gone wrong, not an answer
        errors.append("a <tool_call> block is not closed with </tool_call>")
    for k, body in enumerate(bodies):
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            errors.append(f"tool call {k} is not valid JSON")
            continue
        args = obj.get(key, obj.get("arguments", {})) if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(args, dict):
            errors.append(f"tool call {k} is not {{'name', '{key}': {{...}}}}")
            continue
        calls.append({"id": f"call_{turn}_{k}", "name": obj["name"], "arguments": args})
    return content, calls, errors


def from_openai_reply(message: dict[str, Any], turn: int = 0) -> tuple[str, list[dict[str, Any]], list[str]]:
    """An OpenAI-compatible API's assistant message as ``(content, canonical calls, parse errors)``.

    >>> from_openai_reply({"role": "assistant", "content": None, "tool_calls": [{"id": "a", "type": "function",
    ...     "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}}]})
    ('', [{'id': 'a', 'name': 'get_weather', 'arguments': {'city': 'Oslo'}}], [])
    """
    calls, errors = [], []
    for k, raw in enumerate(message.get("tool_calls") or []):
        raw = {**raw, "id": raw.get("id") or f"call_{turn}_{k}"} if isinstance(raw, dict) else raw
        try:
            calls.append(call_from_openai(raw, f"tool call {k}"))
        except TrajectoryFormatError as exc:
            errors.append(str(exc))
    return message.get("content") or "", calls, errors


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def run_calls(calls: Sequence[dict[str, Any]], functions: Sequence[Callable], counts: StepCounts,
              timeouts: dict[str, float | None] | None = None) -> list[dict[str, Any]]:
    """Run canonical calls against plain functions: one ``tool`` message per call, errors said in its content,
    each call under its ``timeouts`` entry, results cut and masked as ReAct observations.

    >>> def add(a: int, b: int) -> int:
    ...     '''Add.
    ...
    ...     Args:
    ...         a: first
    ...         b: second
    ...     '''
    ...     return a + b
    >>> c = StepCounts()
    >>> for m in run_calls([{"id": "1", "name": "add", "arguments": {"a": 2, "b": 3}},
    ...     {"id": "2", "name": "mul", "arguments": {}}, {"id": "3", "name": "add", "arguments": {"a": 1}}], [add], c):
    ...     print(m["content"])
    5
    Error: unknown tool 'mul' (tools: add)
    Error: add failed: TypeError: add() missing 1 required positional argument: 'b'
    >>> (c.calls, c.tool_errors)
    (3, 2)
    """
    by_name = {f.__name__: f for f in functions}
    out = []
    for call in calls:
        counts.calls += 1
        fn = by_name.get(call["name"])
        if fn is None:
            counts.tool_errors += 1
            result = f"Error: unknown tool {call['name']!r} (tools: {', '.join(by_name)})"
        else:
            try:
                result = call_with_timeout(lambda fn=fn, args=call["arguments"]: _as_text(fn(**args)),
                                           (timeouts or {}).get(call["name"]), call["name"])
            except ToolTimeout as exc:
                counts.tool_errors += 1
                result = f"Error: {exc}"
            except Exception as exc:  # a tool's failure is the agent's observation, not the loop's crash
                counts.tool_errors += 1
                result = f"Error: {call['name']} failed: {type(exc).__name__}: {exc}"
        out.append({"role": "tool", "content": _cut(mask(result), MAX_OBSERVATION_CHARS), "tool_call_id": call["id"]})
    return out


def step(messages: list[dict[str, Any]], content: str, calls: list[dict[str, Any]], errors: list[str],
         functions: Sequence[Callable], counts: StepCounts, timeouts: dict[str, float | None] | None = None) -> bool:
    """Append the model's turn and the tools' answers to ``messages``; True when it is the final answer (no call).

    A call reusing an earlier id is a parse error, not run; a turn whose every call was unusable gets a user note.
    """
    used = {c["id"] for m in messages for c in m.get("tool_calls") or []}
    kept = []
    for k, call in enumerate(calls):
        if call["id"] in used:
            errors = [*errors, f"tool call {k} repeats the id {call['id']!r} of an earlier call"]
        else:
            used.add(call["id"])
            kept.append(call)
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    if kept:
        turn["tool_calls"] = kept
    messages.append(turn)
    counts.parse_errors += len(errors)
    if kept:
        messages += run_calls(kept, functions, counts, timeouts)
        return False
    if errors:
        messages.append({"role": "user", "content": "Error: " + "; ".join(errors)})
        return False
    return True


def task_functions(tool_names: Sequence[str]) -> list[Callable[..., Any]]:
    """The plain Python functions behind a task's tools (``finish`` is the reply without a call, not a tool).

    >>> [f.__name__ for f in task_functions(["calculate", "finish"])]
    ['calculate']
    """
    from lightning_nat.core.tools import calculate, find_tool

    out: list[Callable[..., Any]] = []
    for name in (n for n in tool_names if n != "finish"):
        function = calculate if name == "calculate" else getattr(find_tool(name), "function", None)
        if function is None:
            raise ValueError(f"tool {name!r} has no Python function to call (function-calling agents call the "
                             "task's own functions; `search` is a ReAct tool only)")
        out.append(function)
    return out


def task_timeouts(tool_names: Sequence[str]) -> dict[str, float | None]:
    """Seconds per call of each tool: a registered tool's own (a task's ``tool_timeout``), else the default.

    >>> task_timeouts(["calculate", "finish"])
    {'calculate': 10.0}
    """
    from lightning_nat.core.tools import find_tool

    return {name: spec.timeout if (spec := find_tool(name)) is not None else DEFAULT_TIMEOUT_S
            for name in tool_names if name != "finish"}


def schemas_of(functions: Sequence[Callable[..., Any]]) -> list[dict[str, Any]]:
    """OpenAI-style schemas of plain Python functions, or an error naming the one whose docstring cannot give one."""
    from transformers.utils import get_json_schema

    out = []
    for f in functions:
        try:
            out.append(get_json_schema(f))
        except Exception as exc:  # transformers' DocstringParsingException / TypeHintParsingException
            raise ValueError(f"tool {f.__name__!r}: no JSON schema from its signature and docstring "
                             f"({type(exc).__name__}: {exc}); give every argument a type hint and an 'Args:' "
                             "line") from None
    return out


@dataclass
class FunctionCallingAgent(ReActAgent):
    """A task's function-calling episodes with a policy; the policy is given the tools' schemas (``use_tools``).

    Args (besides :class:`~lightning_nat.agent.react.ReActAgent`'s; ``tools`` is unused):
        functions: the tools as plain Python functions (default: the task's, :func:`task_functions`).
        family: the template family that reads a text reply (``hermes`` or ``llama31``; default: the policy's).
        timeouts: seconds per call by tool name (default: the task's ``tool_timeout``, 10 s for built-ins).
    """

    functions: Sequence[Callable[..., Any]] | None = None
    family: str | None = None
    timeouts: dict[str, float | None] | None = None
    schemas: list[dict[str, Any]] = field(default_factory=list)

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
            raise ValueError(f"{type(self.policy).__name__} cannot offer tools to the model; use the openai, hf or "
                             "vllm policy")
        use(self.schemas)
        self.family = self.family or getattr(self.policy, "family", None) or "hermes"

    def apply(self, ep: _Episode, reply: Any) -> None:
        if isinstance(reply, dict):
            content, calls, errors = from_openai_reply(reply, ep.turns)
        else:
            content, calls, errors = parse_turn(str(reply), self.family or "hermes", ep.turns)
        before = ep.counts.parse_errors
        over = step(ep.messages, content, calls, errors, self.functions or (), ep.counts, self.timeouts)
        if ep.counts.parse_errors > before and self.on_parse_error == "stop":
            ep.done, ep.end = True, "parse_error"
        elif over:
            ep.prediction = content
            ep.done, ep.end = True, "finished" if content.strip() else "no_answer"

    def trajectory(self, ep: _Episode) -> Trajectory:
        traj = super().trajectory(ep)
        meta = {**traj.meta, "agent": "function-calling", "calls": ep.counts.calls,
                "tool_errors": ep.counts.tool_errors}
        return replace(traj, tools=self.schemas, meta=meta)
