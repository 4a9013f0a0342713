"""Tokenization on the invented fixture (tests/fixture_data.py): runs in a clone without ../shared/data."""

import datasets
import pytest
from transformers import AutoTokenizer

from lightning_nat.train.datamodule import collate
from lightning_nat.train.tokenization import (
    IGNORE_INDEX,
    ConversationError,
    ensure_chat_template,
    tokenize_batch,
    tokenize_conversation,
)


def _squash(text):
    return "".join(text.split())


@pytest.mark.parametrize("template", ["chatml", "llama2"])
def test_targets_are_exactly_the_trained_assistant_turns(fixture_model, fixture_dataset, template):
    tok = AutoTokenizer.from_pretrained(fixture_model)
    if template == "llama2":
        tok.chat_template = None
        tok.eos_token = "</s>"
        ensure_chat_template(tok)
    end = "<|im_end|>" if template == "chatml" else "</s>"
    rows = datasets.load_from_disk(str(fixture_dataset))["train"].select(range(12))
    enc = tokenize_batch(rows.to_dict(), tok, max_length=100_000)
    items = [{"input_ids": i, "labels": lab, "step_targets": 1, "weight": 1.0}
             for i, lab in zip(enc["input_ids"], enc["labels"])]
    batch = collate(items, tok.pad_token_id)
    for r, row in enumerate(rows):
        # Every trained assistant turn; the reference prompt's acknowledgement turn is an untrained assistant turn.
        assert [m for m in row["messages"] if m["role"] == "assistant" and not m["train"]] == \
            [{"role": "assistant", "content": "I've understood your instruction, start please.", "train": False,
                 "tool_calls": None, "tool_call_id": None}]
        want = "".join(m["content"].strip() + end for m in row["messages"] if m["train"])
        got = tok.decode([t for t in batch["labels"][r].tolist() if t != IGNORE_INDEX])
        assert _squash(got) == _squash(want)
        # and nothing from the prompt or the observations
        assert "Observation:" not in got and "Question:" not in got and "understood your instruction" not in got
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_no_target_fails_loudly(fixture_model):
    tok = AutoTokenizer.from_pretrained(fixture_model)
    with pytest.raises(ConversationError, match="no assistant turn"):
        tokenize_conversation(tok, [{"role": "user", "content": "hi", "train": False}])
    with pytest.raises(ConversationError, match="only assistant turns"):
        tokenize_conversation(tok, [{"role": "user", "content": "hi", "train": True}])


def test_truncation_is_counted(fixture_model, fixture_dataset):
    tok = AutoTokenizer.from_pretrained(fixture_model)
    rows = datasets.load_from_disk(str(fixture_dataset))["train"].select(range(8)).to_dict()
    enc = tokenize_batch(rows, tok, max_length=64)
    assert all(len(i) <= 64 for i in enc["input_ids"]) and sum(enc["truncated"]) > 0
    dropped = tokenize_batch(rows, tok, max_length=64, overlong="drop")
    assert [not k for k in dropped["keep"]] == dropped["truncated"]
