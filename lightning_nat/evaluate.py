"""`nat eval`: run the batched agent on tasks and write metrics and trajectories."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agent import ReActAgent, summarize
from .tasks import get_task, load_questions_for
from .tools import make_search, make_tools
from .trajectory import Trajectory, write_jsonl


@dataclass
class EvalConfig:
    """What to evaluate and how (the options of ``nat eval``)."""

    tasks: list[str]
    data_dir: str | None = None
    limit: int | None = None
    batch_size: int = 16
    max_turns: int = 6
    mode: str = "react"
    on_parse_error: str = "observe"
    search: str | None = None
    search_corpus: str | None = None
    search_k: int = 3
    hub: bool = False


def search_tool(cfg: EvalConfig) -> Callable[[str], str] | None:
    if cfg.search_corpus:
        return make_search("bm25", cfg.search_k, corpus_path=cfg.search_corpus)
    if cfg.search == "serper":
        return make_search("serper", cfg.search_k)
    return None


def prepare(cfg: EvalConfig) -> list[tuple[Any, list[dict], dict[str, Callable[[str], str]]]]:
    """Every requested task with its questions and tools, checked before any episode runs.

    A missing tool (``search`` without a backend), an unreadable corpus or question file, or a
    task with no questions stops here, not after the tasks before it have run.
    """
    tasks = [get_task(name) for name in cfg.tasks]
    search = search_tool(cfg)
    tools = [make_tools(task.tools, search) if cfg.mode == "react" else {} for task in tasks]
    if search is not None and any("search" in t for t in tools):
        search.prepare()  # type: ignore[attr-defined]
    plan = []
    for task, task_tools in zip(tasks, tools):
        records = load_questions_for(task, data_dir=cfg.data_dir, limit=cfg.limit, hub=cfg.hub)
        if not records:
            raise ValueError(f"{task.name}: no questions to evaluate (data folder {cfg.data_dir})")
        plan.append((task, records, task_tools))
    return plan


def evaluate(policy: Any, cfg: EvalConfig, progress: Callable[[str, int, int], None] | None = None,
             plan: list | None = None) -> tuple[dict[str, dict[str, float]], dict[str, list[Trajectory]]]:
    """Metrics per task and the episodes as trajectories (``plan``: what :func:`prepare` returned, if called)."""
    results: dict[str, dict[str, float]] = {}
    episodes: dict[str, list[Trajectory]] = {}
    for task, records, tools in plan if plan is not None else prepare(cfg):
        name = task.name
        agent = ReActAgent(task, policy, tools, max_turns=cfg.max_turns, mode=cfg.mode,  # type: ignore[arg-type]
                           on_parse_error=cfg.on_parse_error)  # type: ignore[arg-type]
        done = [0]

        def tick(_: Trajectory, name: str = name, total: int = len(records), done: list[int] = done) -> None:
            done[0] += 1
            if progress:
                progress(name, done[0], total)

        trajs = agent.run(records, batch_size=cfg.batch_size, on_episode=tick)
        results[name] = summarize(trajs)
        results[name]["parse_errors"] = agent.stats.parse_errors
        episodes[name] = trajs
    return results, episodes


def write_results(out_dir: str | Path, results: dict, episodes: dict[str, Sequence[Trajectory]], meta: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": results, **meta}, indent=1))
    write_jsonl(out / "trajectories.jsonl", [t for trajs in episodes.values() for t in trajs])
    return out
