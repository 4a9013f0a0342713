"""Decode and prefill attention at the engine's shapes: the head copied into every row vs kept once.

The shapes of the bench's engine arm (scratch Llama: 4 heads of 64, pool 64, a shared head of
~300 positions, each row's own ~150 columns after it). Arms, alternated per round:

- ``sdpa_view_bool``: today's path before shared-head attention: SDPA over each row's full
  cache (head copied in), keys/values non-contiguous views of the decode slab, boolean mask;
- ``sdpa_contig_bool``: the same with contiguous keys/values;
- ``sdpa_view_float``: the same views with an additive float mask;
- ``matmul_full``: matmul, softmax, matmul over the full per-row cache;
- ``shared_matmul``: :func:`lightning_nat.agent.shared_head.attend_with_head` (head once, matmul parts);
- ``shared_fused``: :func:`lightning_nat.agent.shared_head.attend_with_head_fused` (head once, fused kernel parts).

Prints the median time per call of each arm and the median (range) of its per-round ratio to
``sdpa_view_bool``.

    python bench/attention_micro.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _arms(q, fk, fv, ck, cv, full_mask, float_mask, ok, ov, hk, hv, own_mask) -> dict:
    """The arms as callables on one case's tensors."""
    import torch

    from lightning_nat.agent.shared_head import attend_with_head, attend_with_head_fused

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def matmul_full() -> object:
        w = torch.softmax((q @ fk.transpose(-1, -2)) * q.shape[-1] ** -0.5 + float_mask, -1)
        return w @ fv

    return {"sdpa_view_bool": lambda: sdpa(q, fk, fv, attn_mask=full_mask),
            "sdpa_contig_bool": lambda: sdpa(q, ck, cv, attn_mask=full_mask),
            "sdpa_view_float": lambda: sdpa(q, fk, fv, attn_mask=float_mask),
            "matmul_full": matmul_full,
            "shared_matmul": lambda: attend_with_head(q, ok, ov, hk, hv, own_mask),
            "shared_fused": lambda: attend_with_head_fused(q, ok, ov, hk, hv, own_mask)}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--head-len", type=int, default=300)
    ap.add_argument("--own", type=int, default=150, help="each row's columns after the head")
    ap.add_argument("--prefill", type=int, default=120, help="new tokens per row in the prefill case")
    ap.add_argument("--calls", type=int, default=20, help="calls per arm per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error("alternate the arms at least 3 times")
    g = torch.Generator().manual_seed(0)
    b, n, d, h, s = args.batch, args.heads, args.dim, args.head_len, args.own
    hk, hv = torch.randn(1, n, h, d, generator=g), torch.randn(1, n, h, d, generator=g)
    result: dict = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                    "torch_threads": torch.get_num_threads()}
    for case, q_len in (("decode", 1), ("prefill", args.prefill)):
        own = s if case == "decode" else q_len
        ok, ov = torch.randn(b, n, own, d, generator=g), torch.randn(b, n, own, d, generator=g)
        # Left padding: row i's first i % 17 own columns are padding.
        own_mask = torch.ones(b, 1, q_len, own, dtype=torch.bool)
        for i in range(b):
            own_mask[i, ..., :i % 17] = False
        if q_len > 1:
            own_mask &= torch.ones(q_len, own, dtype=torch.bool).tril(own - q_len)
        q = torch.randn(b, n, q_len, d, generator=g)
        # The per-row cache as the decode slab held it: head copied in, a buffer wider than used.
        slab_k = torch.zeros(b, n, h + own + 48, d)
        slab_v = torch.zeros_like(slab_k)
        slab_k[:, :, :h], slab_k[:, :, h:h + own] = hk, ok
        slab_v[:, :, :h], slab_v[:, :, h:h + own] = hv, ov
        fk, fv = slab_k[:, :, :h + own], slab_v[:, :, :h + own]
        ck, cv = fk.contiguous(), fv.contiguous()
        full_mask = torch.cat([torch.ones(b, 1, q_len, h, dtype=torch.bool), own_mask], -1)
        float_mask = torch.zeros(full_mask.shape).masked_fill(~full_mask, float("-inf"))

        arms = _arms(q, fk, fv, ck, cv, full_mask, float_mask, ok, ov, hk, hv, own_mask)
        want = arms["sdpa_view_bool"]()
        # Padding queries (fully masked own part) differ by design in what they attend; compare real ones.
        real = own_mask.any(-1)[:, 0]
        errors = {name: float((fn() - want).abs().amax(-1)[real.unsqueeze(1).expand(-1, n, -1)].max())
                  for name, fn in arms.items()}
        times: dict[str, list[float]] = {name: [] for name in arms}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, fn in arms.items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        fn()
                    times[name].append((time.perf_counter() - start) / args.calls)
        base = times["sdpa_view_bool"]
        result[case] = {name: {"ms_per_call": round(1000 * statistics.median(t), 3),
                               "speedup_vs_sdpa_view_bool": {
                                   "median": round(statistics.median(x / y for x, y in zip(base, t)), 2),
                                   "min": round(min(x / y for x, y in zip(base, t)), 2),
                                   "max": round(max(x / y for x, y in zip(base, t)), 2)},
                               "max_abs_error": errors[name]}
                        for name, t in times.items()}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
