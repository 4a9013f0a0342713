"""Readers from the trajectory formats found in the wild to :class:`Trajectory`.

A pure function per format reads one record (``from_*_record``); :func:`read_trajectories` applies one to a
file, naming the file and record of every problem, or (``on_error="skip"``) counting it in a :class:`ReadReport`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core import jsonl
from lightning_nat.core.jsonl import RecordError
from lightning_nat.core.trajectory import (
    Trajectory,
    TrajectoryFormatError,
    call_from_openai,
    calls_from_sharegpt,
    check_fields,
    check_score,
    extract_answer,
    tools_from_any,
    validate_messages,
)

OnError = Literal["raise", "skip"]

# ShareGPT without function calls: observations are user turns ("Observation: ..."), as ReAct agents saw them.
# In a record with function_call turns they are tool results (LLaMA-Factory's convention), see from_sharegpt_record.
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                   "observation": "user", "function": "user", "tool": "user"}
_LABEL_FIELDS = ("id", "question_id", "task", "question", "reward", "score", "prediction", "pred", "answer", "gt", "meta",
                 "tools")


@dataclass
class ReadReport:
    """What was read and what was skipped, per file."""

    read: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)
    # (file, 0-based record position) of every trajectory read, by id(trajectory), and records per file:
    # what --neg-sampling reference needs to sample positions as the reference code did.
    origin: dict[int, tuple[str, int]] = field(default_factory=dict)
    records: Counter = field(default_factory=Counter)

    def skip(self, err: RecordError) -> None:
        self.skipped.append((err.path or "", err.where or "", err.problem))

    def reasons(self) -> Counter:
        """Skipped records counted by problem."""
        return Counter(problem for _, _, problem in self.skipped)


def check_loss_flag(turn: dict, i: int) -> None:
    """Refuse a reference-format ``loss`` flag that disagrees with training on assistant turns only (the two agree on
    the released files; a file where they differ would silently train on other text).

    >>> check_loss_flag({"role": "assistant", "content": "x", "loss": True}, 0)
    >>> check_loss_flag({"role": "user", "content": "Observation: x", "loss": True}, 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: message 3: loss is true on the user turn; only assistant turns ...
    """
    if "loss" not in turn:
        return
    loss = turn["loss"]
    if not isinstance(loss, bool):
        raise TrajectoryFormatError(f"message {i}: loss must be true or false, got {loss!r}")
    if loss != (turn.get("role") == "assistant"):
        raise TrajectoryFormatError(f"message {i}: loss is {str(loss).lower()} on the {turn.get('role')} turn; only "
                                    f"assistant turns are trained here, so the file's loss flags cannot be honoured")


def from_nat_record(record: dict, questions: dict[str, dict], task: str = "", traj_id: str | None = None) -> Trajectory:
    """One record of the NAT reference format, joined with its question by ``id``.

    >>> rec = {"id": "q7", "source": "0.5", "info": {"reward": True, "gt": True, "pred": "Yes"},
    ...        "conversations": [{"role": "assistant", "content": "Action: finish[Yes]", "loss": True},
    ...                          {"role": "user", "content": "Observation: Episode finished", "loss": False}]}
    >>> t = from_nat_record(rec, {"q7": {"id": "q7", "question": "Is water wet?", "answer": True}}, "strategyqa")
    >>> t.question, t.reward, t.score, t.prediction, t.meta["source"]
    ('Is water wet?', True, 1.0, 'Yes', '0.5')
    """
    for key in ("id", "conversations", "info"):
        if key not in record:
            raise TrajectoryFormatError(f"missing '{key}'")
    info = record["info"]
    if not isinstance(info, dict) or "reward" not in info:
        raise TrajectoryFormatError("missing reward (info.reward)")
    check_fields({"id": record["id"], "reward": info["reward"], "pred": info.get("pred")})
    qid = str(record["id"])
    if qid not in questions:
        raise TrajectoryFormatError(f"id {qid!r} not found in the question file")
    q = questions[qid]
    convs = record["conversations"]
    if not isinstance(convs, list):
        raise TrajectoryFormatError("conversations must be a list")
    messages = []
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise TrajectoryFormatError(f"message {i}: expected an object with role and content")
        check_loss_flag(turn, i)
        messages.append({"role": turn["role"], "content": turn["content"]})
    reward = bool(info["reward"])  # check_fields took only true/false or 0/1
    score = check_score(info["f1"] if "f1" in info else info.get("acc", reward))
    meta = {k: v for k, v in record.items() if k not in ("id", "conversations", "info")}
    meta.update({f"info.{k}": v for k, v in info.items() if k not in ("reward", "pred", "gt")})
    pred = info.get("pred")
    return Trajectory(
        id=traj_id or qid, task=task, question=str(q["question"]), messages=messages, reward=reward, score=score,
        prediction=None if pred is None else str(pred), answer=info.get("gt", q.get("answer")), question_id=qid,
        meta=meta,
    )


def _words(text: str) -> str:
    return " ".join(text.split())


def _split_question(messages: list[dict], question: Any) -> tuple[str, list[dict], dict]:
    """Separate leading system turns and the question turn (the first user turn) from the agent's turns.

    Without a ``question`` field that turn's text is the question; with one, the turn must ask it and is replaced
    by the marked prompt, its text kept in ``meta["question_turn"]`` when it holds more (a few-shot prefix).

    >>> q, rest, meta = _split_question([{"role": "user", "content": "Is it  raining?"},
    ...                                  {"role": "assistant", "content": "No."}], "Is it raining?")
    >>> q, [m["role"] for m in rest], meta
    ('Is it raining?', ['assistant'], {})
    """
    meta: dict[str, Any] = {}
    rest = list(messages)
    system = []
    while rest and rest[0].get("role") == "system":
        system.append(rest.pop(0).get("content"))
    if system:
        meta["source_system"] = "\n".join(str(s) for s in system)
    if question is None:
        if not rest or rest[0].get("role") != "user":
            raise TrajectoryFormatError("no 'question' field and the conversation does not start with a user question")
        question = rest.pop(0).get("content")
    elif rest and rest[0].get("role") == "user":
        turn = _words(str(rest[0].get("content", "")))
        if _words(question) not in turn:
            raise TrajectoryFormatError("the first user turn does not ask the 'question' field's question; the "
                                        "marked prompt replaces the question turn, so they must agree (or drop the "
                                        "'question' field: the first user turn is then the question)")
        if turn != _words(question):
            meta["question_turn"] = rest[0]["content"]
        rest.pop(0)
    if not isinstance(question, str) or not question.strip():
        raise TrajectoryFormatError("empty question")
    return question, rest, meta


def _from_export(nat: dict[str, Any], messages: list[dict]) -> tuple[str, list[dict], dict]:
    """The question, turns and recorded system prompt of a ``nat export`` record: its first ``prompt_turns``
    messages are the build's prompt (rebuilt), ``tail`` the turns after the last assistant turn."""
    n, question = nat.get("prompt_turns"), nat.get("question")
    if not isinstance(n, int) or not 0 <= n <= len(messages) or not isinstance(question, str):
        raise TrajectoryFormatError("a 'nat' block needs question (text) and prompt_turns (a count of messages)")
    tail = nat.get("tail") or []
    if not isinstance(tail, list):
        raise TrajectoryFormatError("nat.tail must be a list of messages")
    turns = messages[n:] + [openai_message(m, len(messages) + i) for i, m in enumerate(tail)]
    meta = {"source_system": nat["system"]} if isinstance(nat.get("system"), str) else {}
    return question, turns, meta


def _from_chat_record(record: Any, messages: list[dict], task: str, traj_id: str | None) -> Trajectory:
    if "reward" not in record:
        raise TrajectoryFormatError("missing reward")
    check_fields(record)
    if isinstance(record.get("nat"), dict):
        question, turns, meta = _from_export(record["nat"], messages)
    else:
        question, turns, meta = _split_question(messages, record.get("question"))
    meta.update(record.get("meta") or {})
    meta.update({k: v for k, v in record.items() if k not in _LABEL_FIELDS and k not in ("messages", "conversations")})
    pred = record.get("prediction", record.get("pred"))
    if pred is None:
        pred = final_answer(turns)
    tid = str(record.get("id", traj_id or ""))
    if not tid:
        raise TrajectoryFormatError("missing id")
    # Without an id the question text is the question's identity: a position-based id would make every
    # record its own question and defeat "first unique by question" (and the dev split's exclusion).
    qid = record.get("question_id", record.get("id"))
    qid = question_key(question) if qid is None else str(qid)
    return Trajectory(
        id=tid, task=str(record.get("task") or task), question=question, messages=turns,
        reward=bool(record["reward"]), score=check_score(record.get("score")),
        prediction=None if pred is None else str(pred), answer=record.get("answer", record.get("gt")),
        question_id=qid, meta=meta, tools=tools_from_any(record.get("tools")),
    )


def final_answer(turns: list[dict]) -> str | None:
    """The answer of a trajectory recorded without a prediction: its last assistant turn when it calls no tool
    (function calling), else that turn's ``finish[...]`` or final-answer line.

    >>> final_answer([{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "name": "f", "arguments": {}}]},
    ...               {"role": "tool", "content": "3", "tool_call_id": "c"}, {"role": "assistant", "content": "It is 3."}])
    'It is 3.'
    >>> final_answer([{"role": "assistant", "content": "Thought: done.\\nAction: finish[7]"}])
    '7'
    """
    last = next((m for m in reversed(turns) if m.get("role") == "assistant"), None)
    if last is None or not isinstance(last.get("content"), str):
        return None
    if any(m.get("tool_calls") for m in turns):
        return None if last.get("tool_calls") or not last["content"].strip() else last["content"].strip()
    return extract_answer(last["content"])


def question_key(question: str) -> str:
    """A stable question id from its text (whitespace-normalised), for records that carry none.

    >>> question_key("What is  2+3?") == question_key(" What is 2+3?\t")
    True
    """
    return "q-" + hashlib.sha256(" ".join(question.split()).encode()).hexdigest()[:16]


def from_openai_record(record: dict[str, Any], task: str = "", traj_id: str | None = None) -> Trajectory:
    """An OpenAI-messages record: ``{"messages": [...], "reward": bool, "score"?: float, ...}``.

    >>> t = from_openai_record({"messages": [{"role": "system", "content": "You are an agent."},
    ...     {"role": "user", "content": "What is 2+3?"},
    ...     {"role": "assistant", "content": "Action: finish[5]"}], "reward": True, "prediction": "5"}, "gsm8k", "r0")
    >>> t.question, len(t.messages), t.meta["source_system"]
    ('What is 2+3?', 1, 'You are an agent.')
    """
    if "messages" not in record and "completion" in record and "nat" in record:  # a KTO export: prompt + completion
        record = {**record, "messages": [*record.get("prompt", []), *record["completion"]]}
    if "messages" not in record:
        raise TrajectoryFormatError("missing 'messages'")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise TrajectoryFormatError("messages must be a list")
    # indices of the record as written, before the question is split off
    messages = [openai_message(m, i) for i, m in enumerate(messages)]
    validate_messages(messages)  # an empty list, call ids: checked here, where message indices are the record's own
    return _from_chat_record(record, messages, task, traj_id)


def openai_message(message: Any, index: int) -> dict[str, Any]:
    """One OpenAI chat message as a trajectory message (``content: null`` beside calls becomes ``""``).

    >>> openai_message({"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
    ...     "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}]}, 2)
    {'role': 'assistant', 'content': '', 'tool_calls': [{'id': 'c1', 'name': 'get_weather', 'arguments': {'city': 'Paris'}}]}
    >>> openai_message({"role": "tool", "content": None}, 3)
    Traceback (most recent call last):
    ...
    lightning_nat.core.trajectory.TrajectoryFormatError: message 3: content must be a string, got NoneType
    """
    if not isinstance(message, dict):
        raise TrajectoryFormatError(f"message {index}: expected an object, got {type(message).__name__}")
    where = f"message {index}"
    role = message.get("role")
    if message.get("function_call"):
        raise TrajectoryFormatError(f"{where}: the legacy OpenAI 'function_call' field is not read; write the call as "
                                    "'tool_calls' with an id")
    calls = message.get("tool_calls")
    content = message.get("content")
    if calls:
        if role != "assistant":
            raise TrajectoryFormatError(f"{where}: only assistant turns make tool calls, not {role}")
        if not isinstance(calls, list):
            raise TrajectoryFormatError(f"{where}: tool_calls must be a list")
        content = "" if content is None else content
    if isinstance(content, list):
        raise TrajectoryFormatError(f"{where}: content parts (a list) are not supported; give the text as a string")
    if not isinstance(content, str):
        raise TrajectoryFormatError(f"{where}: content must be a string, got {type(content).__name__}")
    out: dict[str, Any] = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = [call_from_openai(c, where) for c in calls]
    if role == "tool":  # checked here too: an export's tail is numbered from the record, not the trajectory
        if not isinstance(message.get("tool_call_id"), str):
            raise TrajectoryFormatError(f"{where}: a tool turn needs the tool_call_id it answers")
        out["tool_call_id"] = message["tool_call_id"]
    return out


def from_sharegpt_record(record: dict[str, Any], task: str = "", traj_id: str | None = None) -> Trajectory:
    """A ShareGPT record: ``{"conversations": [{"from", "value"}], "reward": bool, ...}``.

    >>> t = from_sharegpt_record({"conversations": [{"from": "human", "value": "Is ice cold?"},
    ...     {"from": "gpt", "value": "Action: finish[yes]"}], "reward": False, "score": 0.5}, "strategyqa", "s0")
    >>> t.messages, t.reward, t.score
    ([{'role': 'assistant', 'content': 'Action: finish[yes]'}], False, 0.5)
    """
    convs = record.get("conversations")
    if not isinstance(convs, list):
        raise TrajectoryFormatError("missing 'conversations' list")
    if not convs:
        raise TrajectoryFormatError("empty conversation")
    calling = any(isinstance(t, dict) and str(t.get("from", "")).lower() == "function_call" for t in convs)
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of calls not answered yet, in call order
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise TrajectoryFormatError(f"message {i}: expected an object with 'from' and 'value'")
        who = str(turn["from"]).lower()
        if who == "function_call":
            calls = calls_from_sharegpt(turn["value"], f"message {i}", i)
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            pending = [c["id"] for c in calls]
        elif calling and who in ("observation", "tool", "function"):
            messages += _observations(turn["value"], pending, i)
            pending = []
        elif who in _SHAREGPT_ROLES:
            messages.append({"role": _SHAREGPT_ROLES[who], "content": turn["value"]})
        else:
            raise TrajectoryFormatError(f"message {i}: unknown role {turn['from']!r}")
    return _from_chat_record(record, messages, task, traj_id)


def _observations(value: Any, pending: list[str], i: int) -> list[dict[str, Any]]:
    """The tool turns of one ShareGPT ``observation``: one result per pending call (a JSON list for parallel calls)."""
    if not pending:
        raise TrajectoryFormatError(f"message {i}: an observation that follows no function_call")
    results: Any = [value]
    if len(pending) > 1:
        try:
            results = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            results = None
        if not isinstance(results, list) or len(results) != len(pending):
            raise TrajectoryFormatError(f"message {i}: {len(pending)} parallel calls need a JSON list of "
                                        f"{len(pending)} results in the observation")
    return [{"role": "tool", "content": res if isinstance(res, str) else json.dumps(res, ensure_ascii=False),
             "tool_call_id": cid} for cid, res in zip(pending, results)]


def load_questions(path: str | os.PathLike, fields: dict[str, str] | None = None) -> dict[str, dict]:
    """Questions by id (else by 0-based position) from a JSON list or JSONL of ``{"id", "question", "answer"}``;
    ``fields`` maps our field names to the file's (``{"question": "prompt"}``)."""
    out: dict[str, dict] = {}
    for where, index, rec in _load_json_or_jsonl(path):
        if isinstance(rec, RecordError):
            raise TrajectoryFormatError(rec.problem, path, where)
        if fields and isinstance(rec, dict):
            rec = {**rec, **{ours: rec[theirs] for ours, theirs in fields.items() if theirs in rec}}
        if not isinstance(rec, dict) or "question" not in rec:
            raise TrajectoryFormatError("expected an object with a 'question'", path, where)
        qid = str(rec.get("id", index))
        if qid in out:
            raise TrajectoryFormatError(f"duplicate id {qid!r}", path, where)
        out[qid] = {**rec, "id": qid}
    return out


def _load_json_or_jsonl(path: str | os.PathLike) -> list[tuple[str, int, Any]]:
    """``(where, position, record)`` of a JSON list or a JSONL file; a bad JSONL line is a located
    :class:`RecordError` in place of its record, so a caller can skip that line alone."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.removeprefix(jsonl.BOM).lstrip()[:1] == b"[":
        try:
            data = json.loads(jsonl.read_text(path))
        except json.JSONDecodeError as exc:
            raise TrajectoryFormatError(f"malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})", path) from None
        except RecursionError:
            raise TrajectoryFormatError("JSON nested too deeply to read", path) from None
        if not isinstance(data, list):
            raise TrajectoryFormatError(f"expected a JSON list of records (or JSONL), got {type(data).__name__}", path)
        return [(f"record {i}", i, rec) for i, rec in enumerate(data)]
    return [(f"line {lineno}", index, rec) for index, (lineno, rec) in enumerate(jsonl.read_records(path))]


def read_trajectories(
    path: str | os.PathLike,
    format: str = "jsonl",
    questions: dict[str, dict] | None = None,
    task: str = "",
    on_error: OnError = "raise",
    report: ReadReport | None = None,
) -> list[Trajectory]:
    """Read one trajectory file of ``format`` (``jsonl``: ours, as ``jsonl.write_jsonl`` writes trajectories;
    ``nat`` needs ``questions``; ``openai``; ``sharegpt``); errors name the file and the record, or
    (``on_error="skip"``) are counted in ``report``."""
    formats: dict[str, Callable[[dict, str], Trajectory]] = {
        "nat": lambda rec, traj_id: from_nat_record(rec, questions or {}, task, traj_id),
        "openai": lambda rec, traj_id: from_openai_record(rec, task, traj_id),
        "sharegpt": lambda rec, traj_id: from_sharegpt_record(rec, task, traj_id),
        "jsonl": lambda rec, traj_id: Trajectory.from_dict(rec),
    }
    if format not in formats:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(formats)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if format == "nat" and questions is None:
        raise ValueError("the nat format needs a question file to join by id (questions=...)")
    path = Path(path)
    report = report if report is not None else ReadReport()
    try:
        records = _load_json_or_jsonl(path)
    except RecordError as err:
        if on_error == "raise":
            raise TrajectoryFormatError(err.problem, err.path, err.where) from None
        report.skip(err)
        return []
    out = []
    report.records[str(path)] += len(records)
    for where, index, rec in records:
        try:
            if isinstance(rec, RecordError):
                raise rec
            if not isinstance(rec, dict):  # every format's records are objects
                raise TrajectoryFormatError(f"expected a JSON object, got {type(rec).__name__}")
            traj = formats[format](rec, f"{path.stem}:{index}")
        except (RecordError, TypeError, AttributeError, KeyError, RecursionError) as exc:
            # Anything else a record's shape trips (a field of an unforeseen type) is that record's problem too.
            problem = exc.problem if isinstance(exc, RecordError) else f"unreadable record ({type(exc).__name__}: {exc})"
            located = TrajectoryFormatError(problem, getattr(exc, "path", None) or path, getattr(exc, "where", None) or where)
            if on_error == "raise":
                raise located from None
            report.skip(located)
            continue
        if task and not traj.task:
            traj.task = task
        report.origin[id(traj)] = (str(path), index)
        out.append(traj)
    report.read[str(path)] += len(out)
    return out
