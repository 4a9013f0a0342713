"""Write the Hugging Face export when training ends."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from lightning_nat.train.export import export_hf


class ExportHF(L.Callback):
    """At the end of ``fit``, save a ``from_pretrained`` folder (consolidated from shards when needed).

    Args:
        dirpath: where to write it; default ``<log_dir>/hf`` (or ``<default_root_dir>/hf``).
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.written: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted:
            return
        out = self.dirpath or str(Path(trainer.log_dir or trainer.default_root_dir) / "hf")
        spec = getattr(trainer.datamodule, "prompt_spec", None) if trainer.datamodule is not None else None
        # The chat template training rendered with (data.chat_template) is the one the exported model serves with.
        template = getattr(getattr(trainer.datamodule, "hparams", None), "chat_template", None)
        self.written = export_hf(trainer, pl_module, out, prompt_spec=spec, chat_template=template)
        if self.written is not None:
            print(f"exported Hugging Face model to {self.written}")
