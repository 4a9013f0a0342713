"""`nat eval`: run the engine on tasks; an :class:`~lightning_nat.core.results.EvalReport` of metrics and trajectories."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_nat.agent.react import ReActAgent
from lightning_nat.core.prompts import PromptSpec, resolve_eval_spec
from lightning_nat.core.results import EvalReport, task_result
from lightning_nat.core.tasks import get_task, load_questions_for
from lightning_nat.core.tools import make_search, make_tools
from lightning_nat.core.trajectory import Trajectory


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
    # Re-rank search results with the paper's bi-encoder and DPR reader (10 -> 5 -> 3; the rerank extra).
    search_rerank: bool = False
    hub: bool = False
    # The prompt the model was trained with (its folder's nat_prompt.json), and explicit options that must agree.
    prompt_spec: PromptSpec | None = None
    prompt_style: str | None = None
    prompt_preset: str | None = None
    prompt_source: str = "the model folder"
    runs: int = 1
    seed: int = 0
    # How the model acts: `react` (Thought/Action text) or `function-calling` (the chat API's tools and tool_calls;
    # the task's tools are its Python functions, offered as JSON schemas). Recorded in results.json.
    agent: str = "react"
    # The local policy's reader of generated calls: hermes | llama31 (default: detected from the chat template).
    tool_parser: str | None = None


@dataclass(frozen=True)
class Protocol:
    """How episodes are run and reported."""

    max_turns: int
    temperature: float
    runs: int
    on_parse_error: str


PROTOCOLS: dict[str, Protocol] = {
    # This package's default: one greedy run; a malformed step gets an error observation and the episode goes on.
    "native": Protocol(max_turns=6, temperature=0.0, runs=1, on_parse_error="observe"),
    # The reference code: 7 model turns, temperature 0.2, the paper's Table 5 reports the mean of 5 runs, and a
    # malformed step ends the episode.
    "reference": Protocol(max_turns=7, temperature=0.2, runs=5, on_parse_error="stop"),
}


def apply_protocol(name: str, max_turns: int | None = None, temperature: float | None = None, runs: int | None = None,
                   on_parse_error: str | None = None) -> Protocol:
    """The protocol with the explicit options applied; an option that contradicts ``reference`` is an error.

    >>> apply_protocol("native", max_turns=8).max_turns, apply_protocol("reference").runs
    (8, 5)
    >>> apply_protocol("native", on_parse_error="stop").on_parse_error
    'stop'
    >>> apply_protocol("reference", temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: --temperature 0.0 contradicts --protocol reference (temperature 0.2); drop one of them
    """
    base = PROTOCOLS[name]
    given = {"max_turns": max_turns, "temperature": temperature, "runs": runs, "on_parse_error": on_parse_error}
    out = {}
    for key, value in given.items():
        have = getattr(base, key)
        if value is not None and name == "reference" and value != have:
            raise ValueError(f"--{key.replace('_', '-')} {value} contradicts --protocol reference ({key.replace('_', ' ')}"
                             f" {have}); drop one of them")
        out[key] = have if value is None else value
    return Protocol(**out)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # the API policy needs no torch
        pass


def search_tool(cfg: Any) -> Callable[[str], str] | None:
    """The search backend of ``cfg``'s ``search``, ``search_corpus``, ``search_k`` and ``search_rerank`` (an
    :class:`EvalConfig` or an :class:`~lightning_nat.agent.config.AgentConfig`), or None."""
    reranker = None
    if cfg.search_rerank and (cfg.search_corpus or cfg.search):
        from lightning_nat.agent.rerank import load_reference_reranker

        reranker = load_reference_reranker()
    if cfg.search_corpus:
        return make_search("bm25", cfg.search_k, reranker=reranker, corpus_path=cfg.search_corpus)
    if cfg.search == "serper":
        return make_search("serper", cfg.search_k, reranker=reranker)
    return None


def prepare(cfg: EvalConfig) -> list[tuple[Any, list[dict], dict[str, Callable[[str], str]]]]:
    """Every requested task with its questions and tools, checked before any episode runs.

    A missing tool (``search`` without a backend), an unreadable corpus or question file, or a
    task with no questions stops here, not after the tasks before it have run.
    """
    tasks = [get_task(name) for name in cfg.tasks]
    search = search_tool(cfg)
    if cfg.agent == "function-calling":
        from lightning_nat.agent.fc_episode import schemas_of, task_functions

        for task in tasks:  # a tool without a usable schema stops here, before the model loads
            schemas_of(task_functions(task.tools))
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


def make_agent(cfg: EvalConfig, task: Any, policy: Any, tools: dict[str, Callable[[str], str]],
               spec: PromptSpec | None) -> ReActAgent:
    """The agent ``cfg.agent`` names, for one run of one task."""
    kwargs: dict[str, Any] = dict(max_turns=cfg.max_turns, mode=cfg.mode, on_parse_error=cfg.on_parse_error,
                                  prompt_spec=spec)
    if cfg.agent == "function-calling":
        from lightning_nat.agent.fc_episode import FunctionCallingAgent

        family = cfg.tool_parser or getattr(policy, "family", None) or "hermes"
        return FunctionCallingAgent(task, policy, tools, family=family, **kwargs)
    if cfg.agent != "react":
        raise ValueError(f"unknown agent {cfg.agent!r}; expected react or function-calling")
    return ReActAgent(task, policy, tools, **kwargs)


def evaluate(policy: Any, cfg: EvalConfig, progress: Callable[[str, int, int, int], None] | None = None,
             plan: list | None = None, meta: dict[str, Any] | None = None) -> EvalReport:
    """Every task's episodes through the engine's pool, as one :class:`EvalReport`.

    ``plan``: what :func:`prepare` returned, if already called. ``progress`` is called with
    (task, episodes done, episodes in all, episodes live) after every engine step.
    """
    report = EvalReport(results={}, meta=dict(meta or {}))
    for task, records, tools in plan if plan is not None else prepare(cfg):
        name = task.name
        spec = resolve_eval_spec(task, cfg.prompt_spec, cfg.prompt_style, cfg.prompt_preset, cfg.mode,
                                 cfg.prompt_source)
        total = len(records) * cfg.runs
        runs: list[list[Trajectory]] = []
        for run in range(cfg.runs):
            _seed_everything(cfg.seed + run)
            agent = make_agent(cfg, task, policy, tools, spec)
            before = len(records) * run

            def tick(done: int, live: int, name: str = name, before: int = before, total: int = total) -> None:
                if progress:
                    progress(name, before + done, total, live)

            trajs = agent.run(records, batch_size=cfg.batch_size, progress=tick)
            for t in trajs:
                t.meta["run"] = run
            runs.append(trajs)
        report.results[name] = task_result(runs, prompt=spec.to_dict())  # what the model was asked with
        report.episodes[name] = [t for r in runs for t in r]
    report.usage = getattr(policy, "usage", None)
    return report
