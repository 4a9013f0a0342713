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
    for variant in ("nat", "nat2"):
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


if __name__ == "__main__":
    main()
