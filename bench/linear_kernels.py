"""Time of one linear layer on CPU: torch's stock kernel (``F.linear``: MKL in the official wheels) against
oneDNN's with the weight packed once (what :mod:`lightning_nat.agent.cpu_linear` uses while the engine decodes).

Shapes are the engine's on the scratch Llama (hidden 256, MLP 1,024): rows 1 (one question at a time),
16 and 64 (decode steps of a pool), 500 and 4,000 (prefills). Arms alternate per round (stock, packed,
stock, packed, ...); reported per shape: the median time of each arm and the median of the per-round
ratios stock / packed with its range, and the largest difference between the two outputs.

    python bench/linear_kernels.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    import torch
    import torch.nn.functional as F

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="alternations of the two arms")
    ap.add_argument("--calls", type=int, default=50, help="calls timed per arm per round")
    ap.add_argument("--rows", default="1,16,64,500,4000")
    ap.add_argument("--shapes", default="256x256,256x1024,1024x256", help="in_features x out_features")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error(f"--rounds {args.rounds}: alternate the arms at least 3 times")
    gen = torch.Generator().manual_seed(0)
    load = [round(x, 2) for x in os.getloadavg()]
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for shape in args.shapes.split(","):
            fan_in, fan_out = (int(x) for x in shape.split("x"))
            x = torch.randn(rows, fan_in, generator=gen)
            w = torch.randn(fan_out, fan_in, generator=gen) * fan_in ** -0.5
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            arms = {"stock": lambda: F.linear(x, w),
                    "packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")}
            for f in arms.values():  # warm both
                f()
            times: dict[str, list[float]] = {name: [] for name in arms}
            for _ in range(args.rounds):
                for name, f in arms.items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        f()
                    times[name].append((time.perf_counter() - start) / args.calls * 1e6)
            ratios = [s / p for s, p in zip(times["stock"], times["packed"])]
            diff = (arms["stock"]() - arms["packed"]()).abs().max().item()
            results.append({"rows": rows, "shape": shape, "stock_us": round(statistics.median(times["stock"]), 1),
                            "packed_us": round(statistics.median(times["packed"]), 1),
                            "stock_over_packed": {"median": round(statistics.median(ratios), 2),
                                                  "min": round(min(ratios), 2), "max": round(max(ratios), 2)},
                            "max_abs_difference": diff})
            print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
                      "load_average_at_start": load, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
