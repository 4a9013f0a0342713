"""Writes launch/configs/*.yaml for the paper's settings (run it after changing a setting here).

    python launch/make_configs.py
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = {"7b": "meta-llama/Llama-2-7b-chat-hf", "13b": "meta-llama/Llama-2-13b-chat-hf"}
VARIANT_FLAG = {"wo-neg": "positive", "nut": "nut", "nat": "nat", "nat2": "nat-2"}


def config(name: str, title: str, build: str, size: str, zero: str = "zero3") -> str:
    data_dir = f"runs/data/{name}"
    return f"""# {title}
# 1. data:  {build} --out {data_dir}
# 2. train on 4 GPUs with DeepSpeed ZeRO-3 (one node):
#           nat fit --config launch/configs/{name}.yaml
#    multi-node under SLURM: sbatch --nodes=2 launch/slurm.sh launch/configs/{name}.yaml
#    or torchrun:            launch/torchrun.sh launch/configs/{name}.yaml
model:
  model_name_or_path: {MODELS[size]}
  dtype: bfloat16
  attn_implementation: flash_attention_2
  gradient_checkpointing: true
  learning_rate: 5.0e-05
  weight_decay: 0.0
  warmup_ratio: 0.03
data:
  dataset_dir: {data_dir}
  max_length: 4096
  micro_batch_size: 2
  global_batch_size: 64
  order: length_grouped
trainer:
  accelerator: gpu
  devices: 4
  num_nodes: 1
  strategy:
    class_path: lightning.pytorch.strategies.DeepSpeedStrategy
    init_args:
      config: launch/deepspeed/{zero}.json
  precision: bf16-mixed
  max_epochs: 2
  log_every_n_steps: 5
  default_root_dir: runs/{name}
checkpoint:
  # a resumable checkpoint (weights, optimizer, scheduler, data position) every 50 optimizer steps
  every_n_train_steps: 50
"""


# DPO/KTO start from the w/o-Neg SFT model of the same setting (SFT, then preference optimisation) and train on
# the same trajectories NUT/NAT use. lr 5e-7 and beta 0.1 are the common full-parameter DPO choice (e.g.
# Zephyr), not tuned here; the rest (2 epochs, 64 rows per step, ZeRO-3) is the SFT runs' budget.
PREFERENCE_LR = "5.0e-07"


def preference_config(name: str, title: str, build: str, sft_name: str, objective: str, zero: str = "zero3") -> str:
    """A DPO or KTO run config: the SFT config of the same setting with the objective and its start model."""
    text = config(name, title, build, "7b", zero)
    start = f"runs/{sft_name}/nat/version_0/hf"
    text = text.replace("# 1. data:", f"# 0. first train the w/o-Neg model it starts from: nat fit --config "
                        f"launch/configs/{sft_name}.yaml (exports {start})\n# 1. data:")
    text = text.replace(f"  model_name_or_path: {MODELS['7b']}\n",
                        f"  model_name_or_path: {start}\n  objective: {objective}\n  beta: 0.1\n")
    text = text.replace("  learning_rate: 5.0e-05\n", f"  learning_rate: {PREFERENCE_LR}\n")
    if objective == "dpo":
        # A pair is two sequences: one pair per micro-batch holds what two SFT rows do.
        text = text.replace("  micro_batch_size: 2\n", "  micro_batch_size: 1\n")
    return text


def tiny_preference_config(name: str, objective: str, build: str) -> str:
    """A CPU config for DPO/KTO on the scratch model (what CI-sized runs use)."""
    return f"""# {objective.upper()} on the offline scratch model with real StrategyQA trajectories, on a CPU in minutes.
# On a real model, start from the w/o-Neg SFT export instead (model.model_name_or_path: .../hf).
# Launch (from the repository root, with ../shared beside it; the scratch model as in tiny-cpu.yaml):
#   D=../shared/data/strategyqa
#   {build} --out runs/data/strategyqa-{objective}-tiny
#   nat fit --config launch/configs/{name}.yaml
model:
  model_name_or_path: runs/scratch-model
  objective: {objective}
  beta: 0.1
  dtype: float32
  attn_implementation: sdpa
  learning_rate: 1.0e-4
  warmup_ratio: 0.03
data:
  dataset_dir: runs/data/strategyqa-{objective}-tiny
  max_length: 1024
  micro_batch_size: 4
  global_batch_size: 8
  order: length_grouped
trainer:
  accelerator: cpu
  devices: 1
  precision: 32-true
  max_epochs: 1
  log_every_n_steps: 5
  val_check_interval: 0.5
  default_root_dir: runs/tiny-cpu-{objective}
"""


def main() -> None:
    out = HERE / "configs"
    out.mkdir(exist_ok=True)
    for size in ("7b", "13b"):
        for pos in (2000, 5000):
            for variant in ("wo-neg", "nut", "nat"):
                name = f"gsm8k-{size}-{pos // 1000}k-{variant}"
                build = (f"nat build --format openai --trajectories data/gsm8k_trajectories.jsonl --task gsm8k "
                         f"--variant {VARIANT_FLAG[variant]} --pos-num {pos} --neg-num 10000 --seed 42")
                title = (f"GSM8K, LLaMA-2-{size.upper()}-chat, {pos} positives"
                         f"{'' if variant == 'wo-neg' else ' + 10000 negatives'}, {variant} (paper Table 2)")
                (out / f"{name}.yaml").write_text(config(name, title, build, size))
    for variant in ("wo-neg", "nat", "nat2"):
        name = f"hotpotqa-7b-500-{variant}"
        build = (f"nat build --format openai --trajectories data/hotpotqa_trajectories.jsonl --task hotpotqa "
                 f"--variant {VARIANT_FLAG[variant]} --pos-num 500 --min-score 1e-6 --seed 42")
        title = f"HotpotQA, LLaMA-2-7B-chat, 500 positives + all negatives with F1 > 0, {variant} (paper Tables 3, 5)"
        (out / f"{name}.yaml").write_text(config(name, title, build, "7b"))
    for variant in ("wo-neg", "nut", "nat"):
        name = f"strategyqa-7b-1000-500-{variant}"
        build = ("D=../shared/data/strategyqa; nat build --format nat --trajectories $D/trajectories_positive.json "
                 f"$D/trajectories_negative.json --questions $D/train.jsonl --task strategyqa --variant "
                 f"{VARIANT_FLAG[variant]} --pos-num 1000 --neg-num 500 --seed 42 --on-error skip")
        title = f"StrategyQA, LLaMA-2-7B-chat, 1000 positives + 500 negatives, {variant} (paper Table 3)"
        (out / f"{name}.yaml").write_text(config(name, title, build, "7b"))
    name = "strategyqa-7b-1000-500-nat-offload"
    (out / f"{name}.yaml").write_text(config(
        name, "StrategyQA NAT with ZeRO-3 CPU offload of parameters and optimizer (fewer or smaller GPUs)",
        "D=../shared/data/strategyqa; nat build --format nat --trajectories $D/trajectories_positive.json "
        "$D/trajectories_negative.json --questions $D/train.jsonl --task strategyqa --variant nat --pos-num 1000 "
        "--neg-num 500 --seed 42 --on-error skip", "7b", zero="zero3_offload"))
    write_preference_configs(out)


def write_preference_configs(out: Path) -> None:
    for objective in ("dpo", "kto"):
        pairs = " --pairs-per-question 4" if objective == "dpo" else ""
        for pos in (2000, 5000):
            name = f"gsm8k-7b-{pos // 1000}k-{objective}"
            build = (f"nat build --format openai --trajectories data/gsm8k_trajectories.jsonl --task gsm8k "
                     f"--variant {objective} --pos-num {pos} --neg-num 10000 --seed 42{pairs}")
            title = (f"GSM8K, LLaMA-2-7B-chat, {objective.upper()} baseline on {pos} positives + 10000 negatives, "
                     "from the w/o-Neg model")
            (out / f"{name}.yaml").write_text(preference_config(name, title, build, f"gsm8k-7b-{pos // 1000}k-wo-neg",
                                                                objective))
        name = f"hotpotqa-7b-500-{objective}"
        build = (f"nat build --format openai --trajectories data/hotpotqa_trajectories.jsonl --task hotpotqa "
                 f"--variant {objective} --pos-num 500 --min-score 1e-6 --seed 42{pairs}")
        title = (f"HotpotQA, LLaMA-2-7B-chat, {objective.upper()} baseline on 500 positives + all negatives with "
                 "F1 > 0, from the w/o-Neg model")
        (out / f"{name}.yaml").write_text(preference_config(name, title, build, "hotpotqa-7b-500-wo-neg", objective))
        name = f"strategyqa-7b-1000-500-{objective}"
        build = ("D=../shared/data/strategyqa; nat build --format nat --trajectories $D/trajectories_positive.json "
                 f"$D/trajectories_negative.json --questions $D/train.jsonl --task strategyqa --variant {objective} "
                 f"--pos-num 1000 --neg-num 500 --seed 42 --on-error skip{pairs}")
        title = (f"StrategyQA, LLaMA-2-7B-chat, {objective.upper()} baseline on 1000 positives + 500 negatives, "
                 "from the w/o-Neg model")
        (out / f"{name}.yaml").write_text(preference_config(name, title, build, "strategyqa-7b-1000-500-wo-neg",
                                                            objective))
        tiny_build = ("nat build --format nat --trajectories $D/trajectories_positive.json $D/trajectories_negative.json "
                      f"--questions $D/train.jsonl --task strategyqa --variant {objective} "
                      + ("--pos-num 1000 --neg-num 500 --pairs-per-question 2" if objective == "dpo"
                         else "--pos-num 200 --neg-num 100") + " --dev-num 32 --on-error skip")
        (out / f"tiny-cpu-{objective}.yaml").write_text(tiny_preference_config(f"tiny-cpu-{objective}", objective,
                                                                               tiny_build))


if __name__ == "__main__":
    main()
