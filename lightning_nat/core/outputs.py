"""Outputs that never clobber: advisory locks naming their holder, folders refused or replaced whole.

:func:`writing` is the one way a command writes an output folder: into a temporary sibling swapped into
place at the end (a failed run leaves the previous output as it was), signed with a hidden :data:`MANIFEST`
of the command and its files. ``--out`` refuses a non-empty folder that is not an earlier output of the same
command, or one that now holds files the command did not write, unless ``--overwrite``. A writer holds an
exclusive ``flock`` beside the output (a second one stops at once, naming the holder); a reader holds a
shared one (:func:`reading`), so the output is not replaced under it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

MANIFEST = ".nat-output.json"
SIGNATURE = "lightning_nat output folder v1"


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
def _flock(target: str | os.PathLike, mode: int) -> Iterator[Path | None]:
    """Hold ``fcntl.flock(mode)`` on ``target``'s lock file for the block; yields None when another process holds it."""
    lock_file = lock_path(target)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as fh:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        try:
            yield lock_file
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def output_lock(target: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the exclusive advisory lock of ``target`` for the block; refuse at once if another process holds it."""
    holder_file = lock_path(target).with_name(lock_path(target).name + ".holder")
    with _flock(target, fcntl.LOCK_EX) as held:
        if held is None:
            try:
                holder = _holder_text(json.loads(holder_file.read_text()))
            except (OSError, ValueError):
                holder = "a `nat fit` reading it"  # readers leave no holder file
            raise OutputError(f"{target}: in use by {holder}; wait for it to finish (lock file {lock_path(target)})")
        try:
            holder_file.write_text(json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                                               "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "argv": sys.argv[1:2]}))
            yield
        finally:
            holder_file.unlink(missing_ok=True)


def manifest(folder: str | os.PathLike) -> dict | None:
    """The signed manifest of a folder a command wrote, or None (a user's folder, or one written before signing)."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("signature") == SIGNATURE else None


def check_out_folder(out: str | os.PathLike, command: str, overwrite: bool = False,
                     inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse an ``--out`` that holds one of ``inputs``, is a file, or is a non-empty folder that ``command`` did not
    write (or that now holds files it did not write), unless ``overwrite``."""
    target = Path(out).resolve()
    for f in inputs:
        if Path(f).resolve().is_relative_to(target):
            raise OutputError(f"--out {out}: holds the input {f}, which writing the output would destroy; "
                              "choose another --out")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is a file, not a folder; choose another --out")
    present = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    if not present or overwrite:
        return
    signed = manifest(out)
    if signed is None or signed.get("command") != command:
        raise OutputError(f"--out {out}: folder is not empty and is not an earlier `{command}` output (it holds "
                          f"{', '.join(present[:3])}{' ...' if len(present) > 3 else ''}); choose another --out, or "
                          "pass --overwrite to replace it, deleting those files")
    foreign = [f for f in present if f != MANIFEST and f not in set(signed.get("files", []))]
    if foreign:
        raise OutputError(f"--out {out}: an earlier `{command}` output that now holds files it did not write "
                          f"({', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}); move them out, or pass "
                          "--overwrite to replace the folder, deleting them")


@contextmanager
def writing(out: str | os.PathLike, command: str, overwrite: bool = False,
            inputs: Sequence[str | os.PathLike] = ()) -> Iterator[Path]:
    """Check ``out``, lock it, yield a staging folder to write into, then sign it and swap it into place.

    On any failure the staging folder is deleted and ``out`` is left as it was; the previous output is
    removed only after the swap.
    """
    check_out_folder(out, command, overwrite, inputs)
    with output_lock(out, command):
        check_out_folder(out, command, overwrite)  # again under the lock: another run may have finished into it
        out = Path(out)
        staged, old = (out.parent / f".{out.name}.{kind}-{os.getpid()}" for kind in ("tmp", "old"))
        shutil.rmtree(staged, ignore_errors=True)  # a killed run's leftover
        staged.mkdir()
        try:
            yield staged
            files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
            (staged / MANIFEST).write_text(json.dumps({"signature": SIGNATURE, "command": command, "files": files},
                                                      indent=1), encoding="utf-8")
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(staged, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def reading(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold a shared lock on an output while ``command`` reads it: :func:`writing` refuses to replace it meanwhile."""
    with _flock(folder, fcntl.LOCK_SH) as held:
        if held is None:
            raise OutputError(f"{folder}: being written by another command; {command} waits for nothing, run it again "
                              "when that one has finished")
        yield
