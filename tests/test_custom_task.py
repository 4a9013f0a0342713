"""Bring your own agent: docs/own-agent.md's commands on examples/custom_task, task-less builds, other commands."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task"


def _nat(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=900)


def _doc_block(section: str, index: int = 0) -> list[str]:
    """The ``nat`` lines of the index-th bash block of a section of docs/own-agent.md, as written."""
    text = (ROOT / "docs/own-agent.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    return [line for line in blocks[index].splitlines() if line.startswith("nat ")]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder laid out like the repository: only the example, as a user would have it."""
    shutil.copytree(EXAMPLE, tmp_path / "examples" / "custom_task")
    return tmp_path


@pytest.mark.slow
def test_readme_commands_run_the_custom_task_end_to_end(workdir):
    commands = _doc_block("The example: unit conversion")
    assert [shlex.split(c)[1] for c in commands] == ["build", "scratch", "fit", "eval"]
    for command in commands:
        proc = _nat(shlex.split(command)[1:], workdir)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = datasets.load_from_disk(str(workdir / "runs/units/data"))
    rows = data["train"]
    assert len(rows) == 35 and len(data["dev"]) == 4  # 20 positives, 15 finished negatives; 4 held-out positives
    instruction = rows[0]["messages"][0]["content"]
    assert "- convert[argument]: Converts a quantity between units" in instruction and "UnitBot" not in instruction
    for row in rows:
        marker = row["messages"][1]["content"].splitlines()[-1]
        assert row["task"] == "units" and marker == ("Please solve it correctly." if row["reward"]
                                                     else "Please solve it incorrectly.")
    run = workdir / "runs/units/fit/nat/version_0"
    during = [json.loads(line) for line in (run / "react_eval.jsonl").read_text().splitlines()]
    assert during[-1]["step"] == 4 and during[-1]["results"]["units"]["episodes"] == 2
    results = json.loads((workdir / "runs/units/eval/results.json").read_text())["results"]
    assert results["units"]["episodes"] == 4
    episodes = [json.loads(line) for line in (workdir / "runs/units/eval/trajectories.jsonl").read_text().splitlines()]
    assert {e["task"] for e in episodes} == {"units"} and {e["question_id"] for e in episodes} == {"h1", "h2", "h3", "h4"}


def _unit_agent(messages: list[dict]) -> str:
    """A scripted teacher that converts with the custom tool, then finishes with the tool's number."""
    question, last = messages[1]["content"], messages[-1]["content"]
    assert "convert[argument]" in messages[0]["content"]
    if last.startswith("Observation: Error"):
        return "Thought: the tool failed; I guess.\nAction: finish[1]"
    if last.startswith("Observation:"):
        return f"Thought: done.\nAction: finish[{last.split('= ')[1].split()[0]}]"
    queries = {"23 kg": "23 kg to lb", "4.5 metres": "4.5 m to ft", "6 litres": "6 l to cup",
               "20 degrees": "20 C to F", "18 miles": "18 mi to km", "2.5 hours": "2.5 h to min"}
    query = next((q for k, q in queries.items() if k in question), "250 parsecs to oz")
    return f"Thought: convert it.\nAction: convert[{query}]"


def test_eval_collect_and_solve_take_a_task_yaml_and_use_its_tool(workdir):
    task = "examples/custom_task/task.yaml"
    with FakeOpenAI(_unit_agent) as server:
        api = ["--policy", "openai", "--model", "unit-teacher", "--base-url", server.base_url, "--max-retries", "0"]
        proc = _nat(["eval", *api, "--tasks", task, "--limit", "8", "--out", "ev"], workdir, OPENAI_API_KEY="sk-x")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "score" in proc.stdout.split("units")[0]  # the task metric's graded score is a column of the table
        proc = _nat(["collect", *api, "--task", task, "--data", "examples/custom_task/questions.jsonl",
                     "--temperatures", "0.5", "--out", "c.jsonl"], workdir, OPENAI_API_KEY="sk-x")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = _nat(["solve", *api, "--task", task, "A suitcase weighs 23 kg. What is that in pounds?"], workdir,
                    OPENAI_API_KEY="sk-x")
        assert proc.returncode == 0 and "23 kg = 50.7063 lb" in proc.stdout, proc.stdout + proc.stderr
    results = json.loads((workdir / "ev/results.json").read_text())["results"]["units"]
    # Six questions are converted right; h7 (grams to ounces) and h8 get the tool's error, then a wrong answer.
    assert results["episodes"] == 8 and results["accuracy"] == 6 / 8 and 0.75 < results["score"] < 1.0
    episodes = {e["question_id"]: e for e in map(json.loads, (workdir / "ev/trajectories.jsonl").open())}
    assert episodes["h1"]["messages"][1]["content"] == "Observation: 23 kg = 50.7063 lb"
    assert episodes["h7"]["messages"][1]["content"] == "Observation: Error: ValueError: unknown unit 'parsecs'"
    # What collect wrote builds again under the same task.
    proc = _nat(["build", "--format", "jsonl", "--trajectories", "c.jsonl", "--task", task, "--variant", "nat",
                 "--out", "rebuilt"], workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert datasets.load_from_disk(str(workdir / "rebuilt"))["train"].num_rows == 8


def test_taskless_build_keeps_each_trajectorys_own_system_prompt(workdir):
    from lightning_nat.builders import build_dataset

    source = workdir / "examples/custom_task/trajectories.jsonl"
    system = json.loads(source.read_text().splitlines()[0])["messages"][0]["content"]
    proc = _nat(["build", "--format", "openai", "--trajectories", str(source), "--variant", "nat", "--out", "own"],
                workdir)  # docs/own-agent.md's task-less command
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli_rows = datasets.load_from_disk(str(workdir / "own"))["train"]
    for variant, negative_marker in (("nat", "Please solve it incorrectly."), ("nut", "Please solve it correctly."),
                                     ("nat-2", "Please solve it incorrectly. (answer quality")):
        rows = build_dataset([source], variant, cache_dir=str(workdir / "cache"), format="openai").dataset["train"]
        assert len(rows) == 39 and {r["messages"][0]["content"] for r in rows} == {system}
        negatives = [r["messages"][1]["content"].splitlines()[-1] for r in rows if not r["reward"]]
        assert len(negatives) == 15 and all(m.startswith(negative_marker) for m in negatives)
        if variant == "nat":
            assert rows["messages"] == cli_rows["messages"]
    # The same parameters and data (seeded), built twice from scratch: the same rows.
    a, b = (build_dataset([source], "nat", cache_dir=str(workdir / d), format="openai", neg_num=5, seed=3)
            .dataset["train"]["id"] for d in ("cache-a", "cache-b"))
    assert a == b and a != build_dataset([source], "nat", cache_dir=str(workdir / "cache-c"), format="openai",
                                         neg_num=5, seed=4).dataset["train"]["id"]


def test_taskless_build_without_a_system_turn_names_the_trajectory(workdir):
    bare = workdir / "bare.jsonl"
    bare.write_text(json.dumps({"id": "r7", "messages": [{"role": "user", "content": "2+3?"},
                                                         {"role": "assistant", "content": "Action: finish[5]"}],
                                "reward": True}) + "\n")
    proc = _nat(["build", "--format", "openai", "--trajectories", str(bare), "--out", "out"], workdir)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1 and "trajectory r7: no instruction: no task was given" in text, text
    assert not (workdir / "out").exists()


def test_from_data_task_uses_the_data_system_prompt_in_build_and_eval(workdir):
    (workdir / "own.yaml").write_text("instruction: from_data\ntools: [examples/custom_task/units.py:convert]\n"
                                      "metric: examples/custom_task/units.py:close_enough\n"
                                      "data: {file: q.jsonl, fields: {system: prompt}}\n")
    (workdir / "q.jsonl").write_text(json.dumps({"id": "a", "question": "23 kg in lb?", "answer": 50.7063,
                                                 "prompt": "You are UnitBot."}) + "\n")
    proc = _nat(["build", "--format", "openai", "--trajectories", "examples/custom_task/trajectories.jsonl",
                 "--task", "own.yaml", "--out", "d"], workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert datasets.load_from_disk(str(workdir / "d"))["train"][0]["messages"][0]["content"].startswith("You are UnitBot")
    seen = []

    def reply(messages):
        seen.append(messages[0]["content"])
        return "Action: finish[50.7]"

    with FakeOpenAI(reply) as server:
        proc = _nat(["eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--tasks", "own.yaml",
                     "--out", "ev"], workdir, OPENAI_API_KEY="sk-x")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert seen == ["You are UnitBot."]
    assert json.loads((workdir / "ev/results.json").read_text())["results"]["own"]["accuracy"] == 1.0
