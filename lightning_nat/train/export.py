"""Export a trained module as a Hugging Face folder, consolidating sharded weights, and the callback that does it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

from lightning_nat.core.artifacts import write_spec
from lightning_nat.train.model import deepspeed_stage
from lightning_nat.train.tokenization import ensure_chat_template, eos_ids


def full_state_dict(trainer: L.Trainer, module: Any) -> dict[str, torch.Tensor] | None:
    """The model's complete weights on rank 0 (``None`` elsewhere), gathered from ZeRO-3 or FSDP shards; a
    collective: every rank must call it."""
    prefix = "model."
    if deepspeed_stage(module) == 3:
        sd = _gathered_state_dict(module, trainer.global_rank)
    elif isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy)):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = module.state_dict()
    if trainer.global_rank != 0 or sd is None:
        return None
    return {k[len(prefix):]: v.detach().cpu() for k, v in sd.items() if k.startswith(prefix)}


def export_hf(trainer: L.Trainer, module: Any, out_dir: str | os.PathLike, prompt_spec: Any = None,
              chat_template: str | None = None) -> Path | None:
    """Write ``out_dir`` that ``AutoModelForCausalLM.from_pretrained`` loads (weights, config, tokenizer), with
    the training prompt ``prompt_spec`` as ``nat_prompt.json``, where ``nat eval`` finds it."""
    sd = full_state_dict(trainer, module)
    if sd is None:
        return None
    from transformers import AutoTokenizer

    out = Path(out_dir)
    model = module.model
    if module.hparams.lora_r > 0:
        # Fold the adapters into the base weights so the export is a plain model. Under ZeRO-3 the live
        # model's parameters are empty partitions that cannot take the gathered weights: merge in a copy.
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            model = _unpartitioned_copy(model, getattr(module, "_hf_ds_config", None))
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
    ensure_chat_template(tok, chat_template).save_pretrained(out)
    serving_generation_config(model, tok).save_pretrained(out)
    if prompt_spec is not None:
        write_spec(prompt_spec, out)
    return out


def serving_generation_config(model: Any, tokenizer: Any) -> Any:
    """The ``generation_config.json`` of an export: sample when a request asks for it, stop where training did.

    ``do_sample: true`` (and no temperature, top-p or top-k), or servers that start from it decode greedily
    whatever a request asks; the end-of-turn token training closed turns with comes first among the eos ids.
    """
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    eos = eos_ids(tokenizer.eos_token_id, getattr(base, "eos_token_id", None), model.config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else getattr(base, "pad_token_id", None)
    return GenerationConfig(do_sample=True, eos_token_id=eos or None, pad_token_id=pad,
                            bos_token_id=getattr(base, "bos_token_id", None) or model.config.bos_token_id)


def _gathered_state_dict(module: Any, rank: int) -> dict[str, torch.Tensor] | None:
    """ZeRO-3's partitioned weights in full on rank 0's CPU, gathered one module at a time (DeepSpeed's
    public ``GatheredParameters``), so no device ever holds the whole model. A collective."""
    import deepspeed

    full: dict[str, torch.Tensor] = {}
    for name, sub in module.named_modules():
        own = list(sub.named_parameters(prefix=name, recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in own], modifier_rank=None):
            if rank == 0:
                full.update((k, p.detach().cpu().clone()) for k, p in own)
    # Buffers are not partitioned; a partitioned parameter's own entry is an empty placeholder.
    return {k: full.get(k, v) for k, v in module.state_dict().items()} if rank == 0 else None


def _unpartitioned_copy(peft_model: Any, ds_config: Any) -> Any:
    """A fresh CPU model with ``peft_model``'s architecture and adapters, built outside ZeRO-3 (the live
    ``HfDeepSpeedConfig``, which would make transformers build under ``zero.Init``, is unset meanwhile)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed as hf_deepspeed

    base = peft_model.get_base_model()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        plain = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)
    finally:
        if ds_config is not None:
            hf_deepspeed.set_hf_deepspeed_config(ds_config)
    return get_peft_model(plain, peft_model.peft_config[peft_model.active_adapter])


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
        dm = trainer.datamodule
        # The chat template training rendered with (data.chat_template) is the one the exported model serves with.
        self.written = export_hf(trainer, pl_module, out, prompt_spec=getattr(dm, "prompt_spec", None),
                                 chat_template=getattr(getattr(dm, "hparams", None), "chat_template", None))
        if self.written is not None:
            print(f"exported Hugging Face model to {self.written}")
