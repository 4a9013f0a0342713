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
import sys, tempfile, time
from lightning_nat.demo.base import BaseSpec, make_base
threads, steps = int(sys.argv[1]), int(sys.argv[2])
marks = {}
# The demo's own pretraining (make_base), timed from the end of step 1 (warm-up) to the end of the last step.
with tempfile.TemporaryDirectory() as tmp:
    make_base(BaseSpec(texts=2000, steps=steps + 1, threads=threads), tmp, say=lambda _: None,
              on_step=lambda step, model, tok: marks.setdefault(step, time.perf_counter()))
print((marks[steps + 1] - marks[1]) / steps)
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
