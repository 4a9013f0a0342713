"""One function-calling step, for whatever episode loop runs the agent.

A loop that drives a function-calling agent needs three things per turn, all here and
none tied to a loop: the prompt (:func:`render_prompt`, the tokenizer's template with
``tools=``), the model's turn read back into calls (:func:`parse_turn` for generated
text, :func:`from_openai_reply` for an API reply), and the calls run against plain
Python functions (:func:`run_calls`), each answered by a ``tool`` message. Model-written
text is untrusted: an unknown tool, arguments that are not a JSON object, or a tool that
raises become a tool message saying so, counted in :class:`StepCounts`, never an
exception out of the loop.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lightning_nat.core.safe_tool import MAX_OBSERVATION_CHARS, _cut
from lightning_nat.core.secrets import mask as _redact

FAMILIES = ("hermes", "llama31")
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


@dataclass
class Turn:
    """A model turn read back: its text, its canonical calls and the problems of calls that could not be read."""

    content: str
    calls: list[dict[str, Any]]
    errors: list[str]


@dataclass
class StepCounts:
    """Per-episode counts of what went wrong in calls (reported beside the score)."""

    calls: int = 0
    parse_errors: int = 0
    tool_errors: int = 0


def tool_schemas(functions: Sequence[Callable]) -> list[dict[str, Any]]:
    """OpenAI-style schemas of plain Python functions, from their signatures and docstrings."""
    from transformers.utils import get_json_schema

    return [get_json_schema(f) for f in functions]


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
    if family not in FAMILIES:
        raise ValueError(f"unknown template family {family!r}; expected one of {', '.join(FAMILIES)}")
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
    from lightning_nat.core.trajectory import TrajectoryFormatError, call_from_openai

    calls, errors = [], []
    for k, raw in enumerate(message.get("tool_calls") or []):
        raw = {**raw, "id": raw.get("id") or f"call_{turn}_{k}"} if isinstance(raw, dict) else raw
        try:
            calls.append(call_from_openai(raw, f"tool call {k}"))
        except TrajectoryFormatError as exc:
            errors.append(str(exc))
    return message.get("content") or "", calls, errors


def _call(fn: Callable, arguments: dict[str, Any], timeout: float | None) -> Any:
    """``fn(**arguments)``, abandoned (TimeoutError) after ``timeout`` seconds (a thread cannot be killed)."""
    if timeout is None:
        return fn(**arguments)
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn(**arguments)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"nat-tool-{getattr(fn, '__name__', 'tool')}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def run_calls(calls: Sequence[dict[str, Any]], functions: Sequence[Callable], counts: StepCounts,
              errors: Sequence[str] = (), timeouts: dict[str, float | None] | None = None) -> list[dict[str, Any]]:
    """Run canonical calls against plain functions; one ``tool`` message per call, errors said in its content.

    ``timeouts``: seconds per call by tool name (default: none). Results, errors included, are cut at
    2,000 characters and the API keys the package knows of are masked in them, as ReAct observations.

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
    counts.parse_errors += len(errors)
    for call in calls:
        counts.calls += 1
        fn = by_name.get(call["name"])
        if fn is None:
            counts.tool_errors += 1
            result = f"Error: unknown tool {call['name']!r} (tools: {', '.join(by_name)})"
        else:
            try:
                value = _call(fn, call["arguments"], (timeouts or {}).get(call["name"]))
                result = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            except Exception as exc:  # a tool's failure is the agent's observation, not the loop's crash
                counts.tool_errors += 1
                result = f"Error: {call['name']} failed: {type(exc).__name__}: {exc}"
        out.append({"role": "tool", "content": _cut(_redact(result), MAX_OBSERVATION_CHARS), "tool_call_id": call["id"]})
    return out


def api_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """An episode's messages in the OpenAI wire form: calls with JSON-text arguments, ``content: null`` beside them.

    >>> api_messages([{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f",
    ...     "arguments": {"x": 1}}]}, {"role": "tool", "content": "2", "tool_call_id": "c"}])[0]["tool_calls"]
    [{'id': 'c', 'type': 'function', 'function': {'name': 'f', 'arguments': '{"x": 1}'}}]
    """
    from lightning_nat.core.trajectory import call_to_openai

    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            msg["tool_calls"] = [call_to_openai(c) for c in m["tool_calls"]]
            msg["content"] = m["content"] or None
        if m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
    """The generation prompt of a function-calling conversation, rendered as training rendered it."""
    from lightning_nat.train.tokenization import _render

    return _render(tokenizer, messages, generation_prompt=True, tools=tools)


def step(messages: list[dict[str, Any]], content: str, calls: list[dict[str, Any]], errors: list[str],
         functions: Sequence[Callable], counts: StepCounts, timeouts: dict[str, float | None] | None = None) -> bool:
    """Append the model's turn and the tools' answers to ``messages``; True when the episode is over.

    A turn with no call (and no unparseable one) is the final answer. A turn whose every call was
    unparseable gets a tool-less user note, so the model can try again.
    """
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        turn["tool_calls"] = calls
    messages.append(turn)
    if calls:
        messages += run_calls(calls, functions, counts, errors, timeouts)
        return False
    if errors:
        counts.parse_errors += len(errors)
        messages.append({"role": "user", "content": "Error: " + "; ".join(errors)})
        return False
    return True
