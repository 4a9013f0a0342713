"""Step throughput of DPO and KTO against NAT's SFT step, on the same trajectories, arms alternated.

All three arms train the same scratch Llama with `NATModule`/`NATDataModule` (what `nat fit`
runs) on builds of the same StrategyQA selection (`--pos-num` positives, `--neg-num` negatives): `nat`, `dpo`
(its pairs; each row is a chosen and a rejected trajectory) and `kto` (the `nat` conversations, each
with its mismatched pair). Every arm takes the same number of rows per optimizer
step; a DPO row is two sequences with gradients, a KTO row one with gradients plus one forward pass
without. The arms run in turn (NAT, DPO, KTO, NAT, DPO, KTO, ...) so that machine noise hits each alike;
the ratios are per round, and the median and range over rounds are reported. The reference pass of
DPO/KTO (one forward pass per sequence, before training) is timed apart.

    python bench/preference_throughput.py --rounds 3 --steps 4 --pos-num 300 --neg-num 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # shared_data: where the data is


def build(tmp: Path, variant: str, pos_num: int, neg_num: int) -> Path:
    from shared_data import require_shared_data  # tests/shared_data.py

    from lightning_nat.builders import build_dataset, save_build

    d = require_shared_data() / "strategyqa"
    res = build_dataset([str(d / "trajectories_positive.json"), str(d / "trajectories_negative.json")], variant,
                        cache_dir=str(tmp / "cache"), questions=str(d / "train.jsonl"), task="strategyqa",
                        on_error="skip", pos_num=pos_num, neg_num=neg_num, seed=42)
    return save_build(res, tmp / variant)


def run(model_dir: str, data_dir: Path, objective: str, steps: int, micro: int, acc: int, max_length: int) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.trainer import make_trainer

    class Meter(Callback):
        def __init__(self):
            self.t0 = self.t1 = self.fit_start = self.train_start = None
            self.tokens = 0

        def on_fit_start(self, trainer, pl_module):
            self.fit_start = time.perf_counter()

        def on_train_start(self, trainer, pl_module):
            self.train_start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 1 and self.t0 is None:  # one warm-up step excluded
                self.t0 = time.perf_counter()
            if self.t0 is not None:
                self.tokens += int(batch["attention_mask"].sum())
                if "kl_attention_mask" in batch:
                    self.tokens += int(batch["kl_attention_mask"].sum())

        def on_train_end(self, trainer, pl_module):
            self.t1 = time.perf_counter()

    L.seed_everything(0, verbose=False)
    meter = Meter()
    dm = NATDataModule(dataset_dir=str(data_dir), tokenizer=model_dir, micro_batch_size=micro,
                       global_batch_size=micro * acc, max_length=max_length, objective=objective)
    module = NATModule(model_dir, learning_rate=1e-4, objective=objective)
    trainer = make_trainer(dm, accelerator="cpu", devices=1, max_steps=steps + 1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[meter],
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, dm)
    secs = meter.t1 - meter.t0
    sequences = len(dm.train_rows) * (2 if objective != "sft" else 0)
    return {"steps_per_s": steps / secs, "tokens_per_s": meter.tokens / secs, "rows": len(dm.train_rows),
            "reference_pass_s": round(meter.train_start - meter.fit_start, 2) if objective != "sft" else 0.0,
            "reference_sequences": sequences}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the three arms")
    ap.add_argument("--steps", type=int, default=4, help="timed optimizer steps per arm and round (after one warm-up)")
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--acc", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--pos-num", type=int, default=1000, help="positives selected (StrategyQA)")
    ap.add_argument("--neg-num", type=int, default=500, help="negatives selected")
    ap.add_argument("--hidden", type=int, default=128, help="scratch model width")
    ap.add_argument("--layers", type=int, default=2, help="scratch model depth")
    args = ap.parse_args()
    torch.manual_seed(0)
    arms = {"nat": "sft", "dpo": "dpo", "kto": "kto"}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = {variant: build(tmp, variant, args.pos_num, args.neg_num) for variant in arms}
        from lightning_nat.train.scratch import conversation_texts, make_scratch_model

        model = str(make_scratch_model(tmp / "model", conversation_texts(data["nat"]), vocab_size=1024,
                                       hidden_size=args.hidden, num_layers=args.layers, num_heads=4))
        rounds = []
        for r in range(args.rounds):
            rounds.append({v: run(model, data[v], obj, args.steps, args.micro, args.acc, args.max_length)
                           for v, obj in arms.items()})
            print(f"round {r}: " + ", ".join(f"{v} {rounds[-1][v]['steps_per_s']:.3f} steps/s" for v in arms),
                  file=sys.stderr)

    def ratio(arm: str, key: str) -> dict:
        xs = [rd[arm][key] / rd["nat"][key] for rd in rounds]
        return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}

    result = {"pos_num": args.pos_num, "neg_num": args.neg_num, "rounds": args.rounds, "steps": args.steps,
              "rows_per_step": args.micro * args.acc,
              "micro_batch": args.micro, "max_length": args.max_length, "per_round": rounds,
              "step_time_ratio_vs_nat": {a: {"steps_per_s": ratio(a, "steps_per_s"),
                                             "tokens_per_s": ratio(a, "tokens_per_s")} for a in ("dpo", "kto")},
              "reference_pass_s": {a: [rd[a]["reference_pass_s"] for rd in rounds] for a in ("dpo", "kto")},
              "reference_sequences": {a: rounds[0][a]["reference_sequences"] for a in ("dpo", "kto")}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
