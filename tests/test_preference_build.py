"""`nat build --variant dpo|kto` on the shared StrategyQA trajectories: pairs, labels, what build.json reports."""

import json
import subprocess
import sys
from collections import Counter

import datasets
import pytest

from lightning_nat.builders import build_dataset
from lightning_nat.core.prompts import MARKERS


def _nat_build(files, tmp_path, variant, out, *extra):
    cmd = [sys.executable, "-m", "lightning_nat.cli", "build", "--format", "nat", "--trajectories", str(files["pos"]),
           str(files["neg"]), "--questions", str(files["questions"]), "--task", "strategyqa", "--variant", variant,
           "--pos-num", "300", "--neg-num", "400", "--on-error", "skip", "--cache-dir", str(tmp_path / "cache"),
           "--out", str(tmp_path / out), "--prompt-style", "native", *extra]  # the checks below read native markers
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)


def _user_turn(messages):
    return next(m["content"] for m in messages if m["role"] == "user")


def test_dpo_build_pairs_within_questions_and_reports_one_sided(strategyqa_files, tmp_path):
    run = _nat_build(strategyqa_files, tmp_path, "dpo", "dpo", "--pairs-per-question", "1", "--dev-num", "8")
    assert run.returncode == 0, run.stderr
    assert "DPO pairs" in run.stdout and "questions positive only" in run.stdout
    ds = datasets.load_from_disk(str(tmp_path / "dpo"))
    report = json.loads((tmp_path / "dpo" / "build.json").read_text())["report"]
    dpo = report["dpo"]
    assert dpo["pairs"] == len(ds["train"]) > 0 and dpo["pairs_per_question"] == 1
    qids = Counter(ds["train"]["question_id"])
    assert max(qids.values()) == 1 and len(qids) == dpo["questions_paired"]
    # Every question of the selection is either paired or counted as one-sided.
    stats = report["stats"]
    assert dpo["positives_unpaired"] + dpo["pairs"] == stats["positives"]  # one positive per question
    assert dpo["questions_positive_only"] > 0 and dpo["questions_negative_only"] > 0
    for row in ds["train"]:
        assert row["reward"] is True and row["rejected_id"] and row["rejected_id"] != row["chosen_id"]
        # Both sides under the plain positive prompt: no negative marker anywhere, same prompt on both sides.
        assert _user_turn(row["messages"]) == _user_turn(row["rejected"])
        assert _user_turn(row["messages"]).endswith(MARKERS["correct"][0])
        assert MARKERS["correct"][1] not in json.dumps(row)
        assert [m["train"] for m in row["rejected"]] == [m["role"] == "assistant" for m in row["rejected"]]
    assert set(ds["dev"]["label"]) == {"positive"} and all(r == [] for r in ds["dev"]["rejected"])


def test_dpo_pairing_is_seeded(strategyqa_files, tmp_path):
    def pairs(seed, cap):
        res = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "dpo",
                            cache_dir=str(tmp_path / f"c{seed}-{cap}"), questions=str(strategyqa_files["questions"]),
                            task="strategyqa", on_error="skip", neg_num=600, seed=seed, pairs_per_question=cap)
        return res.dataset["train"]["id"], res.report["dpo"]

    a, rep = pairs(1, 1)
    assert pairs(1, 1)[0] == a
    assert rep["questions_capped"] > 0  # with all positives and 600 negatives some questions have several negatives
    uncapped, rep_all = pairs(1, None)
    assert len(uncapped) > len(a) and set(a) <= set(uncapped) and rep_all["questions_capped"] == 0
    # Another seed picks other pairs among the capped questions.
    assert pairs(2, 1)[0] != a


def test_kto_build_keeps_nut_selection_with_labels_and_balance(strategyqa_files, tmp_path):
    run = _nat_build(strategyqa_files, tmp_path, "kto", "kto")
    assert run.returncode == 0, run.stderr
    assert "KTO labels" in run.stdout and "desirable_weight" in run.stdout
    assert _nat_build(strategyqa_files, tmp_path, "nut", "nut").returncode == 0
    kto, nut = (datasets.load_from_disk(str(tmp_path / n))["train"] for n in ("kto", "nut"))
    # Exactly the trajectories NUT trains on, rendered the same way (the plain positive prompt).
    assert kto["id"] == nut["id"] and kto["messages"] == nut["messages"]
    balance = json.loads((tmp_path / "kto" / "build.json").read_text())["report"]["kto"]
    labels = Counter(kto["label"])
    assert balance["desirable"] == labels["positive"] == 300 and balance["undesirable"] == labels["negative"] == 400
    lo, hi = balance["desirable_weight_range"]
    assert lo == pytest.approx(400 / 300, abs=1e-4) and hi == pytest.approx(4 / 3 * 400 / 300, abs=1e-4)


def test_pairs_per_question_is_refused_outside_dpo(strategyqa_files, tmp_path):
    run = _nat_build(strategyqa_files, tmp_path, "nat", "nat", "--pairs-per-question", "2")
    assert run.returncode == 1 and "--pairs-per-question applies to --variant dpo only" in run.stderr
    assert not (tmp_path / "nat").exists()
