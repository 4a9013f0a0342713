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
    (docs / "venus.txt").write_text("Venus has no moon.")
    proc = _nat("corpus", "docs", "--out", "idx", cwd=tmp_path)  # the same command again replaces its own output
    assert proc.returncode == 0 and "indexed 4 passages" in " ".join(proc.stdout.split())
    (tmp_path / "idx" / "notes.txt").write_text("mine")  # ... but never a file it did not write
    proc = _nat("corpus", "docs", "--out", "idx", cwd=tmp_path)
    assert proc.returncode == 1 and "holds files it did not write (notes.txt)" in " ".join(proc.stderr.split())
    assert (tmp_path / "idx" / "notes.txt").read_text() == "mine"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00")
    proc = _nat("corpus", "bin", "--out", "idx3", cwd=tmp_path)
    assert proc.returncode == 1 and "blob.txt, line 1: a NUL byte: a binary file, not text" in proc.stderr
    for bad_words in ("0", "-3"):
        proc = _nat("corpus", "docs", "--max-words", bad_words, "--out", "idx4", cwd=tmp_path)
        assert proc.returncode == 2 and "--max-words: must be at least 1" in proc.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    proc = _nat("corpus", "bad.jsonl", "--out", "idx2", cwd=tmp_path)
    assert proc.returncode == 1 and "bad.jsonl, line 2: none of the fields text" in proc.stderr
    assert not (tmp_path / "idx2").exists()


def test_a_jsonl_corpus_shows_passages_as_a_corpus_folder_does(tmp_path):
    """A null title is no title (it showed as "None: ..."), and a passage's own colon stays (it was stripped)."""
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"title": None, "text": "Phobos orbits Mars in 7.7 hours, ratio:"}) + "\n"
                    + json.dumps({"title": "Venus", "text": "Venus has no moon."}) + "\n")
    search = make_search("bm25", 2, corpus_path=str(path))
    assert "Phobos orbits Mars in 7.7 hours, ratio:" in search("Phobos Mars")
    assert "None" not in search("Phobos Mars") and "Venus: Venus has no moon." in search("Venus moon")
