"""The LightningModule: a causal LM trained on assistant tokens, with a table from objective to loss.

``sft`` is NAT's loss (NAT, NUT and w/o Neg differ only in their data): the summed cross-entropy of a step's
target tokens divided by their number over the whole step (all micro-batches and ranks). ``dpo`` and ``kto``
score a trajectory by the summed log-probability of the same targets, so each agrees with TRL's where the
masks agree (tests/test_trl_agreement.py), divided by the step's rows. Their reference log-probs are computed
once before the first step by the starting weights (kept in checkpoints: a resumed run does not recompute
them), or live with LoRA's adapters off (``reference: adapter_disabled``); one model is ever held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DeepSpeedStrategy  # does not import deepspeed itself

from lightning_nat.train.tokenization import IGNORE_INDEX

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Causal LMs whose logits are exactly lm_head(last hidden state): their logits can be computed at target positions
# only. Others (final soft-capping, logit scales) go through the model's own forward.
TARGET_LOGITS_MODELS = ("llama", "mistral", "qwen2", "qwen3")
Batch = dict[str, torch.Tensor]


def dev_metrics(total: torch.Tensor) -> dict[str, float] | None:
    """``(summed NLL, target tokens)`` of the whole dev set -> its token-weighted NLL and perplexity.

    >>> dev_metrics(torch.tensor([2.0, 4.0], dtype=torch.float64))["nll"], dev_metrics(torch.zeros(2)) is None
    (0.5, True)
    """
    if total[1] <= 0:
        return None
    nll = float(total[0] / total[1])
    return {"nll": nll, "perplexity": math.exp(nll), "target_tokens": int(total[1])}


# -- the objective table: a micro-batch -> (summed loss, metrics to log, rows or tokens it averages over) -------------
Loss = tuple[torch.Tensor, dict[str, torch.Tensor], int]


def sft_loss(m: NATModule, batch: Batch) -> Loss:
    """NAT's loss: the summed NLL of the target tokens (divided by the step's target tokens downstream)."""
    nll, n = m.summed_nll(batch)
    return nll, {"loss": nll.detach() / max(n, 1), "target_tokens": torch.tensor(float(n))}, n


def dpo_loss(m: NATModule, batch: Batch) -> Loss:
    """Sigmoid DPO per pair, ``-log sigmoid(beta * (chosen log-ratio - rejected log-ratio))``, summed."""
    hp, ref = m.hparams, m.reference_of(batch)
    rows = len(ref)
    logps, seq = m(batch)
    chosen, rejected = torch.zeros(2 * rows, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps).chunk(2)
    margin = (chosen - ref[:, 0]) - (rejected - ref[:, 1])
    losses = -F.logsigmoid(hp.beta * margin)
    total = losses.sum()
    if hp.sft_weight:  # TRL's loss_type=["sigmoid", "sft"]: the token-mean NLL of the micro-batch's chosen side
        mine = seq < rows
        total = total - hp.sft_weight * rows * logps[mine].sum() / mine.sum().clamp(min=1)
    reward = hp.beta * margin.detach()
    return total, {"loss": losses.detach().mean(), "rewards/margin": reward.mean(),
                   "rewards/accuracy": (reward > 0).float().mean()}, rows


def kto_loss(m: NATModule, batch: Batch) -> Loss:
    """KTO per row (KTO paper, eq. 7): ``w_D (1 - sigmoid(beta (r - z0)))`` for desirable rows, ``w_U (1 - sigmoid(
    beta (z0 - r)))`` for the others, summed; ``r`` is the row's log-ratio to the reference, ``z0`` the reference
    point: the mean log-ratio of the mismatched pairs, clamped at 0, without gradient."""
    hp, ref = m.hparams, m.reference_of(batch)
    rows = len(ref)
    with torch.no_grad():
        kl = (m.sequence_logps(batch, rows, "kl_") - ref[:, 1]).mean().clamp(min=0)
    trainer = _attached_trainer(m)
    if trainer is not None and trainer.world_size > 1:
        kl = trainer.strategy.reduce(kl, reduce_op="mean").clamp(min=0)
    ratio = m.sequence_logps(batch, rows) - ref[:, 0]
    losses = torch.where(batch["desirable"].bool(), hp.desirable_weight * (1 - torch.sigmoid(hp.beta * (ratio - kl))),
                         hp.undesirable_weight * (1 - torch.sigmoid(hp.beta * (kl - ratio))))
    return losses.sum(), {"loss": losses.detach().mean(), "kl": kl}, rows


OBJECTIVES: dict[str, Callable[[NATModule, Batch], Loss]] = {"sft": sft_loss, "dpo": dpo_loss, "kto": kto_loss}


class NATModule(L.LightningModule):
    """Fine-tunes any ``AutoModelForCausalLM`` with the paper's recipe, or with DPO/KTO on the same masks.

    Start DPO/KTO from the model you want to improve (``model_name_or_path``: e.g. the exported w/o-Neg SFT model,
    the usual SFT-then-DPO recipe); it is also the reference.

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
        objective: ``sft`` (NAT's cross-entropy), ``dpo`` or ``kto``.
        beta: DPO/KTO temperature of the log-ratios (TRL's default: 0.1).
        sft_weight: DPO only: adds this times the token-mean NLL of the chosen trajectories of each micro-batch
            (TRL's ``loss_type=["sigmoid", "sft"]`` with this weight); 0 for plain DPO.
        desirable_weight: KTO weight of desirable (positive) rows.
        undesirable_weight: KTO weight of undesirable (negative) rows.
        reference: ``precomputed`` (one pass before training, stored with the rows and in checkpoints) or
            ``adapter_disabled`` (with ``lora_r > 0``: the base model with adapters off, computed live).
        target_logits: compute logits at target positions only, from the last hidden state (Llama, Mistral, Qwen);
            the same loss without the logits of prompts and observations.
        compile: ``torch.compile`` the transformer (the first steps pay for compiling).
    """

    def __init__(self, model_name_or_path: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32",
                 attn_implementation: str | None = "sdpa", gradient_checkpointing: bool = False, lora_r: int = 0,
                 lora_alpha: int = 16, lora_dropout: float = 0.05, lora_target_modules: list[str] | None = None,
                 learning_rate: float = 5e-5, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_ratio: float = 0.03, min_lr_ratio: float = 0.0, objective: Literal["sft", "dpo", "kto"] = "sft",
                 beta: float = 0.1, sft_weight: float = 0.0, desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0, reference: Literal["precomputed", "adapter_disabled"] = "precomputed",
                 target_logits: bool = True, compile: bool = False):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
        if reference == "adapter_disabled" and lora_r <= 0:
            raise ValueError("reference: adapter_disabled needs LoRA (lora_r > 0); use reference: precomputed")
        for name, value, low, high in (("learning_rate", learning_rate, 0.0, math.inf),
                                       ("warmup_ratio", warmup_ratio, 0.0, 1.0), ("min_lr_ratio", min_lr_ratio, 0.0, 1.0),
                                       ("weight_decay", weight_decay, 0.0, math.inf), ("beta", beta, 0.0, math.inf)):
            if not (math.isfinite(value) and low <= value <= high) or (name in ("learning_rate", "beta") and value == 0):
                raise ValueError(f"model.{name} {value}: must be a finite number in "
                                 f"{'(' if name in ('learning_rate', 'beta') else '['}{low:g}, {high:g}]")
        self.save_hyperparameters()
        self.model: Any = None
        self.reference: torch.Tensor | None = None
        self._dev_sums: list[torch.Tensor] = []
        self._hf_ds_config: Any = None
        self._decoder: Any = None  # with target_logits: the transformer and the LM head, called apart
        self._head: Any = None
        self._fused_ce: Any = False  # Liger's fused linear cross-entropy, decided at the first step

    # -- model -----------------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM

        hp = self.hparams
        if deepspeed_stage(self) == 3:
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
        if hp.target_logits and model.config.model_type in TARGET_LOGITS_MODELS:
            self._decoder, self._head = model.get_decoder(), model.get_output_embeddings()
        if hp.compile:
            (self._decoder or model).compile()

    def forward(self, batch: Batch, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """The log-probability of every target token of ``batch`` and the sequence each belongs to (its ``seq``).

        ``prefix`` picks a second set of sequences in the batch (KTO's mismatched pairs: ``kl_``).
        """
        logits, targets, seq = self._target_logits(batch, prefix)
        # 16-bit logits are upcast (target rows only, which keeps memory low on large vocabularies).
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return -F.cross_entropy(logits, targets, reduction="none"), seq

    def _target_logits(self, batch: Batch, prefix: str, hidden_only: bool = False) -> tuple[torch.Tensor, ...]:
        ids, labels, seq = batch[prefix + "input_ids"], batch[prefix + "labels"], batch[prefix + "seq"]
        mask, positions = batch.get(prefix + "attention_mask"), batch.get(prefix + "position_ids")
        if positions is not None and "flash" in str(self.hparams.attn_implementation):
            # Flash attention's variable-length kernels read packed sequences from one row: the rows join end to end
            # without their padding (TRL's padding-free layout); a sequence's first token is never a target.
            real = seq >= 0
            ids, labels, seq, positions = (t[real][None] for t in (ids, labels, seq, positions))
        picked = labels[:, 1:] != IGNORE_INDEX
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "use_cache": False}
        if self._decoder is None:
            logits = self.model(**kwargs).logits[:, :-1][picked]
        else:  # the LM head at target positions only: no logits for prompts and observations
            logits = self._decoder(**kwargs).last_hidden_state[:, :-1][picked]
            logits = logits if hidden_only else self._head(logits)
        return logits, labels[:, 1:][picked], seq[:, 1:][picked]

    def sequence_logps(self, batch: Batch, n: int, prefix: str = "") -> torch.Tensor:
        """Summed log-probability of the target tokens of each of the ``n`` sequences of ``batch``."""
        logps, seq = self(batch, prefix)
        return torch.zeros(n, dtype=logps.dtype, device=logps.device).index_add(0, seq, logps)

    def summed_nll(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """The summed NLL of ``batch``'s target tokens and their number (Liger's fused kernel where it applies)."""
        if self._fused_ce is False:
            self._fused_ce = _liger_loss(self)
        if self._fused_ce is None:
            logps, _ = self(batch)
            return -logps.sum(), logps.numel()
        hidden, targets, _ = self._target_logits(batch, "", hidden_only=True)
        return self._fused_ce(self._head.weight, hidden, targets), targets.numel()

    # -- the reference of DPO/KTO ------------------------------------------------------------------------------
    def pair_logps(self, batch: Batch) -> torch.Tensor:
        """(rows, 2) log-probs: DPO chosen and rejected; KTO the row and its mismatched pair."""
        rows = batch["index"].numel()
        if self.hparams.objective == "dpo":
            return self.sequence_logps(batch, 2 * rows).view(2, rows).T
        return torch.stack([self.sequence_logps(batch, rows), self.sequence_logps(batch, rows, "kl_")], dim=1)

    def reference_of(self, batch: Batch) -> torch.Tensor:
        if self.hparams.reference == "adapter_disabled":
            with _eval_mode(self), torch.no_grad(), self.model.disable_adapter():
                return self.pair_logps(batch).float()
        if "ref" not in batch:
            raise RuntimeError("the batch has no reference log-probs: train DPO/KTO with NATDataModule, whose rows "
                               "NATModule gives them before the first step")
        return batch["ref"].to(self.device)

    @torch.no_grad()
    def compute_reference(self, dm: Any) -> torch.Tensor:
        """One forward pass per sequence with the starting weights, in eval mode; rows sharded across ranks."""
        trainer = self.trainer
        values, indices = [], []
        with _eval_mode(self):
            for batch in dm.sharded_loader(repeat_weight=1.0):  # repeats are real rows, computed again
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                values.append(self.pair_logps(batch).float())
                indices.append(batch["index"])
        vals, idx = torch.cat(values), torch.cat(indices)
        if trainer.world_size > 1:
            vals = trainer.strategy.all_gather(vals).reshape(-1, 2)
            idx = trainer.strategy.all_gather(idx).reshape(-1)
        out = torch.full((len(dm.train_rows), 2), float("nan"))
        out[idx.cpu()] = vals.cpu()
        if not torch.isfinite(out).all():
            raise FloatingPointError("the reference pass left non-finite log-probs; check the data and the model")
        return out

    def on_fit_start(self) -> None:
        objective = self.hparams.objective
        if objective == "sft":
            return
        dm = self.trainer.datamodule
        if getattr(getattr(dm, "hparams", None), "objective", None) != objective:
            raise ValueError(f"model.objective {objective} needs NATDataModule with the same objective "
                             "(nat fit links them)")
        if self.hparams.reference == "precomputed":
            if self.reference is None or len(self.reference) != len(dm.train_rows):
                self.reference = self.compute_reference(dm)
            dm.reference = self.reference

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.reference is not None:
            checkpoint["preference_reference"] = self.reference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run keeps the reference of the starting weights, not of the trained ones.
        self.reference = checkpoint.get("preference_reference")

    # -- training --------------------------------------------------------------------------------------------
    def loss_scale(self) -> float:
        """Factor that undoes the averaging downstream of ``training_step``: Lightning's division by
        ``accumulate_grad_batches``, the gradient mean over ranks, and under DeepSpeed ``backward``'s division by
        its ``gradient_accumulation_steps`` once more (tests/test_zero3.py checks the gradients to 1e-5)."""
        trainer = self.trainer
        acc = trainer.accumulate_grad_batches
        return trainer.world_size * acc * (acc if deepspeed_stage(self) is not None else 1)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        objective = self.hparams.objective
        total, metrics, size = OBJECTIVES[objective](self, batch)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss ({total.item()}, objective {objective}) at global step {self.global_step}, batch "
                f"{batch_idx}: lower the learning rate (or beta), check the data, or train in bf16 rather than fp16")
        for name, value in metrics.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=False, batch_size=size)
        return total * self.loss_scale() / batch["step_targets"].to(total.dtype)

    def dev_sums(self, batch: Batch) -> torch.Tensor:
        """``(summed NLL, target tokens)`` of one dev batch: the one dev-perplexity computation."""
        logps, _ = self(batch)
        return torch.stack([-logps.detach().double().sum(), torch.tensor(logps.numel(), dtype=torch.float64,
                                                                          device=logps.device)])

    def dev_result(self, local: torch.Tensor) -> dict[str, float] | None:
        """This rank's dev sums, summed over ranks, as :func:`dev_metrics` (a collective: every rank calls it)."""
        trainer = self.trainer
        return dev_metrics(trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local)

    @torch.no_grad()
    def dev_perplexity(self, loader: Any) -> dict[str, float] | None:
        """Dev NLL and perplexity over ``loader`` outside a validation loop (every N steps, see DevPerplexity)."""
        local = torch.zeros(2, dtype=torch.float64, device=self.device)
        with _eval_mode(self):
            for batch in loader:
                local += self.dev_sums(self.transfer_batch_to_device(batch, self.device, 0))
        return self.dev_result(local)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._dev_sums.append(self.dev_sums(batch))

    def on_validation_epoch_end(self) -> None:
        local = torch.stack(self._dev_sums).sum(0) if self._dev_sums else torch.zeros(2, dtype=torch.float64,
                                                                                       device=self.device)
        self._dev_sums = []
        values = self.dev_result(local)
        for name, value in (values or {}).items():  # the progress bar shows the perplexity
            self.log(f"dev/{name}", float(value), prog_bar=name == "perplexity", sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if (_zero(self) or {}).get("offload_optimizer", {}).get("device") == "cpu":
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer: torch.optim.Optimizer = DeepSpeedCPUAdam(params, lr=hp.learning_rate, betas=tuple(hp.betas),
                                                                weight_decay=hp.weight_decay, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.learning_rate, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        from transformers import get_cosine_with_min_lr_schedule_with_warmup

        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_cosine_with_min_lr_schedule_with_warmup(optimizer, math.ceil(hp.warmup_ratio * total), total,
                                                            min_lr_rate=hp.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _attached_trainer(module: L.LightningModule) -> Any:
    """The trainer running ``module``, or None outside a run (tests, notebooks)."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def _zero(module: L.LightningModule) -> dict[str, Any] | None:
    """The ``zero_optimization`` config when training under DeepSpeed, else None."""
    strategy = getattr(_attached_trainer(module), "strategy", None)
    # isinstance, not the class name: CPUDeepSpeedStrategy (the CPU check) is a DeepSpeedStrategy too.
    config = strategy.config if isinstance(strategy, DeepSpeedStrategy) else None
    return config.get("zero_optimization", {}) if isinstance(config, dict) else None


def deepspeed_stage(module: L.LightningModule) -> int | None:
    """The ZeRO stage of ``module``'s DeepSpeed run, or None without DeepSpeed (the module and the export read it)."""
    zero = _zero(module)
    return None if zero is None else int(zero.get("stage", 0))


def _liger_loss(module: NATModule) -> Any:
    """Liger's fused linear cross-entropy (``pip install liger-kernel``) for the SFT loss on a CUDA device, when
    installed and the LM head is called apart (``target_logits``) and whole (not under ZeRO-3); else None."""
    if module._head is None or module.device.type != "cuda" or deepspeed_stage(module) == 3:
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")
