"""Chat-template rendering with an assistant-only loss mask.

The mask is computed on the tokenization of the whole rendered conversation: each assistant turn's character
span is found by rendering prefixes (checked to be prefixes of the full render), and a token is a target when
its offsets overlap a span, so BPE merges across turn boundaries cannot shift it. Tool calls render through
the template's own ``tools=``/``tool_calls`` support and are trained with their turn; tool results are not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core.prompts import LLAMA2_CHAT_TEMPLATE
from lightning_nat.core.trajectory import as_openai, has_tool_calls

IGNORE_INDEX = -100


class ConversationError(ValueError):
    """A conversation that cannot be rendered into a sound training example."""


def ensure_chat_template(tokenizer: Any, path: str | None = None) -> Any:
    """Give a tokenizer the Jinja chat template in ``path`` (``--chat-template FILE``), else keep its own, else
    give it the Llama-2-chat one."""
    if path:
        tokenizer.chat_template = Path(path).read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    return tokenizer


def eos_ids(*sources: Any) -> list[int]:
    """Every end-of-sequence id named by the sources (ints, lists, or ``None``), in order, once.

    >>> eos_ids(5, [2, 5], None, 7)
    [5, 2, 7]
    """
    out: list[int] = []
    for src in sources:
        for i in src if isinstance(src, (list, tuple)) else [src]:
            if i is not None and int(i) not in out:
                out.append(int(i))
    return out


def _fix_hint(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    return (f"the chat template of {name} cannot render tool calls; give one that does with --chat-template FILE "
            "(nat fit: --data.chat_template FILE; a Jinja template that takes tools= and messages with tool_calls, "
            "e.g. the model family's tool-use template)")


def _render(tokenizer: Any, messages: Sequence[dict], generation_prompt: bool = False,
            tools: list[dict] | None = None) -> str:
    msgs = [as_openai(m, wire=False) for m in messages]
    try:
        return tokenizer.apply_chat_template(msgs, tools=tools or None, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # a template's raise_exception, or one that chokes on tool_calls
        if not (tools or has_tool_calls(messages)):
            raise
        raise ConversationError(f"{_fix_hint(tokenizer)} ({type(exc).__name__}: {exc})") from None


def _leaves(value: Any) -> list[str]:
    """The text of every string and number inside call arguments (what a faithful render must show).

    >>> _leaves({"city": "Oslo", "days": [1, 2], "exact": True})
    ['city', 'Oslo', 'days', '1', '2', 'exact']
    """
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [str(k), *_leaves(v)]]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return [str(value)] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else []


def _check_calls_rendered(tokenizer: Any, full: str, messages: Sequence[dict], tools: list[dict] | None) -> None:
    """Refuse a render that lost a call, its arguments, a tool result or a tool schema (a template without tool
    support): each must appear where the template rendered its own message, not merely somewhere (a system prompt
    that names the tool). Messages a template renders as one block (Hermes puts parallel tool results in one
    user turn) are checked against that block."""
    start, needed = 0, []
    for i, m in enumerate(messages):
        for call in as_openai(m, wire=False).get("tool_calls") or []:
            name = call["function"]["name"]
            needed += [(name, i, f"the call to {name!r}")]
            needed += [(x, i, f"the argument {x!r} of {name!r}") for x in _leaves(call["function"]["arguments"])]
        if m["role"] == "tool":
            needed.append((m["content"].strip(), i, "the tool result"))
        elif m.get("tool_calls"):
            needed.append((m["content"].strip(), i, "the text beside the calls"))
        end = _render(tokenizer, messages[: i + 1], tools=tools)
        if i + 1 < len(messages) and not full.startswith(end):
            continue  # this message's block is not closed yet
        segment, start = full[start:len(end)], len(end)
        for text, j, what in needed:
            if text not in segment:
                raise ConversationError(f"{_fix_hint(tokenizer)} (message {j}: {what} is missing where the template "
                                        "rendered that message)")
        needed = []
    for t in tools or []:
        fn = t["function"]
        for name in [fn["name"], *(fn.get("parameters") or {}).get("properties", {})]:
            if name not in full:
                raise ConversationError(f"{_fix_hint(tokenizer)} (the schema of tool {fn['name']!r} is not rendered: "
                                        f"{name!r} is missing)")


def assistant_spans(tokenizer: Any, messages: Sequence[dict],
                    tools: list[dict] | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The full render and the character spans of every trained (assistant) turn.

    A span runs from the turn's text to the end of the render up to that turn, so it covers the end-of-turn
    marker the template appends (``<|im_end|>``) and the calls it writes.
    """
    full = _render(tokenizer, messages, tools=tools)
    if tools or has_tool_calls(messages):
        _check_calls_rendered(tokenizer, full, messages, tools)
    spans = []
    for i, m in enumerate(messages):
        if not m.get("train", m["role"] == "assistant"):
            continue
        if m["role"] != "assistant":
            raise ConversationError(f"message {i} is a {m['role']} turn flagged for training; only assistant turns are")
        start_text = _render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
        if not full.startswith(start_text):
            start_text = _render(tokenizer, messages[:i], tools=tools)
        end_text = _render(tokenizer, messages[: i + 1], tools=tools)
        if not (full.startswith(start_text) and full.startswith(end_text)):
            raise ConversationError("the chat template does not render prefixes of the conversation as prefixes of it; "
                                    "cannot locate the assistant turns")
        start, end = len(start_text), len(end_text)
        # The template may open the turn with whitespace; the target starts at the content.
        while start < end and full[start].isspace():
            start += 1
        if end > start:
            spans.append((start, end))
    return full, spans


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict], max_length: int | None = None,
                          tools: list[dict] | None = None) -> TokenizedConversation:
    """Token ids and labels (``-100`` outside assistant turns) of one conversation; none a target is an error."""
    full, spans = assistant_spans(tokenizer, messages, tools)
    if not spans:
        raise ConversationError("the conversation has no assistant turn to train on")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for t, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        if j < len(spans) and a < spans[j][1] and b > spans[j][0]:
            labels[t] = ids[t]
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None and pad != tokenizer.eos_token_id:
        # pad is never a target, even where a template writes the pad token itself.
        labels = [IGNORE_INDEX if i == pad else lab for i, lab in zip(ids, labels)]
    if all(lab == IGNORE_INDEX for lab in labels):
        raise ConversationError("no token of the rendered conversation falls in an assistant turn")
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, labels = ids[:max_length], labels[:max_length]
    return TokenizedConversation(ids, labels, truncated)


def tokenize_batch(batch: dict[str, list], tokenizer: Any, max_length: int,
                   overlong: Literal["truncate", "drop"] = "truncate",
                   sides: Sequence[str] = ("messages",)) -> dict[str, list]:
    """``datasets.map`` function (batched): every objective's one tokenization.

    Each side (``messages``, a DPO row's ``rejected`` too, its columns prefixed ``rejected_``) is tokenized with
    the row's tools; ``length`` is the longest side's, and a row is kept when every side kept a target (and,
    with ``overlong="drop"``, none was truncated).
    """
    out: dict[str, list] = {}
    all_tools = batch.get("tools") or [None] * len(batch["id"])
    per_side = []  # each side's (encoding, target count) of every row
    for side in sides:
        prefix, where = ("", "") if side == "messages" else (f"{side}_", f" ({side} side)")
        encs = []
        for row_id, messages, tools in zip(batch["id"], batch[side], all_tools):
            try:
                encs.append(tokenize_conversation(tokenizer, messages, max_length, json.loads(tools) if tools else None))
            except ConversationError as exc:
                raise ConversationError(f"conversation {row_id!r}{where}: {exc}") from None
        out[prefix + "input_ids"] = [e.input_ids for e in encs]
        out[prefix + "labels"] = [e.labels for e in encs]
        out[prefix + "n_targets"] = [sum(lab != IGNORE_INDEX for lab in e.labels) for e in encs]
        per_side.append(list(zip(encs, out[prefix + "n_targets"])))
    rows = list(zip(*per_side))
    out["length"] = [max(len(e.input_ids) for e, _ in row) for row in rows]
    out["truncated"] = [any(e.truncated for e, _ in row) for row in rows]
    out["keep"] = [all(n > 0 and not (e.truncated and overlong == "drop") for e, n in row) for row in rows]
    return out


def first_target(labels: list[int]) -> int:
    """Index of the first target token: where the prompt ends and the trajectory begins.

    >>> first_target([-100, -100, 7, -100, 9])
    2
    """
    return next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)


def mismatched_pair(prompt_ids: list[int], prompt_labels: list[int], other_ids: list[int], other_labels: list[int],
                    max_length: int) -> tuple[list[int], list[int]]:
    """One row's prompt followed by another row's trajectory (KTO's mismatched pair), as ids and labels.

    >>> mismatched_pair([1, 2, 3, 4], [-100, -100, 3, 4], [5, 6, 7], [-100, 6, 7], max_length=10)
    ([1, 2, 6, 7], [-100, -100, 6, 7])
    """
    p, o = first_target(prompt_labels), first_target(other_labels)
    ids = prompt_ids[:p] + other_ids[o:]
    labels = [IGNORE_INDEX] * p + other_labels[o:]
    return ids[:max_length], labels[:max_length]


def mismatch_partners(n: int, seed: int) -> list[int]:
    """A seeded derangement: row ``i`` borrows the trajectory of row ``partners[i] != i`` (KTO).

    >>> p = mismatch_partners(5, seed=0); sorted(p) == list(range(5)) and all(i != j for i, j in enumerate(p))
    True
    """
    if n < 2:
        raise ValueError("KTO needs at least two rows to form mismatched pairs")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for k, i in enumerate(order):
        partners[i] = order[(k + 1) % n]
    return partners
