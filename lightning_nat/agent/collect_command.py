"""``nat collect`` and ``nat clean``: their options and their runs."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_nat.agent.config import COLLECT_POOL_SIZE, AgentKindConfig, check_error_rate
from lightning_nat.core.options import option


@dataclass(kw_only=True)
class CollectConfig(AgentKindConfig):
    """The options of ``nat collect``: the teacher (agent options) and what it answers."""

    task: str = option(help="task name or task YAML (instruction, tools, metric)")
    data: str = option(help="question file (JSON or JSONL with question and answer)")
    temperatures: tuple[float, ...] = option(
        (0.2, 0.5, 0.7), "sampling temperatures, one pass each (default: 0.2 0.5 0.7, as the paper)", min=0)
    samples: int = option(1, "episodes per question and temperature (default: 1)", min=1)
    batch_size: int = option(COLLECT_POOL_SIZE, f"episodes run together (default: {COLLECT_POOL_SIZE})", min=1)
    price_prompt: float | None = option(None, "USD per million prompt tokens, to report the cost", min=0)
    price_completion: float | None = option(None, "USD per million completion tokens", min=0)
    out: str = option(help="output JSONL (appended to; a rerun resumes)")


def run_collect(cfg: CollectConfig) -> int:
    """``nat collect``: every episode appended durably to ``cfg.out``; exit 1 when too many requests failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from lightning_nat.agent.collect import collect
    from lightning_nat.core.console import console, print_collect_summary
    from lightning_nat.core.tasks import get_task, load_questions_for

    task = get_task(cfg.task)
    records = load_questions_for(task, path=cfg.data, limit=cfg.limit)
    tools = cfg.task_tools([task])[0]  # a bad corpus or a missing key stops here, before the teacher is paid
    policy = cfg.make_policy(temperature=cfg.temperatures[0])
    agent = cfg.make_agent(task, policy, tools, max_turns=cfg.turns())
    prices = (cfg.price_prompt or 0.0, cfg.price_completion or 0.0) if cfg.price_prompt or cfg.price_completion \
        else None
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        bar_id = bar.add_task("collecting", total=None)
        summary = collect(agent, records, cfg.out, list(cfg.temperatures), cfg.samples, teacher=cfg.model,
                          batch_size=cfg.batch_size, price_per_million=prices,
                          progress=lambda done, total: bar.update(bar_id, completed=done, total=total))
    print_collect_summary(summary, cfg.out)
    attempted = summary.new_episodes + summary.failures
    check_error_rate(summary.failures, attempted, cfg.max_error_rate,
                     f"{cfg.out}: {summary.failures} of {attempted} episodes failed on API errors",
                     f"they are listed in {cfg.out}.failed.jsonl and a rerun retries them")
    return 0


@dataclass(kw_only=True)
class CleanConfig:
    """The options of ``nat clean``."""

    trajectories: str = option(help="canonical trajectory JSONL (what nat collect writes)", positional=True)
    task: str = option(help="task name or task YAML, which picks the rules (tasks graded by F1 also drop F1 = 0 "
                            "negatives)")
    drop_unfinished: bool = option(True, "keep trajectories that never called finish", flag="--keep-unfinished")
    min_score: float | None = option(None, "drop negatives scoring below this (overrides the task's rule)")
    out: str = option(help="cleaned JSONL")


def run_clean(cfg: CleanConfig) -> int:
    """``nat clean``: the task's cleaning rules applied to ``cfg.trajectories``, the rest written to ``cfg.out``."""
    from dataclasses import replace
    from pathlib import Path

    from lightning_nat.core.console import console, table
    from lightning_nat.core.readers import read_trajectories_jsonl
    from lightning_nat.core.tasks import get_task
    from lightning_nat.core.trajectory import write_jsonl
    from lightning_nat.data.select import clean, paper_rules

    if Path(cfg.out).resolve() == Path(cfg.trajectories).resolve():
        raise ValueError(f"--out {cfg.out}: is the input file; write the cleaned trajectories elsewhere")
    if Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out}: is a folder; give a file name")
    rules = replace(paper_rules(get_task(cfg.task)), drop_unfinished=cfg.drop_unfinished)
    if cfg.min_score is not None:
        rules = replace(rules, min_score=cfg.min_score)
    trajs = read_trajectories_jsonl(cfg.trajectories)
    kept, removed = clean(trajs, rules)
    write_jsonl(cfg.out, kept)
    rows = [["read", len(trajs)], *[[f"removed: {rule}", n] for rule, n in removed.items()], ["kept", len(kept)]]
    console.print(table("Cleaning", ["", "trajectories"], rows))
    console.print(f"wrote {cfg.out}")
    return 0
