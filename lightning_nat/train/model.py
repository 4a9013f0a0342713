"""The LightningModule: a causal LM trained on assistant tokens only."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F

from lightning_nat.train.tokenization import IGNORE_INDEX

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 0, then cosine decay to ``min_ratio``.

    >>> [round(cosine_with_warmup(s, 10, 2), 3) for s in (0, 1, 2, 6, 10)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over target positions and the number of targets.

    Only target rows of the logits are upcast to fp32, which keeps memory low on large vocabularies.

    >>> logits = torch.zeros(1, 3, 4); labels = torch.tensor([[-100, 1, 2]])
    >>> nll, n = target_nll(logits, labels); round(nll.item() / n.item(), 4) == round(math.log(4), 4)
    True
    """
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()
    nll = F.cross_entropy(picked, shift_labels[mask], reduction="sum")
    return nll, mask.sum()


def dev_metrics(total: torch.Tensor) -> dict[str, float] | None:
    """``(summed NLL, target tokens)`` of the whole dev set -> its token-weighted NLL and perplexity.

    >>> dev_metrics(torch.tensor([2.0, 4.0], dtype=torch.float64))["nll"], dev_metrics(torch.zeros(2)) is None
    (0.5, True)
    """
    if total[1] <= 0:
        return None
    nll = float(total[0] / total[1])
    return {"nll": nll, "perplexity": math.exp(nll), "target_tokens": int(total[1])}


class NATModule(L.LightningModule):
    """Fine-tunes any ``AutoModelForCausalLM`` with the paper's recipe.

    The loss of an optimizer step is the summed cross-entropy over its target tokens
    divided by the number of target tokens in the whole step (all micro-batches, all
    ranks), not a mean of per-micro-batch means.

    Args:
        model_name_or_path: local folder or Hub id of a causal LM.
        dtype: weights dtype when loading (float32, bfloat16, float16).
        attn_implementation: ``sdpa``, ``flash_attention_2``, ``eager``, or None for the model's default.
        gradient_checkpointing: recompute activations in the backward pass to save memory.
        lora_r: LoRA rank; 0 trains every weight (the paper), >0 trains LoRA adapters through ``peft``.
        lora_alpha: LoRA scaling.
        lora_dropout: LoRA dropout.
        lora_target_modules: module names to adapt (default: peft's choice for the architecture).
        learning_rate: peak AdamW learning rate (the paper: 5e-5).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_ratio: share of optimizer steps spent in linear warm-up (the paper: 3%).
        min_lr_ratio: cosine floor as a share of the peak learning rate.
    """

    def __init__(self, model_name_or_path: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 attn_implementation: str | None = "sdpa", gradient_checkpointing: bool = False, lora_r: int = 0,
                 lora_alpha: int = 16, lora_dropout: float = 0.05, lora_target_modules: list[str] | None = None,
                 learning_rate: float = 5e-5, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.model: Any = None
        self._dev_sums: list[torch.Tensor] = []
        self._hf_ds_config: Any = None

    # -- model -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        hp = self.hparams
        stage = _deepspeed_stage(self)
        if stage == 3:
            # Lets from_pretrained load real weights into ZeRO-3 partitioned parameters
            # (without it, loading under zero.Init leaves them empty).
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.trainer.strategy.config)
        kwargs: dict[str, Any] = {"dtype": DTYPES[hp.dtype]}
        if hp.attn_implementation:
            kwargs["attn_implementation"] = hp.attn_implementation
        model = AutoModelForCausalLM.from_pretrained(hp.model_name_or_path, **kwargs)
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if hp.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                                                     target_modules=hp.lora_target_modules, task_type="CAUSAL_LM"))
        model.train()  # from_pretrained returns eval mode; dropout and friends follow Lightning's mode from here
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    # -- training --------------------------------------------------------------------------------------------
    def loss_scale(self) -> float:
        """Factor that undoes the averaging done downstream of ``training_step``.

        Lightning divides the returned loss by ``accumulate_grad_batches`` (its closure result),
        data-parallel reduction averages the gradients over the ranks (DDP's all-reduce, ZeRO's
        reduce-scatter), and under DeepSpeed ``DeepSpeedEngine.backward`` divides the loss once
        more by its ``gradient_accumulation_steps`` (``scale_wrt_gas=True``), which Lightning sets
        to ``accumulate_grad_batches``. Proven against a single process on 2 ZeRO-3 CPU processes
        (tests/test_zero3.py, gradients equal to 1e-5).
        """
        trainer = self.trainer
        acc = trainer.accumulate_grad_batches
        return trainer.world_size * acc * (acc if _deepspeed_stage(self) is not None else 1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch["attention_mask"])
        nll, n = target_nll(logits, batch["labels"])
        if not torch.isfinite(nll):
            raise FloatingPointError(
                f"non-finite loss ({nll.item()}) at global step {self.global_step}, batch {batch_idx}: lower the "
                "learning rate, check the data, or train in bf16 rather than fp16")
        step_targets = batch["step_targets"].to(nll.dtype)
        loss = nll * self.loss_scale() / step_targets
        n_f = n.clamp(min=1).to(nll.dtype)
        self.log("train/loss", nll.detach() / n_f, prog_bar=True, on_step=True, on_epoch=False, batch_size=int(n))
        self.log("train/target_tokens", n.to(torch.float32), on_step=True, on_epoch=False, reduce_fx="sum")
        pad = (batch["attention_mask"] == 0).sum().float() / batch["attention_mask"].numel()
        self.log("train/pad_fraction", pad, on_step=True, on_epoch=False)
        return loss

    def dev_sums(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(summed NLL, target tokens)`` of one dev batch: the one dev-perplexity computation."""
        nll, n = target_nll(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        return torch.stack([nll.detach().double(), n.double()])

    def dev_result(self, local: torch.Tensor) -> dict[str, float] | None:
        """This rank's dev sums, summed over ranks, as :func:`dev_metrics` (a collective: every rank calls it)."""
        trainer = self.trainer
        total = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        return dev_metrics(total)

    @torch.no_grad()
    def dev_perplexity(self, loader: Any) -> dict[str, float] | None:
        """Dev NLL and perplexity over ``loader`` outside a validation loop (every N steps, see DevPerplexity).

        Every rank runs the same number of forward passes (the dev loader pads shards with
        zero-weight rows), which ZeRO-3's sharded parameters require.
        """
        was_training = self.training
        self.eval()
        local = torch.zeros(2, dtype=torch.float64, device=self.device)
        try:
            for batch in loader:
                local += self.dev_sums(self.transfer_batch_to_device(batch, self.device, 0))
        finally:
            self.train(was_training)
        return self.dev_result(local)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._dev_sums.append(self.dev_sums(batch))

    def on_validation_epoch_end(self) -> None:
        local = torch.stack(self._dev_sums).sum(0) if self._dev_sums else torch.zeros(2, dtype=torch.float64,
                                                                                       device=self.device)
        self._dev_sums = []
        values = self.dev_result(local)
        if values is not None:
            self.log("dev/nll", values["nll"], sync_dist=True)
            self.log("dev/perplexity", values["perplexity"], prog_bar=True, sync_dist=True)
            self.log("dev/target_tokens", float(values["target_tokens"]), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if _deepspeed_offloads_optimizer(self):
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer: torch.optim.Optimizer = DeepSpeedCPUAdam(params, lr=hp.learning_rate, betas=tuple(hp.betas),
                                                                weight_decay=hp.weight_decay, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = math.ceil(hp.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cosine_with_warmup(s, total, warmup, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def _deepspeed_stage(module: L.LightningModule) -> int | None:
    """The ZeRO stage when training under DeepSpeed, else None."""
    try:
        strategy = module.trainer.strategy
    except RuntimeError:
        return None
    from lightning.pytorch.strategies import DeepSpeedStrategy  # does not import deepspeed itself

    config = getattr(strategy, "config", None)
    # isinstance, not the class name: CPUDeepSpeedStrategy (the CPU check) is a DeepSpeedStrategy too.
    if not isinstance(strategy, DeepSpeedStrategy) or not isinstance(config, dict):
        return None
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _deepspeed_offloads_optimizer(module: L.LightningModule) -> bool:
    if _deepspeed_stage(module) is None:
        return False
    zero = module.trainer.strategy.config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") == "cpu"
