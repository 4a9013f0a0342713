"""`nat inspect`: one built row as the model sees it, rendered and masked by the code training uses
(:func:`~lightning_nat.train.tokenization.tokenize_conversation`), trained tokens highlighted (or in ``⟦ ⟧``)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from lightning_nat.core.artifacts import read_spec
from lightning_nat.core.console import console
from lightning_nat.core.options import option
from lightning_nat.core.prompts import PromptSpec
from lightning_nat.train.tokenization import IGNORE_INDEX, ensure_chat_template, tokenize_conversation

OPEN, CLOSE = "⟦", "⟧"


def row_marker(spec: PromptSpec | None, messages: list[dict]) -> str | None:
    """The marker of the class whose question template the row's head turns follow (longest match).

    >>> from lightning_nat.core.prompts import native_spec
    >>> row_marker(native_spec(None, instruction="x"), [{"role": "system", "content": "x"},
    ...     {"role": "user", "content": "2+2?\\nPlease solve it incorrectly."}])
    'Please solve it incorrectly.'
    """
    if spec is None:
        return None
    head = "\n".join(m["content"] for m in messages if m["role"] in ("system", "user"))
    best, best_len = None, -1
    for template in spec.templates:
        before, _, after = template.partition("{question}")
        parts = [p.strip() for p in (before, after) if p.strip()]
        if parts and all(p in head for p in parts) and sum(map(len, parts)) > best_len:
            best, best_len = " ... ".join(parts), sum(map(len, parts))
    return best


def inspect_row(row: dict[str, Any], tokenizer: Any, spec: PromptSpec | None = None, plain: bool = False) -> None:
    """Print one built row rendered with the training mask: its label, marker and counts, then its text with the
    trained tokens highlighted (``plain``: in ``⟦ ⟧``)."""
    tools = json.loads(row["tools"]) if row.get("tools") else None
    enc = tokenize_conversation(tokenizer, row["messages"], tools=tools)
    trained = [lab != IGNORE_INDEX for lab in enc.labels]
    calls = sum(len(m.get("tool_calls") or []) for m in row["messages"])
    marker = row_marker(spec, row["messages"])
    console.print(f"row {row.get('id')}  label: {row.get('label')}  marker: {marker!r}", markup=False, soft_wrap=True)
    console.print(f"tokens: {len(enc.input_ids)}  trained tokens: {sum(trained)}  tool calls: {calls}", markup=False,
                  soft_wrap=True)
    text = Text()
    for is_trained, run in itertools.groupby(zip(enc.input_ids, trained), key=lambda pair: pair[1]):
        piece = tokenizer.decode([tok for tok, _ in run])
        if plain and is_trained:
            text.append(OPEN + piece + CLOSE)
        else:
            text.append(piece, style="bold black on green" if is_trained else "dim")
    console.print(text, soft_wrap=True)  # the rendered text as is, never re-wrapped


@dataclass(kw_only=True)
class InspectConfig:
    """The options of ``nat inspect``."""

    dataset: str = option(help="a `nat build --out` folder", positional=True)
    row: int = option(0, "row index in the split (default: 0)")
    split: str = option("train", "split (default: train)")
    tokenizer: str = option(help="tokenizer folder (the model's) whose chat template renders the row")
    chat_template: str | None = option(
        None, "a Jinja chat template replacing the tokenizer's (as nat fit's --data.chat_template)", metavar="FILE")
    plain: bool = option(False, "mark trained tokens with ⟦ ⟧ instead of colour (the default when the output is not a "
                                "terminal)")


def run_inspect(cfg: InspectConfig) -> int:
    """``nat inspect``: render one row with its trained tokens marked."""
    import datasets
    from transformers import AutoTokenizer

    ds = datasets.load_from_disk(cfg.dataset)
    if cfg.split not in ds:
        raise ValueError(f"{cfg.dataset}: no split {cfg.split!r} (it has {', '.join(ds)})")
    part = ds[cfg.split]
    if not 0 <= cfg.row < len(part):
        raise ValueError(f"{cfg.dataset}: split {cfg.split} has {len(part)} rows; --row {cfg.row} is out of range")
    tok = ensure_chat_template(AutoTokenizer.from_pretrained(cfg.tokenizer), cfg.chat_template)
    inspect_row(part[cfg.row], tok, read_spec(cfg.dataset), cfg.plain or not console.is_terminal)
    return 0
