"""`nat export`: built conversations in the layouts other trainers read (TRL, LLaMA-Factory, axolotl).

One pure function per layout turns one built row into one JSON record; :func:`export_dataset`
writes a split per JSONL file, a LLaMA-Factory ``dataset_info.json`` beside them, and returns
the axolotl config snippet. Every layout ends each conversation on an assistant turn: the
environment's last observation (``Observation: Episode finished``) trains nothing, and
LLaMA-Factory drops a conversation that does not end on the assistant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core.options import option
from lightning_nat.core.trajectory import call_to_openai, calls_to_sharegpt, has_tool_calls, message_from_row, tools_of_row

LAYOUTS = ("openai", "sharegpt", "alpaca")
SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}


class ExportError(ValueError):
    """A row the requested layout cannot express faithfully."""


def trim_to_last_assistant(messages: list[dict]) -> list[dict]:
    """The conversation up to and including its last assistant turn.

    >>> trim_to_last_assistant([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
    ...                         {"role": "user", "content": "Observation: Episode finished"}])
    [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise ExportError("no assistant turn")
    return list(messages[: last + 1])


def _check_trained_turns(messages: list[dict], layout: str) -> None:
    # sharegpt and alpaca cannot say which assistant turn is trained: every one is, and only those.
    for i, m in enumerate(messages):
        if m.get("train", m["role"] == "assistant") != (m["role"] == "assistant"):
            raise ExportError(f"message {i} ({m['role']}) has train={m.get('train')}; the {layout} layout trains "
                              "every assistant turn and nothing else (use --to openai, which keeps per-turn weights)")


def to_openai(row: dict) -> dict:
    """OpenAI chat fine-tuning layout (what TRL's SFTTrainer reads): ``messages``, ``weight`` on assistant turns.

    >>> to_openai({"id": "x", "label": "negative", "messages": [
    ...     {"role": "user", "content": "q", "train": False}, {"role": "assistant", "content": "a", "train": True},
    ...     {"role": "user", "content": "Observation: Episode finished", "train": False}]})
    {'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a', 'weight': 1}]}
    """
    messages = []
    for m in trim_to_last_assistant(row["messages"]):
        out = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            # The OpenAI wire form: arguments as JSON text, and no text beside the calls is null.
            out["content"] = m["content"] or None
            out["tool_calls"] = [call_to_openai(c) for c in message_from_row(m)["tool_calls"]]
        if m.get("tool_call_id") is not None:
            out["tool_call_id"] = m["tool_call_id"]
        if m["role"] == "assistant":
            out["weight"] = int(bool(m.get("train", True)))
        elif m.get("train"):
            raise ExportError(f"a {m['role']} turn is flagged for training; only assistant turns can be")
        messages.append(out)
    tools = tools_of_row(row)
    return {"messages": messages, **({"tools": tools} if tools else {})}


def to_sharegpt(row: dict) -> dict:
    """ShareGPT as LLaMA-Factory and axolotl read it: ``conversations`` of ``from``/``value``, system first.

    Observations stay ``human`` turns, as the agent saw them in training and at inference.

    >>> to_sharegpt({"id": "x", "label": "positive", "messages": [{"role": "system", "content": "s"},
    ...     {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})["conversations"]
    [{'from': 'system', 'value': 's'}, {'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': 'a'}]
    """
    messages = trim_to_last_assistant(row["messages"])
    _check_trained_turns(messages, "sharegpt")
    convs: list[dict[str, str]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.get("tool_calls"):
            if m["content"]:
                raise ExportError(f"message {i}: an assistant turn with both text and tool calls; LLaMA-Factory's "
                                  "function_call turn holds the calls only (use --to openai, which keeps both)")
            convs.append({"from": "function_call", "value": calls_to_sharegpt(message_from_row(m)["tool_calls"])})
            results = []
            while i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                i += 1
                results.append(messages[i]["content"])
            if results:
                convs.append({"from": "observation",
                              "value": results[0] if len(results) == 1 else json.dumps(results, ensure_ascii=False)})
        elif m["role"] == "tool":
            raise ExportError(f"message {i}: a tool result that follows no function call")
        else:
            convs.append({"from": SHAREGPT_ROLES[m["role"]], "value": m["content"]})
        i += 1
    tools = tools_of_row(row)
    out = {"conversations": convs, "id": row["id"], "label": row["label"]}
    if tools:
        # LLaMA-Factory's tools column: JSON text of the bare function schemas.
        out["tools"] = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    return out


def to_alpaca(row: dict) -> dict:
    """Alpaca with history, as LLaMA-Factory reads it: earlier (user, assistant) pairs, then the last pair.

    >>> r = to_alpaca({"id": "x", "label": "positive", "messages": [{"role": "system", "content": "s"},
    ...     {"role": "user", "content": "q"}, {"role": "assistant", "content": "a1"},
    ...     {"role": "user", "content": "Observation: 4"}, {"role": "assistant", "content": "a2"}]})
    >>> r["history"], r["instruction"], r["output"], r["system"]
    ([['q', 'a1']], 'Observation: 4', 'a2', 's')
    """
    messages = trim_to_last_assistant(row["messages"])
    _check_trained_turns(messages, "alpaca")
    if has_tool_calls(messages) or row.get("tools"):
        raise ExportError("the alpaca layout has no place for tool calls; use --to openai or --to sharegpt")
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    if len(turns) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
        raise ExportError("turns do not alternate user, assistant; the alpaca layout needs pairs")
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    return {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "system": system,
            "history": pairs[:-1], "id": row["id"], "label": row["label"]}


CONVERTERS: dict[str, Callable[[dict], dict]] = {"openai": to_openai, "sharegpt": to_sharegpt, "alpaca": to_alpaca}


def llamafactory_entry(layout: str, file_name: str, tools: bool = False) -> dict[str, Any]:
    """The ``dataset_info.json`` entry with which LLaMA-Factory reads ``file_name`` in ``layout``.

    >>> llamafactory_entry("alpaca", "train.jsonl")["columns"]["history"]
    'history'
    """
    if layout == "alpaca":
        return {"file_name": file_name, "columns": {"prompt": "instruction", "query": "input", "response": "output",
                                                    "system": "system", "history": "history"}}
    if layout == "sharegpt":
        entry = {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system", "function_tag": "function_call", "observation_tag": "observation"}}
        if tools:
            entry["columns"]["tools"] = "tools"
        return entry
    return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                     "system_tag": "system"}}


def axolotl_snippet(layout: str, train_file: str) -> str | None:
    """The ``datasets:`` entry of an axolotl config for the export (``type: chat_template``); None for alpaca."""
    if layout == "alpaca":
        return None
    field, role, content = ("messages", "role", "content") if layout == "openai" else ("conversations", "from", "value")
    roles = "" if layout == "openai" else \
        "    roles: {system: [system], user: [human], assistant: [gpt]}\n"
    return (f"chat_template: tokenizer_default\n"
            f"datasets:\n"
            f"  - path: {train_file}\n"
            f"    ds_type: json\n"
            f"    type: chat_template\n"
            f"    field_messages: {field}\n"
            f"    message_property_mappings: {{role: {role}, content: {content}}}\n"
            f"{roles}"
            f"    roles_to_train: [assistant]\n"
            f"    train_on_eos: turn\n")


def export_dataset(folder: str | os.PathLike, layout: str, out: str | os.PathLike,
                   name: str | None = None) -> dict[str, Any]:
    """Write every split of a ``nat build`` folder in ``layout`` under ``out``; returns what was written.

    ``out`` must be new or empty (nothing of the user's is overwritten). A row the layout cannot
    express stops the export with the split and row id.
    """
    import datasets

    if layout not in CONVERTERS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty folder; give a new --out")
    ds = datasets.load_from_disk(str(folder))
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    name = name or Path(folder).resolve().name
    convert = CONVERTERS[layout]
    records: dict[str, list[dict]] = {}
    for split, part in ds.items():
        records[split] = []
        for row in part:
            try:
                records[split].append(convert(row))
            except ExportError as exc:
                raise ExportError(f"{folder}, split {split}, row {row.get('id')!r}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    files, info = [], {}
    for split, recs in records.items():
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        files.append(path.name)
        info[name if split == "train" else f"{name}_{split}"] = llamafactory_entry(layout, path.name,
                                                                                     any("tools" in r for r in recs))
    (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return {"files": files + ["dataset_info.json"], "counts": {s: len(r) for s, r in records.items()},
            "llamafactory": list(info), "axolotl": axolotl_snippet(layout, str(out / "train.jsonl"))}


@dataclass(kw_only=True)
class ExportConfig:
    """The options of ``nat export``."""

    folder: str = option(help="a `nat build --out` folder", positional=True)
    to: Literal["openai", "sharegpt", "alpaca"] = option(
        help="openai: messages with per-turn weights (TRL, OpenAI fine-tuning, axolotl, LLaMA-Factory); sharegpt: "
             "from/value conversations (LLaMA-Factory, axolotl); alpaca: instruction/output with history (LLaMA-Factory)")
    out: str = option(help="a new (or empty) folder for <split>.jsonl and dataset_info.json")
    name: str | None = option(None, "dataset name in dataset_info.json (default: the input folder's name)")


def run_export(cfg: ExportConfig) -> int:
    """``nat export``: write the layout and print where LLaMA-Factory and axolotl find it."""
    from rich.markup import escape

    from lightning_nat.core.console import console

    res = export_dataset(cfg.folder, cfg.to, cfg.out, name=cfg.name)
    counts = ", ".join(f"{split}: {n}" for split, n in res["counts"].items())
    console.print(f"wrote {cfg.to} conversations ({counts}) to {escape(cfg.out)}: {', '.join(res['files'])}")
    console.print(f"LLaMA-Factory: dataset_dir: {escape(cfg.out)}, dataset: {', '.join(res['llamafactory'])}")
    if res["axolotl"]:
        console.print("axolotl config snippet:")
        console.print(escape(res["axolotl"]), highlight=False)
    return 0
