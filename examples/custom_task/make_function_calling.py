"""Write trajectories_fc.jsonl: the 40 ReAct trajectories of this folder in OpenAI function-calling form.

Same questions, same tools, same labels: each `Action: tool[argument]` becomes an assistant turn with
`content: null` and one `tool_calls` entry, each `Observation:` the `tool` message answering it, and
`finish[answer]` the final assistant reply (the answer alone). Thoughts are not kept: the Llama-3.1
tool template writes no text beside a call. Run from the repository root:

    python examples/custom_task/make_function_calling.py
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEM = ("You are UnitBot, the conversion assistant of a cooking and travel app. Call convert to convert a "
          "quantity and calculate for arithmetic; when you know the answer, reply with one number in the unit the "
          "user asks for, and no tool call.")
ARGUMENT = {"convert": "query", "calculate": "expression"}
_ACTION = re.compile(r"Action:\s*(\w+)\[(.*)\]\s*$", re.S)


def to_function_calls(record: dict) -> dict:
    """One ReAct record (system, user, then Thought/Action and Observation turns) in function-calling form."""
    messages = [{"role": "system", "content": SYSTEM}, record["messages"][1]]
    pending = None
    for k, m in enumerate(record["messages"][2:]):
        if m["role"] == "assistant":
            tool, argument = _ACTION.search(m["content"]).groups()
            if tool == "finish":
                messages.append({"role": "assistant", "content": argument})
                continue
            pending = f"call_{record['id']}_{k}"
            arguments = json.dumps({ARGUMENT[tool]: argument})
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": pending, "type": "function", "function": {"name": tool, "arguments": arguments}}]})
        else:
            observation = m["content"].removeprefix("Observation:").strip()
            messages.append({"role": "tool", "tool_call_id": pending, "content": observation})
    return {**record, "messages": messages, "tools": TOOLS}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from units import convert

    from lightning_nat.agent.function_calling import schemas_of
    from lightning_nat.core.tools import calculate

    TOOLS = schemas_of([convert, calculate])
    source = (HERE / "trajectories.jsonl").read_text().splitlines()
    out = [json.dumps(to_function_calls(json.loads(line)), ensure_ascii=False) for line in source]
    (HERE / "trajectories_fc.jsonl").write_text("\n".join(out) + "\n")
    print(f"wrote {len(out)} trajectories to {HERE / 'trajectories_fc.jsonl'}")
