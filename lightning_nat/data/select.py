"""Which trajectories a training set keeps: the quality rules, the paper's sampling, and preference pairs.

One set of rules serves ``nat clean`` (here) and ``nat build``: drop negatives that never finished or score below
``min_score`` (the paper's F1 = 0 rule is ``ZERO_SCORE_FLOOR``), and repeats. Every removal is counted.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning_nat.core.console import console, table
from lightning_nat.core.jsonl import write_jsonl
from lightning_nat.core.options import option
from lightning_nat.core.readers import ReadReport, read_trajectories
from lightning_nat.core.trajectory import Trajectory

if TYPE_CHECKING:
    from lightning_nat.core.tasks import Task

# "F1 = 0" as a floor: any score below it counts as zero. The one threshold of both commands.
ZERO_SCORE_FLOOR = 1e-6
# What a training set keeps (a preset's ``keeps``): positives only, or positives and negatives.
KEEPS = ("positive", "nut", "nat", "dpo", "kto")


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

    return (question_of(traj), tuple(turn(m) for m in traj.messages),
            json.dumps(traj.tools, sort_keys=True))


def clean(trajs: Iterable[Trajectory], rules: CleanRules) -> tuple[list[Trajectory], Counter]:
    """The trajectories ``rules`` keep, in order, and how many each rule removed (``nat clean``; ``nat build``'s
    filters).

    >>> mk = lambda i, r, p, s: Trajectory(i, "", "q" + i, [{"role": "assistant", "content": i}], r, s, p)
    >>> kept, removed = clean([mk("a", False, None, 0.0), mk("b", False, "x", 0.0), mk("c", True, "y", 1.0),
    ...                        mk("c", True, "y", 1.0)], CleanRules(min_score=1e-6, dedupe=True))
    >>> [t.id for t in kept], dict(removed)
    (['c'], {'unfinished': 1, 'score below 1e-06': 1, 'duplicate': 1})
    """
    removed: Counter = Counter()
    seen: set = set()
    out = []
    for t in trajs:
        reason = drop_reason(t, rules)
        if reason is None and rules.dedupe:
            key = trajectory_key(t)
            reason = "duplicate" if key in seen else None
            seen.add(key)
        if reason is not None:
            removed[reason] += 1
            continue
        out.append(t)
    return out, removed


def conflicting_ids(trajs: Iterable[Trajectory]) -> list[str]:
    """One note per trajectory id that comes with different contents (a merge of two files, a reused id).

    >>> mk = lambda i, c: Trajectory(i, "", "q", [{"role": "assistant", "content": c}], True)
    >>> conflicting_ids([mk("a", "x"), mk("a", "y"), mk("b", "z"), mk("b", "z")])
    ["id 'a' is used by 2 trajectories with different contents"]
    """
    contents: dict[str, set] = {}
    for t in trajs:
        contents.setdefault(t.id, set()).add(trajectory_key(t))
    return [f"id {tid!r} is used by {len(keys)} trajectories with different contents"
            for tid, keys in contents.items() if len(keys) > 1]


def first_unique_by_question(trajs: Iterable[Trajectory], n: int | None, exclude: set | None = None) -> list[Trajectory]:
    """The first ``n`` trajectories in order, at most one per question.

    >>> mk = lambda i, q: Trajectory(i, "", q, [{"role": "assistant", "content": i}], True, question_id=q)
    >>> [t.id for t in first_unique_by_question([mk("a", "q1"), mk("b", "q1"), mk("c", "q2")], 2)]
    ['a', 'c']
    """
    exclude = exclude or set()
    seen: set = set()
    out = []
    for t in trajs:
        if n is not None and len(out) >= n:
            break
        q = question_of(t)
        if q in seen or q in exclude:
            continue
        seen.add(q)
        out.append(t)
    return out


@dataclass
class BuildStats:
    """Counts of one build, for the summary and the dataset card."""

    positives_available: int = 0
    negatives_available: int = 0
    positives: int = 0
    negatives: int = 0
    dev: int = 0
    filtered: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


class EmptyClassError(ValueError):
    """A filter removed every trajectory of a class the variant trains on."""


def _check_class(name: str, read: int, kept: int, removed: Counter, allow_empty: bool, stats: BuildStats) -> None:
    if read and not kept:
        why = ", ".join(f"{rule}: {n}" for rule, n in removed.items()) or "no rule counted"
        text = (f"the filters removed every {name} ({read} read; removed by {why}), so the training set would have no "
                f"{name}s; relax that filter (--keep-unfinished, --min-score, --no-dedupe) or pass --allow-empty-class")
        if not allow_empty:
            raise EmptyClassError(text)
        stats.notes.append(text)


def select(trajs: Sequence[Trajectory], variant: str, pos_num: int | None = None, neg_num: int | None = None,
           seed: int = 42, pos_sampling: Literal["first", "random", "reference"] = "first",
           drop_unfinished: bool = True, min_score: float | None = None, dedupe: bool = True, dev_num: int = 0,
           stats: BuildStats | None = None, neg_population: Sequence[Trajectory | None] | None = None,
           allow_empty_class: bool = False) -> tuple[list[Trajectory], list[Trajectory], list[Trajectory]]:
    """Filter and sample as in the paper: ``(positives, negatives, dev positives)``; ``None`` counts mean all.

    Positives: the first ``pos_num`` unique by question (``random``: a seeded sample; ``reference``: the first
    records, repeats included). Negatives: a seeded sample after filtering, or, given ``neg_population`` (every
    record of the negatives files, ``None`` where unreadable), the reference code's sample of it, filtered after.
    ``dev_num`` positives on questions without a training positive are held out. A filter that empties a class
    is an :class:`EmptyClassError` unless ``allow_empty_class``.
    """
    if variant not in KEEPS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(KEEPS)}")
    stats = stats if stats is not None else BuildStats()
    use_neg = variant != "positive"
    rules = CleanRules(drop_unfinished, min_score, dedupe)
    pos_in = [t for t in trajs if t.reward]
    neg_in = [t for t in trajs if not t.reward]
    pos_all, rep = clean(pos_in, rules)
    neg_all, neg_rep = clean(neg_in, rules) if neg_population is None else (list(neg_in), Counter())
    stats.positives_available, stats.negatives_available = len(pos_all), len(neg_all)
    _check_class("positive", len(pos_in), len(pos_all), rep, allow_empty_class, stats)
    if pos_sampling == "reference":
        unique = list(pos_all)
    else:
        unique = first_unique_by_question(pos_all, None)
        if len(unique) < len(pos_all):
            # Kept out of the training set by design ("first unique by question"), but never silently.
            stats.filtered["positive on a question that already has one"] += len(pos_all) - len(unique)
    stats.notes += conflicting_ids(trajs)
    if pos_sampling == "random":
        unique = random.Random(seed).sample(unique, len(unique))
    elif pos_sampling not in ("first", "reference"):
        raise ValueError(f"pos_sampling must be 'first', 'random' or 'reference', got {pos_sampling!r}")
    positives = unique if pos_num is None else unique[:pos_num]
    if pos_num is not None and len(positives) < pos_num:
        stats.notes.append(f"asked for {pos_num} positives, only {len(positives)} are available")
    train_questions = {question_of(t) for t in positives}
    pool = first_unique_by_question(unique, None) if pos_sampling == "reference" else unique
    dev = first_unique_by_question(pool, dev_num, exclude=train_questions) if dev_num else []
    if dev_num and len(dev) < dev_num:
        stats.notes.append(f"asked for {dev_num} dev positives, only {len(dev)} are left over")
    negatives: list[Trajectory] = []
    if use_neg and neg_population is not None:
        n = len(neg_population)
        k = n if neg_num is None else min(neg_num, n)
        if neg_num is not None and neg_num > n:
            stats.notes.append(f"asked for {neg_num} negatives, the negatives files hold only {n} records")
        picked = [neg_population[i] for i in random.Random(seed).sample(range(n), k)]
        unreadable = sum(p is None for p in picked)
        if unreadable:
            stats.notes.append(f"{unreadable} of the {k} sampled negative records could not be read (skipped)")
        neg_rep["unreadable record"] += unreadable
        negatives, dropped = clean([p for p in picked if p is not None], rules)
        neg_rep.update(dropped)
        _check_class("negative", k - unreadable, len(negatives), neg_rep, allow_empty_class, stats)
    elif use_neg:
        _check_class("negative", len(neg_in), len(neg_all), neg_rep, allow_empty_class, stats)
        if neg_num is None or neg_num >= len(neg_all):
            negatives = list(neg_all)
            if neg_num is not None and neg_num > len(neg_all):
                stats.notes.append(f"asked for {neg_num} negatives, only {len(neg_all)} are available")
        else:
            negatives = random.Random(seed).sample(neg_all, neg_num)
    stats.filtered.update(rep)
    stats.filtered.update(neg_rep)
    stats.positives, stats.negatives, stats.dev = len(positives), len(negatives), len(dev)
    return positives, negatives, dev


def reference_population(trajs: Sequence[Trajectory], read: ReadReport, files: Sequence[str]
                         ) -> list[Trajectory | None]:
    """Every record of the negatives files (of their own) in file order, ``None`` where unreadable: the reference
    code's ``random.sample`` over these positions is reproduced by sampling the same ones."""
    out: list[Trajectory | None] = []
    for path in files:
        key = str(Path(path))
        mine = [t for t in trajs if read.origin.get(id(t), ("",))[0] == key]
        if not any(not t.reward for t in mine):
            continue
        if any(t.reward for t in mine):
            raise ValueError(f"--neg-sampling reference needs the negatives in files of their own (as the reference's "
                             f"*_negative.json); {path} mixes positives and negatives")
        slots: list[Trajectory | None] = [None] * read.records[key]
        for t in mine:
            slots[read.origin[id(t)][1]] = t
        out += slots
    return out


def question_of(traj: Trajectory) -> str:
    """What identifies a trajectory's question (two of a pair share it): its question id, else its text.

    >>> turns = [{"role": "assistant", "content": "Action: finish[4]"}]
    >>> a, b = Trajectory("t", "", "2+2?", turns, True, question_id="q7"), Trajectory("t", "", "2+2?", turns, True)
    >>> question_of(a), question_of(b)
    ('q7', '2+2?')
    """
    return traj.question_id or traj.question


def pair_trajectories(positives: Sequence[Trajectory], negatives: Sequence[Trajectory], per_question: int | None,
                      seed: int) -> tuple[list[tuple[Trajectory, Trajectory]], dict[str, int]]:
    """Seeded (chosen, rejected) pairs within each question, at most ``per_question`` (a seeded sample) per question.

    Questions with one side only, and a positive and a negative with the same turns, make no pair (counted).

    >>> mk = lambda i, q, r: Trajectory(i, "", q, [{"role": "assistant", "content": i}], r, question_id=q)
    >>> pairs, counts = pair_trajectories([mk("p1", "a", True), mk("p2", "b", True)],
    ...                                   [mk("n1", "a", False), mk("n2", "a", False), mk("n3", "c", False)], 1, seed=0)
    >>> len(pairs), pairs[0][0].id, counts["questions_positive_only"], counts["questions_negative_only"]
    (1, 'p1', 1, 1)
    """
    pos_by_q: dict[str, list[Trajectory]] = {}
    neg_by_q: dict[str, list[Trajectory]] = {}
    for t in positives:
        pos_by_q.setdefault(question_of(t), []).append(t)
    for t in negatives:
        neg_by_q.setdefault(question_of(t), []).append(t)
    rng = random.Random(seed)
    pairs: list[tuple[Trajectory, Trajectory]] = []
    both = sorted(set(pos_by_q) & set(neg_by_q))
    capped = identical = 0
    for q in both:
        combos = [(p, n) for p in pos_by_q[q] for n in neg_by_q[q]]
        distinct = [(p, n) for p, n in combos if trajectory_key(p) != trajectory_key(n)]
        identical += len(combos) - len(distinct)
        combos = distinct
        if per_question is not None and len(combos) > per_question:
            combos = rng.sample(combos, per_question)
            capped += 1
        pairs += combos
    used_pos = {p.id for p, _ in pairs}
    used_neg = {n.id for _, n in pairs}
    counts = {
        "pairs": len(pairs),
        "questions_paired": len(both),
        "questions_capped": capped,
        "pairs_identical": identical,
        "questions_positive_only": len(set(pos_by_q) - set(neg_by_q)),
        "questions_negative_only": len(set(neg_by_q) - set(pos_by_q)),
        "positives_unpaired": sum(t.id not in used_pos for t in positives),
        "negatives_unpaired": sum(t.id not in used_neg for t in negatives),
    }
    return pairs, counts


def kto_balance(n_desirable: int, n_undesirable: int) -> dict[str, Any]:
    """Class counts and the desirable weight range the KTO paper recommends (undesirable weight 1).

    KTO asks for ``desirable_weight * n_D / (undesirable_weight * n_U)`` in ``[1, 4/3]``.

    >>> kto_balance(100, 400)
    {'desirable': 100, 'undesirable': 400, 'desirable_share': 0.2, 'desirable_weight_range': [4.0, 5.3333]}
    """
    total = n_desirable + n_undesirable
    rng = ([round(n_undesirable / n_desirable, 4), round(4 / 3 * n_undesirable / n_desirable, 4)]
           if n_desirable and n_undesirable else None)
    return {"desirable": n_desirable, "undesirable": n_undesirable,
            "desirable_share": round(n_desirable / total, 4) if total else 0.0, "desirable_weight_range": rng}


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
    from lightning_nat.core.tasks import get_task

    if Path(cfg.out).resolve() == Path(cfg.trajectories).resolve():
        raise ValueError(f"--out {cfg.out}: is the input file; write the cleaned trajectories elsewhere")
    if Path(cfg.out).is_dir():
        raise ValueError(f"--out {cfg.out}: is a folder; give a file name")
    rules = replace(paper_rules(get_task(cfg.task)), drop_unfinished=cfg.drop_unfinished)
    if cfg.min_score is not None:
        rules = replace(rules, min_score=cfg.min_score)
    trajs = read_trajectories(cfg.trajectories)
    kept, removed = clean(trajs, rules)
    write_jsonl(cfg.out, kept)
    rows = [["read", len(trajs)], *[[f"removed: {rule}", n] for rule, n in removed.items()], ["kept", len(kept)]]
    console.print(table("Cleaning", ["", "trajectories"], rows))
    console.print(f"wrote {cfg.out}")
    return 0
