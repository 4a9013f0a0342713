"""``nat fit``: LightningCLI over NATModule and NATDataModule, with the DPO and KTO objectives (:mod:`.preference_training`).

Every argument is a typed, documented ``__init__`` field, so ``nat fit --print_config``
writes the complete record of a run and ``--config FILE.yaml`` replays it.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from .preference_training import PreferenceDataModule, PreferenceModule

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


def _device_count(devices: Any, accelerator: Any) -> int:
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    import torch

    if accelerator in ("cpu",) or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()


class NATCLI(LightningCLI):
    """Fills in what follows from other settings: the tokenizer and the accumulation steps."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        from .callbacks import DevPerplexity, ExportHF

        # Always present, configured as checkpoint.* and export.* (not lost when a YAML lists callbacks).
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_lightning_class_args(ExportHF, "export")
        parser.add_lightning_class_args(DevPerplexity, "perplexity")
        parser.set_defaults({"trainer.logger": DEFAULT_LOGGERS, "trainer.callbacks": DEFAULT_CALLBACKS})

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        if not cfg.data.tokenizer:
            cfg.data.tokenizer = cfg.model.model_name_or_path
        if "objective" in cfg.model and "objective" in cfg.data:
            # One switch: the data module serves what the model's objective needs.
            cfg.data.objective = cfg.model.objective
        world = _device_count(cfg.trainer.devices, cfg.trainer.accelerator) * int(cfg.trainer.num_nodes or 1)
        per_pass = cfg.data.micro_batch_size * world
        if cfg.data.global_batch_size % per_pass:
            raise ValueError(f"data.global_batch_size={cfg.data.global_batch_size} is not a multiple of "
                             f"micro_batch_size x devices = {per_pass}")
        cfg.trainer.accumulate_grad_batches = cfg.data.global_batch_size // per_pass
        if cfg.trainer.enable_progress_bar is not False:
            from jsonargparse import Namespace

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


def cli_main(argv: list[str] | None = None) -> int:
    """Entry of ``nat fit``: ``argv`` are LightningCLI arguments (``--config``, ``--trainer.*``, ...)."""
    import sys

    argv = list(argv or [])
    # From the `nat` console script sys.argv already reads `nat fit ...`: let LightningCLI read it (the DDP
    # launcher re-runs that same command line in each child process).
    args = None if sys.argv[1:] == ["fit", *argv] else ["fit", *argv]
    # NATModule/NATDataModule with the DPO and KTO objectives; `model.objective: sft` (the default) is NAT's SFT.
    NATCLI(PreferenceModule, PreferenceDataModule, args=args, trainer_defaults=TRAINER_DEFAULTS,
           save_config_kwargs={"overwrite": True}, parser_kwargs={"fit": {"default_env": False}})
    return 0
