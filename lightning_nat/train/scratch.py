"""An offline scratch model: a tiny random-init Llama and a BPE tokenizer trained here, saved as an ordinary
Hugging Face folder, so tests, CPU runs and the demo load it as a real checkpoint. Nothing is downloaded."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lightning_nat.core.console import console
from lightning_nat.core.options import option
from lightning_nat.core.outputs import writing

# ChatML. The {% generation %} block marks what an assistant turn trains on (its text, <|im_end|> and
# the newline after it, exactly our mask), so TRL's `assistant_only_loss=True` works with it too; it
# does not change the rendered text.
CHATML_TEMPLATE = (
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- m['content'] + '<|im_end|>\\n' -}}{% endgeneration %}"
    "{%- else -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat_template: str | None = CHATML_TEMPLATE,
                    split_digits: bool = False):
    """A byte-level BPE tokenizer trained on ``texts``, as a ``PreTrainedTokenizerFast`` (no chat template: training
    falls back to Llama-2-chat; ``split_digits``: one token per digit, as Llama's, so numbers copy digit by digit)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat_template:
        fast.chat_template = chat_template
        # With ChatML the turn ends at <|im_end|>: that is the token generation stops on.
        fast.eos_token = "<|im_end|>"
    return fast


def make_scratch_model(out_dir: str | os.PathLike, texts: Iterable[str], vocab_size: int = 512, hidden_size: int = 64,
                       num_layers: int = 2, num_heads: int = 4, max_position_embeddings: int = 4096, seed: int = 0,
                       chat_template: str | None = CHATML_TEMPLATE, split_digits: bool = False) -> Path:
    """Train a tokenizer on ``texts``, build a random-init Llama for it, save both to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(texts, vocab_size, chat_template, split_digits)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 4,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # its generation config takes the config's eos and pad ids
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def conversation_texts(dataset_dir: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Every message of a built dataset (``nat build`` output), to train a tokenizer on."""
    import datasets

    ds = datasets.load_from_disk(str(dataset_dir))
    splits = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
    return [m["content"] for split in splits for messages in split[:limit or len(split)]["messages"] for m in messages]


@dataclass(kw_only=True)
class ScratchConfig:
    """The options of ``nat scratch``."""

    dataset: str = option(help="a `nat build --out` folder whose texts train the tokenizer")
    out: str = option(help="output folder (a normal Hugging Face model folder; a rerun replaces its own output)")
    vocab_size: int = option(512, "BPE vocabulary size (default: 512)", min=64)
    hidden_size: int = option(64, "model width (default: 64)", min=8)
    layers: int = option(2, "transformer layers (default: 2)", min=1)
    heads: int = option(4, "attention heads (default: 4)", min=1)
    template: Literal["chatml", "llama2"] = option(
        "chatml", "chat template: ChatML, or none so training falls back to Llama-2-chat [INST] (default: chatml)")
    seed: int = option(0, "weight init seed (default: 0)")
    overwrite: bool = option(False, "replace --out even if it is a non-empty folder that is not an earlier "
                                    "`nat scratch` output (its files are deleted)")


def run_scratch(cfg: ScratchConfig) -> int:
    """``nat scratch``: train the tokenizer on the dataset's texts and save a random-init model beside it."""
    texts = conversation_texts(cfg.dataset)
    with writing(cfg.out, "nat scratch", cfg.overwrite, inputs=[cfg.dataset]) as staged:
        make_scratch_model(staged, texts, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                           num_layers=cfg.layers, num_heads=cfg.heads, seed=cfg.seed,
                           chat_template=CHATML_TEMPLATE if cfg.template == "chatml" else None)
    console.print(f"wrote a random-init scratch model and its tokenizer ({len(texts)} texts) to {cfg.out}")
    return 0
