"""The files stages hand each other: their names, and the typed readers and writers of each.

A stage that needs another stage's output asks this module, never a string key of its own: ``build.json``
(:class:`BuildRecord`), ``nat_prompt.json`` (:func:`read_spec`), the run histories ``perplexity.jsonl`` and
``react_eval.jsonl`` (:func:`append_row`, :func:`read_rows`); ``results.json`` and ``trajectories.jsonl`` are
read and written by :class:`lightning_nat.core.results.EvalReport` alone. Every stage may import this.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lightning_nat.core.jsonl import atomic_write_text, dumps_line, read_json, read_jsonl
from lightning_nat.core.prompts import PromptSpec, native_spec

BUILD_FILE = "build.json"
PREVIEW_FILE = "preview.jsonl"
PROMPT_FILE = "nat_prompt.json"
RESULTS_FILE = "results.json"
EPISODES_FILE = "trajectories.jsonl"
PERPLEXITY_FILE = "perplexity.jsonl"
REACT_EVAL_FILE = "react_eval.jsonl"
REACT_EVAL_EPISODES_DIR = "react_eval"

# The one spelling of "how many negatives" in every file above; older history rows say "negatives"/"positives".
NEG_NUM = "neg_num"
POS_NUM = "pos_num"
_OLD_COUNT_KEYS = {"negatives": NEG_NUM, "positives": POS_NUM}


@dataclass(frozen=True)
class BuildRecord:
    """``build.json``: the build's parameters (``config``), what it read, skipped and kept (``report``), its prompt."""

    config: dict[str, Any]
    report: dict[str, Any]
    prompt: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.report.get("stats", {}))

    @property
    def variant(self) -> str | None:
        return self.config.get("name")

    def to_dict(self) -> dict[str, Any]:
        out = {"config": self.config, "report": self.report}
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out

    @classmethod
    def from_dict(cls, d: Any, where: str = BUILD_FILE) -> BuildRecord:
        """A record from its JSON form; anything else is an error naming ``where``.

        >>> BuildRecord.from_dict({"config": {"name": "nat"}, "report": {"stats": {"negatives": 3}}}).stats
        {'negatives': 3}
        >>> BuildRecord.from_dict({"config": {}})
        Traceback (most recent call last):
        ...
        ValueError: build.json: no 'report' object (not written by nat build?)
        """
        for key in ("config", "report"):
            if not isinstance(d, dict) or not isinstance(d.get(key), dict):
                raise ValueError(f"{where}: no '{key}' object (not written by nat build?)")
        return cls(config=d["config"], report=d["report"], prompt=d.get("prompt"))


def read_build(folder: str | os.PathLike) -> BuildRecord:
    """The ``build.json`` of a ``nat build --out`` folder; a missing or unreadable one is a located error."""
    path = Path(folder) / BUILD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {BUILD_FILE} (is it a `nat build --out` folder?)")
    return replace(BuildRecord.from_dict(read_json(path), str(path)), path=path)


def maybe_read_build(folder: str | os.PathLike | None) -> BuildRecord | None:
    """:func:`read_build` when ``folder`` holds a ``build.json``, else None (a dataset made by other means)."""
    if folder is None or not (Path(folder) / BUILD_FILE).is_file():
        return None
    return read_build(folder)


def write_build(folder: str | os.PathLike, record: BuildRecord) -> Path:
    """Write ``build.json`` into ``folder`` (atomically: a reader never sees half a record)."""
    return atomic_write_text(Path(folder) / BUILD_FILE, json.dumps(record.to_dict(), indent=1, default=list))


def read_spec(folder: str | os.PathLike | None) -> PromptSpec | None:
    """The prompt spec saved beside a model (``nat_prompt.json``) or recorded by a build (``build.json``), or None."""
    if folder is None:
        return None
    path = Path(folder) / PROMPT_FILE
    if path.is_file():
        return PromptSpec.from_dict(read_json(path))
    rec = maybe_read_build(folder)
    if rec is not None and rec.prompt is not None:
        return PromptSpec.from_dict(rec.prompt)
    if rec is None or not rec.config.get("task"):
        return None
    cfg = rec.config
    # Built before prompt specs were recorded: those builds were all in the native style.
    from lightning_nat.core.tasks import get_task

    return native_spec(get_task(cfg["task"]), cfg.get("name", "nat"), markers=cfg.get("markers", "correct"),
                       placement=cfg.get("placement", "suffix"), thresholds=tuple(cfg.get("thresholds", ())))


def write_spec(spec: PromptSpec, folder: str | os.PathLike) -> Path:
    """Save a prompt spec beside a model, where :func:`read_spec` finds it."""
    return atomic_write_text(Path(folder) / PROMPT_FILE, json.dumps(spec.to_dict(), indent=1))


def run_counts(build: BuildRecord | None) -> dict[str, Any]:
    """What every history row says about the training set: its variant and the counts actually in its training
    split (``stats``; not the ``--neg-num`` asked for).

    >>> run_counts(BuildRecord({"name": "nat", "neg_num": 500}, {"stats": {"positives": 9, "negatives": 4}}))
    {'variant': 'nat', 'pos_num': 9, 'neg_num': 4}
    >>> run_counts(None)
    {}
    """
    if build is None:
        return {}
    return {"variant": build.variant, POS_NUM: build.stats.get("positives"), NEG_NUM: build.stats.get("negatives")}


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """A history row with the count keys in their one spelling (rows written before say ``negatives``).

    >>> normalize_row({"step": 2, "negatives": 5, "positives": 7})
    {'step': 2, 'neg_num': 5, 'pos_num': 7}
    """
    out: dict[str, Any] = {}
    for key, value in row.items():
        new = _OLD_COUNT_KEYS.get(key)
        out[new if new and new not in row else key] = value
    return out


def append_row(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row to a run's history file (``perplexity.jsonl``, ``react_eval.jsonl``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(dumps_line(row))


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's history file, count keys normalised (see :func:`normalize_row`)."""
    return [normalize_row(r) for r in read_jsonl(path)]


def check_model_folder(path: str, option: str = "--model") -> None:
    """Refuse, in one line with the likely fix, a local model path that does not exist or is not a model folder.

    A name shaped like a Hub id (``org/name``, whose ``org`` is no local folder) is left to the Hub.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return
        inner = sorted(p.rglob("config.json"))
        hint = f"; did you mean {inner[0].parent}?" if inner else \
            " (nat fit exports one as <log dir>/hf, e.g. runs/tiny-cpu/nat/version_0/hf)"
        raise FileNotFoundError(f"{option} {path}: not a model folder (no config.json){hint}")
    if p.exists():
        raise FileNotFoundError(f"{option} {path}: is a file, not a model folder")
    head = path.split("/")[0]
    if path.startswith((".", "/", "~")) or path.count("/") != 1 or Path(head).is_dir():
        raise FileNotFoundError(f"{option} {path}: no such model folder (train one with nat fit, which exports "
                                "<log dir>/hf; or give a Hub id such as org/name)")


def check_dataset_folder(path: str | os.PathLike, option: str = "data.dataset_dir") -> None:
    """Refuse a dataset folder that does not exist, saying how to make it."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{option} {path}: no such dataset folder; build it first with nat build ... --out "
                                f"{path} (a config's header comment gives the exact command)")
