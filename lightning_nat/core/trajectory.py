"""The canonical trajectory record: its JSONL form, its checks, its message forms and the answer it gave.

A :class:`Trajectory` is one agent episode on one question: the agent's turns (``assistant``) and the
environment's answers (``user`` observations, or ``tool`` turns answering ``tool_calls``), labelled by the
task metric. The instruction and the question are not part of ``messages``: a build adds them, so one
trajectory renders under any prompt. A call is data, ``{"id", "name", "arguments": {...}}``; pure
functions below move a message between that form, OpenAI's, ShareGPT's and the built row's (where Arrow
needs one schema: arguments and tools are JSON text). Model-written text is untrusted: nothing here runs it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_nat.core.jsonl import RecordError

ROLES = ("system", "user", "assistant", "tool")


class TrajectoryFormatError(RecordError):
    """A record that cannot be read as a trajectory, with the file and record it came from.

    >>> str(TrajectoryFormatError("missing reward", path="a.json", where="record 3"))
    'a.json, record 3: missing reward'
    """


@dataclass
class Trajectory:
    """One labelled agent episode: ``reward`` the binary label, ``score`` a graded one (F1 on HotpotQA) for
    fine-grained NAT, ``prediction`` None when the agent never finished."""

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
        check_fields(record)
        if not isinstance(record["messages"], list) or not all(isinstance(m, dict) for m in record["messages"]):
            raise TrajectoryFormatError("messages must be a list of objects")
        unknown = set(record) - set(cls.__dataclass_fields__)
        if unknown:
            raise TrajectoryFormatError(f"unknown field(s) {', '.join(sorted(unknown))}")
        qid = record.get("question_id")
        return cls(**{**record, "task": record.get("task", ""), "messages": [dict(m) for m in record["messages"]],
                      "meta": dict(record.get("meta") or {}), "score": check_score(record.get("score")),
                      "question_id": record["id"] if qid is None else qid})


def check_score(value: Any) -> float | None:
    """A score must be None or a finite number in [0, 1]; bools count as 0/1.

    >>> check_score(0.5), check_score(True)
    (0.5, 1.0)
    """
    if value is None:
        return None
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise TrajectoryFormatError(f"score must be a number in [0, 1], got {value!r}")


def _is_id(v: Any) -> bool:
    return isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) != ""


# What each labelled field of a record may hold (null: not given): the one record validator of every format.
_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "id": (_is_id, "a non-empty string or a number"), "question_id": (_is_id, "a non-empty string or a number"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "question": (lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string"),
    "reward": (lambda v: isinstance(v, bool) or v in (0, 1), "true or false"),
    "prediction": (lambda v: isinstance(v, (str, int, float)), "a string or a number"),
    "pred": (lambda v: isinstance(v, (str, int, float)), "a string or a number"),
    "meta": (lambda v: isinstance(v, dict), "an object"),
    "tools": (lambda v: isinstance(v, (list, str)), "a list of function schemas"),
}


def check_fields(record: dict[str, Any]) -> None:
    """Refuse a record whose labelled fields have the wrong type; ``null`` means not given.

    >>> check_fields({"id": "a", "question": "q?", "reward": True, "meta": {}})
    >>> check_fields({"id": {}, "reward": True})
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: id must be a non-empty string or a number, got {}
    """
    for key, (ok, what) in _FIELD_CHECKS.items():
        value = record.get(key)
        if value is not None and not ok(value):
            raise TrajectoryFormatError(f"{key} must be {what}, got {_short(value)}")
    check_score(record.get("score"))


def _short(value: Any, limit: int = 60) -> str:
    """A value as a short, one-line repr for an error message.

    >>> _short("x" * 100)[-4:]
    "...'"
    """
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit - 4] + "...'"


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
    """Check a turn list: non-empty, known roles, string contents, an assistant turn, every call answered once.

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
    pending: list[str] = []  # calls of the last call turn not answered yet, in call order
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TrajectoryFormatError(f"message {i}: expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise TrajectoryFormatError(f"message {i}: unknown role {role!r} (expected system, user, assistant or tool)")
        if not isinstance(m.get("content"), str):
            raise TrajectoryFormatError(f"message {i}: content must be a string")
        if role != "tool" and pending:
            raise TrajectoryFormatError(f"message {i}: tool call(s) {', '.join(map(repr, pending))} of an earlier turn "
                                        "were never answered by a tool turn")
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
                pending.append(call["id"])
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str):
                raise TrajectoryFormatError(f"message {i}: a tool turn needs the tool_call_id it answers")
            if tid not in call_ids:
                raise TrajectoryFormatError(f"message {i}: tool_call_id {tid!r} answers no earlier tool call")
            if tid not in pending:
                raise TrajectoryFormatError(f"message {i}: tool call {tid!r} is answered twice, or after a later turn")
            pending.remove(tid)
        elif m.get("tool_call_id") is not None:
            raise TrajectoryFormatError(f"message {i}: tool_call_id on a {role} turn")
    if pending:
        raise TrajectoryFormatError(f"tool call(s) {', '.join(map(repr, pending))} of the last call turn were never "
                                    "answered by a tool turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrajectoryFormatError("no assistant turn")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrajectoryFormatError(f"{where} not valid JSON ({exc.msg})") from None


def parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """Call arguments as a JSON object, from an object or from JSON text (the OpenAI wire form).

    >>> parse_arguments('{"value": 5, "to": "mi"}', "message 2")
    {'value': 5, 'to': 'mi'}
    >>> parse_arguments("{bad", "message 2")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: message 2: tool call arguments are not valid JSON (...)
    """
    if isinstance(arguments, str):
        arguments = _loads(arguments, f"{where}: tool call arguments are") if arguments.strip() else {}
    if not isinstance(arguments, dict):
        raise TrajectoryFormatError(f"{where}: tool call arguments must be a JSON object, got {type(arguments).__name__}")
    return arguments


def call_from_openai(call: Any, where: str) -> dict[str, Any]:
    """One OpenAI ``tool_calls`` entry as a canonical call.

    >>> call_from_openai({"id": "c1", "type": "function", "function": {"name": "convert", "arguments": "{}"}}, "m")
    {'id': 'c1', 'name': 'convert', 'arguments': {}}
    """
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise TrajectoryFormatError(f"{where}: a tool call must be {{'id', 'type': 'function', 'function': {{...}}}}")
    if call.get("type", "function") != "function":
        raise TrajectoryFormatError(f"{where}: tool call type {call.get('type')!r} is not supported (only 'function')")
    fn = call["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise TrajectoryFormatError(f"{where}: a tool call has no function name")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise TrajectoryFormatError(f"{where}: tool call {name!r} has no id")
    return {"id": call["id"], "name": name, "arguments": parse_arguments(fn.get("arguments", {}), where)}


def tool_from_any(tool: Any, where: str) -> dict[str, Any]:
    """A tool schema in the OpenAI form, from that form or a bare function schema (LLaMA-Factory's ``tools``).

    >>> tool_from_any({"name": "convert", "parameters": {"type": "object"}}, "tools[0]")["type"]
    'function'
    """
    if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        return tool
    if isinstance(tool, dict) and isinstance(tool.get("name"), str):
        return {"type": "function", "function": tool}
    raise TrajectoryFormatError(f"{where}: expected a function schema with a name")


def tools_from_any(tools: Any, where: str = "tools") -> list[dict[str, Any]] | None:
    """The record's tools list in the OpenAI form; JSON text (LLaMA-Factory) is parsed; empty means none.

    >>> tools_from_any('[{"name": "convert"}]')
    [{'type': 'function', 'function': {'name': 'convert'}}]
    >>> tools_from_any("") is None
    True
    """
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        tools = _loads(tools, f"{where}:")
    if not isinstance(tools, list):
        raise TrajectoryFormatError(f"{where}: must be a list of function schemas")
    return [tool_from_any(t, f"{where}[{i}]") for i, t in enumerate(tools)]


def calls_from_sharegpt(value: Any, where: str, turn: int) -> list[dict[str, Any]]:
    """The calls of a ShareGPT ``function_call`` turn: ``{"name", "arguments"}`` or a list of them.

    ShareGPT has no call ids; each call gets ``call_<turn>_<k>``, so a file read twice gets the same ids.

    >>> calls_from_sharegpt('{"name": "convert", "arguments": {"v": 5}}', "message 2", 2)
    [{'id': 'call_2_0', 'name': 'convert', 'arguments': {'v': 5}}]
    """
    if isinstance(value, str):
        value = _loads(value, f"{where}: function_call is")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise TrajectoryFormatError(f"{where}: function_call holds no call")
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise TrajectoryFormatError(f"{where}: a function_call must be {{'name', 'arguments'}}")
        cid = item.get("id") if isinstance(item.get("id"), str) else f"call_{turn}_{k}"
        out.append({"id": cid, "name": item["name"], "arguments": parse_arguments(item.get("arguments", {}), where)})
    return out


def calls_to_sharegpt(calls: list[dict[str, Any]]) -> str:
    """The value of a ShareGPT ``function_call`` turn (one object, or a list for parallel calls).

    >>> calls_to_sharegpt([{"id": "c1", "name": "convert", "arguments": {"v": 5}}])
    '{"name": "convert", "arguments": {"v": 5}}'
    """
    items = [{"name": c["name"], "arguments": _arguments(c, text=False)} for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def _arguments(call: dict[str, Any], text: bool) -> Any:
    """A call's arguments as JSON text or as an object, from either form (a trajectory's object, a row's text)."""
    args = call["arguments"]
    if isinstance(args, str):
        return args if text else json.loads(args)
    return json.dumps(args, ensure_ascii=False) if text else args


def message_to_row(m: dict[str, Any], train: bool) -> dict[str, Any]:
    """A trajectory message as a built-dataset message: every row has the same fields (Arrow), arguments as JSON text.

    >>> message_to_row({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f",
    ...     "arguments": {"x": 1}}]}, True)["tool_calls"]
    [{'id': 'c', 'name': 'f', 'arguments': '{"x": 1}'}]
    """
    calls = m.get("tool_calls")
    return {"role": m["role"], "content": m["content"], "train": train,
            "tool_calls": None if not calls else [{"id": c["id"], "name": c["name"], "arguments": _arguments(c, text=True)}
                                                  for c in calls],
            "tool_call_id": m.get("tool_call_id")}


def tools_of_row(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools list a built row carries (JSON text there), or None."""
    text = row.get("tools")
    return json.loads(text) if text else None


def as_openai(m: dict[str, Any], wire: bool = True) -> dict[str, Any]:
    """A trajectory or built-row message in OpenAI's form; ``wire=False`` keeps arguments as objects (chat templates).

    On the wire, arguments are JSON text and an assistant turn that only calls tools has ``content: null``.

    >>> as_openai({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f", "arguments": "{}"}],
    ...            "train": True})
    {'role': 'assistant', 'content': None, 'tool_calls': [{'id': 'c', 'type': 'function', 'function': {'name': 'f', \
'arguments': '{}'}}]}
    >>> as_openai({"role": "tool", "content": "8", "tool_call_id": "c", "train": False}, wire=False)
    {'role': 'tool', 'content': '8', 'tool_call_id': 'c'}
    """
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "type": "function", "function": {
            "name": c["name"], "arguments": _arguments(c, text=wire)}} for c in m["tool_calls"]]
        if wire:
            out["content"] = m["content"] or None
    if m.get("tool_call_id") is not None:
        out["tool_call_id"] = m["tool_call_id"]
    return out


_FINISH = re.compile(r"\bfinish\s*\[", re.IGNORECASE)
# Last-line forms, most specific first; each captures the rest of its line.
_COT_FORMS = (
    re.compile(r"^\s*#{4}\s*(.+?)\s*$", re.MULTILINE),
    re.compile(r"final answer\s*(?:is)?\s*[:：]?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"\bthe (?:final )?answer is\s*[:：]?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*A\s*[:：]\s*(.+?)\s*$", re.MULTILINE),
)


def finish_argument(text: str) -> str | None:
    """The argument of the last ``finish[...]`` call (nested brackets honoured), if any.

    >>> finish_argument("Thought: done.\\nAction: finish[[1, 2]]"), finish_argument("Action: search[x]")
    ('[1, 2]', None)
    """
    calls = list(_FINISH.finditer(text))
    if not calls:
        return None
    argument, _ = bracket_argument(text, calls[-1].end() - 1)
    return argument.strip()


def bracket_argument(text: str, start: int) -> tuple[str, bool]:
    """The text inside the bracket opening at ``start``, nesting honoured, and whether it closed.

    An unclosed bracket gives the rest of its line (trailing ``]`` stripped).

    >>> bracket_argument("f[a[1]] x", 1), bracket_argument("f[abc\\nmore", 1)
    (('a[1]', True), ('abc', False))
    """
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


def cot_answer(text: str) -> str | None:
    """The final answer of a chain-of-thought solution, from its last answer line.

    >>> [cot_answer(t) for t in ("So 3*6 = 18.\\nA: 18", "... \\n#### 1,800", "Final answer: 18 apples",
    ...                          "Therefore, the answer is 18.", "I am not sure.")]
    ['18', '1,800', '18 apples', '18', None]
    """
    found = [m for form in _COT_FORMS for m in form.finditer(text)]
    if not found:
        return None
    answer = max(found, key=lambda m: m.start()).group(1).strip()  # the last line's; on a tie the first form's
    # "The answer is 18." ends a sentence; the full stop is not part of the answer.
    return answer[:-1].rstrip() if answer.endswith(".") and not answer[:-1].rstrip().endswith(".") else answer


def extract_answer(text: str) -> str | None:
    """A trajectory's answer: ``finish[...]`` when the turn calls it, else a CoT final-answer line.

    >>> extract_answer("Thought: ok\\nAction: finish[Yes]"), extract_answer("6*3=18\\nThe answer is 18")
    ('Yes', '18')
    """
    found = finish_argument(text)
    return found if found is not None else cot_answer(text)
