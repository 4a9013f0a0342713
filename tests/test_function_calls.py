"""Function-calling trajectories: read, build, export and read back with every call kept."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.trajectory import TrajectoryFormatError

WEATHER_TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}]


def weather_record(i: int, reward: bool, parallel: bool = False) -> dict:
    """The issue's weather agent: system, user, a content-null call turn, the tool result, the final answer."""
    calls = [{"id": f"call_{i}_a", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "c"})}}]
    results = [{"role": "tool", "tool_call_id": f"call_{i}_a", "content": '{"temp": 21}'}]
    if parallel:
        calls.append({"id": f"call_{i}_b", "type": "function",
                      "function": {"name": "get_weather", "arguments": json.dumps({"city": "Rome"})}})
        results.append({"role": "tool", "tool_call_id": f"call_{i}_b", "content": '{"temp": 25}'})
    return {"id": f"w{i}", "reward": reward, "prediction": "21" if reward else "30", "tools": WEATHER_TOOLS,
            "messages": [{"role": "system", "content": "You are a weather agent. Use the tools."},
                         {"role": "user", "content": f"What is the weather in Paris? ({i})"},
                         {"role": "assistant", "content": None, "tool_calls": calls},
                         *results,
                         {"role": "assistant", "content": "It is 21 C in Paris." if reward else "It is 30 C."}]}


def calls_of(messages: list[dict]) -> list[tuple]:
    """(id, name, arguments as an object) of every call, and (tool_call_id, result) of every tool turn."""
    out = []
    for m in messages:
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c)
            args = fn["arguments"]
            out.append(("call", c.get("id"), fn["name"], json.loads(args) if isinstance(args, str) else args))
        if m["role"] == "tool":
            out.append(("result", m["tool_call_id"], m["content"]))
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def nat(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_openai_reader_keeps_calls_results_and_tools(tmp_path):
    rec = weather_record(0, True, parallel=True)
    [t] = read_trajectories(write_jsonl(tmp_path / "w.jsonl", [rec]), "openai")
    assert t.tools == WEATHER_TOOLS
    assert t.meta["source_system"] == "You are a weather agent. Use the tools."
    assert [m["role"] for m in t.messages] == ["assistant", "tool", "tool", "assistant"]
    assert t.messages[0]["content"] == ""
    assert calls_of(t.messages) == calls_of(rec["messages"])


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["messages"][2]["tool_calls"][0]["function"].update(arguments="{city: Paris"),
     "message 2: tool call arguments are not valid JSON"),
    (lambda r: r["messages"][3].update(tool_call_id="nope"), "message 3: tool_call_id 'nope' answers no earlier"),
    (lambda r: r["messages"][2]["tool_calls"][0].pop("id"), "message 2: tool call 'get_weather' has no id"),
    (lambda r: r.update(tools=[{"description": "no name"}]), "tools[0]: expected a function schema with a name"),
])
def test_bad_calls_are_named_by_message(tmp_path, change, problem):
    rec = weather_record(0, True)
    change(rec)
    path = write_jsonl(tmp_path / "w.jsonl", [rec])
    with pytest.raises(TrajectoryFormatError) as err:
        read_trajectories(path, "openai")
    assert str(err.value).startswith(f"{path}, line 1: {problem}")


def test_sharegpt_function_call_and_observation_turns(tmp_path):
    rec = {"id": "s0", "reward": True, "tools": json.dumps([WEATHER_TOOLS[0]["function"]]),
           "conversations": [{"from": "human", "value": "Weather in Paris and Rome?"},
                             {"from": "function_call", "value": json.dumps(
                                 [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                  {"name": "get_weather", "arguments": {"city": "Rome"}}])},
                             {"from": "observation", "value": json.dumps(["21", "25"])},
                             {"from": "gpt", "value": "21 and 25."}]}
    [t] = read_trajectories(write_jsonl(tmp_path / "s.jsonl", [rec]), "sharegpt")
    assert t.tools == WEATHER_TOOLS[:1] or t.tools[0]["function"]["name"] == "get_weather"
    assert calls_of(t.messages) == [("call", "call_1_0", "get_weather", {"city": "Paris"}),
                                    ("call", "call_1_1", "get_weather", {"city": "Rome"}),
                                    ("result", "call_1_0", "21"), ("result", "call_1_1", "25")]


def test_weather_agent_round_trip_through_build_and_export(tmp_path):
    """The issue's case: read -> nat build -> nat export -> read gives every call, result and tool back."""
    records = [weather_record(i, i % 2 == 0, parallel=i == 2) for i in range(4)]
    src = write_jsonl(tmp_path / "weather.jsonl", records)
    proc = nat(["build", "--format", "openai", "--trajectories", str(src), "--variant", "nat", "--out", "built"],
               tmp_path)
    assert proc.returncode == 0, proc.stderr
    for layout in ("openai", "sharegpt"):
        proc = nat(["export", "built", "--to", layout, "--out", f"exp-{layout}"], tmp_path)
        assert proc.returncode == 0, proc.stderr
    exported = [json.loads(line) for line in (tmp_path / "exp-openai" / "train.jsonl").read_text().splitlines()]
    assert len(exported) == len(records)
    # The export carries the build's prompt (marker in the user turn); the episode's turns come back equal.
    for rec in exported:
        assert rec["tools"] == WEATHER_TOOLS
    # Byte for byte in the OpenAI form: `content: null` beside calls, parallel calls, ids, JSON-text arguments.
    for rec in records:
        out = next(e for e in exported if e["messages"][1]["content"].startswith(rec["messages"][1]["content"]))
        episode = [{k: v for k, v in m.items() if k != "weight"} for m in out["messages"][2:]]
        assert episode == rec["messages"][2:]
    assert sum(len(m.get("tool_calls") or []) for e in exported for m in e["messages"]) == 5  # one record calls twice
    # A trainer layout carries no label: give one to read the rows back as trajectories.
    labelled = write_jsonl(tmp_path / "back.jsonl", [{**r, "reward": True} for r in exported])
    back = {t.question: t for t in read_trajectories(labelled, "openai")}
    for rec in records:
        question = rec["messages"][1]["content"]
        t = next(t for q, t in back.items() if q.startswith(question))
        assert t.tools == WEATHER_TOOLS
        assert calls_of(t.messages) == calls_of(rec["messages"])
        assert [m["content"] for m in t.messages if m["role"] == "assistant"] == \
            [m["content"] or "" for m in rec["messages"] if m["role"] == "assistant"]
    # ShareGPT has no call ids: names, arguments, results and order come back.
    shared = [{**json.loads(line), "reward": True}
              for line in (tmp_path / "exp-sharegpt" / "train.jsonl").read_text().splitlines()]
    sharegpt = read_trajectories(write_jsonl(tmp_path / "back-sharegpt.jsonl", shared), "sharegpt")
    assert sorted(len(calls_of(t.messages)) for t in sharegpt) == sorted(len(calls_of(r["messages"])) for r in records)
    info = json.loads((tmp_path / "exp-sharegpt" / "dataset_info.json").read_text())
    assert next(iter(info.values()))["columns"]["tools"] == "tools"
    # Alpaca cannot hold calls: refused, with the row named, never written without them.
    proc = nat(["export", "built", "--to", "alpaca", "--out", "exp-alpaca"], tmp_path)
    assert proc.returncode == 1 and "no place for tool calls" in proc.stderr


def test_dedupe_tells_trajectories_apart_by_their_calls(tmp_path):
    a, b = weather_record(0, False), weather_record(0, False)
    b["id"] = "w0-b"
    b["messages"][2]["tool_calls"][0]["function"]["arguments"] = json.dumps({"city": "Lyon"})
    from lightning_nat.data.select import trajectory_key

    ta, tb = read_trajectories(write_jsonl(tmp_path / "w.jsonl", [a, b]), "openai")
    assert trajectory_key(ta) != trajectory_key(tb)


@pytest.mark.parametrize("placement", ["suffix", "system"])
def test_nat_variants_mean_the_same_for_function_calling_data(tmp_path, placement):
    """w/o Neg, NUT, NAT and NAT-2 on tool-call trajectories; the marker in the first user turn or the system turn."""
    import datasets

    from lightning_nat.core.artifacts import read_spec
    from lightning_nat.core.prompts import head_messages

    records = [weather_record(i, i % 2 == 0) for i in range(6)]
    for i, r in enumerate(records):
        r["score"] = 1.0 if r["reward"] else 0.1 * i
    src = write_jsonl(tmp_path / "weather.jsonl", records)
    expect = {"positive": {"positive": 3}, "nut": {"positive": 3, "negative": 3}, "nat": {"positive": 3, "negative": 3},
              "nat-2": {"positive": 3, "negative-1": 2, "negative-2": 1}}  # scores 0.1, 0.3 | 0.5
    for variant, labels in expect.items():
        out = f"built-{variant}"
        proc = nat(["build", "--format", "openai", "--trajectories", str(src), "--variant", variant,
                    "--placement", placement, "--out", out], tmp_path)
        assert proc.returncode == 0, proc.stderr
        rows = datasets.load_from_disk(str(tmp_path / out))["train"]
        got: dict[str, int] = {}
        for row in rows:
            got[row["label"]] = got.get(row["label"], 0) + 1
            system, user = row["messages"][0]["content"], row["messages"][1]["content"]
            marked, bare = (system, user) if placement == "system" else (user, system)
            marker = "incorrectly" if row["label"].startswith("negative") and variant != "nut" else "correctly."
            assert marker in marked.splitlines()[-1] and "solve it" not in bare
            assert system.startswith("You are a weather agent. Use the tools.")
            assert [m["train"] for m in row["messages"]] == [False, False, True, False, True]
            assert row["messages"][2]["tool_calls"][0]["name"] == "get_weather"
        assert got == labels
        spec = read_spec(str(tmp_path / out))
        assert spec.placement == placement  # recorded in build.json, saved beside the model by the export
        inference = head_messages(spec, "Weather in Oslo?")
        assert "Please solve it correctly." in (inference[0] if placement == "system" else inference[1])["content"]
