"""``nat fit``: LightningCLI over NATModule and NATDataModule (every objective: ``model.objective`` sft, dpo or kto).

Every argument is a typed, documented ``__init__`` field, so ``nat fit --print_config``
writes the complete record of a run and ``--config FILE.yaml`` replays it.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import zipfile
from typing import Any

import torch.distributed as dist
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from lightning_nat.core.artifacts import check_dataset_folder, check_model_folder
from lightning_nat.core.outputs import output_lock, reading
from lightning_nat.train.datamodule import NATDataModule, accumulation_steps, device_count
from lightning_nat.train.export import ExportHF
from lightning_nat.train.model import NATModule
from lightning_nat.train.perplexity import DevPerplexity

TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": 2,
    "default_root_dir": "runs",
    "gradient_clip_val": 1.0,
    # The data module shards by rank itself (whole optimizer steps are laid out across ranks).
    "use_distributed_sampler": False,
}
DEFAULT_LOGGERS = [
    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "nat"}},
    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs", "name": "tensorboard"}},
]
DEFAULT_CALLBACKS = [
    {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": {"logging_interval": "step"}},
]


class NATCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also refreshes ``last.ckpt`` at the end of every training epoch.

    Lightning's ``every_n_train_steps`` excludes per-epoch saving, which would leave an epoch without a checkpoint.
    """

    _saved_step = -1

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        self._saved_step = trainer.global_step  # any save at a step writes last.ckpt too (save_last)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and self.dirpath and not trainer.fast_dev_run and self._saved_step != trainer.global_step:
            self.last_model_path = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
            trainer.save_checkpoint(self.last_model_path)


class CheckpointError(ValueError):
    """A checkpoint that is missing or cannot be a PyTorch checkpoint, named by path."""


def check_checkpoint(path: str) -> None:
    """Refuse a checkpoint that is missing, empty or not a ``torch.save`` archive, before any unpickling (a
    folder, DeepSpeed's kind, is accepted as is)."""
    if os.path.isdir(path):
        return
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (0 bytes); it was not written completely. "
                              "Delete it to train from scratch, or give --ckpt_path another checkpoint")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (truncated or corrupt archive). "
                              "Delete it to train from scratch, or give --ckpt_path another checkpoint")


def resolve_ckpt_path(ckpt_path: str | None, dirpath: str | None) -> str | None:
    """``last`` -> ``<dirpath>/last.ckpt``, which must exist (Lightning would silently train from scratch)."""
    if ckpt_path in (None, "", "best", "hpc", "registry"):
        return ckpt_path
    if ckpt_path == "last":
        if not dirpath:
            raise CheckpointError("--ckpt_path last: no checkpoint folder (set trainer.default_root_dir or "
                                  "checkpoint.dirpath)")
        path = os.path.join(dirpath, "last.ckpt")
        if not os.path.exists(path):
            raise CheckpointError(f"--ckpt_path last: {path} does not exist, so there is nothing to resume; "
                                  "run without --ckpt_path to train from scratch")
        ckpt_path = path
    check_checkpoint(ckpt_path)
    return ckpt_path


_HELD = contextlib.ExitStack()


def _is_launching_process() -> bool:
    """True in the process a user started, not in the rank processes that DDP, torchrun or SLURM add."""
    return all(os.environ.get(v, "0") == "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def _check_deepspeed(strategy: Any) -> None:
    """A run that asks for DeepSpeed without it: one line naming the extra, not an error from deep inside Lightning."""
    if "deepspeed" in str(getattr(strategy, "class_path", strategy)).lower():
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise RuntimeError("this run's trainer.strategy is DeepSpeed, which is not installed: pip install "
                               "'lightning_nat[deepspeed]' (from a clone: pip install -e '.[deepspeed]')") from None


class NATCLI(LightningCLI):
    """Fills in what follows from other settings: the tokenizer and the accumulation steps."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        # Always present, configured as checkpoint.* and export.* (not lost when a YAML lists callbacks).
        parser.add_lightning_class_args(NATCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(ExportHF, "export")
        parser.add_lightning_class_args(DevPerplexity, "perplexity")
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGERS, "trainer.callbacks": DEFAULT_CALLBACKS})

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        _check_deepspeed(cfg.trainer.strategy)
        if not cfg.data.tokenizer:
            cfg.data.tokenizer = cfg.model.model_name_or_path
        if "objective" in cfg.model and "objective" in cfg.data:
            # One switch: the data module serves what the model's objective needs.
            cfg.data.objective = cfg.model.objective
        cfg.trainer.accumulate_grad_batches = accumulation_steps(
            cfg.data.global_batch_size, cfg.data.micro_batch_size, device_count(cfg.trainer.devices, cfg.trainer.accelerator),
            int(cfg.trainer.num_nodes or 1))
        if cfg.trainer.enable_progress_bar is not False:
            callbacks = list(cfg.trainer.callbacks or [])
            if not any("ProgressBar" in str(getattr(cb, "class_path", "")) for cb in callbacks):
                callbacks.append(Namespace(class_path="lightning.pytorch.callbacks.RichProgressBar", init_args=Namespace()))
            cfg.trainer.callbacks = callbacks
        root = cfg.trainer.default_root_dir
        if root and not cfg.checkpoint.dirpath:
            # One stable folder per run root, so `--ckpt_path last` finds the previous run's checkpoint.
            cfg.checkpoint.dirpath = f"{root}/checkpoints"
        for logger in cfg.trainer.logger if isinstance(cfg.trainer.logger, list) else []:
            # Loggers follow trainer.default_root_dir unless a config names their folder.
            if getattr(logger, "init_args", None) is not None and logger.init_args.get("save_dir") == "runs" and root:
                logger.init_args.save_dir = root
        if self.subcommand == "fit":  # a parse-only CLI (run=False) checks the config, not the folders
            check_model_folder(cfg.model.model_name_or_path, "model.model_name_or_path")
            if cfg.data.dataset_dir:
                check_dataset_folder(cfg.data.dataset_dir)
            cfg.ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.checkpoint.dirpath)
            if _is_launching_process():
                if root:  # two runs into one root would interleave checkpoints and logs
                    _HELD.enter_context(output_lock(root, "nat fit"))
                if cfg.data.dataset_dir:  # `nat build --overwrite` may not replace the rows being trained on
                    _HELD.enter_context(reading(cfg.data.dataset_dir, "nat fit"))


def cli_main(argv: list[str] | None = None) -> int:
    """Entry of ``nat fit``: ``argv`` are LightningCLI arguments (``--config``, ``--trainer.*``, ...)."""
    argv = list(argv or [])
    # From the `nat` console script sys.argv already reads `nat fit ...`: let LightningCLI read it (the DDP
    # launcher re-runs that same command line in each child process).
    args = None if sys.argv[1:] == ["fit", *argv] else ["fit", *argv]
    from lightning_nat.train.trainer import quiet_tips

    quiet_tips()
    try:
        with _HELD:  # the root's lock, taken once the config names the root, is released when the run ends
            NATCLI(NATModule, NATDataModule, args=args, trainer_defaults=TRAINER_DEFAULTS,
                   save_config_kwargs={"overwrite": True}, parser_kwargs={"fit": {"default_env": False}})
    except (pickle.UnpicklingError, EOFError) as exc:
        # torch's own message advises weights_only=False, which would run code from a file of unknown origin.
        raise CheckpointError(f"the checkpoint given to --ckpt_path cannot be read ({type(exc).__name__}): it is "
                              "truncated, corrupt or not a Lightning checkpoint") from exc
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Close this rank's process group, which Lightning leaves open: a rank that finished first could otherwise
    die in interpreter shutdown ("terminate called without an active exception") and fail the launch."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
