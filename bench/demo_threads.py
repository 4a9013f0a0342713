"""Seconds per pretraining step of the demo's base with 1 and with 2 torch threads, arms alternated.

    python bench/demo_threads.py --steps 30 --rounds 3

Each arm runs ``--steps`` optimizer steps of the default base (Llama 4 x 128, 16 x 256-token blocks of its
pretraining text) in a fresh process with the thread count fixed; rounds alternate 1, 2, 1, 2, ... and the
median of the per-round ratios (1-thread time / 2-thread time) is reported with its range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ARM = r"""
import sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
from lightning_nat.demo.base import BaseSpec, pretraining_texts
from lightning_nat.train.scratch import train_tokenizer
threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
spec = BaseSpec()
texts = pretraining_texts(2000, spec.seed)
tok = train_tokenizer(texts, spec.vocab_size, split_digits=True)
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.hidden_size * 4,
                  num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.heads)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).train()
stream = [i for t in texts for i in tok(t, add_special_tokens=False)["input_ids"]]
blocks = torch.tensor(stream[: len(stream) // spec.block * spec.block]).view(-1, spec.block)
opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate)
gen = torch.Generator().manual_seed(0)

def step():
    batch = blocks[torch.randint(len(blocks), (spec.batch_size,), generator=gen)]
    model(input_ids=batch, labels=batch).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

step()  # warm-up
start = time.perf_counter()
for _ in range(steps):
    step()
print((time.perf_counter() - start) / steps)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("alternate the arms at least 3 times")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    rounds = []
    for r in range(args.rounds):
        secs = {}
        for threads in (1, 2):
            out = subprocess.run([sys.executable, "-c", ARM, str(threads), str(args.steps)], env=env,
                                 capture_output=True, text=True, check=True)
            secs[threads] = float(out.stdout.strip().splitlines()[-1])
        rounds.append(secs)
        print(json.dumps({"round": r, "s_per_step_1_thread": round(secs[1], 4),
                          "s_per_step_2_threads": round(secs[2], 4)}), file=sys.stderr)
    ratios = [s[1] / s[2] for s in rounds]
    print(json.dumps({"load_average": os.getloadavg(), "steps": args.steps,
                      "s_per_step_1_thread": [round(s[1], 4) for s in rounds],
                      "s_per_step_2_threads": [round(s[2], 4) for s in rounds],
                      "speedup_2_over_1": {"median": round(statistics.median(ratios), 2),
                                           "min": round(min(ratios), 2), "max": round(max(ratios), 2)}}, indent=1))


if __name__ == "__main__":
    main()
