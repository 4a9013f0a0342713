"""Function calls as data: the canonical call and its OpenAI, ShareGPT and built-row forms.

A trajectory's assistant turn may hold ``tool_calls``: a list of canonical calls
``{"id", "name", "arguments": {...}}`` (arguments a JSON object, never a string);
a ``tool`` turn holds the result and the ``tool_call_id`` it answers; the record's
``tools`` is the OpenAI-style schema list. These pure functions move one message
(or one tools list) between that form and the layouts found in the wild:

- OpenAI chat messages: ``{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}``;
- ShareGPT as LLaMA-Factory writes it: ``function_call`` turns holding ``{"name", "arguments"}`` (a list
  for parallel calls) and ``observation`` turns holding the results; no call ids;
- the built dataset's row, where Arrow needs one schema for every row: arguments and the tools list
  are JSON text there.
"""

from __future__ import annotations

import json
from typing import Any

from lightning_nat.core.trajectory import TrajectoryFormatError


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
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise TrajectoryFormatError(f"{where}: tool call arguments are not valid JSON ({exc.msg})") from None
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


def call_to_openai(call: dict[str, Any], arguments_as_text: bool = True) -> dict[str, Any]:
    """A canonical call in the OpenAI form; ``arguments_as_text=False`` keeps the object (chat templates want it).

    >>> call_to_openai({"id": "c1", "name": "convert", "arguments": {"v": 5}})
    {'id': 'c1', 'type': 'function', 'function': {'name': 'convert', 'arguments': '{"v": 5}'}}
    """
    args = call["arguments"]
    return {"id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(args, ensure_ascii=False) if arguments_as_text
                         else args}}


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
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise TrajectoryFormatError(f"{where}: not valid JSON ({exc.msg})") from None
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
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise TrajectoryFormatError(f"{where}: function_call is not valid JSON ({exc.msg})") from None
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
    items = [{"name": c["name"], "arguments": c["arguments"]} for c in calls]
    return json.dumps(items[0] if len(items) == 1 else items, ensure_ascii=False)


def message_to_row(m: dict[str, Any], train: bool) -> dict[str, Any]:
    """A trajectory message as a built-dataset message: every row has the same fields (Arrow), arguments as JSON text.

    >>> message_to_row({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f",
    ...     "arguments": {"x": 1}}]}, True)["tool_calls"]
    [{'id': 'c', 'name': 'f', 'arguments': '{"x": 1}'}]
    """
    calls = m.get("tool_calls")
    return {"role": m["role"], "content": m["content"], "train": train,
            "tool_calls": None if not calls else [{"id": c["id"], "name": c["name"],
                                                   "arguments": json.dumps(c["arguments"], ensure_ascii=False)}
                                                  for c in calls],
            "tool_call_id": m.get("tool_call_id")}


def message_from_row(m: dict[str, Any]) -> dict[str, Any]:
    """A built-dataset message back in the trajectory's form (no ``train``, no empty fields, arguments as objects).

    >>> message_from_row({"role": "tool", "content": "8", "train": False, "tool_calls": None, "tool_call_id": "c"})
    {'role': 'tool', 'content': '8', 'tool_call_id': 'c'}
    """
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"id": c["id"], "name": c["name"], "arguments": json.loads(c["arguments"])}
                             for c in m["tool_calls"]]
    if m.get("tool_call_id") is not None:
        out["tool_call_id"] = m["tool_call_id"]
    return out


def tools_of_row(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools list a built row carries (JSON text there), or None."""
    text = row.get("tools")
    return json.loads(text) if text else None


def template_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as ``transformers`` chat templates take it: OpenAI-form calls with arguments as objects.

    >>> template_message({"role": "tool", "content": "8", "tool_call_id": "c", "train": False})
    {'role': 'tool', 'content': '8', 'tool_call_id': 'c'}
    """
    m = message_from_row(m) if isinstance((m.get("tool_calls") or [{}])[0].get("arguments"), str) else m
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if m.get("tool_calls"):
        out["tool_calls"] = [call_to_openai(c, arguments_as_text=False) for c in m["tool_calls"]]
    if m.get("tool_call_id") is not None:
        out["tool_call_id"] = m["tool_call_id"]
    return out
