"""The demo as a controlled experiment: its base, its generation budget, its error types, its determinism."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.tools import make_tools
from lightning_nat.demo.base import FORMAT_TEXTS, BaseSpec, make_base, pretraining_texts
from lightning_nat.demo.errors import classify_episode
from lightning_nat.demo.run import generation_budget, teacher_turn_lengths
from lightning_nat.demo.synthetic import FAILURE_MODES, ScriptedTeacher, arith_task, make_problems
from lightning_nat.train.scratch import train_tokenizer

REPO = Path(__file__).resolve().parents[1]


def nat(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _episodes(teacher, problems, temperature=0.5):
    task = arith_task()
    teacher.temperature = temperature
    return ReActAgent(task, teacher, make_tools(task.tools), max_turns=6).run([p.record() for p in problems],
                                                                              batch_size=64)


def test_digit_tokenizer_splits_every_number_into_digits():
    tok = train_tokenizer(pretraining_texts(300, 0) + FORMAT_TEXTS, 300, split_digits=True)
    pieces = tok.tokenize("Action: calculate[125 + 16]")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "5", "1", "6"]
    assert tok.decode(tok("Observation: 141")["input_ids"]) == "Observation: 141"


def test_budget_covers_every_teacher_turn_under_a_small_vocabulary(tmp_path):
    """The demo's data under a 300-token vocabulary: the derived budget is above every teacher turn."""
    from lightning_nat.builders import build_dataset, save_build
    from lightning_nat.core.jsonl import write_jsonl

    problems = make_problems(60, seed=7, min_steps=2, max_steps=3)
    trajs = []
    for t in (0.2, 0.7):
        trajs += _episodes(ScriptedTeacher({p.question: p for p in problems}, error_rate=0.5, seed=7), problems, t)
    for i, t in enumerate(trajs):
        t.id = f"arith:{t.question_id}:{i}"
    write_jsonl(tmp_path / "t.jsonl", trajs)
    res = build_dataset([str(tmp_path / "t.jsonl")], "nat", cache_dir=str(tmp_path / "cache"), format="jsonl",
                        task="arith", pos_num=30, neg_num=40, seed=0, dev_num=5)
    data = save_build(res, tmp_path / "data")
    tok = train_tokenizer(pretraining_texts(300, 0) + FORMAT_TEXTS, 300, split_digits=True)
    lengths = teacher_turn_lengths(data, tok)
    budget = generation_budget(lengths)
    # Independently: every assistant turn as the chat template renders it, with its end-of-turn token.
    import datasets

    for row in datasets.load_from_disk(str(data))["train"]:
        for m in row["messages"]:
            if m["role"] == "assistant":
                assert len(tok(m["content"] + tok.eos_token, add_special_tokens=False)["input_ids"]) <= budget
    assert max(lengths) > 40  # the former constant budget (40 tokens) would have cut these turns


@pytest.mark.timeout(900)
def test_demo_refuses_a_budget_below_the_longest_teacher_turn(tmp_path):
    proc = nat("demo", "--quick", "--max-new-tokens", "5", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 1
    assert "--max-new-tokens 5 is below the longest teacher turn" in proc.stderr, proc.stderr[-2000:]


def test_the_classifier_names_each_teacher_failure_mode():
    """Forced to one failure mode, the teacher's negatives are typed as that mode (most of them)."""
    problems = make_problems(60, seed=3, min_steps=3, max_steps=3)
    index = {p.question: p for p in problems}
    by_q = {p.question: p for p in problems}
    clean = _episodes(ScriptedTeacher(index, error_rate=0.0), problems)
    assert {classify_episode(by_q[t.question].start, by_q[t.question].steps, t.messages) for t in clean} == {"correct"}
    for mode in FAILURE_MODES:
        trajs = [t for t in _episodes(ScriptedTeacher(index, error_rate=10.0, mode_weights={mode: 1.0}), problems)
                 if not t.reward]
        kinds = Counter(classify_episode(by_q[t.question].start, by_q[t.question].steps, t.messages) for t in trajs)
        assert kinds.most_common(1)[0][0] == mode, (mode, kinds)


def test_base_is_cached_by_its_inputs(tmp_path):
    spec = BaseSpec(vocab_size=300, hidden_size=16, layers=1, heads=2, texts=200, steps=3, batch_size=2, block=32)
    first, info = make_base(spec, tmp_path, say=lambda _: None)
    assert not info["from_cache"] and (first / "config.json").exists()
    again, info2 = make_base(spec, tmp_path, say=lambda _: None)
    assert again == first and info2["from_cache"] and info2["final_loss"] == info["final_loss"]
    other, info3 = make_base(BaseSpec(**{**spec.__dict__, "steps": 4}), tmp_path, say=lambda _: None)
    assert other != first and not info3["from_cache"]


def test_base_pretraining_is_deterministic_and_probed_every_step(tmp_path):
    """Two fresh pretrainings of one spec (through make_trainer) give identical weights; on_step sees every step."""
    from safetensors.torch import load_file

    spec = BaseSpec(vocab_size=300, hidden_size=16, layers=1, heads=2, texts=200, steps=4, batch_size=2, block=32)
    weights, seen = [], []
    for name in ("a", "b"):
        folder, _ = make_base(spec, tmp_path / name, say=lambda _: None,
                              on_step=lambda step, model, tok: seen.append((step, model.training)))
        weights.append(load_file(folder / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys() and all((weights[0][k] == weights[1][k]).all() for k in weights[0])
    assert seen == [(s, True) for s in (1, 2, 3, 4)] * 2
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    torch.manual_seed(spec.seed)  # the base's own initialisation, again: training moved every weight matrix
    init = LlamaForCausalLM(AutoConfig.from_pretrained(folder)).state_dict()
    assert all(not torch.equal(init[k], v) for k, v in weights[0].items() if v.dim() == 2)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three --quick runs; on a loaded 2-core machine each can take minutes
def test_nat_demo_quick_twice_gives_identical_results(tmp_path):
    """Same seed, same machine: two fresh runs (each pretraining its own base) write the same results.json."""
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        proc = nat("demo", "--quick", "--seeds", "2", "--out", "demo", cwd=tmp_path / name)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "NAT (negative-aware)" in proc.stdout
        first = next(line for line in proc.stdout.splitlines() if "the base:" in line)
        assert "(from the cache)" not in first and "cached in" in first  # a fresh run does not claim a cache
        outs.append((tmp_path / name / "demo" / "results.json").read_text())
        timings = json.loads((tmp_path / name / "demo" / "timings.json").read_text())
        assert timings["base_from_cache"] is False
    assert outs[0] == outs[1]
    result = json.loads(outs[0])
    assert [r["seed"] for r in result["per_seed"]] == [0, 1]
    assert set(result["table"]) == {"positive", "nut", "nat"}
    for v in result["table"].values():
        lo, hi = v["accuracy_ci95"]
        assert lo <= v["accuracy"] <= hi and len(v["per_seed"]) == 2
        # Every wrong episode gets a type (a right answer reached by a wrong path is typed too).
        assert 1 - v["accuracy"] - 1e-6 <= sum(v["errors"].values()) <= 1 + 1e-6
    assert abs(sum(result["teacher_error_mix"].values()) - 1) < 0.02  # negatives only: all typed
    # The paired differences of the report, seed by seed.
    for key, (a, b) in {"nut-positive": ("nut", "positive"), "nat-nut": ("nat", "nut"),
                        "nat-positive": ("nat", "positive")}.items():
        pair = result["paired"][key]
        assert pair["per_seed"] == [round(x - y, 4) for x, y in zip(result["table"][a]["per_seed"],
                                                                    result["table"][b]["per_seed"])]
        assert pair["ci95"][0] <= pair["mean"] <= pair["ci95"][1]
    # Equal epochs: NUT and NAT take more steps than w/o Neg because they have more data.
    steps = {s: v["steps"] for s, v in result["table"].items()}
    assert steps["nut"] == steps["nat"] and all(n > m for n, m in zip(steps["nat"], steps["positive"]))
    # A third run in the same place reuses the cached base and still gives the same table.
    proc = nat("demo", "--quick", "--seeds", "2", "--out", "demo", cwd=tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "a" / "demo" / "timings.json").read_text())["base_from_cache"] is True
    assert "(from the cache)" in next(line for line in proc.stdout.splitlines() if "the base:" in line)
    assert (tmp_path / "a" / "demo" / "results.json").read_text() == outs[0]


def test_gpu_profile_without_a_gpu_is_a_clear_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the profile would run")
    proc = nat("demo", "--profile", "gpu", "--out", "demo", cwd=tmp_path)
    assert proc.returncode == 1 and "--profile gpu needs a CUDA device" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "demo").exists()  # refused before anything was written


def test_the_progress_bar_counts_exactly_its_stages(tmp_path):
    """The bar counted past its total (9/8 ... 12/8, its clock frozen once 'finished'): stages are counted, notes not."""
    from lightning_nat.demo.run import DemoConfig, run_demo, stages

    cfg = DemoConfig.quick(out=str(tmp_path / "demo"), strategies=("positive", "nat"), iterate=1)
    told: list[str] = []
    result = run_demo(cfg, stage=told.append, note=lambda msg: None)
    # the base; the collection, 2 strategies x (train, evaluate); 2 --iterate arms x 1 round x (collect, fit, evaluate)
    assert len(told) == stages(cfg) == 1 + 1 * (1 + 2 * 2 + 2 * 1 * 3)
    assert [m.split(": ")[1] for m in told[-6:]] == ["NAT rounds round 1/1"] * 3 + ["rejection sampling round 1/1"] * 3
    assert set(result["iterate"]["arms"]) == {"nat", "rs"}
