"""The quality rules for trajectories: one set, used by ``nat clean`` and by ``nat build``'s filters.

A negative is dropped when it never called ``finish`` (``drop_unfinished``) or when it scores
below ``min_score``; the paper drops HotpotQA negatives with F1 = 0, which is
``min_score=ZERO_SCORE_FLOOR``. Positives are never dropped by these two rules (a positive
finished with the right answer). ``dedupe`` drops repeats of an identical trajectory.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lightning_nat.core.trajectory import Trajectory

if TYPE_CHECKING:
    from lightning_nat.core.tasks import Task

# "F1 = 0" as a floor: any score below it counts as zero. The one threshold of both commands
# (`nat clean` once used 1e-9, `nat build --min-score` was documented with 1e-6: no F1 lies between).
ZERO_SCORE_FLOOR = 1e-6


@dataclass(frozen=True)
class CleanRules:
    """Which quality rules apply: the paper's, or a command line's."""

    drop_unfinished: bool = True
    min_score: float | None = None
    dedupe: bool = False


def paper_rules(task: Task) -> CleanRules:
    """The paper's cleaning for a task: drop unfinished negatives; for tasks graded by F1 also F1 = 0 ones."""
    return CleanRules(drop_unfinished=True, min_score=ZERO_SCORE_FLOOR if task.score_key == "f1" else None)


def drop_reason(traj: Trajectory, rules: CleanRules) -> str | None:
    """Why ``rules`` drop this one trajectory (the key it is counted under), or None to keep it.

    >>> mk = lambda r, p, s: Trajectory("i", "", "q", [{"role": "assistant", "content": "x"}], r, s, p)
    >>> rules = CleanRules(min_score=ZERO_SCORE_FLOOR)
    >>> drop_reason(mk(False, None, 0.5), rules), drop_reason(mk(False, "y", 0.0), rules)
    ('unfinished', 'score below 1e-06')
    >>> drop_reason(mk(False, "y", 0.2), rules), drop_reason(mk(True, "y", 0.0), rules)
    (None, None)
    """
    if traj.reward:
        return None
    if rules.drop_unfinished and not traj.finished:
        return "unfinished"
    if rules.min_score is not None and (traj.score is None or traj.score < rules.min_score):
        return f"score below {rules.min_score:g}"
    return None


def trajectory_key(traj: Trajectory) -> tuple:
    """What makes two trajectories identical: the question, every turn (tool calls included) and the tools offered."""
    def turn(m: dict) -> tuple:
        return (m["role"], m["content"], json.dumps(m.get("tool_calls"), sort_keys=True), m.get("tool_call_id"))

    return (traj.question_id or traj.question, tuple(turn(m) for m in traj.messages),
            json.dumps(traj.tools, sort_keys=True))


@dataclass
class FilterReport:
    """How many trajectories each quality rule removed."""

    removed: Counter = field(default_factory=Counter)


def apply_rules(trajs: Iterable[Trajectory], rules: CleanRules,
                report: FilterReport | None = None) -> list[Trajectory]:
    """The trajectories ``rules`` keep, in order; every removal is counted in ``report`` under its reason.

    >>> mk = lambda i, r, p, s: Trajectory(i, "", "q" + i, [{"role": "assistant", "content": i}], r, s, p)
    >>> rep = FilterReport()
    >>> kept = apply_rules([mk("a", False, None, 0.0), mk("b", False, "x", 0.0), mk("c", True, "y", 1.0),
    ...                     mk("c", True, "y", 1.0)], CleanRules(min_score=1e-6, dedupe=True), rep)
    >>> [t.id for t in kept], dict(rep.removed)
    (['c'], {'unfinished': 1, 'score below 1e-06': 1, 'duplicate': 1})
    """
    report = report if report is not None else FilterReport()
    seen: set = set()
    out = []
    for t in trajs:
        reason = drop_reason(t, rules)
        if reason is None and rules.dedupe:
            key = trajectory_key(t)
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is not None:
            report.removed[reason] += 1
            continue
        out.append(t)
    return out


def filter_trajectories(trajs: Iterable[Trajectory], drop_unfinished: bool = True, min_score: float | None = None,
                        dedupe: bool = True, report: FilterReport | None = None) -> list[Trajectory]:
    """:func:`apply_rules` with the rules as keywords (``nat build``'s options; dedupe on by default)."""
    return apply_rules(trajs, CleanRules(drop_unfinished, min_score, dedupe), report)


def clean(trajs: Iterable[Trajectory], rules: CleanRules) -> tuple[list[Trajectory], Counter]:
    """``nat clean``: what ``rules`` keep and how many each rule removed."""
    report = FilterReport()
    kept = apply_rules(trajs, rules, report)
    return kept, report.removed
