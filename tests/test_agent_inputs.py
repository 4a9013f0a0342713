"""Issue 29's attacks on the agent commands, replayed as a user meets them: ``nat`` run as a subprocess.

9: a reply whose calls share an id is a malformed step, never the end of ``nat eval``/``nat collect``;
10: a user metric or answer extractor that fails, or a metric value that is not a score, is a
located one-line error (task and question); 12: numbers that make no sense are refused; 15: a
tool whose result blocks when made text is stopped by ``tool_timeout``.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task"


def nat(*args, cwd, timeout=120):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "PYTHONUNBUFFERED": "1",
           "OPENAI_API_KEY": "x", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
    """The one ``error:`` line of a failed command (no traceback)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def _api(base_url: str) -> list[str]:
    return ["--policy", "openai", "--model", "m", "--base-url", base_url, "--max-retries", "0"]


# -- 9. two calls with one id ---------------------------------------------------------------------------------

def _twin_ids(body: dict) -> dict:
    """Converts with the tool, then answers its number; for h2 the first reply's two calls share an id."""
    messages = body["messages"]
    if messages[-1]["role"] == "tool":
        return {"content": messages[-1]["content"].split("= ")[-1].split()[0]}
    if messages[-1]["role"] == "user" and messages[-1]["content"].startswith("Error"):
        return {"content": "0"}
    qid = _qid(messages)
    query = {"h1": "23 kg to lb", "h2": "4.5 m to ft"}.get(qid, "1 m to ft")
    call = {"type": "function", "function": {"name": "convert", "arguments": json.dumps({"query": query})}}
    calls = [{"id": "same", **call}, {"id": "same", **call}] if qid == "h2" else [{"id": "c1", **call}]
    return {"content": None, "tool_calls": calls}


def _qid(messages: list[dict]) -> str:
    questions = {r["question"]: r["id"] for r in map(json.loads, (EXAMPLE / "questions.jsonl").open())}
    return next(q for text, q in questions.items() if messages[1]["content"].startswith(text))


def test_calls_sharing_an_id_are_a_malformed_step_in_eval_and_collect(tmp_path):
    task = EXAMPLE / "task_fc.yaml"
    with FakeOpenAI(_twin_ids, with_body=True) as server:
        proc = nat("eval", *_api(server.base_url), "--agent", "function-calling", "--tasks", task, "--limit", "3",
                   "--out", "ev", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        collected = nat("collect", *_api(server.base_url), "--agent", "function-calling", "--task", task, "--data",
                        EXAMPLE / "questions.jsonl", "--limit", "3", "--temperatures", "0.5", "--out", "c.jsonl",
                        cwd=tmp_path)
        assert collected.returncode == 0, collected.stderr[-3000:]
    episodes = {e["question_id"]: e for e in map(json.loads, (tmp_path / "ev" / "trajectories.jsonl").open())}
    assert set(episodes) == {"h1", "h2", "h3"}
    h2 = episodes["h2"]
    assert h2["meta"]["parse_errors"] == 1 and [c["id"] for c in h2["messages"][0]["tool_calls"]] == ["same"]
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["units-fc"]["parse_errors"] == 1
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3  # every episode collected


# -- 10. user metrics and extractors that fail ----------------------------------------------------------------

SCORING = '''
import math

def metric(prediction, gold):
    if KIND == "raises" and gold == 50.7063:
        raise ValueError("metric blew up on boom")
    if KIND == "nan":
        return (True, math.nan)
    if KIND == "five":
        return (True, 5.0)
    return (prediction == gold, 1.0)

def extract(text):
    return 42 if KIND == "int" else text
'''


@pytest.mark.parametrize("kind, expected", [
    ("raises", "task scoring, question 'h1': scoring failed (ValueError: metric blew up on boom)"),
    ("int", "task scoring, question 'h1': scoring failed (TypeError: the answer extractor returned int 42; it must "
            "return a string or None)"),
    ("nan", "task scoring, question 'h1': the metric gave score=nan"),
    ("five", "task scoring, question 'h1': the metric gave score=5.0"),
])
def test_a_failing_or_wrong_metric_is_a_located_error(tmp_path, kind, expected):
    (tmp_path / "scoring.py").write_text(f"KIND = {kind!r}\n" + SCORING)
    (tmp_path / "scoring.yaml").write_text(
        "name: scoring\ninstruction: {what: a unit conversion question, answer: one number}\n"
        f"tools: [{EXAMPLE / 'units.py'}:convert]\nmetric: scoring.py:metric\n"
        f"answer: {{gold: none, prediction: scoring.py:extract}}\ndata: {{file: {EXAMPLE / 'questions.jsonl'}}}\n")
    with FakeOpenAI(lambda messages: "Action: finish[50.7063]") as server:
        proc = nat("eval", *_api(server.base_url), "--tasks", "scoring.yaml", "--limit", "2", "--batch-size", "1",
                   "--out", "ev", cwd=tmp_path)
    assert expected in error_line(proc)
    assert not (tmp_path / "ev" / "results.json").exists()  # never a results.json with a NaN or a 5.0 in it


# -- 12. numbers ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["eval", "--tasks", "gsm8k", "--limit", "0"], "argument --limit: must be at least 1, got 0"),
    (["eval", "--tasks", "gsm8k", "--limit", "-3"], "argument --limit: must be at least 1, got -3"),
    (["eval", "--tasks", "gsm8k", "--concurrency", "0"], "argument --concurrency: must be at least 1, got 0"),
    (["eval", "--tasks", "gsm8k", "--max-turns", "0"], "argument --max-turns: must be at least 1, got 0"),
    (["collect", "--task", "gsm8k", "--data", "q.jsonl", "--samples", "0"], "argument --samples: must be at least 1"),
    (["collect", "--task", "gsm8k", "--data", "q.jsonl", "--temperatures", "0.2", "-1"],
     "argument --temperatures: must be at least 0, got -1.0"),
])
def test_numbers_that_make_no_sense_are_refused(tmp_path, args, expected):
    proc = nat(*args, "--policy", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out",
               tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_temperature_given_twice_is_refused_before_anything_is_paid(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"id": "1", "question": "1+1?", "answer": "2"}\n')
    with FakeOpenAI(lambda messages: "Action: finish[2]") as server:
        proc = nat("collect", *_api(server.base_url), "--task", "gsm8k", "--data", "q.jsonl", "--temperatures", "0.2",
                   "0.2", "--out", "c.jsonl", cwd=tmp_path)
        assert "temperatures 0.2 0.2: 0.2 given more than once" in error_line(proc)
        assert server.requests == [] and not (tmp_path / "c.jsonl").exists()


# -- 15. a tool result that blocks when made text -------------------------------------------------------------

def test_a_result_whose_str_blocks_is_stopped_by_the_tool_timeout(tmp_path):
    (tmp_path / "tools.py").write_text(
        "import time\n\nclass Slow:\n    def __str__(self):\n        time.sleep(60)\n        return 'late'\n\n"
        "def lookup(text):\n    return Slow()\n")
    (tmp_path / "slow.yaml").write_text("name: slow\ninstruction: {what: a question, answer: a word}\n"
                                        "tools: [tools.py:lookup]\ntool_timeout: 1\nmetric: exact\n")
    script = ["Action: lookup[x]", "Action: finish[done]"]
    with FakeOpenAI(lambda messages: script.pop(0) if script else "Action: finish[0]") as server:
        start = time.monotonic()
        proc = nat("solve", *_api(server.base_url), "--task", "slow.yaml", "What is it?", cwd=tmp_path, timeout=45)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Observation: Error: lookup timed out after 1 s" in proc.stdout and time.monotonic() - start < 45
