"""`nat export`: built conversations in the layouts other trainers read (TRL, LLaMA-Factory, axolotl).

One pure function per (objective, layout) turns a built row into a record (:data:`CONVERTERS`): SFT builds as
``openai`` (per-turn ``weight``), ``sharegpt`` or ``alpaca``; DPO and KTO builds as TRL's preference layouts,
KTO also with LLaMA-Factory's ``kto_tag``. Every conversation ends on an assistant turn, and a record carries
what ``nat build --format openai`` needs to rebuild the same row (the ``nat`` block): the round trip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.markup import escape

from lightning_nat.core.artifacts import read_build
from lightning_nat.core.console import console
from lightning_nat.core.jsonl import dumps_line
from lightning_nat.core.options import option
from lightning_nat.core.outputs import writing
from lightning_nat.core.prompts import PromptSpec, head_messages, preset
from lightning_nat.core.trajectory import as_openai, calls_to_sharegpt, has_tool_calls, tools_of_row

SHAREGPT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
ROUND_TRIP = ("id", "question_id", "task", "label", "reward", "score")


class ExportError(ValueError):
    """A row the requested layout cannot express faithfully."""


@dataclass(frozen=True)
class Head:
    """What a build put before every trajectory: ``n`` prompt turns, rendered by ``spec``; ``own`` when the
    instruction is each trajectory's recorded system prompt (a task-less build)."""

    spec: PromptSpec
    own: bool

    @property
    def n(self) -> int:
        return len(head_messages(self.spec, "?"))

    def question(self, messages: list[dict]) -> str:
        """The raw question of a row, read back from its question turn under one of the spec's templates.

        >>> spec = PromptSpec("native", "", "nat", ("{question}\\nBad.", "{question}\\nGood."), "Solve.")
        >>> Head(spec, False).question([{"role": "system", "content": "Solve."}, {"role": "user", "content": "2+2?\\nBad."}])
        '2+2?'
        """
        text = messages[self.n - 1]["content"]
        if self.spec.placement == "system":
            return text
        for template in sorted(self.spec.templates, key=len, reverse=True):
            before, _, after = template.partition("{question}")
            if text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after):
                return text[len(before):len(text) - len(after)]
        raise ExportError("its question turn follows none of the build's question templates")

    def system(self, messages: list[dict]) -> str | None:
        """The recorded system prompt a task-less row trained under (the marker taken off), else None."""
        if not self.own or messages[0]["role"] != "system":
            return None
        text = messages[0]["content"]
        if self.spec.placement == "system":
            text = text.rsplit("\n\n", 1)[0]
        return text


def trim_to_last_assistant(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    """The conversation up to and including its last assistant turn, and the turns after it.

    >>> trim_to_last_assistant([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
    ...                         {"role": "user", "content": "Observation: Episode finished"}])[1]
    [{'role': 'user', 'content': 'Observation: Episode finished'}]
    """
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise ExportError("no assistant turn")
    return list(messages[: last + 1]), list(messages[last + 1:])


def _wire(messages: list[dict], weights: bool) -> list[dict]:
    """Row messages in the OpenAI wire form, with a ``weight`` on assistant turns when ``weights``."""
    out = []
    for m in messages:
        if m.get("train") and m["role"] != "assistant":
            raise ExportError(f"a {m['role']} turn is flagged for training; only assistant turns can be")
        w = as_openai(m)
        if weights and m["role"] == "assistant":
            w["weight"] = int(bool(m.get("train", True)))
        out.append(w)
    return out


def _round_trip(row: dict, head: Head, tail: list[dict]) -> dict:
    """The fields ``nat build --format openai`` rebuilds the row from (see the module doc)."""
    nat = {"question": head.question(row["messages"]), "prompt_turns": head.n, "system": head.system(row["messages"]),
           "tail": _wire(tail, weights=False)}
    return {**{k: row[k] for k in ROUND_TRIP}, "nat": nat}


def _check_trained_turns(messages: list[dict], layout: str) -> None:
    # sharegpt and alpaca cannot say which assistant turn is trained: every one is, and only those.
    for i, m in enumerate(messages):
        if m.get("train", m["role"] == "assistant") != (m["role"] == "assistant"):
            raise ExportError(f"message {i} ({m['role']}) has train={m.get('train')}; the {layout} layout trains "
                              "every assistant turn and nothing else (the reference style's acknowledgement turn is "
                              "such an untrained one: build with --prompt-style native, or use --to openai, which "
                              "keeps per-turn weights)")


def to_openai(row: dict, head: Head) -> dict:
    """OpenAI chat fine-tuning layout (what TRL's SFTTrainer reads): ``messages``, ``weight`` on assistant turns."""
    kept, tail = trim_to_last_assistant(row["messages"])
    tools = tools_of_row(row)
    return {"messages": _wire(kept, weights=True), **({"tools": tools} if tools else {}), **_round_trip(row, head, tail)}


def to_preference(row: dict, head: Head) -> dict:
    """TRL's preference layout of a DPO row: the shared ``prompt`` turns, then each side's trajectory."""
    chosen, _ = trim_to_last_assistant(row["messages"][head.n:])
    rejected, _ = trim_to_last_assistant(row["rejected"][head.n:])
    tools = tools_of_row(row)
    return {"prompt": _wire(row["messages"][:head.n], False), "chosen": _wire(chosen, False),
            "rejected": _wire(rejected, False), **({"tools": tools} if tools else {}),
            **{k: row[k] for k in ("id", "question_id", "task", "chosen_id", "rejected_id", "score", "rejected_score")}}


def to_unpaired(row: dict, head: Head) -> dict:
    """TRL's unpaired-preference layout of a KTO row: ``prompt``, ``completion`` and the desirable ``label``."""
    completion, tail = trim_to_last_assistant(row["messages"][head.n:])
    tools = tools_of_row(row)
    return {"prompt": _wire(row["messages"][:head.n], False), "completion": _wire(completion, False),
            **({"tools": tools} if tools else {}), **_round_trip(row, head, tail), "label": row["label"] == "positive"}


def to_sharegpt(row: dict, head: Head) -> dict:
    """ShareGPT as LLaMA-Factory and axolotl read it (``from``/``value``; ReAct observations stay ``human`` turns)."""
    messages, tail = trim_to_last_assistant(row["messages"])
    _check_trained_turns(messages, "sharegpt")
    convs: list[dict[str, str]] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.get("tool_calls"):
            if m["content"]:
                raise ExportError(f"message {i}: an assistant turn with both text and tool calls; LLaMA-Factory's "
                                  "function_call turn holds the calls only (use --to openai, which keeps both)")
            convs.append({"from": "function_call", "value": calls_to_sharegpt(m["tool_calls"])})
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
    out: dict[str, Any] = {"conversations": convs, **_round_trip(row, head, tail)}
    if tools:
        # LLaMA-Factory's tools column: JSON text of the bare function schemas.
        out["tools"] = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    return out


def to_alpaca(row: dict, head: Head) -> dict:
    """Alpaca with history, as LLaMA-Factory reads it: earlier (user, assistant) pairs, then the last pair."""
    messages, tail = trim_to_last_assistant(row["messages"])
    _check_trained_turns(messages, "alpaca")
    if has_tool_calls(messages) or row.get("tools"):
        raise ExportError("the alpaca layout has no place for tool calls; use --to openai or --to sharegpt")
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    if len(turns) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
        raise ExportError("turns do not alternate user, assistant; the alpaca layout needs pairs")
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    return {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "system": system,
            "history": pairs[:-1], **_round_trip(row, head, tail)}


def _kto(convert: Callable[[dict, Head], dict]) -> Callable[[dict, Head], dict]:
    """A LLaMA-Factory layout with its ``kto_tag`` column (desirable or not)."""
    return lambda row, head: {**convert(row, head), "kto_tag": row["label"] == "positive"}


# (training objective of the build, layout) -> converter; a pair that is missing cannot be expressed.
CONVERTERS: dict[tuple[str, str], Callable[[dict, Head], dict]] = {
    ("sft", "openai"): to_openai, ("sft", "sharegpt"): to_sharegpt, ("sft", "alpaca"): to_alpaca,
    ("dpo", "openai"): to_preference, ("kto", "openai"): to_unpaired,
    ("kto", "sharegpt"): _kto(to_sharegpt), ("kto", "alpaca"): _kto(to_alpaca),
}


def llamafactory_entry(layout: str, file_name: str, tools: bool = False, kto: bool = False) -> dict[str, Any]:
    """The ``dataset_info.json`` entry with which LLaMA-Factory reads ``file_name`` in ``layout``.

    >>> llamafactory_entry("alpaca", "train.jsonl")["columns"]["history"]
    'history'
    """
    if layout == "alpaca":
        entry: dict[str, Any] = {"file_name": file_name, "columns": {
            "prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}}
    elif layout == "sharegpt":
        entry = {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"},
                 "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                          "system_tag": "system", "function_tag": "function_call", "observation_tag": "observation"}}
        if tools:
            entry["columns"]["tools"] = "tools"
    else:
        entry = {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                 "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                          "assistant_tag": "assistant", "system_tag": "system"}}
    if kto:
        entry["columns"]["kto_tag"] = "kto_tag"
    return entry


def axolotl_snippet(layout: str, train_file: str) -> str | None:
    """The ``datasets:`` entry of an axolotl config for an SFT export (``type: chat_template``); None for alpaca."""
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


def export_dataset(folder: str | os.PathLike, layout: str, out: str | os.PathLike, name: str | None = None,
                   final: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write every split of a ``nat build`` folder in ``layout`` into ``out``; returns what was written.

    ``final`` is where ``out`` ends up (for the axolotl snippet's path); a row the layout cannot express stops it.
    """
    import datasets

    record = read_build(folder)
    if record.prompt is None:
        raise ExportError(f"{folder}: its build.json records no prompt (built by an older version); rebuild it")
    keeps = preset(record.variant or "nat")["keeps"]
    objective = keeps if keeps in ("dpo", "kto") else "sft"
    if (objective, layout) not in CONVERTERS:
        raise ExportError(f"{folder}: a {objective} build cannot be written as {layout}: LLaMA-Factory's ranking "
                          "layout takes one final response, not a multi-turn trajectory; use --to openai (TRL's "
                          "preference layout: prompt, chosen, rejected)")
    task = record.config.get("task")
    from lightning_nat.core.tasks import find_task

    own = not task or bool(getattr(find_task(task), "instruction_from_data", False))
    head = Head(PromptSpec.from_dict(record.prompt), own)
    ds = datasets.load_from_disk(str(folder))
    name = name or Path(folder).resolve().name
    convert = CONVERTERS[(objective, layout)]
    records: dict[str, list[dict]] = {}
    for split, part in ds.items():
        records[split] = []
        for row in part:
            # A DPO build's dev rows are single conversations, for perplexity.
            row_convert = to_openai if objective == "dpo" and not row["rejected"] else convert
            try:
                records[split].append(row_convert(row, head))
            except ExportError as exc:
                raise ExportError(f"{folder}, split {split}, row {row.get('id')!r}: {exc}") from None
    files, info = [], {}
    out = Path(out)
    for split, recs in records.items():
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as fh:
            fh.writelines(dumps_line(rec) for rec in recs)
        files.append(path.name)
        if objective != "dpo" and not (objective == "kto" and layout == "openai"):
            info[name if split == "train" else f"{name}_{split}"] = llamafactory_entry(
                layout, path.name, any("tools" in r for r in recs), kto=objective == "kto")
    if info:
        (out / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        files.append("dataset_info.json")
    return {"files": files, "counts": {s: len(r) for s, r in records.items()}, "llamafactory": list(info),
            "objective": objective,
            "axolotl": axolotl_snippet(layout, str(Path(final or out) / "train.jsonl")) if objective == "sft" else None}


@dataclass(kw_only=True)
class ExportConfig:
    """The options of ``nat export``."""

    folder: str = option(help="a `nat build --out` folder", positional=True)
    to: Literal["openai", "sharegpt", "alpaca"] = option(
        help="openai: messages with per-turn weights (TRL, OpenAI fine-tuning, axolotl, LLaMA-Factory), or TRL's "
             "preference layouts for DPO and KTO builds; sharegpt: from/value conversations (LLaMA-Factory, axolotl); "
             "alpaca: instruction/output with history (LLaMA-Factory)")
    out: str = option(help="output folder for <split>.jsonl and dataset_info.json (a rerun replaces its own output)")
    name: str | None = option(None, "dataset name in dataset_info.json (default: the input folder's name)")
    overwrite: bool = option(False, "replace --out even if it is a non-empty folder that is not an earlier "
                                    "`nat export` output (its files are deleted)")


def run_export(cfg: ExportConfig) -> int:
    """``nat export``: write the layout and print where TRL, LLaMA-Factory and axolotl find it."""
    with writing(cfg.out, "nat export", cfg.overwrite, inputs=[cfg.folder]) as staged:
        res = export_dataset(cfg.folder, cfg.to, staged, name=cfg.name, final=cfg.out)
    counts = ", ".join(f"{split}: {n}" for split, n in res["counts"].items())
    console.print(f"wrote {cfg.to} records ({counts}) to {escape(cfg.out)}: {', '.join(res['files'])}")
    if res["objective"] != "sft" and cfg.to == "openai":
        kind = "DPOTrainer (prompt, chosen, rejected)" if res["objective"] == "dpo" else \
            "KTOTrainer (prompt, completion, label)"
        console.print(f"TRL: {kind}: datasets.load_dataset('json', data_files='{escape(cfg.out)}/train.jsonl')")
    if res["llamafactory"]:
        console.print(f"LLaMA-Factory: dataset_dir: {escape(cfg.out)}, dataset: {', '.join(res['llamafactory'])}")
    if res["axolotl"]:
        console.print("axolotl config snippet:")
        console.print(escape(res["axolotl"]), highlight=False)
    return 0
