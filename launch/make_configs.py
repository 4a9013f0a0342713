"""Writes launch/configs/*.yaml for the paper's settings (run it after changing a setting here).

    python launch/make_configs.py
"""

from pathlib import Path
from typing import Any

from lightning_nat.core.options import to_argv
from lightning_nat.data.build import BuildConfig

HERE = Path(__file__).resolve().parent
MODELS = {"7b": "meta-llama/Llama-2-7b-chat-hf", "13b": "meta-llama/Llama-2-13b-chat-hf"}
VARIANT_FLAG = {"wo-neg": "positive", "nut": "nut", "nat": "nat", "nat2": "nat-2", "dpo": "dpo", "kto": "kto"}


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


# Build options that make a build from the released reference-format files pick what the reference code picked:
# the first N positive records, random.seed(42) over every negative record, no filtering.
LIKE_REFERENCE = dict(pos_sampling="reference", neg_sampling="reference", drop_unfinished=False, dedupe=False,
                      on_error="skip")


def build_line(**fields: Any) -> str:
    """A `nat build` line (less --out) from BuildConfig fields, so only options `nat build` has can be written.

    Paths are left unquoted: they name shell variables ($R, $D) that the line's prefix sets.
    """
    argv = to_argv(BuildConfig(out="DIR", **fields))
    assert argv[-2:] == ["--out", "DIR"], argv
    return "nat build " + " ".join(argv[:-2])
# The released files of Reason-Wang/NAT (git clone https://github.com/Reason-Wang/NAT; they are Git LFS files).
RELEASED = {
    "gsm8k": ("R=NAT/data/dataset/gsm8k; ", "$R/gsm8k_gpt-3.5_positive.json $R/gsm8k_gpt-3.5_negative.json",
              "$R/train.json"),
    "hotpotqa": ("R=NAT/data/dataset/hotpotqa; ",
                 "$R/hotpotqa_gpt-3.5_positive.json $R/hotpotqa_gpt-3.5_negative.json", "$R/train_random_8000.json"),
    # The same files as the reference's data/dataset/strategyqa/strategyqa_gpt-3.5_*.json, in ../shared/data.
    "strategyqa": ("D=../shared/data/strategyqa; ", "$D/trajectories_positive.json $D/trajectories_negative.json",
                   "$D/train.jsonl"),
}
NEGATIVE_NAME = {"wo-neg": "w/o Neg", "nut": "NUT", "nat": "NAT", "nat2": "NAT-2", "dpo": "DPO", "kto": "KTO"}


def released_build(task: str, variant: str, pos: int, neg: int, **extra: Any) -> str:
    """The `nat build` line over the released reference-format files, sampled as the reference code sampled."""
    env, files, questions = RELEASED[task]
    return env + build_line(format="nat", trajectories=tuple(files.split()), questions=questions, task=task,
                            variant=VARIANT_FLAG[variant], pos_num=pos, neg_num=None if variant == "wo-neg" else neg,
                            seed=42, prompt_style="reference", **LIKE_REFERENCE, **extra)


def write(out: Path, name: str, title: str, build: str, size: str, zero: str = "zero3") -> str:
    (out / f"{name}.yaml").write_text(config(name, title, build, size, zero))
    return name


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
    written = []
    # Table 2: GSM8K, 7B/13B, 2k/5k positives, w/o Neg, NUT, NAT with 10k negatives.
    for size in ("7b", "13b"):
        for pos in (2000, 5000):
            for variant in ("wo-neg", "nut", "nat"):
                name = f"gsm8k-{size}-{pos // 1000}k-{variant}"
                title = (f"GSM8K, LLaMA-2-{size.upper()}-chat, {pos} positives"
                         f"{'' if variant == 'wo-neg' else ' + 10000 negatives'}, {NEGATIVE_NAME[variant]} "
                         f"(paper Table 2)")
                written.append(write(out, name, title, released_build("gsm8k", variant, pos, 10000), size))
    # Table 5: HotpotQA, 7B/13B, 500 positives, w/o Neg, NUT, NAT, NAT-2 with 1,500 and 2,000 negatives.
    # Figure 6: 7B NUT and NAT over 500, 1,000, 1,500, 2,000 negatives (0 is the w/o Neg run).
    for size in ("7b", "13b"):
        written.append(write(out, f"hotpotqa-{size}-500-wo-neg",
                             f"HotpotQA, LLaMA-2-{size.upper()}-chat, 500 positives, w/o Neg (paper Table 5; "
                             f"Figure 6 at 0 negatives)", released_build("hotpotqa", "wo-neg", 500, 0), size))
        for variant in ("nut", "nat", "nat2"):
            counts = (500, 1000, 1500, 2000) if size == "7b" and variant != "nat2" else (1500, 2000)
            for neg in counts:
                where = "paper Table 5" if neg in (1500, 2000) else "paper Figure 6"
                if size == "7b" and variant != "nat2" and neg in (1500, 2000):
                    where += ", Figure 6"
                written.append(write(out, f"hotpotqa-{size}-500-{neg}-{variant}",
                                     f"HotpotQA, LLaMA-2-{size.upper()}-chat, 500 positives + {neg} negatives, "
                                     f"{NEGATIVE_NAME[variant]} ({where})",
                                     released_build("hotpotqa", variant, 500, neg), size))
    # Table 6: StrategyQA, 7B/13B, 1,000 positives + 500 negatives.
    for size in ("7b", "13b"):
        for variant in ("wo-neg", "nut", "nat"):
            name = f"strategyqa-{size}-1000-500-{variant}"
            title = (f"StrategyQA, LLaMA-2-{size.upper()}-chat, 1000 positives"
                     f"{'' if variant == 'wo-neg' else ' + 500 negatives'}, {NEGATIVE_NAME[variant]} (paper Table 6)")
            written.append(write(out, name, title, released_build("strategyqa", variant, 1000, 500), size))
    written.append(write(out, "strategyqa-7b-1000-500-nat-offload",
                         "StrategyQA NAT with ZeRO-3 CPU offload of parameters and optimizer (fewer or smaller GPUs)",
                         released_build("strategyqa", "nat", 1000, 500), "7b", zero="zero3_offload"))
    # Table 7: chain-of-thought fine-tuning on GSM8K (no tools). The reference released no CoT trajectories: collect
    # labelled CoT solutions as OpenAI-messages JSONL (the answer on the last line: "A: 18", "#### 18", ...).
    for variant in ("wo-neg", "nut", "nat"):
        build = build_line(format="openai", trajectories=("data/gsm8k_cot.jsonl",), task="gsm8k", mode="cot",
                           prompt_style="reference", variant=VARIANT_FLAG[variant], pos_num=2000,
                           neg_num=None if variant == "wo-neg" else 10000, seed=42)
        written.append(write(out, f"gsm8k-cot-7b-2k-{variant}",
                             f"GSM8K chain-of-thought (no tools), LLaMA-2-7B-chat, 2000 positives"
                             f"{'' if variant == 'wo-neg' else ' + 10000 negatives'}, {NEGATIVE_NAME[variant]} "
                             f"(paper Table 7)", build, "7b"))
    written += write_preference_configs(out)
    # Configs from earlier layouts that this script no longer writes would silently go stale: remove them.
    keep = set(written) | {"tiny-cpu"}
    for old in out.glob("*.yaml"):
        if old.stem not in keep:
            old.unlink()


def write_preference_configs(out: Path) -> list[str]:
    """DPO and KTO baselines on the same trajectories as each setting's NUT/NAT, from its w/o-Neg model."""
    written = []
    for objective in ("dpo", "kto"):
        pairs = {"pairs_per_question": 4} if objective == "dpo" else {}
        settings = [(f"gsm8k-7b-{pos // 1000}k", "gsm8k", pos, 10000, f"gsm8k-7b-{pos // 1000}k-wo-neg")
                    for pos in (2000, 5000)]
        settings += [("hotpotqa-7b-500-2000", "hotpotqa", 500, 2000, "hotpotqa-7b-500-wo-neg"),
                     ("strategyqa-7b-1000-500", "strategyqa", 1000, 500, "strategyqa-7b-1000-500-wo-neg")]
        for prefix, task, pos, neg, sft in settings:
            name = f"{prefix}-{objective}"
            title = (f"{task}, LLaMA-2-7B-chat, {NEGATIVE_NAME[objective]} baseline on {pos} positives + {neg} "
                     "negatives, from the w/o-Neg model")
            build = released_build(task, objective, pos, neg, **pairs)
            (out / f"{name}.yaml").write_text(preference_config(name, title, build, sft, objective))
            written.append(name)
        sizes: dict[str, Any] = dict(pos_num=1000, neg_num=500, pairs_per_question=2) if objective == "dpo" \
            else dict(pos_num=200, neg_num=100)
        tiny_build = build_line(format="nat", trajectories=("$D/trajectories_positive.json",
                                                            "$D/trajectories_negative.json"),
                                questions="$D/train.jsonl", task="strategyqa", variant=objective, dev_num=32,
                                on_error="skip", **sizes)
        (out / f"tiny-cpu-{objective}.yaml").write_text(tiny_preference_config(f"tiny-cpu-{objective}", objective,
                                                                               tiny_build))
        written.append(f"tiny-cpu-{objective}")
    return written


if __name__ == "__main__":
    main()
