"""The engine's episodes/s at two revisions of the package, alternated: what one change to the engine buys.

``bench/eval_throughput.py`` compares ways of running episodes inside one checkout; a change to
the engine itself (its decoding loop, caches or attention) needs the same episodes timed with
the code before and after it. Each round runs one worker process per source tree, in turn
(base, head, base, head, ...): the worker builds the same scratch Llama and GSM8K questions as
``eval_throughput.py`` (same defaults), runs the engine once to warm up, then times ``--runs``
runs and reports the median. The episodes' digest must be the same in both trees (greedy
outputs unchanged); the result is the median of the per-round ratios head / base with its range.

    python bench/eval_revisions.py --base d9eedb0 --rounds 3
    python bench/eval_revisions.py --base d9eedb0 --rounds 3 --lively 0.3   # rows stop at different steps

``--base`` is a git revision (checked out in a temporary worktree) or a folder holding the
package; ``--head`` defaults to this checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(args: argparse.Namespace) -> None:
    """Runs in a subprocess with ``--root`` first on the path: times the engine's runs in that tree."""
    sys.path.insert(0, args.root)
    sys.path.insert(1, str(ROOT / "tests"))  # shared_data: where the data is
    import torch
    from shared_data import require_shared_data

    import lightning_nat
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tasks import TASKS, load_questions_for
    from lightning_nat.core.tools import make_tools
    from lightning_nat.train.scratch import make_scratch_model

    if not Path(lightning_nat.__file__).resolve().is_relative_to(Path(args.root).resolve()):
        raise SystemExit(f"worker imported lightning_nat from {lightning_nat.__file__}, not from {args.root}")
    torch.manual_seed(0)
    task = TASKS["gsm8k"]
    data = str(require_shared_data())
    records = load_questions_for(task, data_dir=data, limit=args.questions)
    with tempfile.TemporaryDirectory() as tmp:
        model = make_scratch_model(
            Path(tmp) / "m", [r["question"] for r in load_questions_for(task, data_dir=data)] + [task.instruction],
            vocab_size=1024, hidden_size=args.hidden_size, num_layers=args.layers,
            num_heads=max(4, args.hidden_size // 64))
        policy = HFPolicy(str(model), max_new_tokens=args.max_new_tokens, device="cpu", dtype="float32")
        if args.lively:  # weights wide enough that rows write varied text and stop at different steps
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in policy.model.parameters():
                    if p.dim() > 1:
                        p.copy_(torch.randn(p.shape, generator=gen) * args.lively)
        agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=args.max_turns)
        agent.run(records, batch_size=args.pool_size)  # warm-up: the shared head's cache, allocator, kernels
        seconds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            trajs = agent.run(records, batch_size=args.pool_size)
            seconds.append(time.perf_counter() - start)
    digest = hashlib.sha256(json.dumps([t.messages for t in trajs]).encode()).hexdigest()[:16]
    print(json.dumps({"seconds": statistics.median(seconds), "all_seconds": seconds, "digest": digest}))


def _tree(rev: str, tmp: str) -> str:
    """A folder holding the package at ``rev``: the folder itself, or a detached worktree of the revision."""
    if Path(rev, "lightning_nat").is_dir():
        return rev
    path = str(Path(tmp) / f"tree-{rev.replace('/', '_')}")
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", path, rev], check=True,
                   capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision or folder: the code before the change")
    ap.add_argument("--head", default=str(ROOT), help="git revision or folder: the code after it (default: here)")
    ap.add_argument("--rounds", type=int, default=3, help="alternations of the two trees")
    ap.add_argument("--runs", type=int, default=3, help="timed engine runs per worker (median kept)")
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--pool-size", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lively", type=float, default=0.0,
                    help="re-draw the weights at this scale (e.g. 0.3): the scratch init writes one token until the "
                         "limit, these rows stop at different steps, so rows leave the batch as in a real evaluation")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not args.base:
        ap.error("--base is required")
    if args.rounds < 3:  # one A-then-B pass on a shared machine is noise, not a measurement
        ap.error(f"--rounds {args.rounds}: alternate the trees at least 3 times")
    load = [round(x, 2) for x in os.getloadavg()]
    passed = sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": _tree(args.base, tmp), "head": _tree(args.head, tmp)}
        try:
            rounds = []
            for r in range(args.rounds):
                rounds.append({})
                for name, root in trees.items():
                    out = subprocess.run([sys.executable, __file__, *passed, "--worker", "--root", root],
                                         check=True, capture_output=True, text=True).stdout
                    rounds[-1][name] = json.loads(out.strip().splitlines()[-1])
                    print(json.dumps({"round": r, "tree": name, **rounds[-1][name]}), file=sys.stderr)
        finally:
            for root in trees.values():
                if root.startswith(tmp):
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", root], check=False,
                                   capture_output=True)
    ratios = [rd["base"]["seconds"] / rd["head"]["seconds"] for rd in rounds]
    print(json.dumps({
        "base": args.base, "head": args.head, "questions": args.questions, "pool_size": args.pool_size,
        "max_new_tokens": args.max_new_tokens, "max_turns": args.max_turns, "rounds": args.rounds,
        "lively": args.lively, "load_average_at_start": load, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": {n: [round(rd[n]["seconds"], 3) for rd in rounds] for n in trees},
        "greedy_episodes_identical": len({rd[n]["digest"] for rd in rounds for n in trees}) == 1,
        "head_speedup": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                         "max": round(max(ratios), 3)}}, indent=1))


if __name__ == "__main__":
    main()
