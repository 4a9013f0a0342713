"""Training throughput: the reference recipe, TRL's padding-free SFT and `nat fit`, one epoch each, arms alternated.

Every arm trains the same scratch Llama (random init, fp32, sdpa attention) for one epoch over the same
real StrategyQA NAT conversations, tokenized once by ``tokenize_batch`` (the same ids and assistant-only
targets for every arm), with the same global batch. The arms:

  a  the reference recipe: Hugging Face ``Trainer``, random order, pad to the longest of each micro-batch of 2
  b  TRL ``SFTTrainer`` with ``padding_free=True`` (each micro-batch of 2 flattened into one row)
  c  ``nat fit`` as before issue 30: length-grouped micro-batches of 2, logits at every position
  d  ``nat fit`` with the options measured faster (``--d`` below: packing, order, micro-batch, target logits,
     ``torch.compile``)

Each arm runs in its own process (one torch thread), in turn (a, b, c, d, a, b, ...) for ``--rounds``
rounds, so that machine noise hits every arm alike. A worker times its training loop (first step to the
end; model loading and tokenization excluded) and reports its peak resident memory. The summary gives
each arm's median tokens/s and, per arm, the median over rounds of its speed relative to arms a, b and c
in the same round, with the range.

    python bench/train_throughput.py --rounds 3
    python bench/train_throughput.py --rounds 3 --d packing=1,order=random,micro=8,target_logits=1
    python bench/train_throughput.py --profile          # arm d's epoch under torch.profiler
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
D_DEFAULTS = {"packing": 1, "order": "length_grouped", "micro": 2, "target_logits": 1, "compile": 0}


def prepare(tmp: Path, n_pos: int, n_neg: int, rows: int) -> tuple[Path, Path]:
    """The conversations (the first ``rows`` of a NAT build, train split only) and the scratch model."""
    sys.path.insert(1, str(ROOT / "tests"))  # shared_data: where the data is
    import datasets
    from shared_data import require_shared_data

    from lightning_nat.builders import build_dataset, save_build
    from lightning_nat.train.scratch import conversation_texts, make_scratch_model

    d = require_shared_data() / "strategyqa"
    res = build_dataset([str(d / "trajectories_positive.json"), str(d / "trajectories_negative.json")], "nat",
                        cache_dir=str(tmp / "cache"), questions=str(d / "train.jsonl"), task="strategyqa",
                        on_error="skip", pos_num=n_pos, neg_num=n_neg, seed=42)
    res.dataset = datasets.DatasetDict({"train": res.dataset["train"].shuffle(seed=0).select(range(rows))})
    data = save_build(res, tmp / "data")
    model = make_scratch_model(tmp / "model", conversation_texts(data), vocab_size=2048, hidden_size=256,
                               num_layers=4, num_heads=4)
    return data, model


def tokenized(data: str, model: str) -> tuple[object, object]:
    import datasets
    from transformers import AutoTokenizer

    from lightning_nat.train.tokenization import ensure_chat_template, tokenize_batch

    tok = ensure_chat_template(AutoTokenizer.from_pretrained(model))
    rows = datasets.load_from_disk(data)["train"]
    rows = rows.map(tokenize_batch, batched=True, fn_kwargs={"tokenizer": tok, "max_length": 4096},
                    remove_columns=rows.column_names)
    return tok, rows.select_columns(["input_ids", "labels"])


def run_hf(args: argparse.Namespace, trl: bool) -> tuple[float, float]:
    """Arms a and b: the seconds of one epoch in Hugging Face's ``Trainer`` or TRL's ``SFTTrainer``."""
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from lightning_nat.train.datamodule import rows

    tok, data = tokenized(args.data, args.model)
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            marks["t0"] = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            marks["t1"] = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="sdpa")
    common = dict(output_dir=args.out, per_device_train_batch_size=2, gradient_accumulation_steps=args.global_batch // 2,
                  num_train_epochs=1, learning_rate=5e-5, lr_scheduler_type="cosine", warmup_steps=0.03, report_to=[],
                  save_strategy="no", logging_strategy="no", use_cpu=True, dataloader_num_workers=0, seed=42)
    if trl:
        from trl import SFTConfig, SFTTrainer

        data = data.map(lambda r: {"assistant_masks": [int(x != -100) for x in r["labels"]]}, remove_columns="labels")
        # fp32 like every arm (SFTConfig would default to bf16 autocast).
        cfg = SFTConfig(**common, padding_free=True, max_length=None, bf16=False)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, callbacks=[Clock()])
    else:
        def pad_to_longest(items):
            batch = rows([(it["input_ids"], it["labels"]) for it in items], tok.pad_token_id)
            marks["real"] = marks.get("real", 0) + int(batch["attention_mask"].sum())
            marks["padded"] = marks.get("padded", 0) + batch["attention_mask"].numel()
            return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

        trainer = Trainer(model=model, args=TrainingArguments(**common, remove_unused_columns=False),
                          train_dataset=data, data_collator=pad_to_longest, callbacks=[Clock()])
    trainer.train()
    return marks["t1"] - marks["t0"], 1 - marks["real"] / marks["padded"] if "padded" in marks else 0.0


def run_nat(args: argparse.Namespace, options: dict) -> tuple[float, float]:
    """Arms c and d: the seconds of one epoch of ``NATModule``/``NATDataModule`` under ``make_trainer``."""
    import lightning as L

    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.trainer import make_trainer

    marks: dict[str, float] = {}

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            marks["t0"] = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            marks["t1"] = time.perf_counter()

    dm = NATDataModule(dataset_dir=args.data, tokenizer=args.model, micro_batch_size=int(options["micro"]),
                       global_batch_size=args.global_batch, max_length=4096, order=options["order"],
                       packing=bool(int(options["packing"])), cache_dir=str(Path(args.out) / "cache"))
    module = NATModule(args.model, learning_rate=5e-5, target_logits=bool(int(options["target_logits"])),
                       compile=bool(int(options["compile"])))
    trainer = make_trainer(dm, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                           enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                           callbacks=[Clock()], default_root_dir=args.out)
    if not args.profile:
        trainer.fit(module, dm)
        return marks["t1"] - marks["t0"], dm.stats["pad_fraction"]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.fit(module, dm)
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops)
    groups = {"matmul (mm, addmm, bmm)": ("aten::mm", "aten::addmm", "aten::bmm"),
              "attention (sdpa kernels)": ("aten::_scaled_dot_product", "aten::_scaled_dot_product_flash_attention"),
              "cross-entropy": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss"),
              "optimizer (AdamW foreach)": ("aten::_foreach",)}
    shares = {g: sum(e.self_cpu_time_total for e in ops if e.key.startswith(keys)) / total for g, keys in groups.items()}
    shares["everything else (elementwise ops, copies, Python)"] = 1 - sum(shares.values())
    print(json.dumps({"profile_of": options, "self_cpu_share": {k: round(v, 3) for k, v in shares.items()}}))
    print(ops.table(sort_by="self_cpu_time_total", row_limit=15))
    return marks["t1"] - marks["t0"], dm.stats["pad_fraction"]


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.arm in ("a", "b"):
        secs, pad = run_hf(args, trl=args.arm == "b")
    else:
        c = {"packing": 0, "order": "length_grouped", "micro": 2, "target_logits": 0, "compile": 0}
        secs, pad = run_nat(args, c if args.arm == "c" else args.d_options)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"arm": args.arm, "seconds": secs, "pad_fraction": round(pad, 4), "peak_rss_mib": round(peak)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--arms", default="abcd")
    ap.add_argument("--rows", type=int, default=64, help="conversations in the epoch")
    ap.add_argument("--global-batch", type=int, default=16, help="conversations per optimizer step (micro-batch 2)")
    ap.add_argument("--d", default="", help="arm d's options, key=value,... (" +
                    ", ".join(f"{k}={v}" for k, v in D_DEFAULTS.items()) + ")")
    ap.add_argument("--profile", action="store_true", help="one epoch of arm d under torch.profiler: where the time goes")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.d_options = {**D_DEFAULTS, **dict(kv.split("=", 1) for kv in args.d.split(",") if kv)}
    sys.path.insert(0, str(ROOT))
    if args.worker:
        return worker(args)
    results: dict[str, list[dict]] = {arm: [] for arm in args.arms}
    with tempfile.TemporaryDirectory() as t:
        data, model = prepare(Path(t), 600, 300, args.rows)
        if args.profile:
            import torch

            torch.set_num_threads(1)
            args.data, args.model, args.out = str(data), str(model), t
            return print(json.dumps({"seconds": run_nat(args, args.d_options)[0]}))
        tokens = sum(len(x) for x in tokenized(str(data), str(model))[1]["input_ids"])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        for r in range(args.rounds):
            for arm in args.arms:
                cmd = [sys.executable, __file__, "--worker", "--arm", arm, "--data", str(data), "--model", str(model),
                       "--out", str(Path(t) / f"{arm}{r}"), "--global-batch", str(args.global_batch), "--d", args.d]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode:
                    raise SystemExit(f"arm {arm}: {proc.stderr[-3000:]}")
                results[arm].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps({"round": r, **results[arm][-1]}), flush=True)
    summary = {"rows": args.rows, "tokens": tokens, "global_batch": args.global_batch, "rounds": args.rounds,
               "d_options": args.d_options, "arms": {}}
    for arm, runs in results.items():
        row = {"tokens_per_s": round(statistics.median(tokens / x["seconds"] for x in runs)),
               "pad_fraction": runs[0]["pad_fraction"], "peak_rss_mib": max(x["peak_rss_mib"] for x in runs)}
        for ref in ("a", "b", "c"):
            if ref in results and ref != arm:
                ratios = [results[ref][i]["seconds"] / x["seconds"] for i, x in enumerate(runs)]
                row[f"vs_{ref}"] = [round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3)]
        summary["arms"][arm] = row
    print(json.dumps({k: v for k, v in summary.items() if k != "arms"}))
    for arm, row in summary["arms"].items():
        print(json.dumps({"arm": arm, **row}))


if __name__ == "__main__":
    main()
