"""One definition per option: every command's flags are its config's fields, and a build's card command is exact."""

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from lightning_nat.cli import COMMANDS, command_parser, config_class
from lightning_nat.core.options import cli_fields, command_line, flag_of, from_namespace
from lightning_nat.data.build import BuildConfig

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> BuildConfig:
    """The config ``nat build ARGV`` runs with."""
    return from_namespace(BuildConfig, command_parser("build").parse_args(argv))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_is_a_config_field_and_every_field_a_flag(command):
    cls = config_class(command)
    parser = command_parser(command)
    actions = [a for a in parser._actions if a.dest not in ("help", "debug", "trust_task_imports", "config")]
    assert {a.dest for a in actions} == {f.name for f in cli_fields(cls)}, "a flag without a field or a field without one"
    internal = {f.name for f in dataclasses.fields(cls)} - {f.name for f in cli_fields(cls)}
    for name in internal:  # a field without a flag must say so
        assert next(f for f in dataclasses.fields(cls) if f.name == name).metadata["internal"] is True
    for a in actions:
        field = next(f for f in cli_fields(cls) if f.name == a.dest)
        spelled = a.dest if not a.option_strings else a.option_strings[0]
        assert spelled == flag_of(field) and a.help, (command, a.dest)


def test_readme_flag_spellings_are_kept():
    flags = {opt for a in command_parser("build")._actions for opt in a.option_strings}
    assert {"--pos-num", "--neg-num", "--on-error", "--keep-unfinished", "--no-dedupe", "--prompt-mode",
            "--min-score", "--dev-num", "--pairs-per-question"} <= flags
    agent = {opt for a in command_parser("eval")._actions for opt in a.option_strings}
    assert {"--search-k", "--on-parse-error", "--max-error-rate", "--tag"} <= agent  # EvalConfig's, now flags


def test_no_abbreviation_and_one_line_errors(capsys):
    from lightning_nat.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--seed", "0"])  # --seeds, never abbreviated
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def _every_field_changed() -> BuildConfig:
    return BuildConfig(trajectories=("pos file.json", "neg.json"), format="openai", questions="q.jsonl", task="gsm8k",
                       variant="dpo", pos_num=7, neg_num=3, seed=5, pos_sampling="reference", neg_sampling="reference",
                       prompt_style="native", mode="cot", allow_empty_class=True, thresholds=(0.25, 0.5),
                       placement="prefix", drop_unfinished=False, min_score=1e-6, dedupe=False, dev_num=4,
                       on_error="skip", pairs_per_question=2, cache_dir="c", out="out dir", overwrite=True)


def test_build_command_parses_back_to_the_same_config():
    cfg = _every_field_changed()
    changed = {f.name for f in dataclasses.fields(BuildConfig) if getattr(cfg, f.name) != getattr(
        BuildConfig(trajectories=("x",), out="y"), f.name)}
    assert changed == {f.name for f in dataclasses.fields(BuildConfig)}  # the test itself covers every field
    line = command_line("nat build", cfg)
    assert shlex.split(line)[:2] == ["nat", "build"]
    assert parse(shlex.split(line)[2:]) == cfg
    minimal = BuildConfig(trajectories=("a.json",), out="DIR")
    assert parse(shlex.split(command_line("nat build", minimal))[2:]) == minimal
    # `always` fields (format, variant, seed) are written at their defaults too: a card's command must not depend
    # on a later release's defaults.
    exact = BuildConfig(trajectories=("p.json", "n.json"), neg_num=5, dedupe=False, out="DIR")
    assert command_line("nat build", exact) == ("nat build --format nat --trajectories p.json n.json --variant nat "
                                                "--neg-num 5 --seed 42 --no-dedupe --out DIR")


def test_demo_quick_keeps_given_sizes():
    parser = command_parser("demo")
    cfg = from_namespace(config_class("demo"), parser.parse_args(["--quick", "--steps", "800", "--out", "d"]))
    assert cfg.steps == 800 and cfg.train_problems == 80 and cfg.out == "d"  # given, quick's, given
    full = from_namespace(config_class("demo"), parser.parse_args([]))
    assert full.steps == 0 and full.epochs == 16 and full.train_problems == 400 and not full.quick_sizes  # the full run's


def test_on_parse_error_flag_is_checked_against_the_protocol():
    from lightning_nat.agent.eval_command import EvalCommandConfig

    base = dict(model="m", tasks="gsm8k", out="o")
    assert EvalCommandConfig(**base, on_parse_error="stop").resolved()[0].on_parse_error == "stop"
    with pytest.raises(ValueError, match="--on-parse-error observe contradicts --protocol reference"):
        EvalCommandConfig(**base, protocol="reference", on_parse_error="observe").resolved()


def _nat(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "lightning_nat.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_card_command_rebuilds_the_same_dataset(strategyqa_files, tmp_path):
    """The dataset card's `nat build` line, run where the inputs sit under their names, gives the same rows."""
    from lightning_nat.report.hub import dataset_card

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for f in strategyqa_files.values():
        (inputs / f.name).symlink_to(f)
    argv = ["build", "--trajectories", "trajectories_positive.json", "trajectories_negative.json", "--questions",
            "train.jsonl", "--task", "strategyqa", "--variant", "nat-2", "--pos-num", "20", "--neg-num", "12",
            "--seed", "7", "--keep-unfinished", "--no-dedupe", "--dev-num", "4", "--prompt-style", "native",
            "--thresholds", "0.3", "--placement", "prefix",
            "--on-error", "skip", "--neg-sampling", "reference", "--pos-sampling", "random",
            "--cache-dir", str(tmp_path / "cache1"), "--out", str(tmp_path / "first")]
    first = _nat(argv, inputs)
    assert first.returncode == 0, first.stderr
    card = dataset_card(tmp_path / "first", "me/x")
    line = next(ln for ln in card.splitlines() if ln.startswith("nat build"))
    # Exact: the card's line is the command given, less where it was written.
    given = parse(argv[1:])
    assert parse(shlex.split(line)[2:]) == dataclasses.replace(given, cache_dir=None, out="DIR")
    again = shlex.split(line.replace("--out DIR", f"--out {tmp_path / 'second'}"))[1:]
    second = _nat([*again, "--cache-dir", str(tmp_path / "cache2")], inputs)
    assert second.returncode == 0, second.stderr
    for split in ("train", "dev"):
        a = datasets.load_from_disk(str(tmp_path / "first"))[split].to_list()
        b = datasets.load_from_disk(str(tmp_path / "second"))[split].to_list()
        assert a == b and len(a) > 0


def test_unknown_build_flag_is_an_error():
    with pytest.raises(SystemExit):
        parse(["--trajectories", "a", "--out", "o", "--pos_num", "3"])
    assert isinstance(command_parser("build"), argparse.ArgumentParser)


def test_the_builder_config_is_the_build_spec():
    """One build config: the builder's config holds the BuildSpec itself, plus the digests of what it reads."""
    import datasets

    from lightning_nat.builders import NATConfig

    own = set(NATConfig.__dataclass_fields__) - set(datasets.BuilderConfig.__dataclass_fields__)
    assert own == {"spec", "input_sha256", "task_sha256"}


def test_fit_data_build_takes_every_build_option():
    """`nat fit --data.build` is a BuildSpec: the options BuildSpec once lacked reach the builder."""
    import json

    from jsonargparse import ArgumentParser

    from lightning_nat.data.build import BuildSpec
    from lightning_nat.train.datamodule import NATDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(NATDataModule, "data")
    given = {"trajectories": ["a.json"], "variant": "nat-2", "drop_unfinished": False, "dedupe": False,
             "pos_sampling": "random", "allow_empty_class": True, "placement": "prefix", "thresholds": [0.2]}
    cfg = parser.parse_args(["--data.build", json.dumps(given)])
    build = parser.instantiate_classes(cfg).data.hparams.build
    assert isinstance(build, BuildSpec)
    assert (build.drop_unfinished, build.dedupe, build.pos_sampling, build.allow_empty_class, build.placement,
            build.thresholds) == (False, False, "random", True, "prefix", (0.2,))


def test_every_command_takes_a_config_yaml_and_flags_win(tmp_path):
    """`--config FILE.yaml` holds a command's options by field name; the flags given beside it win."""
    (tmp_path / "t.jsonl").write_text('{"question": "q0?", "reward": true, "messages": [{"role": "user", "content": '
                                      '"q0?"}, {"role": "assistant", "content": "Action: finish[a]"}]}\n')
    (tmp_path / "build.yaml").write_text("format: openai\ntrajectories: [t.jsonl]\ntask: gsm8k\nvariant: positive\nseed: 7\n"
                                         "dedupe: false\nout: ds\n")
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "build", "--config", "build.yaml", "--seed",
                           "9"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "ds" / "build.json").read_text())["config"]
    assert (config["name"], config["seed"], config["dedupe"]) == ("positive", 9, False)
    (tmp_path / "bad.yaml").write_text("pos_numm: 3\n")
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "build", "--config", "bad.yaml"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "bad.yaml: unknown option 'pos_numm' (`nat build --help` lists them)" in proc.stderr
