"""`nat corpus` builds the BM25 index that `nat eval --search-corpus` reads (StrategyQA facts as the worked example)."""

import json
import os
import subprocess
import sys

from lightning_nat.core.tools import make_search


def _nat(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env={**os.environ, "OPENAI_API_KEY": "unused"})


def test_strategyqa_facts_corpus_answers_searches_and_runs_in_eval(shared_data, tmp_path):
    train = shared_data / "strategyqa" / "train.jsonl"
    proc = _nat("corpus", str(train), "--fields", "facts", "decomposition", "--title-field", "term", "--out", "corpus",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    records = [json.loads(line) for line in train.read_text().splitlines()]
    n = sum(len(r["facts"]) + len(r["decomposition"]) for r in records)
    assert manifest["passages"] + manifest["duplicates_dropped"] == n and manifest["passages"] > 5000
    search = make_search("bm25", 3, corpus_path=str(tmp_path / "corpus"))
    hit = search("How many children did Genghis Khan have")
    assert hit.startswith(" #1: ") and "Genghis Khan had sixteen children." in hit
    # The same folder drives the agent's search tool in nat eval (a scripted model searches, then answers).
    from fake_openai import FakeOpenAI

    def agent(messages):
        if messages[-1]["content"].startswith("Observation:"):
            return "Thought: enough.\nAction: finish[yes]"
        return "Thought: look it up.\nAction: search[Genghis Khan children]"

    with FakeOpenAI(agent) as server:
        proc = _nat("eval", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--tasks",
                    "strategyqa", "--data-dir", str(shared_data), "--limit", "2", "--search-corpus", "corpus",
                    "--out", "eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trajs = [json.loads(line) for line in (tmp_path / "eval" / "trajectories.jsonl").read_text().splitlines()]
    assert all("sixteen children" in t["messages"][1]["content"] for t in trajs)


def test_text_folder_corpus_and_refusals(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "moon.txt").write_text("The Moon orbits the Earth.\n\nIt has no atmosphere to speak of.")
    (docs / "mars.md").write_text("Mars has two moons, Phobos and Deimos.")
    proc = _nat("corpus", "docs", "--out", "idx", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mars: Mars has two moons" in make_search("bm25", 1, corpus_path=str(tmp_path / "idx"))("moons of Mars")
    proc = _nat("corpus", "docs", "--out", "idx", cwd=tmp_path)  # never overwrites
    assert proc.returncode == 1 and "not an empty folder" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    proc = _nat("corpus", "bad.jsonl", "--out", "idx2", cwd=tmp_path)
    assert proc.returncode == 1 and "bad.jsonl, line 2: none of the fields text" in proc.stderr
    assert not (tmp_path / "idx2").exists()
