"""`nat inspect`: one built row as the model sees it, rendered and masked by the code training uses
(:func:`~lightning_nat.train.tokenization.tokenize_conversation`), trained tokens highlighted (or in ``⟦ ⟧``)."""

from __future__ import annotations

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


@dataclass
class InspectedRow:
    """A row's rendered pieces ``(text, trained)``, its counts, label and marker."""

    row_id: str
    label: str
    marker: str | None
    pieces: list[tuple[str, bool]]
    tokens: int
    trained: int
    calls: int


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


def inspect_row(row: dict[str, Any], tokenizer: Any, spec: PromptSpec | None = None) -> InspectedRow:
    """Render one built row with the training mask: pieces of text, each trained or not."""
    tools = json.loads(row["tools"]) if row.get("tools") else None
    enc = tokenize_conversation(tokenizer, row["messages"], tools=tools)
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    state = None
    for tok, lab in zip(enc.input_ids, enc.labels):
        trained = lab != IGNORE_INDEX
        if state is not None and trained != state:
            pieces.append((tokenizer.decode(run), state))
            run = []
        run.append(tok)
        state = trained
    if run:
        pieces.append((tokenizer.decode(run), bool(state)))
    calls = sum(len(m.get("tool_calls") or []) for m in row["messages"])
    return InspectedRow(str(row.get("id")), str(row.get("label")), row_marker(spec, row["messages"]), pieces,
                        len(enc.input_ids), sum(lab != IGNORE_INDEX for lab in enc.labels), calls)


def print_inspected(res: InspectedRow, plain: bool) -> None:
    """Print the header (label, marker, counts) and the rendered text with its trained tokens marked."""
    console.print(f"row {res.row_id}  label: {res.label}  marker: {res.marker!r}", markup=False, soft_wrap=True)
    console.print(f"tokens: {res.tokens}  trained tokens: {res.trained}  tool calls: {res.calls}", markup=False, soft_wrap=True)
    text = Text()
    for piece, trained in res.pieces:
        if plain and trained:
            text.append(OPEN + piece + CLOSE)
        else:
            text.append(piece, style="bold black on green" if trained else "dim")
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
    res = inspect_row(part[cfg.row], tok, read_spec(cfg.dataset))
    print_inspected(res, cfg.plain or not console.is_terminal)
    return 0
