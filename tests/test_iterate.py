"""``nat iterate``: options and checks, then two rounds end to end as docs/iterate.md runs them, a kill -9 in round 1
that resumes to the uninterrupted result, a round without positives, and a re-run that does nothing."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_nat.agent.iterate import IterateConfig, check_record, fit_config, questions
from lightning_nat.cli import command_parser
from lightning_nat.core.options import config_argv, from_namespace

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "iterate"


def doc_commands() -> list[list[str]]:
    """docs/iterate.md's runnable block (its `# run by:` names this file), from the repository root, as written."""
    text = (REPO / "docs/iterate.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n# run by: tests/test_iterate.py[^\n]*\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("nat ")]


*PREPARE, ITERATE = doc_commands()


def nat(args, cwd, env=None, check=True):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run([str(Path(sys.executable).with_name("nat")), *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


# `nat` that SIGKILLs itself once round ROUND has appended N episodes to its collection (argv[1]: ROUND:N).
KILLED_AFTER = """
import os, signal, sys
from lightning_nat.agent import collect
from lightning_nat.cli import main

round_, after = sys.argv.pop(1).split(":")
append, written = collect.append_durably, []

def append_then_kill(path, data):
    append(path, data)
    if path.name == "trajectories.jsonl" and path.parent.name == "round" + round_:
        written.append(path)
        if len(written) == int(after):
            os.kill(os.getpid(), signal.SIGKILL)

collect.append_durably = append_then_kill
sys.exit(main())
"""


def nat_killed_after(at, args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", KILLED_AFTER, at, *args], cwd=cwd, env=env, capture_output=True,
                          text=True)


def copy_example(root):
    shutil.copytree(EXAMPLE, root / "examples" / "iterate")
    return root


def base(tmp_path, **kw):
    return IterateConfig(**{"name": "r", "out": str(tmp_path / "runs"), "task": "arith", "model": "m",
                            "data": str(EXAMPLE / "train.jsonl"), "fit_config": str(EXAMPLE / "fit-tiny.yaml"), **kw})


def test_config_file_and_flags(tmp_path):
    argv = [*config_argv(IterateConfig, str(EXAMPLE / "tiny.yaml"), "nat iterate"), "--rounds", "3", "--temperatures",
            "0.2", "0.7"]
    cfg = from_namespace(IterateConfig, command_parser("iterate").parse_args(argv))
    assert (cfg.name, cfg.rounds, cfg.temperatures, cfg.samples, cfg.include_teacher, cfg.max_turns) == \
        ("tiny", 3, (0.2, 0.7), 2, True, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nround: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown option 'round'"):
        config_argv(IterateConfig, str(bad), "nat iterate")
    bad.write_text("include_teacher: 'yes'\n")
    with pytest.raises(ValueError, match=r"include_teacher: 'yes' is not true or false"):
        config_argv(IterateConfig, str(bad), "nat iterate")
    with pytest.raises(ValueError, match="give one of them"):
        base(tmp_path, held_out="h.jsonl", held_out_num=2)


def test_a_run_keeps_its_options(tmp_path):
    run = tmp_path / "runs" / "r"
    check_record(base(tmp_path), run)
    check_record(base(tmp_path, rounds=5, batch_size=4), run)  # more rounds, other speed: the same run
    with pytest.raises(ValueError, match=r"started with --samples 1 \(now 3\), --variant nat \(now dpo\)"):
        check_record(base(tmp_path, variant="dpo", samples=3), run)


def test_held_out_questions_must_not_be_training_ones(tmp_path):
    from lightning_nat.core.tasks import get_task

    task = get_task("arith")
    train, held = questions(base(tmp_path, held_out_num=4, eval_limit=3), task)
    assert [r["id"] for r in train] == [f"p{i}" for i in range(8)] and [r["id"] for r in held] == ["p8", "p9", "p10"]
    with pytest.raises(ValueError, match="4 held-out questions are also training questions"):
        questions(base(tmp_path, held_out=str(EXAMPLE / "train.jsonl"), limit=4), task)


def test_fit_config_fills_the_round_and_checks_the_objective(tmp_path):
    rd = tmp_path / "round1"
    tpl = {"model": {"learning_rate": 1e-4}, "data": {}, "trainer": {"max_epochs": 1}}
    out = fit_config(base(tmp_path, variant="dpo", seed=7), tpl, rd, "hub/model")
    assert out["model"] == {"learning_rate": 1e-4, "model_name_or_path": "hub/model", "objective": "dpo"}
    assert out["data"]["dataset_dir"] == str(rd.resolve() / "data") and out["seed_everything"] == 7
    assert out["export"]["dirpath"] == str(rd.resolve() / "fit" / "export")
    assert "objective" not in fit_config(base(tmp_path), tpl, rd, "m")["model"]
    with pytest.raises(ValueError, match="model.objective kto does not train a nat build"):
        fit_config(base(tmp_path), {**tpl, "model": {"objective": "kto"}}, rd, "m")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """docs/iterate.md's runnable block, run as it says: two rounds without interruption."""
    root = copy_example(tmp_path_factory.mktemp("iterate"))
    for args in PREPARE:
        nat(args, root)
    done = nat(ITERATE, root)
    return root, done


def rows(path):
    import datasets

    return datasets.load_from_disk(str(path))["train"].to_list()


def weights(model):
    from safetensors.torch import load_file

    return load_file(str(model / "model.safetensors"))


@pytest.mark.slow
def test_two_rounds_end_to_end(finished):
    from lightning_nat.core.outputs import manifest
    from lightning_nat.core.readers import read_trajectories

    root, done = finished
    run = root / "runs" / "iterate" / "tiny"
    summary = json.loads((run / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert [r["collected_with"] for r in summary["rounds"]] == ["runs/iterate-scratch", "round0/model"]
    for k, record in enumerate(summary["rounds"]):
        rd = run / f"round{k}"
        assert json.loads((rd / "round.json").read_text()) == record
        trajs = read_trajectories(rd / "trajectories.jsonl")
        assert len(trajs) == 12 * 2 and record["positives"] == sum(t.reward for t in trajs)
        assert {(t.meta["temperature"], t.meta["sample"]) for t in trajs} == {(1.0, 0), (1.0, 1)}
        assert manifest(rd / "data")["command"] == "nat build" and manifest(rd / "eval")["command"] == "nat eval"
        # The build holds this round's own trajectories (unfinished ones kept) and the teacher's.
        ids = {r["id"] for r in rows(rd / "data")}
        assert {t.id for t in trajs} <= ids and len(ids) == sum(record["trained_on"].values())
        assert (rd / "fit.yaml").read_text().splitlines()[1] == f"#   nat fit --config {(rd / 'fit.yaml').resolve()}"
        assert record["held_out_metrics"]["accuracy"] == record["held_out_accuracy"]
    # Round 1 trained from round 0's export, and moved it.
    assert not all(w.equal(v) for w, v in zip(weights(run / "round0" / "model").values(),
                                               weights(run / "round1" / "model").values()))
    assert "round0/model" in done.stdout and "held-out acc." in done.stdout


@pytest.mark.slow
def test_a_finished_run_does_nothing_again(finished):
    root, _ = finished
    run = root / "runs" / "iterate"
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")}
    done = nat(ITERATE, root)
    assert "all 2 rounds are done; nothing to do" in done.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*")} == before


@pytest.mark.slow
def test_kill_9_in_round_1_resumes_to_the_same_result(finished, tmp_path):
    """Round 0 is the finished run's (copied, to save its minute); round 1 is killed after 5 of its 24 episodes."""
    reference = finished[0] / "runs" / "iterate" / "tiny"
    root = copy_example(tmp_path)
    (root / "runs").mkdir()
    (root / "runs" / "iterate-scratch").symlink_to(finished[0] / "runs" / "iterate-scratch")
    shutil.copytree(reference / "round0", root / "runs" / "iterate" / "tiny" / "round0")
    shutil.copy(reference / "iterate.json", root / "runs" / "iterate" / "tiny")
    killed = nat_killed_after("1:5", ITERATE, root)
    assert killed.returncode == -signal.SIGKILL
    run = root / "runs" / "iterate" / "tiny"
    assert not (run / "round1" / "data").exists() and not (run / "round1" / "round.json").exists()
    assert len((run / "round1" / "trajectories.jsonl").read_text().splitlines()) == 5
    nat(ITERATE, root)
    assert json.loads((run / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    assert (run / "round1" / "trajectories.jsonl").read_text() == (reference / "round1" / "trajectories.jsonl").read_text()
    assert rows(run / "round1" / "data") == rows(reference / "round1" / "data")
    mine, theirs = weights(run / "round1" / "model"), weights(reference / "round1" / "model")
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)
    # The block the kill cut was set aside whole and collected again from its seed.
    assert len((run / "round1" / "trajectories.jsonl.superseded").read_text().splitlines()) == 5


@pytest.mark.slow
def test_a_round_without_positives_stops(finished, tmp_path):
    root = copy_example(tmp_path)
    (root / "runs").mkdir()
    (root / "runs" / "iterate-scratch").symlink_to(finished[0] / "runs" / "iterate-scratch")
    config = root / "examples" / "iterate" / "tiny.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("teacher:")))
    done = nat([*ITERATE, "--samples", "1"], root, check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: round 0: the collection has 0 positives and 12 negatives; variant nat trains on positives and "
        "negatives: stopping (more --samples or --temperatures, --teacher trajectories, or --allow-empty-class)")
    run = root / "runs" / "iterate" / "tiny"
    assert len((run / "round0" / "trajectories.jsonl").read_text().splitlines()) == 12  # what was collected stays
    assert not (run / "round0" / "data").exists() and not (run / "summary.json").exists()


def test_a_model_the_server_does_not_serve_says_what_to_serve(tmp_path, monkeypatch):
    from fake_openai import FakeOpenAI

    from lightning_nat.agent.iterate import run_iterate
    from lightning_nat.agent.policies import PolicyConfigError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    refusal = {"status": 404, "message": "The model `runs/start` does not exist."}
    with FakeOpenAI(lambda messages: "", faults=[refusal] * 100) as server:
        cfg = base(tmp_path, model="runs/start", policy="openai", base_url=server.base_url, max_retries=0,
                   temperatures=(0.7,))
        with pytest.raises(PolicyConfigError, match=rf"^round 0: .*does not exist.*; serve runs/start under that name at "
                                                    rf"{server.base_url} \(e.g. `vllm serve runs/start`\)"):
            run_iterate(cfg)
