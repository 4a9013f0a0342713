"""The invented fixture (tests/fixture_data.py) stands in for ../shared where a test only needs data of the right shape; the
shared-data tests still fail under CI when the folder is missing (and are skipped elsewhere)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SHARED_TEST = "tests/test_corpus.py::test_strategyqa_facts_corpus_answers_searches_and_runs_in_eval"


def test_fixture_is_the_same_every_time(tmp_path):
    import fixture_data

    fixture_data.main(tmp_path / "a")
    fixture_data.main(tmp_path / "b")
    for name in ("train.jsonl", "trajectories_positive.json", "trajectories_negative.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name


def test_fixture_builds_like_the_shared_data(fixture_dataset):
    from lightning_nat.core.artifacts import read_build

    rec = read_build(fixture_dataset)
    assert (rec.stats["positives"], rec.stats["negatives"], rec.stats["dev"]) == (24, 16, 8)
    assert rec.report["skipped_by_reason"] == {}  # every written record is valid NAT reference format
    rows = [json.loads(line) for line in (fixture_dataset / "preview.jsonl").read_text().splitlines()]
    assert {r["label"] for r in rows} == {"positive", "negative"}


@pytest.mark.parametrize("ci, expect_rc, expect", [("1", 1, "shared data not found"), ("", 0, "1 skipped")])
def test_missing_shared_data_fails_under_ci_and_skips_elsewhere(tmp_path, ci, expect_rc, expect):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(NAT_SHARED_DATA=str(tmp_path / "nowhere"), PYTHONPATH=str(TESTS.parent))
    if ci:
        env["CI"] = ci
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           f"--basetemp={tmp_path / 'bt'}", SHARED_TEST], cwd=TESTS.parent, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect_rc, proc.stdout[-2000:]
    assert expect in proc.stdout
