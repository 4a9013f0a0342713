import json
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_nat.agent.react import ReActAgent, parse_step
from lightning_nat.builders import build_dataset
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.results import run_figures
from lightning_nat.core.tasks import TASKS, load_questions_for
from lightning_nat.core.tools import make_tools

TOOLS = ["calculate", "search", "finish"]


@pytest.mark.parametrize("text, tool, arg, error", [
    ("Thought: 2+2.\nAction: calculate[2+2]", "calculate", "2+2", None),
    ("Action: calculate[2+2]", "calculate", "2+2", None),
    ("Thought: done\nAction: finish[4]\nI hope this helps!", "finish", "4", None),
    ("Thought: x\nAction: calculate[(1 + [2]) * 3]", "calculate", "(1 + [2]) * 3", None),
    ("Thought: x\nAction: calculate[(1+2", "calculate", "(1+2", None),
    ("Thought: x\nAction: search[Paris]]", "search", "Paris", None),
    ("Thought: x\nAction 1: Search[Eiffel Tower height]", "search", "Eiffel Tower height", None),
    ("Thought: I will use calculate[1+1]\nAction: finish[2]", "finish", "2", None),
    ("Thought: x\nAction: browse[x]", "browse", "x", "unknown tool 'browse' (available: calculate, search, finish)"),
    ("Thought: I know it, it's 4.", None, None, "no action found"),
    ("", None, None, "no action found"),
    ("Thought: x\nAction: just answer 4", None, None, "the action is not of the form tool[argument]"),
    ("finish[yes]", "finish", "yes", None),
    ("Thought: x\nAction: calculate[3*3]\nObservation: 9\nThought: so 9\nAction: finish[9]", "calculate", "3*3", None),
])
def test_parse_step(text, tool, arg, error):
    step = parse_step(text, TOOLS)
    assert (step.tool, step.argument, step.error) == (tool, arg, error)
    assert "Observation:" not in step.text


class ScriptedPolicy:
    """Answers each episode from a script keyed by question; records batch sizes."""

    def __init__(self, scripts):
        self.scripts = {q: list(steps) for q, steps in scripts.items()}
        self.batch_sizes = []

    def generate(self, prompts):
        self.batch_sizes.append(len(prompts))
        out = []
        for p in prompts:
            # The question sits in whichever prompt style the agent uses; find it in the user turns.
            question = next(q for q in self.scripts if any(q in m["content"] for m in p if m["role"] == "user"))
            steps = self.scripts[question]
            out.append(steps.pop(0) if steps else "Thought: hmm")
        return out


def test_batched_episodes_and_trajectories(tmp_path):
    task = TASKS["gsm8k"]
    records = [{"id": "a", "question": "What is 16 - 3 - 4 times 2?", "answer": "#### 18"},
               {"id": "b", "question": "What is 6 * 7?", "answer": "#### 42"},
               {"id": "c", "question": "Hard one?", "answer": "#### 1"},
               {"id": "d", "question": "Garbled?", "answer": "#### 5"}]
    policy = ScriptedPolicy({
        records[0]["question"]: ["Thought: first the eggs.\nAction: calculate[(16 - 3 - 4) * 2]\nObservation: 18",
                                 "Thought: done.\nAction: finish[18]"],
        records[1]["question"]: ["Action: finish[41]"],
        records[2]["question"]: [],
        records[3]["question"]: ["no idea", "Action: finish[5]"],
    })
    agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=3)
    trajs = agent.run(records, batch_size=4)
    assert policy.batch_sizes == [4, 3, 1]  # finished episodes leave the batch
    a, b, c, d = trajs
    assert (a.reward, a.prediction, a.meta["end"]) == (True, "18", "finished")
    assert a.messages[1] == {"role": "user", "content": "Observation: 18"}
    assert a.messages[0]["content"].endswith("calculate[(16 - 3 - 4) * 2]")  # the model's invented observation is cut
    assert (b.reward, b.score, b.prediction) == (False, 0.0, "41")
    assert (c.meta["end"], c.prediction, c.reward) == ("turn_limit", None, False)
    assert d.reward and d.meta["parse_errors"] == 1 and "Invalid action" in d.messages[1]["content"]
    summary = run_figures(trajs)
    assert summary["accuracy"] == 0.5 and summary["finished"] == 0.75 and summary["turn_limit"] == 0.25
    assert summary["parse_errors"] == 4
    # Evaluation output feeds back into `nat build`.
    from lightning_nat.core.jsonl import write_jsonl

    path = tmp_path / "episodes.jsonl"
    write_jsonl(path, trajs)
    res = build_dataset([str(path)], "nat", cache_dir=str(tmp_path / "c"), format="jsonl", task="gsm8k")
    assert sorted(res.dataset["train"]["label"]) == ["negative", "positive", "positive"]  # c never finished


def test_stop_on_parse_error_and_cot_mode():
    task = TASKS["strategyqa"]
    rec = [{"id": "1", "question": "Is ice cold?", "answer": True}]
    agent = ReActAgent(task, ScriptedPolicy({"Is ice cold?": ["blah"]}), {}, on_parse_error="stop")
    t = agent.run(rec)[0]
    assert t.meta["end"] == "parse_error" and len(t.messages) == 1
    cot = ReActAgent(task, ScriptedPolicy({"Is ice cold?": ["Ice is frozen water.\nFinal answer: yes"]}), {}, mode="cot")
    t = cot.run(rec)[0]
    assert t.reward and t.prediction == "yes" and len(t.messages) == 1 and t.meta["mode"] == "cot"


def test_tool_failure_is_an_observation():
    task = TASKS["gsm8k"]

    def broken(_):
        raise RuntimeError("boom")

    agent = ReActAgent(task, ScriptedPolicy({"Q?": ["Action: calculate[1]", "Action: finish[1]"]}),
                       {"calculate": broken})
    t = agent.run([{"id": "q", "question": "Q?", "answer": "1"}])[0]
    assert t.messages[1]["content"] == "Observation: Error: RuntimeError" and t.reward


@pytest.mark.slow
def test_nat_eval_and_solve_with_the_scratch_model(scratch_model, shared_data, tmp_path):
    nat = Path(sys.executable).with_name("nat")
    out = tmp_path / "eval"
    proc = subprocess.run([str(nat), "eval", "--model", str(scratch_model), "--tasks", "gsm8k,svamp", "--data-dir",
                           str(shared_data), "--limit", "4", "--batch-size", "4", "--max-new-tokens", "24",
                           "--max-turns", "2", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Evaluation (%)" in proc.stdout and "gsm8k" in proc.stdout
    # Piped (not a terminal), the table keeps whole headers, and shows rates as percentages as the demo does.
    assert "with parse errors" in proc.stdout and "failed (API errors)" in proc.stdout
    results = json.loads((out / "results.json").read_text())["results"]
    row = next(line for line in proc.stdout.splitlines() if "gsm8k" in line)
    assert f"{100 * results['gsm8k']['finished']:.1f}" in row
    assert results["gsm8k"]["episodes"] == 4 and 0.0 <= results["gsm8k"]["accuracy"] <= 1.0
    assert results["gsm8k"]["finished"] + results["gsm8k"]["turn_limit"] == 1.0
    trajs = read_trajectories(out / "trajectories.jsonl")
    assert len(trajs) == 8 and {t.task for t in trajs} == {"gsm8k", "svamp"}
    gold = load_questions_for(TASKS["gsm8k"], data_dir=str(shared_data), limit=4)
    assert [t.question for t in trajs[:4]] == [g["question"] for g in gold]
    solve = subprocess.run([str(nat), "solve", "--model", str(scratch_model), "--task", "gsm8k", "--max-new-tokens",
                            "16", "--max-turns", "2", "What is 2 + 3?"], capture_output=True, text=True, timeout=600)
    assert solve.returncode == 0 and "What is 2 + 3?" in solve.stdout and "prediction:" in solve.stdout
