"""``make_trainer``: a Lightning ``Trainer`` set up for the NAT data modules outside ``nat fit`` (no distributed
sampler, the accumulation the global batch size implies), for scripts, notebooks, tests and benchmarks."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_nat.train.datamodule import accumulation_steps, device_count


def _no_tips(record: Any) -> bool:
    """A logging filter that drops Lightning's advertising tips (``💡 Tip: ... try installing litlogger``)."""
    return not str(record.getMessage()).startswith("💡 Tip")


def quiet_tips() -> None:
    """Keep Lightning's tips out of every run's output (its other info lines stay)."""
    import logging

    import lightning.pytorch  # noqa: F401 - its import sets its loggers up; the filter goes on after

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tips)


def make_trainer(datamodule: Any, *, accelerator: str = "cpu", devices: Any = 1, num_nodes: int = 1,
                 **trainer_kwargs: Any) -> Any:
    """A ``lightning.Trainer`` whose accumulation follows ``datamodule``'s global and micro batch sizes; every other
    keyword goes to ``Trainer`` (an ``accumulate_grad_batches`` that contradicts the batch sizes is an error)."""
    quiet_tips()
    hp = datamodule.hparams
    acc = accumulation_steps(hp.global_batch_size, hp.micro_batch_size, device_count(devices, accelerator), num_nodes)
    given = trainer_kwargs.pop("accumulate_grad_batches", acc)
    if given != acc:
        raise ValueError(f"accumulate_grad_batches={given} contradicts global_batch_size {hp.global_batch_size} / "
                         f"micro_batch_size {hp.micro_batch_size} on {devices} device(s) = {acc}; leave it out")
    trainer_kwargs.setdefault("use_distributed_sampler", False)
    steps = trainer_kwargs.get("max_steps") or -1
    if steps > 0 and trainer_kwargs.get("max_epochs") is None and hasattr(datamodule, "train_rows"):
        # A step budget alone leaves Lightning's progress bar at "Epoch 0/-2 ... 16/4" (max_epochs -1, optimizer
        # steps against micro-batches): give it the epochs the budget spans instead.
        datamodule.setup("fit")
        micro = -(-len(datamodule.train_rows) // hp.micro_batch_size)
        per_epoch = -(-micro // (device_count(devices, accelerator) * num_nodes * acc))
        trainer_kwargs["max_epochs"] = -(-steps // max(1, per_epoch))
    if trainer_kwargs.get("deterministic") is True:
        # Deterministic mode also fills every new tensor with NaN, a debugging aid for code that reads memory it
        # never wrote (none here); it cost about 5 % of a demo step. Results do not depend on it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    return L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, accumulate_grad_batches=acc,
                     **trainer_kwargs)
