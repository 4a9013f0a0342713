"""The one JSONL reader and writer of the package.

Lines end at ``"\\n"`` only (``str.splitlines`` would also split inside strings at U+2028 and friends, which
``json.dumps(..., ensure_ascii=False)`` leaves raw). A BOM and a ``\\r`` before the ``\\n`` are accepted; a bad
line comes back as a located :class:`RecordError` in place of its record, for the caller to stop on or skip.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lightning_nat.core.secrets import mask

BOM = b"\xef\xbb\xbf"


class RecordError(ValueError):
    """A record that cannot be read, with the file and record it came from.

    >>> str(RecordError("malformed JSON", path="a.jsonl", where="line 3"))
    'a.jsonl, line 3: malformed JSON'
    """

    def __init__(self, problem: str, path: str | os.PathLike | None = None, where: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.where = where
        place = ", ".join(p for p in (self.path, self.where) if p)
        super().__init__(f"{place}: {problem}" if place else problem)


def dumps_line(record: Any) -> str:
    """One JSONL line: compact JSON, non-ASCII kept readable, ``\\n`` last, known secrets masked; an object with a
    ``to_dict`` (a :class:`~lightning_nat.core.trajectory.Trajectory`) is written in that form.

    JSON escapes ``\\n`` inside strings, so the only raw ``\\n`` is the terminator.

    >>> dumps_line({"a": "x\\u2028y\\nz"})
    '{"a": "x\\u2028y\\\\nz"}\\n'
    """
    return mask(json.dumps(record, ensure_ascii=False, default=_to_json)) + "\n"


def _to_json(obj: Any) -> Any:
    """A record object (a :class:`~lightning_nat.core.trajectory.Trajectory`) as its dict; anything else is refused
    as ``json`` refuses it, naming its type.

    >>> _to_json(b"x")
    Traceback (most recent call last):
    ...
    TypeError: Object of type bytes is not JSON serializable
    """
    if callable(getattr(obj, "to_dict", None)):
        return obj.to_dict()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def parse_line(raw: bytes) -> Any:
    """Decode and parse one line (without its ``\\n``); a problem raises an unlocated :class:`RecordError`.

    >>> parse_line(b'{"q": "caf\\xc3\\xa9"}\\r')
    {'q': 'café'}
    >>> parse_line(b'{"q": "\\xff"}')
    Traceback (most recent call last):
    ...
    lightning_nat.core.jsonl.RecordError: undecodable bytes (not UTF-8) at column 8
    """
    try:
        text = raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"undecodable bytes (not UTF-8) at column {exc.start + 1}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise RecordError("JSON nested too deeply to read") from None


def split_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw line)`` for the non-blank lines of JSONL bytes, split on ``\\n`` only.

    >>> list(split_lines(BOM + b'{"a": 1}\\r\\n\\n{"b": "\\xe2\\x80\\xa8"}'))
    [(1, b'{"a": 1}\\r'), (3, b'{"b": "\\xe2\\x80\\xa8"}')]
    """
    for lineno, raw in enumerate(data.removeprefix(BOM).split(b"\n"), start=1):
        if raw.strip():
            yield lineno, raw


def read_records(path: str | os.PathLike) -> list[tuple[int, Any]]:
    """``(line number, record or located RecordError)`` for every non-blank line of a JSONL file."""
    path = Path(path)
    out: list[tuple[int, Any]] = []
    for lineno, raw in split_lines(path.read_bytes()):
        try:
            out.append((lineno, parse_line(raw)))
        except RecordError as exc:
            out.append((lineno, RecordError(exc.problem, path, f"line {lineno}")))
    return out


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Every record of a JSONL file; the first bad line raises, named by file and line."""
    rows = []
    for _, rec in read_records(path):
        if isinstance(rec, RecordError):
            raise rec
        rows.append(rec)
    return rows


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file without its BOM; undecodable bytes are a located :class:`RecordError`."""
    data = Path(path).read_bytes().removeprefix(BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise RecordError(f"undecodable bytes (not UTF-8) at byte {exc.start}", path, f"line {line}") from None


def read_json(path: str | os.PathLike) -> Any:
    """A whole JSON file (``build.json``, ``results.json``); malformed JSON is an error naming the file and line."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc.msg}, line {exc.lineno})") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (known secrets masked) to a temporary sibling, fsync it and rename it into place.

    A reader (or a crash) sees the old file or the new one, never a part of either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(mask(text))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write records as JSONL atomically (see :func:`atomic_write_text`); returns how many."""
    lines = [dumps_line(r) for r in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)
