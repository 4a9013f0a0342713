"""The evaluation report: what episodes come to (:func:`task_result`), and the one reader and writer of
``results.json`` (:class:`EvalReport`), which ``nat eval`` writes and ``nat plot`` and ``nat push`` read."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_nat.core.artifacts import EPISODES_FILE, RESULTS_FILE
from lightning_nat.core.jsonl import atomic_write_text, read_json, write_jsonl
from lightning_nat.core.readers import read_trajectories
from lightning_nat.core.trajectory import Trajectory

# How an episode can end (``Trajectory.meta["end"]``) and the rate each gets in a task's result.
END_RATES = {"finished": "finished", "turn_limit": "turn_limit", "parse_error": "stopped_on_error",
             "failed": "failed", "no_answer": "no_answer"}
# Function-calling episodes also count their calls and the calls that failed (unknown tool, bad arguments, a raise).
_CALL_COUNTS = ("tool_calls", "tool_errors")
_RATES = (*END_RATES.values(), "parse_error_rate")
_SHAPE = {"episodes", "runs", "per_run", "prompt", "parse_errors", *_RATES, *_CALL_COUNTS}


@dataclass
class TaskResult:
    """One task's figures over ``runs`` runs: its own ``metrics`` (accuracy, or em and f1, ...), how episodes
    ended, the sample sds over runs (``sd``) and each run's flat figures (``per_run``)."""

    episodes: int
    metrics: dict[str, float] = field(default_factory=dict)
    finished: float = 0.0
    turn_limit: float = 0.0
    stopped_on_error: float = 0.0
    failed: float = 0.0
    no_answer: float = 0.0
    parse_error_rate: float = 0.0
    parse_errors: int = 0
    runs: int = 1
    sd: dict[str, float] = field(default_factory=dict)
    per_run: list[dict[str, Any]] = field(default_factory=list)
    prompt: dict[str, Any] | None = None
    tool_calls: float | None = None
    tool_errors: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The flat form ``results.json`` has always had: metrics and rates side by side, ``<key>_sd`` beside each.

        >>> TaskResult(episodes=2, metrics={"accuracy": 0.5}, finished=1.0).to_dict()["accuracy"]
        0.5
        """
        out: dict[str, Any] = {**self.metrics, "episodes": self.episodes, **{k: getattr(self, k) for k in _RATES},
                               "parse_errors": self.parse_errors}
        out.update({k: getattr(self, k) for k in _CALL_COUNTS if getattr(self, k) is not None})
        out.update({f"{k}_sd": v for k, v in self.sd.items()})
        if self.runs > 1:
            out["runs"], out["per_run"] = self.runs, self.per_run
        if self.prompt is not None:
            out["prompt"] = self.prompt
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "results") -> TaskResult:
        """Read the flat form back (older files without some rates read as 0).

        >>> r = TaskResult.from_dict({"accuracy": 0.4, "accuracy_sd": 0.1, "episodes": 5, "finished": 0.8})
        >>> r.metrics, r.sd, r.finished
        ({'accuracy': 0.4}, {'accuracy': 0.1}, 0.8)
        """
        if not isinstance(d, dict):
            raise ValueError(f"{where}: a task result must be an object, got {type(d).__name__}")
        sd = {k[:-3]: float(v) for k, v in d.items() if k.endswith("_sd")}
        metrics = {k: float(v) for k, v in d.items()
                   if k not in _SHAPE and not k.endswith("_sd") and isinstance(v, (int, float))}
        return cls(episodes=int(d.get("episodes", 0)), metrics=metrics, sd=sd, runs=int(d.get("runs", 1)),
                   per_run=list(d.get("per_run", [])), prompt=d.get("prompt"),
                   parse_errors=int(d.get("parse_errors", 0)),
                   **{k: float(d[k]) for k in _CALL_COUNTS if d.get(k) is not None},
                   **{k: float(d.get(k, 0.0)) for k in _RATES})


def run_figures(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """One run's flat figures: mean metrics and the rate of each way an episode ended.

    >>> t = Trajectory(id="a", task="t", question="q", messages=[{"role": "assistant", "content": "x"}],
    ...                reward=True, meta={"end": "finished", "metrics": {"accuracy": 1.0}})
    >>> run_figures([t])["accuracy"], run_figures([t])["failed"]
    (1.0, 0.0)
    """
    n = len(trajs)
    if not n:
        return {"episodes": 0}
    sums: Counter = Counter()
    for t in trajs:
        sums.update(t.meta.get("metrics", {}))
    ends = Counter(t.meta.get("end") for t in trajs)
    out: dict[str, float] = {k: v / n for k, v in sums.items()}
    out["episodes"] = n
    out.update({rate: ends[end] / n for end, rate in END_RATES.items()})
    out["parse_error_rate"] = sum(1 for t in trajs if t.meta.get("parse_errors")) / n
    out["parse_errors"] = sum(int(t.meta.get("parse_errors", 0)) for t in trajs)
    if any(t.meta.get("agent") == "function-calling" for t in trajs):
        out["tool_calls"] = sum(int(t.meta.get("calls", 0)) for t in trajs)
        out["tool_errors"] = sum(int(t.meta.get("tool_errors", 0)) for t in trajs)
    return out


def task_result(runs: Sequence[Sequence[Trajectory]], prompt: dict[str, Any] | None = None) -> TaskResult:
    """A task's result from its runs' episodes: the mean over runs, with sample sds when there are several."""
    figures = [run_figures(r) for r in runs]
    flat: dict[str, Any] = dict(figures[0])
    if len(figures) > 1:
        for key in figures[0]:
            values = [float(f.get(key, 0.0)) for f in figures]
            flat[key] = sum(values) / len(values)
            if key != "episodes":
                flat[f"{key}_sd"] = round(statistics.stdev(values), 12)
        flat["runs"], flat["per_run"] = len(figures), figures
    return TaskResult.from_dict({**flat, "prompt": prompt})


@dataclass
class EvalReport:
    """Everything an evaluation produced: per-task results, every episode, the policy's usage, the run's settings."""

    results: dict[str, TaskResult]
    episodes: dict[str, list[Trajectory]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"results": {k: v.to_dict() for k, v in self.results.items()}, "usage": self.usage, **self.meta}

    def write(self, out_dir: str | Path) -> Path:
        """``results.json`` and ``trajectories.jsonl`` into ``out_dir`` (the only writer of ``results.json``)."""
        out = Path(out_dir)  # both writers make the folder
        # results.json last: it marks a finished output (`nat eval --out` recognises its own folders by it).
        if self.episodes:  # a report of figures only (the demo's comparison) has no episodes to write
            write_jsonl(out / EPISODES_FILE, [t for trajs in self.episodes.values() for t in trajs])
        atomic_write_text(out / RESULTS_FILE, json.dumps(self.to_dict(), indent=1))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = RESULTS_FILE) -> EvalReport:
        if not isinstance(d, dict) or not isinstance(d.get("results"), dict):
            raise ValueError(f"{where}: no 'results' object (not written by nat eval?)")
        results = {task: TaskResult.from_dict(v, f"{where}, task {task}") for task, v in d["results"].items()}
        meta = {k: v for k, v in d.items() if k not in ("results", "usage")}
        return cls(results=results, usage=d.get("usage"), meta=meta)

    @classmethod
    def read(cls, path: str | Path, episodes: bool = False) -> EvalReport:
        """Read ``results.json`` (a file or the folder holding it); with ``episodes``, its trajectories too."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS_FILE
        report = cls.from_dict(read_json(path), str(path))
        if episodes and (path.parent / EPISODES_FILE).exists():
            for t in read_trajectories(path.parent / EPISODES_FILE):
                report.episodes.setdefault(t.task, []).append(t)
        return report

    @property
    def tags(self) -> dict[str, Any]:
        return dict(self.meta.get("tags") or {})
