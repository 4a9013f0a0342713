"""`nat demo --iterate K`: rounds of collect -> build -> fit -> eval from each seed's w/o-Neg model, two arms."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_nat.agent.collect import collect
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.jsonl import write_jsonl
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.tools import make_tools
from lightning_nat.demo.base import BaseSpec, make_base
from lightning_nat.demo.run import DemoConfig, fit_round
from lightning_nat.demo.synthetic import ScriptedTeacher, arith_task, make_problems

REPO = Path(__file__).resolve().parents[1]


def nat(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)


def test_iterate_without_the_w_o_neg_model_is_one_error_line(tmp_path):
    with pytest.raises(ValueError, match="keep 'positive' in --strategies"):
        DemoConfig(iterate=1, strategies=("nut", "nat"))
    proc = nat("demo", "--quick", "--iterate", "1", "--strategies", "nut", "nat", "--out", "demo", cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: --iterate starts from each seed's w/o-Neg model: keep "
                                                "'positive' in --strategies"]
    assert not (tmp_path / "demo").exists()


def _teacher_round(tmp_path, name):
    """A round folder holding the scripted teacher's labelled episodes on 12 problems at two temperatures."""
    task, problems = arith_task(), make_problems(12, seed=5, min_steps=2, max_steps=3)
    teacher = ScriptedTeacher({p.question: p for p in problems}, error_rate=0.5, seed=5)
    rd = tmp_path / "iterate" / name / "round1"
    collect(ReActAgent(task, teacher, make_tools(task.tools), max_turns=6), [p.record() for p in problems],
            rd / "trajectories.jsonl", (0.2, 0.7), teacher="scripted")
    return rd


@pytest.mark.timeout(600)
def test_a_round_fits_on_its_trajectories_the_same_way_twice_or_says_why_not(tmp_path):
    from safetensors.torch import load_file

    spec = BaseSpec(vocab_size=300, hidden_size=16, layers=1, heads=2, texts=200, steps=3, batch_size=2, block=32)
    start, _ = make_base(spec, tmp_path / "base", say=lambda _: None)
    cfg = DemoConfig.quick(out=str(tmp_path / "demo"))
    told = []
    weights = []
    for name in ("a", "b"):
        rd = _teacher_round(tmp_path, name)
        trajs = read_trajectories(rd / "trajectories.jsonl")
        assert any(t.reward for t in trajs) and not all(t.reward for t in trajs)
        record = fit_round(cfg, "nat", start, rd, seed=7, training=told.append)
        rows = record["trained_on"]["positives"] + record["trained_on"]["negatives"]
        assert record["skipped"] is None and record["trained_on"]["negatives"] > 0
        assert record["trained_on"]["positives"] == len({t.question_id for t in trajs if t.reward})
        assert record["steps"] == -(-cfg.iterate_epochs * rows // cfg.batch_size) == told[-1]
        weights.append(load_file(rd / "model" / "model.safetensors"))
    assert all((weights[0][k] == weights[1][k]).all() for k in weights[0])  # same seed, same model
    base = load_file(start / "model.safetensors")
    assert any(not (base[k] == weights[0][k]).all() for k in base)  # and it did train
    # --iterate-learning-rate is the rate a round trains at (AdamW moves a weight by about the rate per step).
    slow = fit_round(dataclasses.replace(cfg, iterate_learning_rate=1e-9), "nat", start,
                     _teacher_round(tmp_path, "slow"), seed=7)
    moved = load_file(tmp_path / "iterate" / "slow" / "round1" / "model" / "model.safetensors")
    assert slow["steps"] == record["steps"]
    assert max((moved[k] - base[k]).abs().max().item() for k in base) < 1e-6
    assert max((weights[0][k] - base[k]).abs().max().item() for k in base) > 1e-4
    # Rejection sampling trains on positives only.
    rs = fit_round(cfg, "positive", start, _teacher_round(tmp_path, "rs"), seed=7)
    assert rs["trained_on"]["negatives"] == 0 and rs["trained_on"]["positives"] > 0
    # No positive: nothing is trained, the reason is given, no model is written.
    rd = tmp_path / "iterate" / "c" / "round1"
    write_jsonl(rd / "trajectories.jsonl", [t for t in trajs if not t.reward])
    n = sum(not t.reward for t in trajs)
    for variant, needs in (("nat", "positives and negatives"), ("positive", "positives")):
        record = fit_round(cfg, variant, start, rd, seed=7, training=told.append)
        assert record["skipped"].startswith(f"0 positives and {n} negatives collected (0 and ")
        assert record["skipped"].endswith(f"variant {variant} trains on {needs}")
        assert record["trained_on"] is None and record["steps"] == 0 and not (rd / "model").exists()
    assert len(told) == 2  # only the two nat fits started training


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two --quick runs with 2 seeds x 2 arms x 2 rounds; minutes on a loaded 2-core machine
def test_nat_demo_iterate_quick_runs_and_twice_gives_identical_results(tmp_path):
    """docs/demo.md's `--iterate` block (its `# run by:` names this test), twice, each in its own folder."""
    text = (REPO / "docs/demo.md").read_text(encoding="utf-8")
    block = text.split("# run by: tests/test_demo_iterate.py::")[1].split("```")[0]
    argv = shlex.split(next(line for line in block.splitlines() if line.startswith("nat demo")))[1:]
    assert argv[:6] == ["demo", "--quick", "--iterate", "2", "--seeds", "2"]
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        # the same base for both (built once, then from the cache: the demo's own tests show the two are equal)
        proc = nat(*argv, "--out", "demo", "--cache-dir", "../base-cache", cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "NAT rounds" in proc.stdout and "rejection sampling" in proc.stdout
        demo = tmp_path / name / "demo"
        assert (demo / "iterate.png").read_bytes().startswith(b"\x89PNG")
        outs.append((demo / "results.json").read_text())
    assert outs[0] == outs[1]  # same seeds, same results
    result = json.loads(outs[0])
    assert {k: v for k, v in result["config"].items() if k.startswith("iterate")} == {
        "iterate": 2, "iterate_epochs": 1, "iterate_learning_rate": 0.0, "iterate_problems": 4,
        "iterate_temperatures": [0.7]}  # --quick's
    block, positive = result["iterate"], result["table"]["positive"]
    for arm, variant in (("nat", "nat"), ("rs", "positive")):
        rounds = block["arms"][arm]["rounds"]
        assert block["arms"][arm]["variant"] == variant and [r["round"] for r in rounds] == [0, 1, 2]
        assert rounds[0]["per_seed"] == positive["per_seed"]  # round 0: the w/o-Neg model itself
        for k, r in enumerate(rounds):
            lo, hi = r["accuracy_ci95"]
            assert lo <= r["accuracy"] <= hi and len(r["per_seed"]) == 2
            seeds = [s["iterate"][arm][k] for s in result["per_seed"]]
            assert r["per_seed"] == [s["accuracy"] for s in seeds]
            if k:
                assert r["positives"] == [s["collected"]["positives"] for s in seeds]
                assert [p + n for p, n in zip(r["positives"], r["negatives"])] == [4, 4]  # 4 problems x 1 temperature
                assert r["trained"] == [s["skipped"] is None for s in seeds]
                for s, before in zip(seeds, [x["iterate"][arm][k - 1] for x in result["per_seed"]]):
                    # a round that trained evaluates its own model; one that did not keeps the previous one
                    assert s["model"] == (f"iterate/{arm}/round{k}/model" if s["skipped"] is None else before["model"])
    for d, a, b in zip(block["paired"]["nat-rs"], block["arms"]["nat"]["rounds"], block["arms"]["rs"]["rounds"]):
        assert d["per_seed"] == [round(x - y, 4) for x, y in zip(a["per_seed"], b["per_seed"])]
    for k in (1, 2):
        for arm in ("nat", "rs"):
            rd = tmp_path / "a" / "demo" / "seed1" / "iterate" / arm / f"round{k}"
            assert (rd / "trajectories.jsonl").is_file() and (rd / "eval" / "results.json").is_file()
