"""Outputs that never clobber: advisory locks naming their holder, folders refused or replaced whole.

A command writes a folder output into a temporary sibling and swaps it into place at the end, so a
run that fails midway leaves the previous output as it was. ``--out`` refuses a non-empty folder that
is not an earlier output of the same command (recognised by its marker file) unless ``--overwrite``
is given. While it writes, a command holds an advisory lock (``filelock``) beside its output; a second
command on the same output stops at once with a message naming the holder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class OutputError(ValueError):
    """An output that cannot be written without destroying something, named by path."""


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file of an output: a hidden sibling, so that it survives the output's replacement.

    >>> lock_path("runs/data/sqa")
    PosixPath('runs/data/.sqa.lock')
    """
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def _holder_text(info: dict) -> str:
    """How a lock holder is described.

    >>> _holder_text({"command": "nat build", "pid": 7, "host": "h", "started": "2026-01-01 10:00:00"})
    'nat build (pid 7 on h, since 2026-01-01 10:00:00)'
    """
    return f"{info.get('command', 'another process')} (pid {info.get('pid', '?')} on {info.get('host', '?')}, " \
           f"since {info.get('started', '?')})"


@contextmanager
def output_lock(target: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the advisory lock of ``target`` for the block; refuse at once if another process holds it."""
    from filelock import FileLock, Timeout

    lock_file = lock_path(target)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder_file = lock_file.with_name(lock_file.name + ".holder")
    lock = FileLock(str(lock_file), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = _holder_text(json.loads(holder_file.read_text()))
        except (OSError, ValueError):
            holder = "another process"
        raise OutputError(f"{target}: in use by {holder}; wait for it to finish (lock file {lock_file})") from None
    try:
        holder_file.write_text(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                           "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                           "argv": sys.argv[1:2]}))
        yield
    finally:
        try:
            holder_file.unlink()
        except OSError:
            pass
        lock.release()


def check_out_folder(out: str | os.PathLike, marker: str, command: str, overwrite: bool = False,
                     inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse an ``--out`` that holds one of ``inputs``, is a file, or is a non-empty folder without ``marker``
    (not ours) unless ``overwrite``."""
    target = Path(out).resolve()
    for f in inputs:
        path = Path(f).resolve()
        if path == target or target in path.parents:
            raise OutputError(f"--out {out}: holds the input {f}, which writing the output would destroy; "
                              "choose another --out")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file() and not overwrite:
        raise OutputError(f"--out {out}: folder is not empty and is not an earlier `{command}` output (no {marker}); "
                          "choose another --out, or pass --overwrite to replace it")


def staging_folder(out: str | os.PathLike) -> Path:
    """A fresh temporary sibling of ``out`` to write the new output into."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def replace_folder(staged: Path, out: str | os.PathLike) -> Path:
    """Swap a finished staging folder into place; the previous output is removed only after the swap."""
    out = Path(out)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    try:
        os.replace(staged, out)
    except OSError:
        if old.exists():
            os.replace(old, out)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return out


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder; on success it replaces ``out``, on failure it is deleted and ``out`` is untouched."""
    tmp = staging_folder(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)
