"""Episodes per second of the batched ReAct evaluator against one question at a time.

One-at-a-time is how the reference implementation evaluates. Both sides run the same
model on the same GSM8K test questions with the same turn and token limits, in one run.

    python bench/eval_throughput.py --questions 32 --batch-size 16
    python bench/eval_throughput.py --model DIR --device cuda --questions 128 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import torch

    from lightning_nat.agent import ReActAgent
    from lightning_nat.policies import HFPolicy
    from lightning_nat.scratch import make_scratch_model
    from lightning_nat.shared_data import require_shared_data
    from lightning_nat.tasks import TASKS, load_questions_for
    from lightning_nat.tools import make_tools

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a scratch Llama made here)")
    ap.add_argument("--questions", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    torch.manual_seed(0)
    task = TASKS["gsm8k"]
    records = load_questions_for(task, data_dir=str(require_shared_data()), limit=args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(make_scratch_model(
            Path(tmp) / "m", [r["question"] for r in load_questions_for(task, data_dir=str(require_shared_data()))]
            + [task.instruction], vocab_size=1024, hidden_size=256, num_layers=4, num_heads=4))
        policy = HFPolicy(model, max_new_tokens=args.max_new_tokens, device=args.device)
        timings = {}
        for name, bs in (("one_at_a_time", 1), ("batched", args.batch_size)):
            agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=args.max_turns)
            start = time.perf_counter()
            trajs = agent.run(records, batch_size=bs)
            secs = time.perf_counter() - start
            timings[name] = {"batch_size": bs, "episodes": len(trajs), "seconds": round(secs, 2),
                             "episodes_per_s": len(trajs) / secs,
                             "model_turns": sum(1 for t in trajs for m in t.messages if m["role"] == "assistant")}
    result = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "questions": args.questions,
              "max_new_tokens": args.max_new_tokens, "max_turns": args.max_turns, **timings,
              "speedup": timings["batched"]["episodes_per_s"] / timings["one_at_a_time"]["episodes_per_s"]}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
