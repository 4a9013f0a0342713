"""Check ZeRO-3 training against a single process on whatever accelerator is here (CUDA GPUs, else CPU processes).

    python bench/zero3_check.py                                   # tiny scratch model on shared StrategyQA data
    python bench/zero3_check.py --model DIR --data DIR --devices 4 --precision bf16-mixed --steps 3

It runs ``nat fit`` three times with the probe of ``tests/zero3_probe.py``: one process with
accumulation ``2 x devices``, ``devices`` ZeRO-3 processes with accumulation 2 (the same global
batch), and the ZeRO-3 run again killed with SIGKILL after ``--kill-at`` steps and resumed with
``--ckpt_path last``. It prints, per check, the largest difference found and PASS/FAIL against a
tolerance (1e-5 in fp32; bf16 is reported with a looser one, since partitioned reductions round
differently): step losses, learning rates, first-step gradients (these scale with the loss, so a
wrong loss scale shows), weights after the first and the last step, the export against the
gathered weights, and the resumed run against the uninterrupted one. Exit status 1 if any fails.
The ReActEval/DevPerplexity equality is checked by tests/test_zero3.py on CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from zero3_probe import nat_fit, read_rows, step_losses, step_lrs  # noqa: E402


def _tiny_inputs(work: Path) -> tuple[Path, Path]:
    """The test suite's tiny dataset and scratch model, built from the shared StrategyQA data."""
    from shared_data import require_shared_data  # tests/shared_data.py

    from lightning_nat.builders import build_dataset, save_build
    from lightning_nat.train.scratch import conversation_texts, make_scratch_model

    d = require_shared_data() / "strategyqa"
    data = work / "data"
    res = build_dataset([str(d / "trajectories_positive.json"), str(d / "trajectories_negative.json")], "nat",
                        cache_dir=str(work / "cache"), questions=str(d / "train.jsonl"), task="strategyqa",
                        on_error="skip", pos_num=24, neg_num=16, dev_num=8)
    save_build(res, data)
    model = make_scratch_model(work / "model", conversation_texts(data), vocab_size=384, hidden_size=32, num_layers=2,
                               num_heads=2)
    return Path(model), data


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(((a[k].float() - b[k].float()).abs().max().item() for k in a), default=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="causal LM folder (default: build the tiny scratch model)")
    p.add_argument("--data", help="`nat build` folder (default: the tiny StrategyQA set)")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--kill-at", type=int, default=2, help="optimizer steps before the SIGKILL of the resume check")
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--deepspeed-config", default=str(ROOT / "launch" / "deepspeed" / "zero3.json"))
    p.add_argument("--out", help="work folder (default: a temporary one)")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)

    work = Path(args.out or tempfile.mkdtemp(prefix="zero3-check-"))
    work.mkdir(parents=True, exist_ok=True)
    model, data = (Path(args.model), Path(args.data)) if args.model and args.data else _tiny_inputs(work)
    gpu = torch.cuda.is_available()
    accelerator = "gpu" if gpu else "cpu"
    strategy_class = ("lightning.pytorch.strategies.DeepSpeedStrategy" if gpu
                      else "lightning_nat.train.cpu_deepspeed.CPUDeepSpeedStrategy")
    ds_cfg = json.loads(Path(args.deepspeed_config).read_text())
    ds_cfg["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition every weight, even tiny ones
    ds_path = work / "zero3-check.json"
    ds_path.write_text(json.dumps(ds_cfg))
    n, micro = args.devices, args.micro_batch
    global_batch = micro * n * 2

    def config(name: str, devices: int, strategy, **probe) -> dict:
        return {"model": {"model_name_or_path": str(model), "learning_rate": 1e-3, "warmup_ratio": 0.0},
                "data": {"dataset_dir": str(data), "micro_batch_size": micro, "global_batch_size": global_batch},
                "checkpoint": {"every_n_train_steps": 1},
                "trainer": {"accelerator": accelerator, "devices": devices, "strategy": strategy,
                            "precision": args.precision, "max_steps": args.steps, "log_every_n_steps": 1,
                            "default_root_dir": str(work / name), "enable_progress_bar": False,
                            "callbacks": [{"class_path": "zero3_probe.Probe",
                                           "init_args": {"out": str(work / name / "probe"), **probe}}]}}

    z3 = {"class_path": strategy_class, "init_args": {"config": str(ds_path)}}
    runs = [("single", 1, "auto", {}, ()), ("zero3", n, z3, {}, ()), ("killed", n, z3, {"kill_at_step": args.kill_at}, ()),
            ("killed", n, z3, {}, ("--ckpt_path", "last"))]
    device = torch.cuda.get_device_name(0) if gpu else f"CPU processes ({accelerator})"
    print(f"device: {device}; {n} ZeRO-3 ranks vs 1 process; precision {args.precision}; work folder {work}", flush=True)
    for name, devices, strategy, probe, extra in runs:
        t0 = time.perf_counter()
        proc = nat_fit(config(name, devices, strategy, **probe), work, *extra, timeout=args.timeout)
        expected = -9 if probe.get("kill_at_step") else 0
        took = time.perf_counter() - t0
        print(f"  nat fit {name:7s} {'resume' if extra else '':6s} rc {proc.returncode:3d}  {took:6.1f} s", flush=True)
        if proc.returncode != expected:
            print(proc.stdout[-5000:])
            return 1

    tol = 1e-5 if args.precision.startswith("32") else 2e-2
    single, zero3 = work / "single" / "probe", work / "zero3" / "probe"
    checks: list[tuple[str, float, float]] = []
    rows1, rows3, rowsk = read_rows(single, 1), read_rows(zero3, n), read_rows(work / "killed" / "probe", n)
    checks.append(("step losses", max(abs(a - b) / abs(a) for a, b in zip(step_losses(rows1), step_losses(rows3))), tol))
    checks.append(("learning rates", max(abs(a - b) for a, b in zip(step_lrs(rows1), step_lrs(rows3))), 1e-12))
    g1, g3 = torch.load(single / "grads1.pt"), torch.load(zero3 / "grads1.pt")
    scale = max(v.abs().max().item() for v in g1.values())
    checks.append(("first-step gradients (relative to the largest)", _max_diff(g1, g3) / scale, tol))
    for f in ("weights1.pt", "weights_end.pt"):
        checks.append((f"weights {f.removesuffix('.pt')}", _max_diff(torch.load(single / f), torch.load(zero3 / f)), tol))
    from transformers import AutoModelForCausalLM

    hf = next((work / "zero3").glob("nat/version_*/hf"))
    exported = {k: v for k, v in AutoModelForCausalLM.from_pretrained(hf).state_dict().items()}
    gathered = torch.load(zero3 / "weights_end.pt")
    checks.append(("export vs gathered weights", _max_diff({k: exported[k] for k in gathered}, gathered),
                   0.0 if args.precision.startswith("32") else 1e-2))
    same_data = all([r["ids"] for r in a] == [r["ids"] for r in b] for a, b in zip(rows3, rowsk))
    checks.append(("resume: same micro-batches", 0.0 if same_data else 1.0, 0.0))
    checks.append(("resume: losses", max(abs(a - b) / abs(a) for a, b in zip(step_losses(rows3), step_losses(rowsk))),
                   tol))
    checks.append(("resume: final weights", _max_diff(gathered, torch.load(work / "killed" / "probe" / "weights_end.pt")),
                   tol))
    failed = 0
    for name, diff, limit in checks:
        ok = diff <= limit
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {name:48s} max diff {diff:.3g} (tolerance {limit:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
