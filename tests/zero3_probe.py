"""Helpers for the ZeRO-3 checks: a probe callback that `nat fit` loads from a config, and a safe launcher.

The probe records, per rank, what each micro-batch trained on and its loss, the learning rate,
the full gradients of the first optimizer step and the full weights after it and at the end of
training. Under DeepSpeed ZeRO-3 those are gathered from the partitions with DeepSpeed's own
collectives, so the records of a 2-process ZeRO-3 run compare one to one with a single-process run.
``bench/zero3_check.py`` imports this module too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch


def _zero3(trainer: L.Trainer) -> bool:
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = trainer.strategy
    return isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3


def full_weights(trainer: L.Trainer, module: L.LightningModule) -> dict[str, torch.Tensor]:
    """Every weight of ``module.model`` in full, on every rank (a collective under ZeRO-3)."""
    params = dict(module.model.named_parameters())
    if not _zero3(trainer):
        return {n: p.detach().float().cpu().clone() for n, p in params.items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {n: p.detach().float().cpu().clone() for n, p in params.items()}


def full_grads(trainer: L.Trainer, module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The reduced gradient of every trainable weight, in full (a collective under ZeRO-3)."""
    named = [(n, p) for n, p in module.model.named_parameters() if p.requires_grad]
    if not _zero3(trainer):
        return {n: p.grad.detach().float().cpu().clone() for n, p in named if p.grad is not None}
    from deepspeed.utils import safe_get_full_grad

    out = {}
    for n, p in named:
        g = safe_get_full_grad(p)
        if g is not None:
            out[n] = g.detach().float().cpu().clone()
    return out


class Probe(L.Callback):
    """Writes ``<out>/rank<R>.jsonl`` (one row per micro-batch) and, from rank 0, ``grads1.pt``,
    ``weights1.pt`` (after the first optimizer step) and ``weights_end.pt``.

    Args:
        out: folder for the records (appended to, so a resumed run continues the same files).
        kill_at_step: when > 0, rank 0 sends SIGKILL to its whole process group at the first micro-batch
            after this many optimizer steps, as a node failure or ``kill -9`` of the job would.
    """

    def __init__(self, out: str, kill_at_step: int = 0):
        self.out = Path(out)
        self.kill_at_step = kill_at_step
        self._grads_done = False
        self._weights_done = False
        self._row: dict[str, Any] = {}

    def _rank0_save(self, trainer: L.Trainer, obj: Any, name: str) -> None:
        if trainer.global_rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save(obj, self.out / name)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.kill_at_step and trainer.global_step >= self.kill_at_step and trainer.global_rank == 0:
            os.killpg(os.getpgid(0), signal.SIGKILL)
        ids = batch["input_ids"]
        self._row = {"step": trainer.global_step, "batch_idx": batch_idx, "ids": ids[batch["seq"] >= 0].tolist(),
                     "targets": int((batch["labels"][:, 1:] != -100).sum()), "step_targets": int(batch["step_targets"]),
                     "lr": trainer.optimizers[0].param_groups[0]["lr"]}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        if self._grads_done:
            return
        if _zero3(trainer) and not trainer.strategy.deepspeed_engine.is_gradient_accumulation_boundary():
            return  # DeepSpeed gets this hook on every micro-batch; its step happens only at the boundary
        self._grads_done = True
        self._rank0_save(trainer, full_grads(trainer, pl_module), "grads1.pt")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._row["loss"] = float(trainer.callback_metrics["train/loss"])
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(self._row) + "\n")
        if trainer.global_step >= 1 and not self._weights_done:
            self._weights_done = True
            self._rank0_save(trainer, full_weights(trainer, pl_module), "weights1.pt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rank0_save(trainer, full_weights(trainer, pl_module), "weights_end.pt")
        # Whether training needed deepspeed at all (a CPU run without DeepSpeed should not import it).
        self._rank0_save(trainer, "deepspeed" in sys.modules, "deepspeed_imported.pt")


def read_rows(out: str | os.PathLike, world: int) -> list[list[dict]]:
    """Each rank's micro-batch rows, in order."""
    return [[json.loads(line) for line in open(Path(out) / f"rank{r}.jsonl", encoding="utf-8")] for r in range(world)]


def step_losses(rows: list[list[dict]]) -> list[float]:
    """The loss of each optimizer step: summed NLL of all its micro-batches on all ranks / its target count."""
    sums: dict[int, float] = {}
    totals: dict[int, int] = {}
    for rank_rows in rows:
        for r in rank_rows:
            sums[r["step"]] = sums.get(r["step"], 0.0) + r["loss"] * r["targets"]
            totals[r["step"]] = r["step_targets"]
    return [sums[s] / totals[s] for s in sorted(sums)]


def step_lrs(rows: list[list[dict]]) -> list[float]:
    """The learning rate each optimizer step trained with (rank 0's record)."""
    seen: dict[int, float] = {}
    for r in rows[0]:
        seen.setdefault(r["step"], r["lr"])
    return [seen[s] for s in sorted(seen)]


def free_port() -> int:
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(cmd: list[str], cwd: str | os.PathLike, timeout: float, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group and kill the whole group afterwards, whatever happened.

    Distributed children that outlive a failed or hung rank 0 would otherwise wait on a collective
    forever; killing the group leaves nothing behind.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                **(env or {})}
    tests_dir = str(Path(__file__).resolve().parent)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (tests_dir, full_env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[run_group: killed after {timeout}s]"
        proc.returncode = -9
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    done.pid = proc.pid  # the process group id, for checks that nothing outlived the run
    return done


def nat_fit(config: dict, cwd: str | os.PathLike, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``nat fit --config <cwd>/run.yaml`` (JSON is YAML) in a fresh process group."""
    path = Path(cwd) / f"fit-{len(list(Path(cwd).glob('fit-*.yaml')))}.yaml"
    path.write_text(json.dumps(config))
    return run_group([sys.executable, "-m", "lightning_nat.cli", "fit", "--config", str(path), *extra], cwd, timeout)
