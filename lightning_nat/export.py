"""Export a trained module as a Hugging Face folder, consolidating sharded weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch


def full_state_dict(trainer: L.Trainer, module: Any) -> dict[str, torch.Tensor] | None:
    """The model's complete weights on rank 0 (``None`` elsewhere). Collective: every rank must call it.

    Under DeepSpeed ZeRO-3 the partitions are gathered (16-bit), under FSDP a full
    state dict is assembled on CPU; otherwise the local weights are complete already.
    """
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    prefix = "model."
    # isinstance rather than class names, so subclasses (CPUDeepSpeedStrategy) take the same path.
    if isinstance(strategy, DeepSpeedStrategy) and int(strategy.config.get("zero_optimization", {}).get("stage", 0)) == 3:
        sd = strategy.deepspeed_engine._zero3_consolidated_16bit_state_dict()
    elif isinstance(strategy, (FSDPStrategy, ModelParallelStrategy)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = module.state_dict()
    if trainer.global_rank != 0 or sd is None:
        return None
    return {k[len(prefix):]: v.detach().cpu() for k, v in sd.items() if k.startswith(prefix)}


def export_hf(trainer: L.Trainer, module: Any, out_dir: str | os.PathLike) -> Path | None:
    """Write ``out_dir`` that ``AutoModelForCausalLM.from_pretrained`` loads (weights, config, tokenizer)."""
    sd = full_state_dict(trainer, module)
    if sd is None:
        return None
    from transformers import AutoTokenizer

    from .tokenization import ensure_chat_template

    out = Path(out_dir)
    model = module.model
    if module.hparams.lora_r > 0:
        # Fold the adapters into the base weights so the export is a plain model. Under ZeRO-3 the live
        # model's parameters are empty partitions that cannot take the gathered weights: merge in a copy.
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            model = _unpartitioned_copy(model)
        model.load_state_dict(sd, strict=False)
        model = model.merge_and_unload()
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    missing = [k for k, p in model.state_dict().items() if k not in sd]
    if missing:
        raise RuntimeError(f"export is missing {len(missing)} tensors (first: {missing[0]})")
    empty = [k for k, v in sd.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"export holds {len(empty)} empty tensors (first: {empty[0]}): sharded weights were not gathered")
    model.save_pretrained(out, state_dict=sd)
    tok = AutoTokenizer.from_pretrained(module.hparams.model_name_or_path)
    ensure_chat_template(tok).save_pretrained(out)
    return out


def _unpartitioned_copy(peft_model: Any) -> Any:
    """A fresh CPU model with ``peft_model``'s architecture and adapters, built outside ZeRO-3.

    transformers builds models under ``deepspeed.zero.Init`` while an ``HfDeepSpeedConfig`` is alive
    (the module holds one during ZeRO-3 training), so that switch is turned off for the build.
    """
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    base = peft_model.get_base_model()
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        plain = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
    return get_peft_model(plain, peft_model.peft_config[peft_model.active_adapter])
