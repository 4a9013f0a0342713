"""Stage 2, training: tokenization, sampling, the datamodule, the LightningModule, callbacks, export."""
