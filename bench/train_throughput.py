"""Training throughput of `nat fit` against a plain Hugging Face Trainer baseline, side by side.

The baseline mirrors the reference implementation: pad to the longest conversation of
each micro-batch, random order, micro-batch 2, accumulation 8. Ours: the same model,
rows, micro-batch and accumulation through NATModule/NATDataModule with length-grouped
step batches. Both count non-pad tokens per second over the same number of optimizer
steps, after one warm-up step each.

    python bench/train_throughput.py --steps 6          # CPU, scratch model
    python bench/train_throughput.py --model DIR --device cuda --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # shared_data: where the data is


def build_rows(tmp: Path, n_pos: int, n_neg: int):
    from shared_data import require_shared_data  # tests/shared_data.py

    from lightning_nat.builders import build_dataset, save_build

    d = require_shared_data() / "strategyqa"
    res = build_dataset([str(d / "trajectories_positive.json"), str(d / "trajectories_negative.json")], "nat",
                        cache_dir=str(tmp / "cache"), questions=str(d / "train.jsonl"), task="strategyqa",
                        on_error="skip", pos_num=n_pos, neg_num=n_neg)
    return save_build(res, tmp / "data")


def run_ours(model_dir: str, data_dir: Path, steps: int, micro: int, acc: int, accelerator: str, precision: str) -> dict:
    from lightning.pytorch.callbacks import Callback

    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.trainer import make_trainer

    class Meter(Callback):
        tokens = 0
        padded = 0
        t0 = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1 and self.t0 is None:  # one warm-up step excluded
                self.t0 = time.perf_counter()
            if self.t0 is not None:
                self.tokens += int(batch["attention_mask"].sum())
                self.padded += batch["attention_mask"].numel()

        def on_train_end(self, trainer, pl_module):
            self.t1 = time.perf_counter()

    meter = Meter()
    dm = NATDataModule(dataset_dir=str(data_dir), tokenizer=model_dir, micro_batch_size=micro,
                       global_batch_size=micro * acc, max_length=4096)
    module = NATModule(model_dir, learning_rate=5e-5)
    trainer = make_trainer(dm, accelerator=accelerator, devices=1, precision=precision, max_steps=steps + 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[meter], num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, dm)
    secs = meter.t1 - meter.t0
    return {"tokens_per_s": meter.tokens / secs, "pad_fraction": 1 - meter.tokens / meter.padded, "seconds": secs}


def run_baseline(model_dir: str, data_dir: Path, steps: int, micro: int, acc: int, device: str, bf16: bool) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

    from lightning_nat.train.datamodule import collate
    from lightning_nat.train.tokenization import ensure_chat_template, tokenize_batch

    tok = ensure_chat_template(AutoTokenizer.from_pretrained(model_dir))
    rows = datasets.load_from_disk(str(data_dir))["train"]
    rows = rows.map(tokenize_batch, batched=True, fn_kwargs={"tokenizer": tok, "max_length": 4096},
                    remove_columns=rows.column_names)
    rows = rows.select_columns(["input_ids", "labels"])
    counts = {"tokens": 0, "padded": 0, "on": False}

    def pad_to_longest(items):
        batch = collate([{**it, "step_targets": 0, "weight": 1.0} for it in items], tok.pad_token_id)
        if counts["on"]:
            counts["tokens"] += int(batch["attention_mask"].sum())
            counts["padded"] += batch["attention_mask"].numel()
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                counts["on"], counts["t0"] = True, time.perf_counter()

        def on_train_end(self, args, state, control, **kw):
            counts["t1"] = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=micro, gradient_accumulation_steps=acc,
                                 max_steps=steps + 1, learning_rate=5e-5, lr_scheduler_type="cosine", warmup_steps=1,
                                 report_to=[], save_strategy="no", logging_strategy="no", bf16=bf16,
                                 use_cpu=device == "cpu", dataloader_num_workers=0, remove_unused_columns=False,
                                 seed=42)
        Trainer(model=model, args=args, train_dataset=rows, data_collator=pad_to_longest, callbacks=[Clock()]).train()
    secs = counts["t1"] - counts["t0"]
    return {"tokens_per_s": counts["tokens"] / secs, "pad_fraction": 1 - counts["tokens"] / counts["padded"],
            "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a scratch Llama made here)")
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per side (after one warm-up step)")
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--acc", type=int, default=8)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--hidden", type=int, default=256, help="scratch model width")
    ap.add_argument("--layers", type=int, default=4, help="scratch model depth")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = build_rows(tmp, 600, 300)
        model = args.model
        if model is None:
            from lightning_nat.train.scratch import conversation_texts, make_scratch_model

            model = str(make_scratch_model(tmp / "model", conversation_texts(data), vocab_size=2048,
                                           hidden_size=args.hidden, num_layers=args.layers, num_heads=4))
        bf16 = args.device == "cuda"
        base = run_baseline(model, data, args.steps, args.micro, args.acc, args.device, bf16)
        ours = run_ours(model, data, args.steps, args.micro, args.acc, "gpu" if args.device == "cuda" else "cpu",
                        "bf16-mixed" if bf16 else "32-true")
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "steps": args.steps, "micro_batch": args.micro, "accumulation": args.acc,
              "baseline_hf_trainer": base, "nat_fit": ours, "speedup": ours["tokens_per_s"] / base["tokens_per_s"]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
