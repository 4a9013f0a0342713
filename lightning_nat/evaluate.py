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


def evaluate(policy: Any, cfg: EvalConfig, progress: Callable[[str, int, int], None] | None = None
             ) -> tuple[dict[str, dict[str, float]], dict[str, list[Trajectory]]]:
    """Metrics per task and the episodes as trajectories."""
    results: dict[str, dict[str, float]] = {}
    episodes: dict[str, list[Trajectory]] = {}
    search = search_tool(cfg)
    for name in cfg.tasks:
        task = get_task(name)
        records = load_questions_for(task, data_dir=cfg.data_dir, limit=cfg.limit, hub=cfg.hub)
        tools = make_tools(task.tools, search) if cfg.mode == "react" else {}
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
    from .jsonl import atomic_write_text

    # results.json last: it marks a finished output (`nat eval --out` recognises its own folders by it).
    write_jsonl(out / "trajectories.jsonl", [t for trajs in episodes.values() for t in trajs])
    atomic_write_text(out / "results.json", json.dumps({"results": results, **meta}, indent=1))
    return out
