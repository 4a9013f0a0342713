"""The demo's competent base: a digit-by-digit tokenizer and a short pretraining on unlabelled text.

The paper fine-tunes LLaMA-2-chat, which already copies numbers and names from its context before it
sees one trajectory. A random-init scratch model does not, and then nothing it could learn from
negatives shows. So before the strategies are compared, the scratch model reads plentiful synthetic
text that exercises those generic skills (restating sentences of a passage in order, echoing a list
of numbers, recalling the latest of several readings), never the task's solution procedure (no
operator choice, no tool call, no answer). The base is cached under a hash of every input, so a
second run, or another seed, reuses it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_nat.demo.synthetic import ITEMS, NAMES, PHRASES, START

# Tokenizer-only text: the task's fixed strings, so their words get tokens (never trained on by the base).
FORMAT_TEXTS = ["Thought:", "Action:", "Observation:", "calculate[", "finish[", "So I add", "So I subtract",
                "So I multiply by", "So I divide by", "So the answer is", "Episode finished",
                "How many are left? What is the number now? How many does he have now?"]


@dataclass(frozen=True)
class BaseSpec:
    """Everything the base depends on; its hash names the cache entry."""

    vocab_size: int = 600
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    texts: int = 6000
    steps: int = 600
    batch_size: int = 16
    block: int = 256
    learning_rate: float = 3e-3
    seed: int = 1234
    threads: int = 1  # float sums depend on the thread count, so the weights do too
    version: int = 3  # bump when the text generators or the training change (3: through make_trainer)

    def key(self) -> str:
        """A short hash of every field.

        >>> BaseSpec().key() == BaseSpec().key() != BaseSpec(steps=1).key()
        True
        """
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def _story(rng: random.Random) -> list[str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    sentences = [rng.choice(START).format(name=name, a=rng.randint(2, 60), item=item)]
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(list(PHRASES))
        sentences.append(rng.choice(PHRASES[op]).format(name=name, b=rng.randint(1, 20), item=item))
    return sentences


def _chat(role: str, text: str) -> str:
    return f"<|im_start|>{role}\n{text}<|im_end|>\n"


def _transcript(rng: random.Random) -> str:
    """A chat where the assistant follows a passage sentence by sentence, noting numbers the user reports.

    Generic instruction following in the chat layout the task uses: restate the next sentence, copy its
    number and the number the user reported last. No operator is chosen, nothing is computed, no answer given.
    """
    sentences = _story(rng)
    numbers = [int(w.rstrip(".")) for s in sentences for w in s.split() if w.rstrip(".").isdigit()]
    parts = [_chat("system", rng.choice(CHAT_SYSTEM)), _chat("user", " ".join(sentences))]
    last = numbers[0]
    for sentence, number in zip(sentences[1:], numbers[1:]):
        parts.append(_chat("assistant", f"Read: {sentence}\nNote: {last} and {number}"))
        last = rng.randint(0, 400)
        parts.append(_chat("user", f"Reading: {last}"))
    parts.append(_chat("assistant", f"Done: {last}"))
    return "".join(parts)


CHAT_SYSTEM = ["Follow the passage one sentence per turn.", "Go through the text sentence by sentence.",
               "Restate each sentence in turn and note the numbers."]


def pretraining_text(rng: random.Random) -> str:
    """One unlabelled passage exercising a copying skill: a chat transcript, or restate, echo or recall.

    >>> text = pretraining_text(random.Random(0)); isinstance(text, str) and len(text) > 20
    True
    """
    kind = rng.randrange(6)
    if kind < 3:
        return _transcript(rng)
    if kind == 3:  # restate a passage's sentences in order, one per line
        sentences = _story(rng)
        return " ".join(sentences) + "\nIn order:\n" + "\n".join(f"- {s}" for s in sentences)
    if kind == 4:  # echo a list of numbers
        numbers = [str(rng.randint(0, 400)) for _ in range(rng.randint(2, 6))]
        return f"Numbers: {' '.join(numbers)}. Again: {' '.join(numbers)}."
    readings = [str(rng.randint(0, 400)) for _ in range(rng.randint(2, 5))]  # recall the latest and the first
    lines = "\n".join(f"Reading: {r}" for r in readings)
    return f"{lines}\nLatest: {readings[-1]}. First: {readings[0]}."


def pretraining_texts(n: int, seed: int) -> list[str]:
    """``n`` passages, deterministic from ``seed``.

    >>> pretraining_texts(3, 1) == pretraining_texts(3, 1)
    True
    """
    rng = random.Random(seed)
    return [pretraining_text(rng) for _ in range(n)]


def _block_batches(blocks: Any, spec: BaseSpec) -> Any:
    """``spec.steps`` batches of ``batch_size`` blocks drawn with replacement by a generator seeded with ``spec.seed``.

    Every token of a block is a target (its first has no position before it): an SFT batch whose mask is everything.
    """
    import torch
    from torch.utils.data import DataLoader

    gen = torch.Generator().manual_seed(spec.seed)
    rows, width = spec.batch_size, blocks.shape[1]
    seq = torch.arange(rows)[:, None].expand(rows, width)
    picks = (blocks[torch.randint(len(blocks), (rows,), generator=gen)] for _ in range(spec.steps))
    batches = [{"input_ids": b, "labels": b, "seq": seq, "step_targets": torch.tensor(rows * (width - 1))} for b in picks]
    return DataLoader(batches, batch_size=None)


def make_base(spec: BaseSpec, cache_dir: str | Path, say: Callable[[str], None] = print,
              max_positions: int = 1024, device: str = "cpu",
              on_step: Callable[[int, Any, Any], None] | None = None) -> tuple[Path, dict[str, Any]]:
    """The pretrained base for ``spec``: from the cache, or trained and cached. Returns (folder, info).

    Pretraining is ``NATModule`` under :func:`~lightning_nat.train.trainer.make_trainer` (fine-tuning's loss,
    cosine schedule with warm-up and clipping) on fixed blocks of the text stream, every token a target.
    ``on_step(step, model, tokenizer)``, if given, runs after every optimizer step (a probe watching
    skills emerge: ``bench/demo_base_probe.py --pretrain``).
    """
    import shutil
    import time
    from types import SimpleNamespace

    import lightning as L
    import torch
    from transformers import AutoTokenizer

    from lightning_nat.train.model import NATModule
    from lightning_nat.train.scratch import make_scratch_model
    from lightning_nat.train.trainer import make_trainer

    out = Path(cache_dir) / f"base-{spec.key()}"
    if (out / "base.json").exists():
        return out, {**json.loads((out / "base.json").read_text()), "from_cache": True}
    start = time.time()
    texts = pretraining_texts(spec.texts, spec.seed)
    tmp = out.with_name(out.name + ".tmp")
    for stale in (tmp, out):  # half-written entries of an earlier, killed run
        shutil.rmtree(stale, ignore_errors=True)
    init = make_scratch_model(tmp / "init", texts + FORMAT_TEXTS, spec.vocab_size, spec.hidden_size, spec.layers,
                              spec.heads, max_positions, seed=spec.seed, split_digits=True)
    tokenizer = AutoTokenizer.from_pretrained(init)
    torch.set_num_threads(spec.threads)  # part of the spec: the weights depend on it
    # One stream of passages separated by EOS, cut into fixed blocks: no padding, every token trains.
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = torch.tensor(stream[: len(stream) // spec.block * spec.block]).view(-1, spec.block)
    losses: list[float] = []

    class Watch(L.Callback):
        """The loss, progress lines and the ``on_step`` probe, after every optimizer step."""

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            losses.append(float(outputs["loss"]))
            if on_step is not None:
                on_step(trainer.global_step, pl_module.model, tokenizer)
            if trainer.global_step % max(1, spec.steps // 5) == 0:
                say(f"pretraining the base: step {trainer.global_step}/{spec.steps}, loss {_recent(losses):.3f}")

    module = NATModule(str(init), learning_rate=spec.learning_rate, warmup_ratio=0.05)
    sizes = SimpleNamespace(hparams=SimpleNamespace(global_batch_size=spec.batch_size, micro_batch_size=spec.batch_size))
    trainer = make_trainer(sizes, accelerator="gpu" if device.startswith("cuda") else "cpu", max_steps=spec.steps,
                           gradient_clip_val=1.0, deterministic=True, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, callbacks=[Watch()])
    trainer.fit(module, train_dataloaders=_block_batches(blocks, spec))
    shutil.rmtree(init)
    module.model.eval().to("cpu").save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {"spec": asdict(spec), "key": spec.key(), "tokens": len(stream), "blocks": int(blocks.shape[0]),
            "final_loss": round(_recent(losses), 4), "seconds": round(time.time() - start, 1)}
    (tmp / "base.json").write_text(json.dumps(info, indent=1))
    tmp.rename(out)
    return out, {**info, "from_cache": False}


def _recent(losses: list[float]) -> float:
    return sum(losses[-20:]) / len(losses[-20:])
