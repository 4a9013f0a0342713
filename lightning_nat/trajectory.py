"""The canonical trajectory record and its JSONL form.

A :class:`Trajectory` holds one agent episode on one question: the agent's turns
(``assistant``) and the environment's answers (``user``, ``Observation: ...``),
the label the task metric gave it, and where it came from. The task instruction
and the question are *not* part of ``messages``: reformatting adds them, so one
trajectory can be rendered under any prompt variant.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import jsonl
from .jsonl import RecordError

ROLES = ("system", "user", "assistant")


class TrajectoryFormatError(RecordError):
    """A record that cannot be read as a trajectory, with the file and record it came from.

    >>> str(TrajectoryFormatError("missing reward", path="a.json", where="record 3"))
    'a.json, record 3: missing reward'
    """


@dataclass
class Trajectory:
    """One labelled agent episode.

    ``reward`` is the binary label (success); ``score`` a graded one when the task
    has it (F1 on HotpotQA), used by fine-grained NAT. ``prediction`` is ``None``
    when the agent never finished.
    """

    id: str
    task: str
    question: str
    messages: list[dict[str, str]]
    reward: bool
    score: float | None = None
    prediction: str | None = None
    answer: Any = None
    question_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_messages(self.messages)

    @property
    def finished(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Trajectory:
        """Read the canonical JSON form (what :meth:`to_dict` writes).

        >>> t = Trajectory.from_dict({"id": "q1#0", "task": "gsm8k", "question": "1+1?",
        ...     "messages": [{"role": "assistant", "content": "Action: finish[2]"}], "reward": True})
        >>> t.finished, t.question_id
        (False, 'q1#0')
        """
        missing = [k for k in ("id", "question", "messages", "reward") if k not in record]
        if missing:
            raise TrajectoryFormatError(f"missing field(s) {', '.join(missing)}")
        if not isinstance(record["reward"], bool):
            raise TrajectoryFormatError(f"reward must be true or false, got {record['reward']!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(record) - known
        if unknown:
            raise TrajectoryFormatError(f"unknown field(s) {', '.join(sorted(unknown))}")
        data = dict(record)
        data.setdefault("task", "")
        data.setdefault("question_id", None)
        data["messages"] = [dict(m) for m in data["messages"]]
        data["meta"] = dict(data.get("meta") or {})
        data["score"] = check_score(data.get("score"))
        traj = cls(**data)
        if traj.question_id is None:
            traj.question_id = traj.id
        return traj


def check_score(value: Any) -> float | None:
    """A score must be None or a finite number in [0, 1]; bools count as 0/1.

    >>> check_score(0.5), check_score(True)
    (0.5, 1.0)
    """
    import math

    if value is None:
        return None
    if isinstance(value, (bool, int, float)) and math.isfinite(float(value)) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise TrajectoryFormatError(f"score must be a number in [0, 1], got {value!r}")


def validate_messages(messages: Any) -> None:
    """Check a turn list: non-empty, known roles, string contents, an assistant turn.

    >>> validate_messages([{"role": "assistant", "content": "Thought: ok"}])
    >>> validate_messages([{"role": "robot", "content": "hi"}])
    Traceback (most recent call last):
    ...
    lightning_nat.trajectory.TrajectoryFormatError: message 0: unknown role 'robot' (expected system, user or assistant)
    """
    if not isinstance(messages, list):
        raise TrajectoryFormatError(f"messages must be a list, got {type(messages).__name__}")
    if not messages:
        raise TrajectoryFormatError("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TrajectoryFormatError(f"message {i}: expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise TrajectoryFormatError(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        if not isinstance(m.get("content"), str):
            raise TrajectoryFormatError(f"message {i}: content must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrajectoryFormatError("no assistant turn")


def write_jsonl(path: str | os.PathLike, records: Iterable[Trajectory | dict]) -> int:
    """Write records as JSONL (atomically: a partial file never replaces a good one)."""
    return jsonl.write_jsonl(path, (rec.to_dict() if isinstance(rec, Trajectory) else rec for rec in records))


def read_trajectories_jsonl(path: str | os.PathLike) -> list[Trajectory]:
    """Read the canonical JSONL written by :func:`write_jsonl`, naming the line of any bad record."""
    from .readers import read_trajectories  # readers builds on this module

    return read_trajectories(path, "jsonl")
