"""Function-calling episodes in the one engine: scripted policies, the local HF policy, nat eval through the API."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from tool_templates import FAMILIES

from lightning_nat.agent.function_calling import FunctionCallingAgent
from lightning_nat.agent.react import run_pool
from lightning_nat.core.results import task_result
from lightning_nat.core.tasks import get_task, load_questions_for

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task"
TASK = EXAMPLE / "task_fc.yaml"
QUERIES = {"h1": "23 kg to lb", "h2": "4.5 m to ft", "h3": "6 l to cup", "h4": "20 C to F", "h5": "18 mi to km",
           "h6": "2.5 h to min", "h7": "250 parsecs to oz"}


def question_id(text: str) -> str:
    """The example question a user turn asks (the NAT marker may follow it)."""
    records = {r["question"]: r["id"] for r in map(json.loads, (EXAMPLE / "questions.jsonl").open())}
    return next(qid for question, qid in records.items() if text.startswith(question))


def written_call(family: str, name: str, arguments: str) -> str:
    """A call as each template family writes it (``arguments`` is JSON text, possibly broken on purpose)."""
    if family == "hermes":
        return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'
    return f'{{"name": "{name}", "parameters": {arguments}}}'


class ScriptedTextPolicy:
    """A text policy for the engine: converts with the task's tool, then answers with the tool's number.

    h7 gets the tool's error (unknown unit) and guesses; h8 first writes broken JSON, then calls a tool that
    does not exist, then answers.
    """

    def __init__(self, family: str):
        self.family, self.tools, self.prompts = family, None, []

    def use_tools(self, schemas):
        self.tools = schemas

    def generate(self, prompts):
        self.prompts += prompts
        return [self.turn(p) for p in prompts]

    def turn(self, messages):
        qid = question_id(messages[1]["content"])
        last = messages[-1]
        if last["role"] == "tool":
            if last["content"].startswith("Error: unknown tool"):
                return "13.3"
            return "1" if last["content"].startswith("Error") else last["content"].split("= ")[1].split()[0]
        if qid == "h8":
            if last["role"] == "user" and last["content"].startswith("Error"):
                return written_call(self.family, "yards", '{"feet": 40}')
            return written_call(self.family, "convert", '{query: 40 ft to yd}')
        return written_call(self.family, "convert", json.dumps({"query": QUERIES[qid]}))


def run_units(policy, family: str, limit: int = 8):
    task = get_task(str(TASK))
    agent = FunctionCallingAgent(task, policy, {}, family=family, max_turns=4)
    return agent, run_pool(agent, load_questions_for(task, limit=limit), pool_size=3)


@pytest.mark.parametrize("family", ["hermes", "llama31"])
def test_text_turns_become_structured_calls_and_errors_are_counted(family):
    policy = ScriptedTextPolicy(family)
    agent, trajs = run_units(policy, family)
    assert [s["function"]["name"] for s in policy.tools] == ["convert", "calculate"]
    by_id = {t.question_id: t for t in trajs}
    h1 = by_id["h1"]
    assert h1.messages[0] == {"role": "assistant", "content": "",
                              "tool_calls": [{"id": "call_0_0", "name": "convert", "arguments": {"query": "23 kg to lb"}}]}
    assert h1.messages[1] == {"role": "tool", "content": "23 kg = 50.7063 lb", "tool_call_id": "call_0_0"}
    assert h1.prediction == "50.7063" and h1.reward and h1.meta["agent"] == "function-calling"
    assert h1.tools == policy.tools
    # The tool raised (unknown unit): its message says so, the episode goes on to a (wrong) answer.
    assert by_id["h7"].messages[1]["content"] == "Error: convert failed: ValueError: unknown unit 'parsecs'"
    assert by_id["h7"].meta["tool_errors"] == 1 and not by_id["h7"].reward
    # Broken JSON: no call, an error note and one parse error; then an unknown tool: a tool message saying so.
    h8 = by_id["h8"]
    assert "tool_calls" not in h8.messages[0] and h8.messages[1]["role"] == "user"
    assert h8.messages[1]["content"].startswith("Error: tool call 0 is not valid JSON")
    assert h8.messages[3]["content"].startswith("Error: unknown tool 'yards'")
    assert h8.meta["parse_errors"] == 1 and h8.meta["tool_errors"] == 1 and h8.reward
    result = task_result([trajs]).to_dict()
    assert result["accuracy"] == 7 / 8 and result["parse_errors"] == 1 and result["tool_errors"] == 2
    assert result["tool_calls"] == 8
    # What the episode wrote is a valid trajectory that reads back with its calls.
    from lightning_nat.core.trajectory import Trajectory

    assert Trajectory.from_dict(json.loads(json.dumps(h8.to_dict()))).messages == h8.messages


def test_a_policy_without_tools_is_refused_before_any_episode():
    class Plain:
        def generate(self, prompts):
            raise AssertionError("no episode may run")

    with pytest.raises(ValueError, match="cannot offer tools"):
        FunctionCallingAgent(get_task(str(TASK)), Plain(), {})


@pytest.mark.parametrize("family", ["hermes", "llama31"])
def test_hf_tool_policy_renders_tools_stops_at_end_of_turn_and_repeats_with_a_seed(scratch_model, family):
    """The local policy on the scratch model: tools in the prompt, sampled turns read back, same seed same episodes."""
    import torch
    from transformers import AutoTokenizer

    from lightning_nat.agent.policies import HFPolicy

    tok = AutoTokenizer.from_pretrained(scratch_model)
    tok.chat_template = FAMILIES[family]

    def episodes():
        torch.manual_seed(7)
        policy = HFPolicy(str(scratch_model), tokenizer=tok, temperature=1.0, max_new_tokens=12)
        _, trajs = run_units(policy, family, limit=3)
        assert policy.family == family  # detected from the template
        return policy, [t.to_dict() for t in trajs]

    policy, first = episodes()
    assert first == episodes()[1]
    prompt = policy.render([{"role": "user", "content": "2 km in m?"}])
    assert '"name": "convert"' in prompt and '"name": "calculate"' in prompt
    assert policy.stop == {"hermes": "<|im_end|>", "llama31": "<|eot_id|>"}[family]
    for t in first:
        assert t["meta"]["agent"] == "function-calling" and t["tools"][0]["function"]["name"] == "convert"
        assert all(policy.stop not in m["content"] for m in t["messages"])


def _nat(args, cwd, **env):
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=900)


def api_agent(body: dict) -> dict:
    """A scripted function-calling model behind the fake server: OpenAI tool_calls in, a number out."""
    assert [t["function"]["name"] for t in body["tools"]] == ["convert", "calculate"] and "stop" not in body
    messages = body["messages"]
    qid = question_id(messages[1]["content"])
    last = messages[-1]
    if last["role"] == "tool":  # the first result answers the question (h6's second call only checks it)
        call = next(m for m in reversed(messages) if m["role"] == "assistant")
        result = next(m for m in messages if m["role"] == "tool")
        assert call["content"] is None and call["tool_calls"][0]["id"] == result["tool_call_id"]
        return {"content": "1" if result["content"].startswith("Error") else result["content"].split("= ")[1].split()[0]}
    if qid == "h8":  # arguments that are not JSON: the agent's parse error, answered with an error note
        if last["role"] == "user" and last["content"].startswith("Error"):
            return {"content": "13.3333 yards"}
        return {"content": None, "tool_calls": [{"id": "c8", "type": "function",
                                                 "function": {"name": "convert", "arguments": "{40 ft"}}]}
    # Two calls at once for h6 (parallel calls): both are run and answered by id.
    calls = [{"id": f"{qid}-a", "type": "function",
              "function": {"name": "convert", "arguments": json.dumps({"query": QUERIES[qid]})}}]
    if qid == "h6":
        calls.append({"id": f"{qid}-b", "type": "function",
                      "function": {"name": "calculate", "arguments": json.dumps({"expression": "2.5 * 60"})}})
    return {"content": None, "tool_calls": calls}


def test_nat_eval_function_calling_through_the_openai_policy(tmp_path):
    with FakeOpenAI(api_agent, with_body=True) as server:
        proc = _nat(["eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--agent",
                     "function-calling", "--tasks", str(TASK), "--out", "ev", "--max-retries", "0"], tmp_path,
                    OPENAI_API_KEY="sk-secret-19")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        collected = _nat(["collect", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--agent",
                          "function-calling", "--task", str(TASK), "--data", str(EXAMPLE / "questions.jsonl"),
                          "--temperatures", "0.5", "--out", "c.jsonl", "--max-retries", "0"], tmp_path,
                         OPENAI_API_KEY="sk-secret-19")
        assert collected.returncode == 0, collected.stdout + collected.stderr
    teacher = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(teacher) == 8 and sum(t["reward"] for t in teacher) == 7
    # Episodes are appended as they end, not in question order: look one up by its question.
    first = {t["question_id"]: t for t in teacher}["h1"]
    assert first["messages"][0]["tool_calls"][0]["name"] == "convert" and first["tools"]
    report = json.loads((tmp_path / "ev/results.json").read_text())
    assert report["agent"] == "function-calling"
    units = report["results"]["units-fc"]
    assert units["episodes"] == 8 and units["accuracy"] == 7 / 8
    assert units["tool_calls"] == 8 and units["tool_errors"] == 1 and units["parse_errors"] == 1
    episodes = {e["question_id"]: e for e in map(json.loads, (tmp_path / "ev/trajectories.jsonl").open())}
    h6 = episodes["h6"]["messages"]
    assert [c["name"] for c in h6[0]["tool_calls"]] == ["convert", "calculate"]
    assert [(m["tool_call_id"], m["content"]) for m in h6[1:3]] == [("h6-a", "2.5 h = 150 min"), ("h6-b", "150")]
    assert episodes["h1"]["messages"][0]["tool_calls"] == [
        {"id": "h1-a", "name": "convert", "arguments": {"query": "23 kg to lb"}}]
    assert "sk-secret-19" not in (tmp_path / "ev/trajectories.jsonl").read_text() + proc.stdout + proc.stderr
    # The teacher's episodes are training data: they build as function-calling rows with every call kept.
    proc = _nat(["build", "--format", "jsonl", "--trajectories", "c.jsonl", "--task", str(TASK), "--variant", "nat",
                 "--placement", "system", "--out", "again"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import datasets

    rows = datasets.load_from_disk(str(tmp_path / "again"))["train"]
    assert len(rows) == 8 and sum(len(m["tool_calls"] or []) for r in rows for m in r["messages"]) == 8


def _doc_block(section: str, index: int) -> list[str]:
    """The ``nat`` lines of the index-th bash block of a section of docs/own-agent.md, as written."""
    text = (ROOT / "docs/own-agent.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [line for line in blocks[index].splitlines() if line.startswith("nat ")]


def test_example_templates_are_the_tested_families():
    for family, template in FAMILIES.items():
        assert (EXAMPLE / f"{family}.jinja").read_text() == template


@pytest.mark.slow
def test_readme_function_calling_example_trains_and_evaluates_each_family(tmp_path):
    """docs/own-agent.md's commands as written: build, scratch, fit and nat eval with the Hermes and the Llama-3.1
    templates through the local policy, then the same task through the OpenAI policy (scripted server)."""
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "custom_task")
    commands = _doc_block("Function calling", -1)
    assert [shlex.split(c)[1] for c in commands] == ["build", "scratch", "fit", "eval", "fit", "eval"]
    for command in commands:
        proc = _nat(shlex.split(command)[1:], tmp_path)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    import datasets

    rows = datasets.load_from_disk(str(tmp_path / "runs/units-fc/data"))["train"]
    assert len(rows) == 35 and all(json.loads(r["tools"])[0]["function"]["name"] == "convert" for r in rows)
    assert sum(bool(m["tool_calls"]) for r in rows for m in r["messages"]) >= 35  # every row keeps its calls
    for family, run, out in (("hermes", "fit", "eval"), ("llama31", "fit-llama31", "eval-llama31")):
        model = tmp_path / f"runs/units-fc/{run}/nat/version_0/hf"
        assert (model / "chat_template.jinja").read_text() == FAMILIES[family]  # the export keeps the tool template
        report = json.loads((tmp_path / f"runs/units-fc/{out}/results.json").read_text())
        assert report["agent"] == "function-calling" and report["tool_parser"] == family
        result = report["results"]["units-fc"]
        assert result["episodes"] == 4 and "tool_calls" in result and "tool_errors" in result
        if family == "hermes":  # it learnt to open a call (docs: unclosed blocks, each a counted parse error)
            assert result["parse_errors"] + result["tool_calls"] > 0
        for line in (tmp_path / f"runs/units-fc/{out}/trajectories.jsonl").read_text().splitlines():
            episode = json.loads(line)
            assert episode["meta"]["agent"] == "function-calling"
            assert [t["function"]["name"] for t in episode["tools"]] == ["convert", "calculate"]
            for m in episode["messages"]:  # calls, when the tiny model manages one, are structured
                assert all(set(c) == {"id", "name", "arguments"} for c in m.get("tool_calls") or [])
    with FakeOpenAI(api_agent, with_body=True) as server:
        proc = _nat(["eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--agent",
                     "function-calling", "--prompt-from", "runs/units-fc/fit/nat/version_0/hf", "--tasks",
                     "examples/custom_task/task_fc.yaml", "--limit", "4", "--out", "runs/units-fc/eval-api"], tmp_path,
                    OPENAI_API_KEY="sk-x")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # The prompt the model was trained with: the marker closes the system turn, the question is bare.
        # (Requests are in flight together, so the first to arrive need not be the first question.)
        firsts = [r["messages"][:2] for r in server.requests]
        assert all(system["content"].endswith("Please solve it correctly.") for system, _ in firsts)
        assert "A suitcase weighs 23 kg. What is that in pounds?" in {user["content"] for _, user in firsts}
    episodes = [json.loads(x) for x in (tmp_path / "runs/units-fc/eval-api/trajectories.jsonl").read_text().splitlines()]
    assert all(e["messages"][0]["tool_calls"][0]["name"] == "convert" for e in episodes)


def test_tool_calls_time_out_and_results_are_masked_and_cut(monkeypatch):
    import time

    from lightning_nat.agent.function_calling import StepCounts, run_calls

    monkeypatch.setenv("OPENAI_API_KEY", "sk-leaky-19")

    def slow(seconds: float) -> str:
        """Sleeps.

        Args:
            seconds: how long
        """
        time.sleep(seconds)
        return "awake"

    def leak(n: int) -> str:
        """Echoes a key, n times.

        Args:
            n: repetitions
        """
        return "sk-leaky-19 " * n

    counts = StepCounts()
    calls = [{"id": "a", "name": "slow", "arguments": {"seconds": 5}}, {"id": "b", "name": "slow",
                                                                         "arguments": {"seconds": 0}},
             {"id": "c", "name": "leak", "arguments": {"n": 1000}}]
    out = run_calls(calls, [slow, leak], counts, timeouts={"slow": 0.2, "leak": None})
    assert out[0]["content"] == "Error: slow timed out after 0.2 s" and out[1]["content"] == "awake"
    assert "sk-leaky-19" not in out[2]["content"] and out[2]["content"].endswith("(cut at 2000 characters)")
    assert counts.tool_errors == 1 and counts.calls == 3
