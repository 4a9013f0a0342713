"""Dev perplexity of held-out positive trajectories (the paper's Figure 5), logged and kept in a history file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from lightning_nat.core.artifacts import PERPLEXITY_FILE, append_row, run_counts


def run_info(trainer: L.Trainer) -> dict[str, Any]:
    """Variant and actual counts of the training set the run read (its ``build.json`` when it was loaded)."""
    return run_counts(getattr(trainer.datamodule, "build_record", None))


class DevPerplexity(L.Callback):
    """Perplexity of held-out positives every ``every_n_steps`` optimizer steps and at each validation.

    Rows go to the run's loggers (``dev/perplexity``) and to ``<log_dir>/perplexity.jsonl``
    with the step, epoch and training-set counts, which ``nat plot perplexity`` reads.

    Args:
        every_n_steps: also compute every N optimizer steps (0: only at validation).
        history_file: file name inside the run's log folder.
    """

    def __init__(self, every_n_steps: int = 0, history_file: str = PERPLEXITY_FILE):
        self.every_n_steps = every_n_steps
        self.history_file = history_file
        self._last_step = -1

    def _record(self, trainer: L.Trainer, values: dict[str, float], source: str) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks
        path = Path(trainer.log_dir or trainer.default_root_dir) / self.history_file
        self._last_step = trainer.global_step
        if trainer.global_rank != 0:
            return
        append_row(path, {"step": trainer.global_step, "epoch": trainer.current_epoch, "source": source, **values,
                          **run_info(trainer)})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_n_steps or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        if metrics := self._measure(trainer, pl_module, "steps"):
            pl_module.log_dict(metrics, on_step=True, sync_dist=False)

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, source: str) -> dict[str, float]:
        """The current weights' dev metrics, recorded, as ``dev/<name>`` (empty without dev rows)."""
        dm = trainer.datamodule
        loaders = dm.val_dataloader() if dm is not None else []
        values = (pl_module.dev_perplexity(loaders) if loaders else None) or {}
        if values:
            self._record(trainer, values, source)
        return {f"dev/{k}": float(v) for k, v in values.items()}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run that stops (max_steps) between validations would end with no figure for its final weights.
        if trainer.global_step == self._last_step or trainer.global_step == 0:
            return
        if metrics := self._measure(trainer, pl_module, "end"):
            for logger in trainer.loggers:  # self.log is not allowed in on_train_end
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        if "dev/perplexity" in metrics:
            self._record(trainer, {"nll": float(metrics["dev/nll"]), "perplexity": float(metrics["dev/perplexity"]),
                                   "target_tokens": int(metrics["dev/target_tokens"])}, "validation")
