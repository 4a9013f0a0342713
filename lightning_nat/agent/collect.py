"""`nat collect`: a teacher LLM acts on training questions; every trajectory is labelled and kept durably.

Each (question, temperature, sample) key is one episode, appended and fsynced as it ends: a killed run loses
at most the episodes in flight, and a rerun skips the keys written. An episode whose requests failed goes
to ``<out>.failed.jsonl`` (never as a negative) and is tried again by the next run.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from lightning_nat.agent.config import COLLECT_POOL_SIZE, AgentKindConfig, check_error_rate
from lightning_nat.agent.react import ReActAgent
from lightning_nat.core import jsonl
from lightning_nat.core.console import console, print_collect_summary
from lightning_nat.core.jsonl import RecordError
from lightning_nat.core.options import option
from lightning_nat.core.outputs import output_lock
from lightning_nat.core.trajectory import Trajectory, TrajectoryFormatError

Key = tuple[str, float, int]


def key_of(traj: Trajectory) -> Key:
    """The collection key of a trajectory: question id, temperature, sample index."""
    return (str(traj.question_id), float(traj.meta["temperature"]), int(traj.meta["sample"]))


def recover(path: str | os.PathLike) -> tuple[list[Trajectory], int]:
    """Trajectories already collected, and how many bytes of a torn last line were set aside.

    Only the last line can be torn by a crash: a complete record missing its newline is kept, a torn one moved
    to ``<out>.torn``. Every line is checked first, so a file that is not a collection is refused untouched.
    """
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    good_end = data.rfind(b"\n") + 1
    out = [_collected_record(raw, path, lineno) for lineno, raw in jsonl.split_lines(data[:good_end])]
    tail = data[good_end:]
    if not tail.strip():
        return out, 0
    lineno = data[:good_end].count(b"\n") + 1
    try:
        last = _collected_record(tail.removeprefix(jsonl.BOM) if not good_end else tail, path, lineno)
    except TrajectoryFormatError:
        if not out and _is_json(tail):  # a whole record that is not ours: a user's file, leave it alone
            raise
        append_durably(path.with_name(path.name + ".torn"), tail + b"\n")
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
        return out, len(tail)
    append_durably(path, b"\n")
    return [*out, last], 0


def _is_json(raw: bytes) -> bool:
    try:
        jsonl.parse_line(raw)
    except RecordError:
        return False
    return True


def _collected_record(raw: bytes, path: Path, lineno: int) -> Trajectory:
    """One line of a collection file, or a located error saying why it cannot be one."""
    try:
        traj = Trajectory.from_dict(jsonl.parse_line(raw))
        key_of(traj)
    except RecordError as exc:
        raise TrajectoryFormatError(f"cannot resume: {exc.problem}; is --out a `nat collect` output?", path,
                                    f"line {lineno}") from None
    except (KeyError, TypeError, ValueError):
        raise TrajectoryFormatError("cannot resume: not a `nat collect` record (no meta.temperature and "
                                    "meta.sample); is --out a `nat collect` output?", path, f"line {lineno}") from None
    return traj


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path``, flushed and fsynced before returning: a crash loses nothing appended."""
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def still_failed(entries: Sequence[dict], collected: set[Key]) -> list[dict]:
    """Failure entries whose key was never collected since, the latest entry per key.

    >>> e = [{"question_id": "a", "temperature": 0.2, "sample": 0, "turns": 1},
    ...      {"question_id": "b", "temperature": 0.2, "sample": 0, "turns": 1},
    ...      {"question_id": "b", "temperature": 0.2, "sample": 0, "turns": 3}]
    >>> still_failed(e, {("a", 0.2, 0)})
    [{'question_id': 'b', 'temperature': 0.2, 'sample': 0, 'turns': 3}]
    """
    latest: dict[Key, dict] = {}
    for entry in entries:
        key = (str(entry["question_id"]), float(entry["temperature"]), int(entry["sample"]))
        if key not in collected:
            latest.pop(key, None)
            latest[key] = entry
    return list(latest.values())


def compact_failures(path: Path, collected: set[Key]) -> None:
    """Rewrite the failure log (atomically) to what is still missing, removing it when nothing is."""
    left = still_failed(jsonl.read_jsonl(path), collected) if path.exists() else []
    if left:
        jsonl.write_jsonl(path, left)
    else:
        path.unlink(missing_ok=True)


@dataclass
class CollectSummary:
    """What a collection run holds at its end (including earlier runs into the same file)."""

    positives: int = 0
    negatives: int = 0
    questions: int = 0
    questions_solved: int = 0
    failures: int = 0
    new_episodes: int = 0
    resumed: int = 0
    torn_bytes: int = 0
    ends: Counter = field(default_factory=Counter)
    usage: dict[str, Any] = field(default_factory=dict)
    cost_usd: float | None = None


def collect(agent: ReActAgent, records: Sequence[dict], out: str | os.PathLike,
            temperatures: Sequence[float] = (0.2, 0.5, 0.7), samples: int = 1, teacher: str = "",
            batch_size: int = COLLECT_POOL_SIZE, price_per_million: tuple[float, float] | None = None,
            progress: Callable[[int, int], None] | None = None) -> CollectSummary:
    """Run the teacher ``agent`` (ReAct or function-calling; its policy's ``temperature`` is set for each pass) on
    every missing (question, temperature, sample) key; see the module doc."""
    repeated = sorted({t for t in temperatures if list(temperatures).count(t) > 1})
    if repeated:
        raise ValueError(f"temperatures {' '.join(f'{t:g}' for t in temperatures)}: {', '.join(f'{t:g}' for t in repeated)}"
                         " given more than once (each temperature is one pass over every question)")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    out = Path(out)
    task, policy = agent.task, agent.policy
    failed_path = out.with_name(out.name + ".failed.jsonl")
    plan = [(float(t), s) for t in temperatures for s in range(samples)]
    total = len(records) * len(plan)
    new: list[Trajectory] = []
    with output_lock(out, "nat collect"):
        existing, torn = recover(out)
        done = {key_of(t) for t in existing}
        summary = CollectSummary(resumed=len(existing), torn_bytes=torn)
        finished = len([k for k in done if (k[1], k[2]) in set(plan)])
        out.touch()  # the collection exists even before its first episode (the lock made its folder)
        for temperature, sample in plan:
            pending = [r for r in records if (str(r["id"]), temperature, sample) not in done]
            if not pending:
                continue
            policy.temperature = temperature

            def keep(traj: Trajectory, temperature: float = temperature, sample: int = sample) -> None:
                nonlocal finished
                traj.id = f"{task.name}:{traj.question_id}:t{temperature:g}:s{sample}"
                traj.meta.update(temperature=temperature, sample=sample, teacher=teacher)
                if traj.meta.get("end") == "failed":
                    append_durably(failed_path, jsonl.dumps_line({
                        "question_id": traj.question_id, "temperature": temperature, "sample": sample,
                        "teacher": teacher, "turns": len(traj.messages)}).encode())
                    summary.failures += 1
                else:
                    append_durably(out, jsonl.dumps_line(traj.to_dict()).encode())
                    new.append(traj)
                    finished += 1
                if progress:
                    progress(finished + summary.failures, total)

            agent.run(pending, batch_size=batch_size, on_episode=keep)
        everything = existing + new
        # Keys collected on a retry leave the failure log; it disappears when nothing is missing.
        compact_failures(failed_path, {key_of(t) for t in everything})
    summary.new_episodes = len(new)
    summary.positives = sum(t.reward for t in everything)
    summary.negatives = len(everything) - summary.positives
    summary.questions = len({t.question_id for t in everything})
    summary.questions_solved = len({t.question_id for t in everything if t.reward})
    summary.ends = Counter(t.meta.get("end") for t in everything)
    summary.usage = dict(getattr(policy, "usage", {}) or {})
    if price_per_million and summary.usage:
        p_in, p_out = price_per_million
        summary.cost_usd = (summary.usage.get("prompt_tokens", 0) * p_in
                            + summary.usage.get("completion_tokens", 0) * p_out) / 1e6
    return summary


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
