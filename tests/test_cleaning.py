"""One set of cleaning rules: `nat clean` and `nat build`'s filters drop the same records."""

import os
import subprocess
import sys
from pathlib import Path

import datasets

from lightning_nat.core.jsonl import write_jsonl
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.tasks import TASKS
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.select import ZERO_SCORE_FLOOR, CleanRules, clean, paper_rules, select

REPO = Path(__file__).resolve().parents[1]
# (reward, prediction, F1): a positive, an unfinished negative, F1 = 0, F1 = 1e-7 (zero by the floor), tiny and real.
CASES = [(True, "a", 1.0), (False, None, 0.4), (False, "b", 0.0), (False, "c", 1e-7), (False, "d", 2e-6),
         (False, "e", 0.5), (False, "f", None)]


def _trajs() -> list[Trajectory]:
    return [Trajectory(id=f"t{i}", task="hotpotqa", question=f"Q{i}?", reward=r, score=s, prediction=p, answer="a",
                       question_id=str(i), messages=[{"role": "assistant", "content": f"Action: finish[{p}]"},
                                                     {"role": "user", "content": "Observation: Episode finished"}])
            for i, (r, p, s) in enumerate(CASES)]


def _nat(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_one_threshold_for_f1_zero():
    assert paper_rules(TASKS["hotpotqa"]) == CleanRules(drop_unfinished=True, min_score=ZERO_SCORE_FLOOR)
    assert paper_rules(TASKS["gsm8k"]).min_score is None
    kept, removed = clean(_trajs(), paper_rules(TASKS["hotpotqa"]))
    assert [t.id for t in kept] == ["t0", "t4", "t5"]
    assert dict(removed) == {"unfinished": 1, f"score below {ZERO_SCORE_FLOOR:g}": 3}


def test_build_selection_and_clean_keep_the_same_records():
    rules = paper_rules(TASKS["hotpotqa"])
    kept, _ = clean(_trajs(), rules)
    pos, neg, _ = select(_trajs(), "nut", drop_unfinished=rules.drop_unfinished, min_score=rules.min_score,
                         dedupe=False)
    assert sorted(t.id for t in pos + neg) == sorted(t.id for t in kept)


def test_nat_clean_and_nat_build_drop_the_same_records(tmp_path):
    """Both commands as a user runs them, with the paper's HotpotQA rule spelled the documented way."""
    write_jsonl(tmp_path / "in.jsonl", _trajs())
    out = _nat("clean", "in.jsonl", "--task", "hotpotqa", "--out", "clean.jsonl", cwd=tmp_path).stdout
    assert f"removed: score below {ZERO_SCORE_FLOOR:g}" in out
    cleaned = {t.id for t in read_trajectories(tmp_path / "clean.jsonl")}
    _nat("build", "--format", "jsonl", "--trajectories", "in.jsonl", "--task", "hotpotqa", "--variant", "nut",
         "--min-score", str(ZERO_SCORE_FLOOR), "--no-dedupe", "--out", "ds", "--cache-dir", "cache", cwd=tmp_path)
    built = {row["id"] for row in datasets.load_from_disk(str(tmp_path / "ds"))["train"]}
    assert built == cleaned == {"t0", "t4", "t5"}
