"""Lay a `nat demo` results folder out as the BENCHMARKS.md tables: per seed, paired differences, errors, perplexity.

    python bench/demo_tables.py runs/demo-report
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

NAMES = {"positive": "w/o Neg", "nut": "NUT", "nat": "NAT", "dpo": "DPO", "kto": "KTO"}


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(out: Path) -> None:
    r = json.loads((out / "results.json").read_text())
    table = r["table"]
    seeds = [p["seed"] for p in r["per_seed"]]
    print(row(["strategy", "pos", "neg", *(f"seed {s}" for s in seeds), "mean ± sd (%)", "95 % interval (%)",
               "finished", "dev ppl (last)", "cut turns"]))
    print(row(["---"] + ["---:"] * (len(seeds) + 7)))
    for s, v in table.items():
        lo, hi = v["accuracy_ci95"]
        print(row([NAMES.get(s, s), v["positives"], v["negatives"], *(f"{100 * a:.0f}" for a in v["per_seed"]),
                   f"{100 * v['accuracy']:.1f} ± {100 * v['accuracy_sd']:.1f}", f"[{100 * lo:.1f}, {100 * hi:.1f}]",
                   f"{100 * v['finished']:.0f} %", f"{v['dev_perplexity']:.3f}", v["cut_turns"]]))
    print()
    for a, b in (("nat", "nut"), ("nut", "positive"), ("nat", "positive")):
        if a in table and b in table:
            d = [100 * (x - y) for x, y in zip(table[a]["per_seed"], table[b]["per_seed"])]
            print(f"- {NAMES[a]} - {NAMES[b]} per seed: {', '.join(f'{x:+.0f}' for x in d)} points "
                  f"(mean {statistics.fmean(d):+.1f}, range {min(d):+.0f} to {max(d):+.0f})")
    print()
    types = list(r["teacher_error_mix"])
    print(row(["", *types]))
    print(row(["---"] + ["---:"] * len(types)))
    print(row(["training negatives (share of negatives)", *(f"{100 * r['teacher_error_mix'][t]:.1f}" for t in types)]))
    for s, v in table.items():
        print(row([f"{NAMES.get(s, s)} (share of test episodes)", *(f"{100 * v['errors'][t]:.1f}" for t in types)]))
    print()
    curves = {}
    for s in table:  # dev perplexity by step, mean over seeds
        per = []
        for seed in seeds:
            lines = (out / f"seed{seed}" / "runs" / s / "perplexity.jsonl").read_text().splitlines()
            per.append({x["step"]: x["perplexity"] for x in map(json.loads, lines)})
        steps = sorted(set.intersection(*(set(p) for p in per)))
        curves[s] = {st: statistics.fmean(p[st] for p in per) for st in steps}
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    print(row(["step", *(NAMES.get(s, s) for s in curves)]))
    print(row(["---:"] * (len(curves) + 1)))
    for st in steps:
        print(row([st, *(f"{curves[s][st]:.3f}" for s in curves)]))
    print()
    print(json.dumps(json.loads((out / "timings.json").read_text())))
    print("max_new_tokens", [p["max_new_tokens"] for p in r["per_seed"]],
          "longest", [p["longest_teacher_turn"] for p in r["per_seed"]])
    print("collected", [p["collected"] for p in r["per_seed"]])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
