import functools
import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.results import EvalReport
from lightning_nat.core.tools import make_tools
from lightning_nat.demo.synthetic import FAILURE_MODES, ScriptedTeacher, apply_op, arith_task, make_problems


def test_problems_are_deterministic_and_correct():
    a, b = make_problems(50, seed=3), make_problems(50, seed=3)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in make_problems(50, seed=4)]
    assert len({p.question for p in a}) == 50
    for p in a:
        assert p.answer == functools.reduce(lambda v, s: apply_op(v, *s), p.steps, p.start)
        assert 2 <= len(p.steps) <= 4 and p.answer >= 0
        assert str(p.start) in p.question and all(str(b) in p.question for _, b in p.steps)
    assert len({p.question.split(".")[1].strip() for p in a}) > 10  # varied wording


def _run(teacher, problems, temperature=0.0):
    task = arith_task()
    teacher.temperature = temperature
    agent = ReActAgent(task, teacher, make_tools(task.tools), max_turns=6)
    return agent.run([p.record() for p in problems], batch_size=64)


def test_teacher_is_sound_without_errors_and_each_failure_mode_fails():
    problems = make_problems(40, seed=1, min_steps=3, max_steps=4)
    index = {p.question: p for p in problems}
    clean = _run(ScriptedTeacher(index, error_rate=0.0), problems)
    assert all(t.reward for t in clean)
    assert all(any("calculate[" in m["content"] for m in t.messages) for t in clean)  # it uses the real tool
    for mode in FAILURE_MODES:
        trajs = _run(ScriptedTeacher(index, error_rate=10.0, mode_weights={mode: 1.0}), problems)
        wrong = sum(not t.reward for t in trajs)
        assert wrong >= 0.6 * len(trajs), (mode, wrong)


def test_temperature_raises_the_error_rate():
    problems = make_problems(300, seed=2)
    index = {p.question: p for p in problems}
    rates = {t: Counter(x.reward for x in _run(ScriptedTeacher(index, error_rate=0.5), problems, t))[False] / 300
             for t in (0.2, 0.7)}
    assert rates[0.2] < rates[0.7]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # five strategies; minutes on a loaded 2-core machine
def test_nat_demo_quick(tmp_path):
    nat = Path(sys.executable).with_name("nat")
    out = tmp_path / "demo"
    # DPO and KTO are not in the default comparison any more: asked for here.
    proc = subprocess.run([str(nat), "demo", "--quick", "--out", str(out), "--strategies", "positive", "nut", "nat",
                           "dpo", "kto"], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NAT (negative-aware)" in proc.stdout and "w/o Neg" in proc.stdout
    assert "accuracy % of one seed" in " ".join(proc.stdout.split())  # one seed is not called "over seeds"
    result = json.loads((out / "results.json").read_text())
    table = result["table"]
    assert all(v["accuracy_sd"] is None for v in table.values())  # no sd of one value
    # The next command the demo suggests runs as printed.
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("nat solve --model"))
    solved = subprocess.run([str(nat), *shlex.split(line.strip())[1:]], capture_output=True, text=True, timeout=600)
    assert solved.returncode == 0 and "prediction:" in solved.stdout, solved.stderr[-2000:]
    assert set(table) == {"positive", "nut", "nat", "dpo", "kto"}
    assert "DPO (pairs, from w/o Neg)" in proc.stdout and "KTO (labels, from w/o Neg)" in proc.stdout
    assert table["positive"]["negatives"] == 0
    assert table["nat"]["negatives"] == table["nut"]["negatives"] == table["kto"]["negatives"] == 72
    # DPO and KTO continue from the demo's own w/o-Neg model, on pairs of the same trajectories.
    seed0 = out / "seed0"
    assert (seed0 / "runs" / "positive" / "model" / "config.json").exists()
    assert 0 < result["per_seed"][0]["dpo"]["pairs"] <= 72
    assert all(0.0 <= v["accuracy"] <= 1.0 and v["positives"] == 24 for v in table.values())
    collected = result["per_seed"][0]["collected"]
    assert collected["positives"] > 0 and collected["negatives"] > 0
    for name in ("perplexity.png", "accuracy.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    # Every trained model is kept, and reloaded it scores what the demo reported.
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.core.results import run_figures as summarize

    test = [json.loads(line) for line in (out / "seed0" / "test.jsonl").read_text().splitlines()]
    for strategy in ("positive", "nut", "nat"):
        policy = HFPolicy(str(out / "seed0" / "runs" / strategy / "model"), device="cpu",
                          max_new_tokens=result["per_seed"][0]["max_new_tokens"])
        trajs = ReActAgent(arith_task(), policy, make_tools(arith_task().tools), max_turns=4).run(
            test, batch_size=len(test))
        assert summarize(trajs)["accuracy"] == pytest.approx(result["per_seed"][0][strategy]["accuracy"]), strategy
        seen = EvalReport.read(out / "seed0" / "runs" / strategy / "eval", episodes=True)
        assert [t.messages for t in trajs] == [t.messages for t in seen.episodes[arith_task().name]], strategy
        assert seen.results[arith_task().name].metrics["accuracy"] == result["per_seed"][0][strategy]["accuracy"]
    # results.json is an EvalReport: each strategy over the seeds (the runs), readable by nat plot and the cards.
    report = EvalReport.read(out)
    assert set(report.results) == set(table) and report.meta["table"] == table
    assert report.results["nat"].metrics["accuracy"] == pytest.approx(table["nat"]["accuracy"], abs=1e-4)
