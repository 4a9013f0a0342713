"""Regression tests for issue 17: nothing lost, nothing wrong with exit 0.

Each attack is replayed where a user meets it: ``nat ...`` run as a subprocess in a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]


def nat(*args, cwd, env=None, timeout=600, **kw):
    """Run ``nat ARGS`` in ``cwd`` with this worktree's code; return the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kw)


def one_error_line(proc) -> str:
    """The CLI's error output: exactly one line starting with ``error:``, no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


# -- 1. exact resume through `nat fit` ------------------------------------------------------------------------


class BatchLog(Callback):
    """Appends (global step, micro-batch key, loss) per micro-batch to ``$NAT_TEST_BATCH_LOG``.

    With ``$NAT_TEST_HOLD_AT`` set, the run stops making progress once that optimizer step is done, so a test
    can ``kill -9`` it at a known point (after a mid-epoch checkpoint, before the next one).
    """

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._row = {"step": trainer.global_step, "epoch": trainer.current_epoch,
                     "key": hashlib.sha256(batch["input_ids"].cpu().numpy().tobytes()).hexdigest()[:16]}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._row["loss"] = float(outputs["loss"])
        with open(os.environ["NAT_TEST_BATCH_LOG"], "a") as f:
            f.write(json.dumps(self._row) + "\n")
        hold = os.environ.get("NAT_TEST_HOLD_AT")
        if hold and trainer.global_step >= int(hold):
            Path(os.environ["NAT_TEST_BATCH_LOG"] + ".held").write_text(str(trainer.global_step))
            time.sleep(600)


def _fit_config(tmp_path, scratch_model, tiny_dataset, root) -> Path:
    cfg = tmp_path / f"{root}.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(scratch_model), "learning_rate": 3e-3, "warmup_ratio": 0.1},
        "data": {"dataset_dir": str(tiny_dataset), "micro_batch_size": 2, "global_batch_size": 4, "max_length": 2048},
        "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path / root), "enable_progress_bar": False,
                    "callbacks": [{"class_path": "test_reliability.BatchLog"}]},
        "checkpoint": {"every_n_train_steps": 3},
    }))
    return cfg


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(scratch_model, tiny_dataset, tmp_path_factory):
    """The reference run: 40 rows, 20 micro-batches, 10 optimizer steps per epoch, 2 epochs."""
    tmp_path = tmp_path_factory.mktemp("straight")
    cfg = _fit_config(tmp_path, scratch_model, tiny_dataset, "straight")
    straight = nat("fit", "--config", cfg, cwd=tmp_path, env={"NAT_TEST_BATCH_LOG": str(tmp_path / "straight.jsonl")})
    assert straight.returncode == 0, straight.stderr[-3000:]
    return tmp_path


@pytest.mark.slow
def test_an_epoch_end_checkpoint_is_written(uninterrupted):
    import torch

    ref = _rows(uninterrupted / "straight.jsonl")
    assert len(ref) == 40 and ref[-1]["step"] == 19
    # The README promises a checkpoint at each epoch end: every 3 steps alone would leave last.ckpt at step 18.
    last = torch.load(uninterrupted / "straight/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 20


@pytest.mark.slow
@pytest.mark.parametrize("hold, resumed_at", [(5, 3), (11, 10)])  # mid-epoch; just after the epoch-end checkpoint
def test_nat_fit_kill9_and_resume_equals_uninterrupted_run(scratch_model, tiny_dataset, tmp_path, uninterrupted,
                                                           hold, resumed_at):
    ref = _rows(uninterrupted / "straight.jsonl")
    # The same run, killed with SIGKILL once optimizer step `hold` is done (checkpoints every 3 steps) ...
    cfg = _fit_config(tmp_path, scratch_model, tiny_dataset, "killed")
    log = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "NAT_TEST_BATCH_LOG": str(log),
           "NAT_TEST_HOLD_AT": str(hold)}
    proc = subprocess.Popen([sys.executable, "-m", "lightning_nat.cli", "fit", "--config", str(cfg)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    held = Path(str(log) + ".held")
    try:
        deadline = time.time() + 300
        while not held.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert held.exists(), proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # kill -9, as the test intends (and never a stray child)
        proc.wait()
        proc.stderr.close()
    killed = _rows(log)
    assert killed[-1]["step"] == hold - 1  # the loader had moved past the checkpoint

    # ... and resumed the way the README says.
    resumed_log = tmp_path / "resumed.jsonl"
    resumed = nat("fit", "--config", cfg, "--ckpt_path", "last", cwd=tmp_path,
                  env={"NAT_TEST_BATCH_LOG": str(resumed_log)})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = _rows(resumed_log)
    assert again[0]["step"] == resumed_at
    combined = [r for r in killed if r["step"] < resumed_at] + again
    assert [r["key"] for r in combined] == [r["key"] for r in ref]
    assert [(r["step"], r["epoch"]) for r in combined] == [(r["step"], r["epoch"]) for r in ref]
    assert [r["loss"] for r in combined] == [r["loss"] for r in ref]


def test_ckpt_path_last_without_checkpoint_is_an_error(tmp_path, scratch_model, tiny_dataset):
    cfg = _fit_config(tmp_path, scratch_model, tiny_dataset, "none")
    proc = nat("fit", "--config", cfg, "--ckpt_path", "last", cwd=tmp_path, env={"NAT_TEST_BATCH_LOG": os.devnull})
    line = one_error_line(proc)
    assert "last.ckpt does not exist" in line and str(tmp_path / "none" / "checkpoints") in line
    assert not (tmp_path / "none" / "nat").exists()  # nothing trained


@pytest.mark.parametrize("content", [b"", os.urandom(4096), b"PK\x03\x04" + b"\0" * 100])
def test_corrupt_checkpoint_is_a_located_error(tmp_path, scratch_model, tiny_dataset, content):
    cfg = _fit_config(tmp_path, scratch_model, tiny_dataset, "bad")
    (tmp_path / "bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "bad" / "checkpoints" / "last.ckpt").write_bytes(content)
    proc = nat("fit", "--config", cfg, "--ckpt_path", "last", cwd=tmp_path, env={"NAT_TEST_BATCH_LOG": os.devnull})
    line = one_error_line(proc)
    assert "last.ckpt" in line and "weights_only" not in proc.stderr + proc.stdout


# -- 2. one JSONL module: written records read back -----------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lightning_nat.core import jsonl  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.text(), _json_values, max_size=5), max_size=6))
def test_jsonl_round_trip_over_arbitrary_unicode(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("rt") / "r.jsonl"
    assert jsonl.write_jsonl(path, records) == len(records)
    # Empty objects are blank-free lines ("{}"), so every record comes back, in order.
    assert jsonl.read_jsonl(path) == records


def test_jsonl_line_separators_survive(tmp_path):
    text = "a\u2028b\u2029c\x85d\x1ce\x1df\x1eg\x0bh\x0ci\rj"
    jsonl.write_jsonl(tmp_path / "x.jsonl", [{"t": text}, {"t": "next"}])
    assert jsonl.read_jsonl(tmp_path / "x.jsonl") == [{"t": text}, {"t": "next"}]


def _collected(tmp_path, content):
    """A canonical trajectory file (what nat collect writes) with one teacher answer holding ``content``."""
    from lightning_nat.core.jsonl import write_jsonl
    from lightning_nat.core.trajectory import Trajectory

    trajs = [Trajectory(id=f"gsm8k:{i}:t0.2:s0", task="gsm8k", question=f"Q{i}?", reward=bool(i % 2), score=None,
                        prediction="4", answer="4", question_id=str(i), meta={"temperature": 0.2, "sample": 0},
                        messages=[{"role": "assistant", "content": content if i == 1 else "Action: finish[4]"},
                                  {"role": "user", "content": "Observation: Episode finished"}]) for i in range(4)]
    path = tmp_path / "collected.jsonl"
    write_jsonl(path, trajs)
    return path


def test_clean_and_build_read_back_unicode_line_separators(tmp_path):
    content = "Thought: two lines\u2028of thought\u2029and a NEL\x85.\nAction: finish[4]"
    path = _collected(tmp_path, content)
    proc = nat("clean", path, "--task", "gsm8k", "--out", tmp_path / "clean.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from lightning_nat.core.readers import read_trajectories

    back = read_trajectories(tmp_path / "clean.jsonl")
    assert len(back) == 4 and back[1].messages[0]["content"] == content
    proc = nat("build", "--format", "jsonl", "--trajectories", tmp_path / "clean.jsonl", "--task", "gsm8k",
               "--variant", "nat", "--out", tmp_path / "ds", "--cache-dir", tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(ds["train"]) == 4 and any(content in m["content"] for r in ds["train"] for m in r["messages"])


def _openai_line(q, reward=True, **extra):
    return {"id": q, "messages": [{"role": "user", "content": f"What is {q}?"},
                                  {"role": "assistant", "content": "Action: finish[1]"}], "reward": reward, **extra}


def test_bom_and_undecodable_bytes_are_located_and_skippable(tmp_path):
    lines = [jsonl.dumps_line(_openai_line(f"q{i}")).encode() for i in range(3)]
    lines[1] = lines[1].replace(b"What", b"Wh\xffat")  # not UTF-8
    path = tmp_path / "t.jsonl"
    path.write_bytes(jsonl.BOM + b"".join(lines))
    args = ["build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--variant", "nut",
            "--cache-dir", tmp_path / "cache"]
    line = one_error_line(nat(*args, "--out", tmp_path / "a", cwd=tmp_path))
    assert f"{path}, line 2: undecodable bytes (not UTF-8)" in line and "--on-error skip" in line
    assert not (tmp_path / "a").exists()
    proc = nat(*args, "--on-error", "skip", "--out", tmp_path / "b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import datasets

    assert len(datasets.load_from_disk(str(tmp_path / "b"))["train"]) == 2  # the BOM line (q0) was read
    record = json.loads((tmp_path / "b" / "build.json").read_text())["report"]
    assert record["skipped"] == [[str(path), "line 2", "undecodable bytes (not UTF-8) at column 58"]]


def test_bom_in_a_reference_format_json_list(tmp_path, strategyqa_files):
    data = json.loads(Path(strategyqa_files["pos"]).read_text())[:5]
    path = tmp_path / "pos.json"
    path.write_bytes(jsonl.BOM + json.dumps(data, ensure_ascii=False).encode())
    proc = nat("build", "--format", "nat", "--trajectories", path, "--questions", strategyqa_files["questions"],
               "--task", "strategyqa", "--variant", "positive", "--out", tmp_path / "ds", "--cache-dir",
               tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "ds" / "build.json").read_text())["report"]["skipped"] == []


# -- 3. outputs that never clobber ---------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _trajs_file(tmp_path, n=6) -> Path:
    path = tmp_path / "trajs.jsonl"
    path.write_text("".join(jsonl.dumps_line(_openai_line(f"q{i}", reward=i % 2 == 0)) for i in range(n)))
    return path


def _build_args(tmp_path, trajs, out):
    return ["build", "--format", "openai", "--trajectories", trajs, "--task", "gsm8k", "--variant", "nat",
            "--cache-dir", tmp_path / "cache", "--out", out]


def test_build_refuses_a_foreign_folder_and_replaces_its_own(tmp_path):
    trajs = _trajs_file(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    line = one_error_line(nat(*_build_args(tmp_path, trajs, foreign), cwd=tmp_path))
    assert f"--out {foreign}: folder is not empty and is not an earlier `nat build` output" in line
    assert "--overwrite" in line and _snapshot(foreign) == {"notes.txt": b"keep me"}
    # An existing file, or a folder holding the input, is never taken as --out.
    line = one_error_line(nat(*_build_args(tmp_path, trajs, trajs), cwd=tmp_path))
    assert "exists and is a file" in line or "holds the input" in line
    assert trajs.read_text().count("\n") == 6
    line = one_error_line(nat(*_build_args(tmp_path, trajs, tmp_path), "--overwrite", cwd=tmp_path))
    assert "holds the input" in line and trajs.exists()
    # --overwrite replaces a foreign folder; an earlier build output is replaced without asking.
    out = tmp_path / "ds"
    for _ in range(2):
        proc = nat(*_build_args(tmp_path, trajs, out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    proc = nat(*_build_args(tmp_path, trajs, foreign), "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0 and not (foreign / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def _no_big_files():
    """In the child: files may not grow past 2 kB, as on a full disk (writes fail with EFBIG)."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))


def test_failed_rebuild_leaves_the_previous_dataset_loadable(tmp_path):
    import datasets

    trajs = _trajs_file(tmp_path, n=40)
    out = tmp_path / "ds"
    assert nat(*_build_args(tmp_path, trajs, out), cwd=tmp_path).returncode == 0
    before = _snapshot(out)
    # The same build (served by the cache) again, on a "full disk": saving the dataset fails midway.
    proc = nat(*_build_args(tmp_path, trajs, out), cwd=tmp_path, preexec_fn=_no_big_files)
    line = one_error_line(proc)
    assert "File too large" in line
    assert _snapshot(out) == before
    # 20 positives and 20 negatives (their finish[...] is the extracted answer, so they count as finished)
    assert len(datasets.load_from_disk(str(out))["train"]) == 40
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_second_build_into_a_locked_output_names_the_holder(tmp_path):
    from lightning_nat.core.outputs import output_lock

    trajs = _trajs_file(tmp_path)
    out = tmp_path / "ds"
    with output_lock(out, "nat build"):
        line = one_error_line(nat(*_build_args(tmp_path, trajs, out), cwd=tmp_path))
    assert f"{out}: in use by nat build (pid {os.getpid()} on " in line
    assert not out.exists()
    assert nat(*_build_args(tmp_path, trajs, out), cwd=tmp_path).returncode == 0  # released


def test_collect_never_touches_a_user_file(tmp_path, shared_data):
    user = tmp_path / "mine.jsonl"
    user.write_text(jsonl.dumps_line(_openai_line("a")) + jsonl.dumps_line(_openai_line("b")).rstrip("\n"))
    before = user.read_bytes()
    proc = nat("collect", "--task", "gsm8k", "--data", shared_data / "gsm8k" / "test.jsonl", "--limit", "2",
               "--policy", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out", user,
               cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    line = one_error_line(proc)
    assert f"{user}, line 1: cannot resume" in line and "--on-error" not in line
    assert user.read_bytes() == before and not Path(str(user) + ".torn").exists()


def test_collect_into_a_locked_file_names_the_holder(tmp_path, shared_data):
    from lightning_nat.core.outputs import output_lock

    out = tmp_path / "c.jsonl"
    with output_lock(out, "nat collect"):
        proc = nat("collect", "--task", "gsm8k", "--data", shared_data / "gsm8k" / "test.jsonl", "--limit", "2",
                   "--policy", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--out", out,
                   cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    assert f"{out}: in use by nat collect (pid {os.getpid()}" in one_error_line(proc)
    assert not out.exists()


def test_fit_into_a_locked_root_names_the_holder(tmp_path, scratch_model, tiny_dataset):
    from lightning_nat.core.outputs import output_lock

    cfg = _fit_config(tmp_path, scratch_model, tiny_dataset, "root")
    with output_lock(tmp_path / "root", "nat fit"):
        proc = nat("fit", "--config", cfg, cwd=tmp_path, env={"NAT_TEST_BATCH_LOG": os.devnull})
    assert f"{tmp_path / 'root'}: in use by nat fit (pid {os.getpid()}" in one_error_line(proc)
    assert not (tmp_path / "root" / "checkpoints").exists()


def test_eval_refuses_a_foreign_out_folder(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    proc = nat("eval", "--policy", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--tasks", "gsm8k",
               "--out", foreign, cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    assert "not an earlier `nat eval` output" in one_error_line(proc)
    assert _snapshot(foreign) == {"notes.txt": b"keep me"}


# -- 4. failures that show -----------------------------------------------------------------------------------

DEAD_API = ["--policy", "openai", "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--max-retries", "0",
            "--timeout", "2"]


def test_eval_against_a_failing_api_shows_the_failures_and_exits_nonzero(tmp_path, shared_data):
    args = ["eval", *DEAD_API, "--tasks", "gsm8k", "--limit", "3", "--data-dir", shared_data]
    proc = nat(*args, "--out", tmp_path / "ev", cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    line = one_error_line(proc)
    assert "gsm8k: 3 of 3 episodes ended on policy errors (100%, more than --max-error-rate 0.5)" in line
    assert "failed" in proc.stdout  # the table's column
    # Nothing is lost: the results are written, with the failure share.
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["gsm8k"]["failed"] == 1.0
    proc = nat(*args, "--max-error-rate", "1", "--out", tmp_path / "ev", cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    assert proc.returncode == 0, proc.stderr
    assert nat(*args, "--max-error-rate", "2", "--out", tmp_path / "x", cwd=tmp_path).returncode == 2


def test_collect_against_a_failing_api_exits_nonzero(tmp_path, shared_data):
    out = tmp_path / "c.jsonl"
    proc = nat("collect", *DEAD_API, "--task", "gsm8k", "--data", shared_data / "gsm8k" / "test.jsonl", "--limit", "2",
               "--temperatures", "0.2", "--out", out, cwd=tmp_path, env={"OPENAI_API_KEY": "x"})
    line = one_error_line(proc)
    assert f"{out}: 2 of 2 episodes failed on API errors (100%, more than --max-error-rate 0.5)" in line
    assert len(Path(str(out) + ".failed.jsonl").read_text().splitlines()) == 2


def test_every_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "nope.jsonl"
    args = ["build", "--format", "openai", "--trajectories", missing, "--task", "gsm8k", "--out", tmp_path / "o"]
    assert f"no such file: {missing}" in one_error_line(nat(*args, cwd=tmp_path))
    debug = nat(*args, "--debug", cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
    # An --out below a file: the OS error, located, on one line.
    trajs = _trajs_file(tmp_path)
    assert "trajs.jsonl" in one_error_line(nat(*_build_args(tmp_path, trajs, trajs / "sub"), cwd=tmp_path))


def test_no_prefix_matching_and_seeds_validated(tmp_path):
    proc = nat("demo", "--seed", "0", "--out", tmp_path / "d", cwd=tmp_path)
    assert proc.returncode == 2 and "unrecognized arguments: --seed 0" in proc.stderr
    proc = nat("demo", "--seeds", "0", "--out", tmp_path / "d", cwd=tmp_path)
    assert proc.returncode == 2 and "argument --seeds: must be at least 1, got 0" in proc.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("lines, expected", [
    ([], "no training conversation is left (read 0 trajectories)"),
    (["{broken", '{"messages": []}'], "no training conversation is left (read 0 trajectories; skipped 2 bad records"),
])
def test_nothing_to_train_on_is_a_clear_error(tmp_path, lines, expected):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(x + "\n" for x in lines))
    proc = nat("build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--on-error", "skip",
               "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o", cwd=tmp_path)
    line = one_error_line(proc)
    assert f"{path}: {expected}" in line and "corresponds to no data" not in proc.stderr


def test_records_without_ids_are_one_question_per_text(tmp_path):
    def rec(q, reward, answer="Action: finish[1]"):
        return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}],
                "reward": reward, "prediction": "1"}

    # Three positives on question A (written differently in spacing), one on B; no ids anywhere.
    rows = [rec("What is A?", True, "x"), rec("What is  A?", True, "y"), rec("What is A?", True, "z"),
            rec("What is B?", True)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(jsonl.dumps_line(r) for r in rows))
    proc = nat("build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--variant", "positive",
               "--pos-num", "1", "--dev-num", "5", "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import datasets

    ds = datasets.load_from_disk(str(tmp_path / "o"))
    train_q = {r["question_id"] for r in ds["train"]}
    dev_q = {r["question_id"] for r in ds["dev"]}
    assert len(train_q) == 1 and len(dev_q) == 1 and not train_q & dev_q  # dev never repeats a training question
    assert "filtered 2: positive on a question that already has one" in proc.stdout


@pytest.mark.parametrize("score", ["NaN", "Infinity", "-Infinity", "1.5", "-0.1", '"high"'])
def test_bad_scores_are_refused_with_their_location(tmp_path, score):
    good = jsonl.dumps_line(_openai_line("q0", reward=False, prediction="2", score=0.5))
    bad = good.replace('"score": 0.5', f'"score": {score}')
    path = tmp_path / "t.jsonl"
    path.write_text(good + bad)
    proc = nat("build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--variant", "nat-2",
               "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o", cwd=tmp_path)
    assert f"{path}, line 2: score must be a number in [0, 1]" in one_error_line(proc)


def test_one_id_with_two_contents_is_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(jsonl.dumps_line(_openai_line("same")) + jsonl.dumps_line(
        _openai_line("same", messages=[{"role": "user", "content": "What is same?"},
                                       {"role": "assistant", "content": "Action: finish[2]"}])))
    proc = nat("build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--variant", "nat",
               "--cache-dir", tmp_path / "cache", "--out", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "id 'same' is used by 2 trajectories with different contents" in proc.stdout
    assert "filtered 1: positive on a question that already has one" in proc.stdout


# -- 7. tool calls are never dropped silently ----------------------------------------------------------------


@pytest.mark.parametrize("content", [None, ""])
def test_openai_tool_calls_are_kept_and_bad_ones_named_at_their_message(tmp_path, content):
    """Tool calls are data now (issue 19): kept whole; a call with bad JSON arguments is refused at its message."""
    import datasets

    call = {"role": "assistant", "content": content,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": "{}"}}]}
    rec = {"id": "t", "messages": [{"role": "system", "content": "be an agent"}, {"role": "user", "content": "Q?"},
                                   call, {"role": "tool", "tool_call_id": "c1", "content": "1"},
                                   {"role": "assistant", "content": "Action: finish[1]"}], "reward": True}
    path = tmp_path / "t.jsonl"
    path.write_text(jsonl.dumps_line(rec) + jsonl.dumps_line(_openai_line("ok")))
    args = ["build", "--format", "openai", "--trajectories", path, "--task", "gsm8k", "--variant", "nat",
            "--cache-dir", tmp_path / "cache"]
    proc = nat(*args, "--out", tmp_path / "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = datasets.load_from_disk(str(tmp_path / "a"))["train"]
    kept = next(r for r in rows if r["id"] == "t")
    assert [c["name"] for m in kept["messages"] for c in (m["tool_calls"] or [])] == ["calculate"]
    call["tool_calls"][0]["function"]["arguments"] = "{oops"
    path.write_text(jsonl.dumps_line(rec) + jsonl.dumps_line(_openai_line("ok")))
    line = one_error_line(nat(*args, "--out", tmp_path / "b", cwd=tmp_path))
    assert f"{path}, line 1: message 2: tool call arguments are not valid JSON" in line


# -- 5. the step parser and the calculator -------------------------------------------------------------------


def _solve_with(tmp_path, turns):
    """``nat solve`` against a loopback teacher that writes ``turns`` one per request."""
    from fake_openai import FakeOpenAI

    script = list(turns)
    with FakeOpenAI(lambda messages: script.pop(0) if script else "Action: finish[0]") as server:
        return nat("solve", "--policy", "openai", "--model", "m", "--base-url", server.base_url, "--task", "gsm8k",
                   "--max-turns", "3", "What is it?", cwd=tmp_path, env={"OPENAI_API_KEY": "x"}, timeout=120)


def test_long_whitespace_runs_parse_in_linear_time(tmp_path):
    proc = _solve_with(tmp_path, ["Action" + " " * 200_000 + "x", "Action: finish[7]"])
    assert proc.returncode == 0, proc.stderr
    assert "Invalid action" in proc.stdout and "prediction: 7" in proc.stdout


@pytest.mark.parametrize("expression, observation", [
    ("1.5**2000", "15223626185737824681999045305841060014774798957514742055029998831623115465645255"),
    ("round(2**70+1)", "1180591620717411303425"),
    ("10**20+0.5", "100000000000000000000.5"),
    ("2**9000", "Error: power too large"),
])
def test_calculator_is_exact_through_the_agent(tmp_path, expression, observation):
    proc = _solve_with(tmp_path, [f"Action: calculate[{expression}]", "Action: finish[1]"])
    assert proc.returncode == 0, proc.stderr
    shown = "".join(proc.stdout.split())  # rich wraps long lines
    assert f"Observation:{''.join(observation.split())}" in shown and "inf" not in shown.replace("Invalid", "")


def test_clean_never_overwrites_its_input(tmp_path):
    path = _collected(tmp_path, "Action: finish[4]")
    before = path.read_bytes()
    assert "is the input file" in one_error_line(nat("clean", path, "--task", "gsm8k", "--out", path, cwd=tmp_path))
    assert "is a folder" in one_error_line(nat("clean", path, "--task", "gsm8k", "--out", tmp_path, cwd=tmp_path))
    assert path.read_bytes() == before


def test_collect_sets_a_torn_last_line_aside(tmp_path, shared_data):
    out = _collected(tmp_path, "Action: finish[4]")
    good = out.read_bytes()
    out.write_bytes(good + b'{"id": "gsm8k:9:t0.2:s0", "ta')  # as left by a kill -9 mid-write
    proc = nat("collect", *DEAD_API, "--task", "gsm8k", "--data", shared_data / "gsm8k" / "test.jsonl", "--limit", "1",
               "--temperatures", "0.2", "--max-error-rate", "1", "--out", out, cwd=tmp_path,
               env={"OPENAI_API_KEY": "x"})
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == good and Path(str(out) + ".torn").read_bytes() == b'{"id": "gsm8k:9:t0.2:s0", "ta\n'
    assert "torn last line" in proc.stdout
