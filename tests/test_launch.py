"""Every launch config parses through the real `nat fit` parser, and its header commands are valid."""

import json
import re
import shlex
from pathlib import Path

import pytest

from lightning_nat.cli import command_parser
from lightning_nat.core.options import from_namespace
from lightning_nat.data.build import BuildConfig
from lightning_nat.train.datamodule import NATDataModule
from lightning_nat.train.fit import NATCLI, TRAINER_DEFAULTS
from lightning_nat.train.model import NATModule

LAUNCH = Path(__file__).resolve().parent.parent / "launch"
CONFIGS = sorted((LAUNCH / "configs").glob("*.yaml"))


class _ParseOnly(NATCLI):
    def instantiate_classes(self) -> None:  # parse and derive, build nothing (no GPU here)
        pass


def test_there_is_a_config_per_paper_setting():
    names = {c.stem for c in CONFIGS}
    assert len([n for n in names if n.startswith("gsm8k-") and "-cot-" not in n
                and not n.endswith(("-dpo", "-kto"))]) == 12  # Table 2
    for size in ("7b", "13b"):  # Table 5 (HotpotQA) and Table 6 (StrategyQA)
        assert f"hotpotqa-{size}-500-wo-neg" in names
        assert {f"hotpotqa-{size}-500-{n}-{v}" for n in (1500, 2000) for v in ("nut", "nat", "nat2")} <= names
        assert {f"strategyqa-{size}-1000-500-{v}" for v in ("wo-neg", "nut", "nat")} <= names
    assert {f"hotpotqa-7b-500-{n}-nat" for n in (500, 1000, 1500, 2000)} <= names  # Figure 6 (0 is w/o Neg)
    assert {f"gsm8k-cot-7b-2k-{v}" for v in ("wo-neg", "nut", "nat")} <= names  # Table 7
    assert "tiny-cpu" in names
    # The preference baselines on the paper's settings, each beside the w/o-Neg run it starts from.
    for objective in ("dpo", "kto"):
        assert {f"gsm8k-7b-2k-{objective}", f"gsm8k-7b-5k-{objective}", f"hotpotqa-7b-500-2000-{objective}",
                f"strategyqa-7b-1000-500-{objective}", f"tiny-cpu-{objective}"} <= names


def test_make_configs_is_the_single_source(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_configs", LAUNCH / "make_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "tiny-cpu.yaml").write_text("kept")
    monkeypatch.setattr(mod, "HERE", tmp_path)
    mod.main()
    made = {p.name: p.read_text() for p in (tmp_path / "configs").glob("*.yaml") if p.name != "tiny-cpu.yaml"}
    on_disk = {p.name: p.read_text() for p in CONFIGS if p.name != "tiny-cpu.yaml"}
    assert made == on_disk  # every checked-in paper config is what the script writes, and nothing else


@pytest.mark.parametrize("path", [c for c in CONFIGS if not c.stem.startswith("tiny-cpu")], ids=lambda c: c.stem)
def test_titles_and_released_data_build_lines(path):
    header = path.read_text().split("\nmodel:")[0]
    title = header.splitlines()[0]
    table = {"gsm8k-cot": "Table 7", "gsm8k": "Table 2", "hotpotqa": "Table 5", "strategyqa": "Table 6"}
    key = next(k for k in table if path.stem.startswith(k))
    assert table[key] in title or "(paper Figure 6)" in title or "offload" in path.stem \
        or path.stem.endswith(("-dpo", "-kto")) and "baseline" in title, title
    build = next(line for line in header.splitlines() if "nat build" in line)
    if key != "gsm8k-cot":  # the reference released no chain-of-thought data
        assert "--format nat" in build and "--neg-sampling reference" in build and "--prompt-style reference" in build


@pytest.mark.parametrize("path", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_and_header_commands_are_valid(path):
    cli = _ParseOnly(NATModule, NATDataModule, args=["--config", str(path)], run=False,
                     trainer_defaults=TRAINER_DEFAULTS)
    cfg = cli.config
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    assert cfg.trainer.accumulate_grad_batches * cfg.data.micro_batch_size * devices == cfg.data.global_batch_size
    assert cfg.data.tokenizer == cfg.model.model_name_or_path
    header = path.read_text().split("\nmodel:")[0]
    assert f"nat fit --config launch/configs/{path.name}" in header
    strategy = cfg.trainer.strategy
    if not isinstance(strategy, str):
        ds = LAUNCH.parent / strategy.init_args.config
        assert json.loads(ds.read_text())["zero_optimization"]["stage"] == 3
        lr = 5e-5 if cfg.model.objective == "sft" else 5e-7
        assert cfg.model.learning_rate == lr and cfg.data.global_batch_size == 64 and cfg.trainer.max_epochs == 2
    if cfg.model.objective != "sft":
        # Trained on a build of its own variant, starting from the exported w/o-Neg model of the same setting.
        assert cfg.data.objective == cfg.model.objective and f"--variant {cfg.model.objective}" in header
        start = cfg.model.model_name_or_path
        if not path.stem.startswith("tiny-cpu"):
            sft = re.search(r"nat fit --config launch/configs/(\S+-wo-neg)\.yaml", header).group(1)
            assert start == f"runs/{sft}/nat/version_0/hf" and (LAUNCH / "configs" / f"{sft}.yaml").exists()
    # The `nat build` line in the header takes only flags that `nat build` knows.
    build_line = next(line for line in header.splitlines() if "nat build" in line)
    argv = shlex.split(re.sub(r"^.*?nat build", "", build_line))
    args = from_namespace(BuildConfig, command_parser("build").parse_args(argv))
    assert args.out and args.task


def test_launch_scripts_name_nat_fit():
    for script in ("slurm.sh", "torchrun.sh"):
        text = (LAUNCH / script).read_text()
        assert "fit --config" in text and text.startswith("#!/usr/bin/env bash")


def test_deepspeed_configs_build_a_strategy():
    from lightning.pytorch.strategies import DeepSpeedStrategy

    for name in ("zero3.json", "zero3_offload.json"):
        strategy = DeepSpeedStrategy(config=str(LAUNCH / "deepspeed" / name))
        assert strategy.config["zero_optimization"]["stage"] == 3
    offload = json.loads((LAUNCH / "deepspeed" / "zero3_offload.json").read_text())["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == offload["offload_param"]["device"] == "cpu"
