"""The canonical trajectory record and its JSONL form.

A :class:`Trajectory` holds one agent episode on one question: the agent's turns
(``assistant``) and the environment's answers (``user``, ``Observation: ...``, or
``tool`` turns answering an assistant's function calls),
the label the task metric gave it, and where it came from. The task instruction
and the question are *not* part of ``messages``: reformatting adds them, so one
trajectory can be rendered under any prompt variant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_nat.core import jsonl
from lightning_nat.core.jsonl import RecordError

ROLES = ("system", "user", "assistant", "tool")


class TrajectoryFormatError(RecordError):
    """A record that cannot be read as a trajectory, with the file and record it came from.

    >>> str(TrajectoryFormatError("missing reward", path="a.json", where="record 3"))
    'a.json, record 3: missing reward'
    """


@dataclass
class Trajectory:
    """One labelled agent episode.

    ``reward`` is the binary label (success); ``score`` a graded one when the task
    has it (F1 on HotpotQA), used by fine-grained NAT. ``prediction`` is ``None``
    when the agent never finished.
    """

    id: str
    task: str
    question: str
    messages: list[dict[str, str]]
    reward: bool
    score: float | None = None
    prediction: str | None = None
    answer: Any = None
    question_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # The OpenAI-style ``tools`` list ({"type": "function", "function": {...}}) offered to a function-calling agent.
    tools: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        validate_messages(self.messages)
        if self.tools is not None:
            validate_tools(self.tools)

    @property
    def finished(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["tools"] is None:  # ReAct records keep the layout they always had
            del d["tools"]
        return d

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Trajectory:
        """Read the canonical JSON form (what :meth:`to_dict` writes).

        >>> t = Trajectory.from_dict({"id": "q1#0", "task": "gsm8k", "question": "1+1?",
        ...     "messages": [{"role": "assistant", "content": "Action: finish[2]"}], "reward": True})
        >>> t.finished, t.question_id
        (False, 'q1#0')
        """
        missing = [k for k in ("id", "question", "messages", "reward") if k not in record]
        if missing:
            raise TrajectoryFormatError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(record["reward"], bool):
            raise TrajectoryFormatError(f"reward must be true or false, got {record['reward']!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(record) - known
        if unknown:
            raise TrajectoryFormatError(f"unknown field(s) {', '.join(sorted(unknown))}")
        data = dict(record)
        data.setdefault("task", "")
        data.setdefault("question_id", None)
        data["messages"] = [dict(m) for m in data["messages"]]
        data["tools"] = data.get("tools")
        data["meta"] = dict(data.get("meta") or {})
        data["score"] = check_score(data.get("score"))
        traj = cls(**data)
        if traj.question_id is None:
            traj.question_id = traj.id
        return traj


def check_score(value: Any) -> float | None:
    """A score must be None or a finite number in [0, 1]; bools count as 0/1.

    >>> check_score(0.5), check_score(True)
    (0.5, 1.0)
    """
    import math

    if value is None:
        return None
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise TrajectoryFormatError(f"score must be a number in [0, 1], got {value!r}")


def validate_tools(tools: Any) -> None:
    """Check an OpenAI-style tools list: each entry ``{"type": "function", "function": {"name", ...}}``.

    >>> validate_tools([{"type": "function", "function": {"name": "convert", "parameters": {}}}])
    >>> validate_tools([{"name": "convert"}])
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: tools[0]: expected {"type": "function", "function": {"name": ...}}
    """
    if not isinstance(tools, list):
        raise TrajectoryFormatError(f"tools must be a list, got {type(tools).__name__}")
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise TrajectoryFormatError(f'tools[{i}]: expected {{"type": "function", "function": {{"name": ...}}}}')


def validate_call(call: Any, where: str) -> None:
    """Check one tool call of the canonical form ``{"id", "name", "arguments": {...}}``.

    >>> validate_call({"id": "c1", "name": "convert", "arguments": {"x": 1}}, "message 1")
    >>> validate_call({"id": "c1", "name": "convert", "arguments": "{}"}, "message 1")
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: message 1: tool call 'convert' arguments must be a JSON object, got str
    """
    if not isinstance(call, dict):
        raise TrajectoryFormatError(f"{where}: a tool call must be an object, got {type(call).__name__}")
    if not isinstance(call.get("name"), str) or not call["name"]:
        raise TrajectoryFormatError(f"{where}: a tool call has no function name")
    if not isinstance(call.get("id"), str):
        raise TrajectoryFormatError(f"{where}: tool call {call['name']!r} has no id")
    if not isinstance(call.get("arguments"), dict):
        raise TrajectoryFormatError(f"{where}: tool call {call['name']!r} arguments must be a JSON object, got "
                                    f"{type(call.get('arguments')).__name__}")
    extra = set(call) - {"id", "name", "arguments"}
    if extra:
        raise TrajectoryFormatError(f"{where}: tool call {call['name']!r} has unknown field(s) {', '.join(sorted(extra))}")


def has_tool_calls(messages: Iterable[dict]) -> bool:
    """Whether a conversation holds function calls or tool results.

    >>> has_tool_calls([{"role": "assistant", "content": "x"}])
    False
    """
    return any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)


def validate_messages(messages: Any) -> None:
    """Check a turn list: non-empty, known roles, string contents, an assistant turn.

    An assistant turn may carry ``tool_calls`` (canonical calls, see :func:`validate_call`);
    a ``tool`` turn answers one of them by ``tool_call_id``.

    >>> validate_messages([{"role": "assistant", "content": "Thought: ok"}])
    >>> validate_messages([{"role": "robot", "content": "hi"}])  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    TrajectoryFormatError: message 0: unknown role 'robot' (expected system, user, assistant or tool)
    """
    if not isinstance(messages, list):
        raise TrajectoryFormatError(f"messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise TrajectoryFormatError("empty conversation")
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TrajectoryFormatError(f"message {i}: expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise TrajectoryFormatError(f"message {i}: unknown role {role!r} (expected system, user, assistant or tool)")
        if not isinstance(m.get("content"), str):
            raise TrajectoryFormatError(f"message {i}: content must be a string")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                raise TrajectoryFormatError(f"message {i}: only assistant turns make tool calls, not {role}")
            if not isinstance(calls, list):
                raise TrajectoryFormatError(f"message {i}: tool_calls must be a list")
            for call in calls:
                validate_call(call, f"message {i}")
                if call["id"] in call_ids:
                    raise TrajectoryFormatError(f"message {i}: tool call id {call['id']!r} is used twice")
                call_ids.add(call["id"])
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str):
                raise TrajectoryFormatError(f"message {i}: a tool turn needs the tool_call_id it answers")
            if tid not in call_ids:
                raise TrajectoryFormatError(f"message {i}: tool_call_id {tid!r} answers no earlier tool call")
        elif m.get("tool_call_id") is not None:
            raise TrajectoryFormatError(f"message {i}: tool_call_id on a {role} turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrajectoryFormatError("no assistant turn")


def write_jsonl(path: str | os.PathLike, records: Iterable[Trajectory | dict]) -> int:
    """Write records as JSONL (atomically: a partial file never replaces a good one)."""
    return jsonl.write_jsonl(path, (rec.to_dict() if isinstance(rec, Trajectory) else rec for rec in records))

