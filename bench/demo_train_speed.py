"""The demo's fine-tuning at two revisions of the package, alternated: steps/s of `nat demo`'s training.

The demo fine-tunes its base for every strategy through ``lightning_nat.demo.run._train`` (``make_trainer``,
DevPerplexity every ``steps // 8`` steps, a CSV logger, one torch thread, deterministic); that is about 60 s
of each strategy's 65 s. This bench builds one seed's NAT training set the way the demo does (scripted
teacher, ``nat build`` NAT variant, the demo's default sizes) and a random-init model of the base's shape
(Llama 4 x 128, a 600-token BPE, ChatML), then runs ``_train`` for ``--steps`` steps in one worker process
per source tree, in turn (base, head, base, head, ...). A worker reports the wall time of ``_train`` (setup,
tokenization, steps, dev perplexity: what the demo waits for) and of its optimizer steps alone; the result is
the median of the per-round ratios head / base with their range. ``--pretrain`` times the base's pretraining
(``make_base`` with the demo's sizes, ``--steps`` steps, wall time including the tokenizer) instead.

    python bench/demo_train_speed.py --base 8dab033 --rounds 3
    python bench/demo_train_speed.py --base 8dab033 --rounds 3 --pretrain --steps 100   # the base's pretraining
    python bench/demo_train_speed.py --profile              # where a step's time goes, in this checkout

``--base`` is a git revision (checked out in a temporary worktree) or a folder holding the package.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare(out: Path) -> tuple[Path, Path]:
    """One seed's NAT dataset as the demo builds it, and a random-init model of the base's shape."""
    from lightning_nat.agent.collect import collect
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tools import make_tools
    from lightning_nat.data.build import build_dataset, save_build
    from lightning_nat.demo.run import DemoConfig
    from lightning_nat.demo.synthetic import ScriptedTeacher, arith_task, make_problems
    from lightning_nat.train.scratch import conversation_texts, make_scratch_model

    cfg, task = DemoConfig(), arith_task()
    problems = make_problems(cfg.train_problems, 0, cfg.min_steps, cfg.max_steps)
    teacher = ScriptedTeacher({p.question: p for p in problems}, error_rate=cfg.error_rate, seed=0)
    collect(ReActAgent(task, teacher, make_tools(task.tools), max_turns=cfg.max_turns), [p.record() for p in problems],
            out / "trajectories.jsonl", cfg.temperatures, teacher="scripted", batch_size=256)
    res = build_dataset([str(out / "trajectories.jsonl")], "nat", cache_dir=str(out / "cache"), format="jsonl",
                        task=task.name, pos_num=cfg.pos_num, neg_num=cfg.neg_num, seed=0, dev_num=cfg.dev_num)
    data = save_build(res, out / "data")
    model = make_scratch_model(out / "model", conversation_texts(data), vocab_size=cfg.vocab_size,
                               hidden_size=cfg.hidden_size, num_layers=cfg.layers, num_heads=cfg.heads)
    return data, model


def worker(args: argparse.Namespace) -> None:
    """In a subprocess with ``--root`` first on the path: the demo's ``_train`` in that tree, timed."""
    sys.path.insert(0, args.root)
    import lightning as L

    import lightning_nat
    from lightning_nat.demo import run as demo

    if not Path(lightning_nat.__file__).resolve().is_relative_to(Path(args.root).resolve()):
        raise SystemExit(f"worker imported lightning_nat from {lightning_nat.__file__}, not from {args.root}")
    cfg = demo.DemoConfig(steps=args.steps)
    if args.pretrain:  # the base's pretraining (make_base), the demo's default sizes but --steps steps
        import torch

        from lightning_nat.demo.base import BaseSpec, make_base

        demo.seed_everything(cfg.base_seed, cfg.threads)
        spec = BaseSpec(texts=cfg.pretrain_texts, steps=args.steps, threads=cfg.threads, seed=cfg.base_seed)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _, info = make_base(spec, tmp, say=lambda _: None)
            total = time.perf_counter() - start
        print(json.dumps({"train_s": total, "steps_s": total, "steps": args.steps, "final_loss": info["final_loss"],
                          "threads": torch.get_num_threads()}))
        return
    if not args.profile:  # the profile is a Lightning log line
        demo._quiet()
    marks: list[float] = []

    class Clock(L.Callback):  # the optimizer steps alone: from the first batch to the end of training
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if not marks:
                marks.append(time.perf_counter())

        def on_train_end(self, trainer, pl_module):
            marks.append(time.perf_counter())

    original = L.Trainer.__init__

    def with_clock(self, *a, **kw):  # the bench's own probe; _train takes no callbacks
        profiler = {"profiler": "simple"} if args.profile else {}  # Lightning's per-hook wall times
        original(self, *a, **{**kw, **profiler, "callbacks": [*kw.get("callbacks", []), Clock()]})

    L.Trainer.__init__ = with_clock
    demo.seed_everything(0, cfg.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        steps = [args.steps] if "steps" in inspect.signature(demo._train).parameters else []  # older trees: cfg.steps
        demo._train(cfg, Path(args.model), Path(args.data), Path(tmp) / "runs" / "nat", 0, *steps)
        total = time.perf_counter() - start
    print(json.dumps({"train_s": total, "steps_s": marks[1] - marks[0], "steps": args.steps}))


def run_tree(root: str, args: argparse.Namespace, data: Path, model: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--root", root, "--data", str(data), "--model", str(model),
           "--steps", str(args.steps)] + (["--pretrain"] if args.pretrain else [])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision or package folder to compare against")
    ap.add_argument("--head", default=str(ROOT), help="package folder (default: this checkout)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (the demo's default: 200)")
    ap.add_argument("--pretrain", action="store_true", help="time the base's pretraining (make_base) instead")
    ap.add_argument("--profile", action="store_true", help="one run of this checkout with Lightning's SimpleProfiler")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data, model = prepare(tmp)
        if args.profile:
            args.worker, args.root, args.data, args.model = True, str(ROOT), str(data), str(model)
            return worker(args)
        base = args.base
        if not Path(base).is_dir():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tmp / "base"), base], check=True,
                           capture_output=True)
            base = str(tmp / "base")
        try:
            rounds = []
            for r in range(args.rounds):
                b, h = run_tree(base, args, data, model), run_tree(args.head, args, data, model)
                rounds.append({"base": b, "head": h})
                print(json.dumps({"round": r, **rounds[-1]}), flush=True)
        finally:
            if base == str(tmp / "base"):
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", base], capture_output=True)
    summary = {}
    for key in ("train_s", "steps_s"):
        ratios = [x["base"][key] / x["head"][key] for x in rounds]
        summary[key] = {"base_median_s": statistics.median(x["base"][key] for x in rounds),
                        "head_median_s": statistics.median(x["head"][key] for x in rounds),
                        "speedup_median": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}
    print(json.dumps({"steps": args.steps, "rounds": args.rounds, **summary}, indent=1))


if __name__ == "__main__":
    main()
