"""Every requested task's tools and data are checked before the first episode (and the first paid request)."""

import os
import subprocess
import sys

import pytest
from fake_openai import FakeOpenAI


def _nat(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OPENAI_API_KEY": "unused"})


@pytest.fixture
def server():
    with FakeOpenAI(lambda m: "Thought: done.\nAction: finish[1]") as s:
        yield s


def test_missing_search_stops_before_any_task_runs(server, shared_data, tmp_path):
    proc = _nat("eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--tasks",
                "gsm8k,strategyqa", "--data-dir", str(shared_data), "--limit", "2", "--out", "out", cwd=tmp_path)
    assert proc.returncode != 0
    assert "tool 'search' is not configured" in proc.stdout + proc.stderr
    assert server.requests == [] and not (tmp_path / "out").exists()  # GSM8K did not run first


def test_unreadable_corpus_and_missing_data_stop_before_any_request(server, shared_data, tmp_path):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"title": "a", "text": "fine"}\nnot json\n')
    proc = _nat("eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--tasks",
                "gsm8k,hotpotqa", "--data-dir", str(shared_data), "--search-corpus", str(bad), "--out", "out",
                cwd=tmp_path)
    assert proc.returncode != 0 and "corpus.jsonl, line 2" in proc.stdout + proc.stderr
    only_gsm8k = tmp_path / "data" / "gsm8k"
    only_gsm8k.mkdir(parents=True)
    (only_gsm8k / "test.jsonl").write_text((shared_data / "gsm8k" / "test.jsonl").read_text().split("\n", 1)[0] + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text('{"title": "a", "text": "fine"}\n')
    proc = _nat("eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--tasks",
                "gsm8k,hotpotqa", "--data-dir", str(tmp_path / "data"), "--search-corpus", str(good), "--out", "out",
                cwd=tmp_path)
    assert proc.returncode != 0 and "dev_500.json" in proc.stdout + proc.stderr
    proc = _nat("collect", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--task",
                "strategyqa", "--data", str(shared_data / "strategyqa" / "train.jsonl"), "--limit", "2",
                "--search-corpus", str(bad), "--out", "c.jsonl", cwd=tmp_path)
    assert proc.returncode != 0 and "corpus.jsonl, line 2" in proc.stdout + proc.stderr
    assert server.requests == [] and not (tmp_path / "out").exists() and not (tmp_path / "c.jsonl").exists()
