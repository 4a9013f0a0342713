"""`nat eval --protocol reference`: 7 turns, temperature 0.2, mean ± sd over runs, malformed steps end episodes."""

import os
import random
import subprocess
import sys

import pytest

from lightning_nat.agent.config import apply_protocol
from lightning_nat.agent.eval_command import EvalCommandConfig, evaluate
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.prompts import split_prompt
from lightning_nat.core.tasks import TASKS, load_questions_for


class CoinPolicy:
    """Answers from the global ``random`` stream (seeded per run by evaluate): right, right as '18.0', or wrong."""

    def __init__(self, gold):
        self.gold = gold

    def generate(self, prompts):
        out = []
        for p in prompts:
            question, _ = split_prompt(_spec(), p)
            g = self.gold[question]
            out.append(f"Action: finish[{random.choice([g, g + '.0', g + '1'])}]")
        return out


def _spec():
    from lightning_nat.core.prompts import make_spec

    return make_spec(TASKS["gsm8k"])


def test_runs_report_mean_and_sd_and_repeat_with_the_seed(shared_data, tmp_path):
    records = load_questions_for(TASKS["gsm8k"], data_dir=str(shared_data), limit=20)
    gold = {r["question"].strip(): r["answer"].rsplit("####", 1)[1].strip().replace(",", "") for r in records}
    cfg = EvalCommandConfig(model="coin", tasks="gsm8k", data_dir=str(shared_data), limit=20, runs=3, seed=5,
                            out=str(tmp_path))
    report = evaluate(CoinPolicy(gold), cfg)
    r, episodes = report.results["gsm8k"].to_dict(), report.episodes
    assert r["runs"] == 3 and len(r["per_run"]) == 3 and len(episodes["gsm8k"]) == 60
    accs = [run["accuracy"] for run in r["per_run"]]
    assert r["accuracy"] == pytest.approx(sum(accs) / 3) and r["accuracy_sd"] > 0
    # '18.0' is right for the lenient metric and wrong for the reference's exact string comparison.
    assert all(run["exact_string"] < run["accuracy"] for run in r["per_run"])
    again = evaluate(CoinPolicy(gold), cfg)
    assert again.results["gsm8k"].per_run == r["per_run"]


def test_reference_protocol_values_and_conflicts():
    ref = apply_protocol("reference")
    assert (ref.max_turns, ref.temperature, ref.runs, ref.on_parse_error) == (7, 0.2, 5, "stop")
    assert apply_protocol("reference", max_turns=7).max_turns == 7
    with pytest.raises(ValueError, match="--max-turns 6 contradicts --protocol reference"):
        apply_protocol("reference", max_turns=6)


def test_malformed_step_ends_the_episode_under_stop():
    class Garbled:
        def generate(self, prompts):
            return ["I think the answer is probably 5"] * len(prompts)

    agent = ReActAgent(TASKS["gsm8k"], Garbled(), {}, max_turns=7, on_parse_error="stop")
    [t] = agent.run([{"id": "x", "question": "2+3?", "answer": "#### 5"}])
    assert t.meta["end"] == "parse_error" and len(t.messages) == 1


def test_cli_protocol_conflict_and_help(tmp_path):
    cmd = [sys.executable, "-m", "lightning_nat.cli", "eval", "--model", "nowhere", "--tasks", "gsm8k",
           "--protocol", "reference", "--temperature", "0", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1 and "--temperature 0.0 contradicts --protocol reference" in done.stderr
    text = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "eval", "--help"], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "the reference code allows 7" in text and "6, as the reference" not in text
