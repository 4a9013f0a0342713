"""Chat-template rendering with an assistant-only loss mask.

The mask is computed on the tokenization of the *whole* rendered conversation:
each assistant turn's character span is found by rendering prefixes of the
conversation (verified to be string prefixes of the full render), and a token
is a target when its character offsets overlap such a span. Turns are never
tokenized in isolation, so BPE merges across turn boundaries cannot shift the
mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .prompts import LLAMA2_CHAT_TEMPLATE

IGNORE_INDEX = -100


class ConversationError(ValueError):
    """A conversation that cannot be rendered into a sound training example."""


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give a tokenizer without a chat template the Llama-2-chat one."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    return tokenizer


def _render(tokenizer: Any, messages: Sequence[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in messages],
                                         tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The full render and the character spans of every trained (assistant) turn.

    A span runs from where the assistant's text starts to where the render of the
    conversation up to and including that turn ends, so it covers the end-of-turn
    marker the template appends (``</s>``, ``<|im_end|>``).
    """
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if not m.get("train", m["role"] == "assistant"):
            continue
        if m["role"] != "assistant":
            raise ConversationError(f"message {i} is a {m['role']} turn flagged for training; only assistant turns are")
        start_text = _render(tokenizer, messages[:i], generation_prompt=True)
        if not full.startswith(start_text):
            start_text = _render(tokenizer, messages[:i])
        end_text = _render(tokenizer, messages[: i + 1])
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


def tokenize_conversation(tokenizer: Any, messages: Sequence[dict], max_length: int | None = None) -> TokenizedConversation:
    """Token ids and labels (``-100`` outside assistant turns) of one conversation.

    Raises :class:`ConversationError` if no token is a target.
    """
    full, spans = assistant_spans(tokenizer, messages)
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
                   overlong: Literal["truncate", "drop"] = "truncate") -> dict[str, list]:
    """``datasets.map`` function (batched): adds input_ids, labels, length, n_targets and flags.

    A row that is too long is truncated (``truncated=True``) or marked for dropping
    (``keep=False``); so is one whose truncation left no target.
    """
    out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], "n_targets": [], "truncated": [], "keep": []}
    for row_id, messages in zip(batch["id"], batch["messages"]):
        try:
            enc = tokenize_conversation(tokenizer, messages, max_length)
        except ConversationError as exc:
            raise ConversationError(f"conversation {row_id!r}: {exc}") from None
        n_targets = sum(lab != IGNORE_INDEX for lab in enc.labels)
        keep = n_targets > 0 and not (enc.truncated and overlong == "drop")
        out["input_ids"].append(enc.input_ids)
        out["labels"].append(enc.labels)
        out["length"].append(len(enc.input_ids))
        out["n_targets"].append(n_targets)
        out["truncated"].append(enc.truncated)
        out["keep"].append(keep)
    return out
