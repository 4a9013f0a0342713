import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI

from lightning_nat.agent.collect import collect, key_of, recover
from lightning_nat.agent.policies import OpenAIPolicy
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.prompts import make_spec, split_prompt
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.tasks import TASKS, load_questions_for
from lightning_nat.core.tools import make_tools
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.select import clean, paper_rules

SECRET = "sk-collect-SECRET-777"


@pytest.fixture
def questions(shared_data, tmp_path):
    records = load_questions_for(TASKS["gsm8k"], data_dir=str(shared_data), limit=6)
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": r["id"], "question": r["question"], "answer": r["answer"]}) + "\n"
                            for r in records))
    return path, records


def teacher(records):
    """A scripted ReAct teacher: right at low temperature, wrong (off by one) at 0.7."""
    gold = {r["question"]: TASKS["gsm8k"].gold(r) for r in records}

    def reply(body):
        msgs = body["messages"]
        question, _ = split_prompt(make_spec(TASKS["gsm8k"]), msgs)
        value = int(gold[question])
        if msgs[-1]["role"] == "user" and msgs[-1]["content"].startswith("Observation:"):
            shift = 1 if body["temperature"] >= 0.7 else 0
            return f"Thought: so the answer follows.\nAction: finish[{value + shift}]"
        return f"Thought: compute it.\nAction: calculate[{value} * 1]\nObservation: made up"

    return reply


def _keys(path):
    return [key_of(t) for t in read_trajectories(path)]


def test_collect_labels_resumes_and_reports_failures(questions, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path, records = questions
    out = tmp_path / "trajs.jsonl"
    # 9+ 500s in a row: 4 requests in flight absorb at most 2 each (max_retries=2), so one fails for good
    # whichever order the pool sends them in.
    faults = [429, 500, "garbage", *[500] * 10]
    with FakeOpenAI(teacher(records), faults=faults, with_body=True, retry_after_ms=10) as server:
        policy = OpenAIPolicy("teacher-x", base_url=server.base_url, concurrency=4, max_retries=2,
                              timeout=5)
        task = TASKS["gsm8k"]
        agent = ReActAgent(task, policy, make_tools(task.tools))
        s1 = collect(agent, records, out, temperatures=(0.2, 0.7), teacher="teacher-x", batch_size=4,
                     price_per_million=(0.5, 1.5))
        failed = [json.loads(line) for line in (tmp_path / "trajs.jsonl.failed.jsonl").read_text().splitlines()]
        collected = _keys(out)
        everything = {(str(r["id"]), t, 0) for r in records for t in (0.2, 0.7)}
        failed_keys = {(f["question_id"], f["temperature"], f["sample"]) for f in failed}
        # Every key is either collected or reported failed, never both, never lost.
        assert set(collected) | failed_keys == everything and not (set(collected) & failed_keys)
        assert s1.failures == len(failed) >= 1 and s1.usage["retries"] >= 2
        assert s1.cost_usd == pytest.approx((s1.usage["prompt_tokens"] * 0.5 + s1.usage["completion_tokens"] * 1.5) / 1e6)
        # The rerun retries only what is missing, and ends complete.
        s2 = collect(agent, records, out, temperatures=(0.2, 0.7), teacher="teacher-x", batch_size=4)
    assert sorted(_keys(out)) == sorted(everything) and s2.resumed == len(collected)
    trajs = read_trajectories(out)
    by_temp = {t.meta["temperature"]: t for t in trajs}
    low = [t for t in trajs if t.meta["temperature"] == 0.2 and t.meta.get("end") == "finished"]
    assert low and all(t.reward for t in low)
    assert not any(t.reward for t in trajs if t.meta["temperature"] == 0.7)
    assert by_temp[0.2].meta["teacher"] == "teacher-x" and by_temp[0.2].meta["sample"] == 0
    assert s2.questions_solved == len({t.question_id for t in trajs if t.reward})
    assert SECRET not in out.read_text() + json.dumps(failed)
    # Every failed key was collected on the rerun: the failure log is gone, not left stale.
    assert not (tmp_path / "trajs.jsonl.failed.jsonl").exists()
    # What collect writes, nat build reads.
    assert len(read_trajectories(out, "jsonl")) == len(trajs)


def test_torn_last_line_is_cut(tmp_path):
    t = Trajectory("a", "gsm8k", "q", [{"role": "assistant", "content": "x"}], True, 1.0, "1", question_id="1",
                   meta={"temperature": 0.2, "sample": 0})
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(t.to_dict()) + "\n" + '{"id": "b", "ta')
    trajs, torn = recover(path)
    assert [x.id for x in trajs] == ["a"] and torn == len('{"id": "b", "ta') and path.read_text().endswith("}\n")
    path.write_text("oops\n" + json.dumps(t.to_dict()) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        recover(path)


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_same_keys(questions, tmp_path):
    path, records = questions
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    nat = str(Path(sys.executable).with_name("nat"))
    with FakeOpenAI(teacher(records), with_body=True, delay_s=0.15) as server:
        def run(out, **kw):
            cmd = [nat, "collect", "--task", "gsm8k", "--data", str(path), "--policy", "openai", "--model", "teacher",
                   "--base-url", server.base_url, "--temperatures", "0.2", "0.5", "0.7", "--out", str(out),
                   "--concurrency", "2", "--batch-size", "2", "--max-retries", "2", "--timeout", "5"]
            return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)

        straight = tmp_path / "straight.jsonl"
        proc = run(straight)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        assert "Collection" in stdout and "positives" in stdout
        assert not Path(str(straight) + ".failed.jsonl").exists()  # nothing failed: no empty failure log

        interrupted = tmp_path / "interrupted.jsonl"
        proc = run(interrupted)
        deadline = time.time() + 120
        while time.time() < deadline:
            if interrupted.exists() and interrupted.read_text().count("\n") >= 4:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        partial = interrupted.read_text().count("\n")
        assert 4 <= partial < 18
        with open(interrupted, "a") as fh:  # what a crash in the middle of a write leaves
            fh.write('{"id": "gsm8k:9:t0.7:s0", "task": "gs')
        proc = run(interrupted)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        assert "torn last line" in stdout
    keys = _keys(interrupted)
    assert len(keys) == len(set(keys)) == 18  # 6 questions x 3 temperatures, none lost or twice
    assert set(keys) == set(_keys(straight))
    assert SECRET not in interrupted.read_text() + stdout + stderr


def test_clean_rules():
    mk = lambda i, reward, pred, score: Trajectory(i, "hotpotqa", "q" + i, [{"role": "assistant", "content": i}],  # noqa
                                                  reward, score, pred, question_id=i)
    trajs = [mk("a", True, "x", 1.0), mk("b", False, None, 0.0), mk("c", False, "y", 0.0), mk("d", False, "z", 0.5)]
    kept, removed = clean(trajs, paper_rules(TASKS["hotpotqa"]))
    assert [t.id for t in kept] == ["a", "d"] and dict(removed) == {"unfinished": 1, "score below 1e-06": 1}
    kept, removed = clean(trajs, paper_rules(TASKS["gsm8k"]))
    assert [t.id for t in kept] == ["a", "c", "d"] and dict(removed) == {"unfinished": 1}


def test_nat_clean_cli(tmp_path, capsys):
    from lightning_nat.cli import main
    from lightning_nat.core.jsonl import write_jsonl

    trajs = [Trajectory(str(i), "hotpotqa", "q", [{"role": "assistant", "content": str(i)}], i == 0, [1.0, 0.0, 0.3][i],
                        "p", question_id=str(i)) for i in range(3)]
    write_jsonl(tmp_path / "in.jsonl", trajs)
    assert main(["clean", str(tmp_path / "in.jsonl"), "--task", "hotpotqa", "--out", str(tmp_path / "out.jsonl")]) == 0
    assert [t.id for t in read_trajectories(tmp_path / "out.jsonl")] == ["0", "2"]
    assert "removed: score below 1e-06" in capsys.readouterr().out
