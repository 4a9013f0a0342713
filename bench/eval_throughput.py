"""Episodes per second of the episode scheduler's pool against one question at a time and fixed batches.

The arms, same model, same GSM8K test questions, same turn and token limits, alternated in one
run (A, B, C, A, B, C, ...) so that a noisy machine hits every arm alike. Every arm runs its
episodes through :func:`lightning_nat.agent.react.run_pool` with the local policy
(:class:`lightning_nat.agent.policies.HFPolicy`: one left-padded ``model.generate`` call per step):

- ``one_at_a_time``: a pool of one (how the reference code evaluates);
- ``batched``: fixed batches of ``--batch-size``, each run to its end before the next starts (a
  finished episode's place stays empty);
- ``pool``: the pool of ``--pool-size`` kept full (a finished episode's place goes to the next question).

Reported: episodes/s and generated tokens/s per arm (median over rounds), the median of the
per-round ratios pool / one_at_a_time and pool / batched with their range, and whether greedy
episodes were identical across arms.

    python bench/eval_throughput.py --questions 32 --pool-size 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # shared_data: where the data is


def run_arm(name: str, agent, records: list[dict], args: argparse.Namespace) -> dict:
    """One arm's episodes, timed; the policy's usage gives the tokens generated."""
    before = agent.policy.usage["completion_tokens"]
    start = time.perf_counter()
    if name == "batched":
        trajs = []
        for s in range(0, len(records), args.batch_size):
            trajs += agent.run(records[s:s + args.batch_size], batch_size=args.batch_size)
    else:
        trajs = agent.run(records, batch_size=1 if name == "one_at_a_time" else args.pool_size)
    secs = time.perf_counter() - start
    tokens = agent.policy.usage["completion_tokens"] - before
    return {"seconds": secs, "episodes_per_s": len(trajs) / secs, "tokens_per_s": tokens / secs,
            "generated_tokens": tokens, "messages": [t.messages for t in trajs]}


def main() -> None:
    import torch
    from shared_data import require_shared_data  # tests/shared_data.py

    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tasks import TASKS, load_questions_for
    from lightning_nat.core.tools import make_tools
    from lightning_nat.train.scratch import make_scratch_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a scratch Llama made here)")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--pool-size", type=int, default=32, help="the pool (episodes live at once)")
    ap.add_argument("--batch-size", type=int, default=8, help="the fixed batches' size")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the arms")
    ap.add_argument("--arms", default="one_at_a_time,batched,pool")
    ap.add_argument("--hidden-size", type=int, default=256, help="scratch model width")
    ap.add_argument("--layers", type=int, default=4, help="scratch model depth")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    if args.rounds < 3:  # one A-then-B pass on a shared machine is noise, not a measurement
        ap.error(f"--rounds {args.rounds}: alternate the arms at least 3 times")
    arms = [a.strip() for a in args.arms.split(",")]
    load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: say how busy it was
    torch.manual_seed(0)
    task = TASKS["gsm8k"]
    data = str(require_shared_data())
    records = load_questions_for(task, data_dir=data, limit=args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_scratch_model(
            Path(tmp) / "m", [r["question"] for r in load_questions_for(task, data_dir=data)] + [task.instruction],
            vocab_size=1024, hidden_size=args.hidden_size, num_layers=args.layers,
            num_heads=max(4, args.hidden_size // 64)))
        policy = HFPolicy(model, max_new_tokens=args.max_new_tokens, device=args.device, dtype=args.dtype)
        agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=args.max_turns)
        rounds: list[dict[str, dict]] = []
        for r in range(args.rounds):
            rounds.append({name: run_arm(name, agent, records, args) for name in arms})
            print(json.dumps({"round": r, **{n: round(v["episodes_per_s"], 3) for n, v in rounds[-1].items()}}),
                  file=sys.stderr)
    result: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    **{k: v for k, v in vars(args).items() if k not in ("model", "arms")},
                    "torch_threads": torch.get_num_threads(), "load_average_at_start": load,
                    "greedy_episodes_identical_across_arms": all(
                        rd[a]["messages"] == rounds[0][arms[0]]["messages"] for rd in rounds for a in arms)}
    for name in arms:
        runs = [rd[name] for rd in rounds]
        result[name] = {"episodes_per_s": round(statistics.median(x["episodes_per_s"] for x in runs), 3),
                        "tokens_per_s": round(statistics.median(x["tokens_per_s"] for x in runs), 1),
                        "seconds": [round(x["seconds"], 2) for x in runs], "generated_tokens": runs[0]["generated_tokens"]}
    for base in ("one_at_a_time", "batched"):
        if "pool" in arms and base in arms:  # pairwise: each round's ratio, arms run back to back
            ratios = [rd["pool"]["episodes_per_s"] / rd[base]["episodes_per_s"] for rd in rounds]
            result[f"pool_over_{base}"] = {"median": round(statistics.median(ratios), 2),
                                           "min": round(min(ratios), 2), "max": round(max(ratios), 2)}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
