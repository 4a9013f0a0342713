"""Negative-aware reformatting: from labelled trajectories to training conversations.

This is the method of the paper. Every training conversation is

    system: the task instruction (tools, action format)
    user:   the question, with a marker saying which kind of solution follows
    ...:    the trajectory's own turns

and only the assistant turns carry ``train=True``. The variants differ in which
trajectories they keep and which marker each gets:

- ``positive`` ("w/o Neg"): positives only;
- ``nut``: positives and negatives, all under the positive marker;
- ``nat``: positives under the positive marker, negatives under the negative one;
- ``nat-k``: negatives binned by ``score`` into k classes, one marker per class.

At inference the positive marker is used: :func:`inference_messages`.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .tasks import get_task
from .trajectory import Trajectory

Placement = Literal["suffix", "prefix"]


@dataclass(frozen=True)
class MarkerVocab:
    """The two markers of one ablation of the paper's Table 4."""

    name: str
    positive: str
    negative: str


MARKERS: dict[str, MarkerVocab] = {
    "correct": MarkerVocab("correct", "Please solve it correctly.", "Please solve it incorrectly."),
    "good": MarkerVocab("good", "Please give a good solution.", "Please give a bad solution."),
    "ab": MarkerVocab("ab", "Solution type: A.", "Solution type: B."),
    # Two fixed strings with no meaning, to test whether the words matter at all.
    "random": MarkerVocab("random", "[k7Qx2mVr]", "[Wp9dL4sz]"),
    # Positives marked "incorrectly": does the model follow the label or the word?
    "inverse": MarkerVocab("inverse", "Please solve it incorrectly.", "Please solve it correctly."),
}


@dataclass(frozen=True)
class Variant:
    """How a variant treats negatives."""

    use_negatives: bool
    negative_aware: bool


VARIANTS: dict[str, Variant] = {
    "positive": Variant(use_negatives=False, negative_aware=False),
    "nut": Variant(use_negatives=True, negative_aware=False),
    "nat": Variant(use_negatives=True, negative_aware=True),
}


def place_marker(question: str, marker: str, placement: Placement = "suffix") -> str:
    """The question with its marker after it (default) or before it.

    >>> place_marker("What is 2+2?", "Please solve it correctly.")
    'What is 2+2?\\nPlease solve it correctly.'
    >>> place_marker("What is 2+2?", "[A]", "prefix")
    '[A]\\nWhat is 2+2?'
    """
    if placement == "suffix":
        return f"{question.rstrip()}\n{marker}"
    if placement == "prefix":
        return f"{marker}\n{question.lstrip()}"
    raise ValueError(f"placement must be 'suffix' or 'prefix', got {placement!r}")


def score_class(score: float, thresholds: Sequence[float]) -> int:
    """The 1-based class of a negative's score; thresholds split [0, 1) into bands.

    >>> [score_class(s, [0.4]) for s in (0.0, 0.39, 0.4, 0.99)]
    [1, 1, 2, 2]
    """
    return bisect.bisect_right(list(thresholds), score) + 1


def negative_marker(vocab: MarkerVocab, cls: int, thresholds: Sequence[float]) -> str:
    """The marker of negative class ``cls`` (1 = lowest scores) for fine-grained NAT.

    >>> negative_marker(MARKERS["correct"], 2, [0.4])
    'Please solve it incorrectly. (answer quality 2 of 2: score 0.4 to 1)'
    """
    bounds = [0.0, *thresholds, 1.0]
    k = len(thresholds) + 1
    return f"{vocab.negative} (answer quality {cls} of {k}: score {bounds[cls - 1]:g} to {bounds[cls]:g})"


def label_and_marker(traj: Trajectory, variant: str, vocab: MarkerVocab,
                     thresholds: Sequence[float] = ()) -> tuple[str, str]:
    """The label and marker a trajectory gets under ``variant``.

    >>> t = Trajectory("t", "strategyqa", "q?", [{"role": "assistant", "content": "x"}], reward=False, score=0.5)
    >>> label_and_marker(t, "nat", MARKERS["correct"])
    ('negative', 'Please solve it incorrectly.')
    >>> label_and_marker(t, "nut", MARKERS["correct"])
    ('negative', 'Please solve it correctly.')
    >>> label_and_marker(t, "nat", MARKERS["correct"], [0.4])[0]
    'negative-2'
    """
    if traj.reward:
        return "positive", vocab.positive
    spec = VARIANTS[variant]
    if not spec.use_negatives:
        raise ValueError(f"variant {variant!r} takes no negatives (trajectory {traj.id})")
    if not spec.negative_aware:
        return "negative", vocab.positive
    if not thresholds:
        return "negative", vocab.negative
    if traj.score is None:
        raise ValueError(f"trajectory {traj.id} has no score, so fine-grained NAT cannot place it in a class")
    cls = score_class(traj.score, thresholds)
    return f"negative-{cls}", negative_marker(vocab, cls, thresholds)


def to_conversation(traj: Trajectory, instruction: str, marker: str, label: str,
                    placement: Placement = "suffix") -> dict[str, Any]:
    """One training conversation: instruction, marked question, then the trajectory's turns.

    >>> t = Trajectory("t1", "gsm8k", "2+3?", [{"role": "assistant", "content": "Action: finish[5]"}], reward=True)
    >>> c = to_conversation(t, "Solve it.", "Please solve it correctly.", "positive")
    >>> [(m["role"], m["train"]) for m in c["messages"]]
    [('system', False), ('user', False), ('assistant', True)]
    """
    messages = [
        {"role": "system", "content": instruction, "train": False},
        {"role": "user", "content": place_marker(traj.question, marker, placement), "train": False},
    ]
    messages += [{"role": m["role"], "content": m["content"], "train": m["role"] == "assistant"} for m in traj.messages]
    return {
        "id": traj.id,
        "question_id": traj.question_id or traj.id,
        "task": traj.task,
        "label": label,
        "score": traj.score,
        "reward": traj.reward,
        "messages": messages,
    }


def inference_messages(task: str, question: str, markers: str = "correct",
                       placement: Placement = "suffix") -> list[dict[str, str]]:
    """The prompt a NAT-trained agent is run with: instruction and the positive marker.

    >>> [m["role"] for m in inference_messages("gsm8k", "What is 2+3?")]
    ['system', 'user']
    """
    return [
        {"role": "system", "content": get_task(task).instruction},
        {"role": "user", "content": place_marker(question, MARKERS[markers].positive, placement)},
    ]


def trajectory_key(traj: Trajectory) -> tuple:
    """What makes two trajectories identical: the question and every turn."""
    return (traj.question_id or traj.question, tuple((m["role"], m["content"]) for m in traj.messages))


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


@dataclass
class FilterReport:
    """How many trajectories each quality rule removed."""

    removed: Counter = field(default_factory=Counter)


def filter_trajectories(trajs: Iterable[Trajectory], drop_unfinished: bool = True, min_score: float | None = None,
                        dedupe: bool = True, report: FilterReport | None = None) -> list[Trajectory]:
    """Apply the quality rules to negatives (and dedupe everything), counting removals.

    ``min_score`` drops negatives scoring below it (the paper drops HotpotQA negatives
    with F1 = 0: use a tiny floor such as ``1e-6``).

    >>> mk = lambda i, r, p, s: Trajectory(i, "", "q" + i, [{"role": "assistant", "content": i}], r, s, p)
    >>> rep = FilterReport()
    >>> kept = filter_trajectories([mk("a", False, None, 0.0), mk("b", False, "x", 0.0), mk("c", True, "y", 1.0)],
    ...                            min_score=1e-6, report=rep)
    >>> [t.id for t in kept], dict(rep.removed)
    (['c'], {'unfinished': 1, 'score below 1e-06': 1})
    """
    report = report if report is not None else FilterReport()
    seen: set = set()
    out = []
    for t in trajs:
        if not t.reward and drop_unfinished and not t.finished:
            report.removed["unfinished"] += 1
            continue
        if not t.reward and min_score is not None and (t.score is None or t.score < min_score):
            report.removed[f"score below {min_score:g}"] += 1
            continue
        if dedupe:
            key = trajectory_key(t)
            if key in seen:
                report.removed["duplicate"] += 1
                continue
            seen.add(key)
        out.append(t)
    return out


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
        q = t.question_id or t.question
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


def select(trajs: Sequence[Trajectory], variant: str, pos_num: int | None = None, neg_num: int | None = None,
           seed: int = 42, pos_sampling: Literal["first", "random"] = "first", drop_unfinished: bool = True,
           min_score: float | None = None, dedupe: bool = True, dev_num: int = 0,
           stats: BuildStats | None = None) -> tuple[list[Trajectory], list[Trajectory], list[Trajectory]]:
    """Filter and sample as in the paper: ``(positives, negatives, dev positives)``.

    Positives are the first ``pos_num`` unique by question (or a seeded random sample
    of them); negatives a seeded sample of ``neg_num``; ``dev_num`` further positives,
    on questions with no training positive, are held out for dev perplexity.
    ``None`` means all.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    stats = stats if stats is not None else BuildStats()
    rep = FilterReport()
    kept = filter_trajectories(trajs, drop_unfinished=drop_unfinished, min_score=min_score, dedupe=dedupe, report=rep)
    stats.filtered.update(rep.removed)
    pos_all = [t for t in kept if t.reward]
    neg_all = [t for t in kept if not t.reward]
    stats.positives_available, stats.negatives_available = len(pos_all), len(neg_all)
    rng = random.Random(seed)
    unique = first_unique_by_question(pos_all, None)
    if len(unique) < len(pos_all):
        # Kept out of the training set by design ("first unique by question"), but never silently.
        stats.filtered["positive on a question that already has one"] += len(pos_all) - len(unique)
    for note in conflicting_ids(trajs):
        stats.notes.append(note)
    if pos_sampling == "random":
        unique = rng.sample(unique, len(unique))
    elif pos_sampling != "first":
        raise ValueError(f"pos_sampling must be 'first' or 'random', got {pos_sampling!r}")
    positives = unique if pos_num is None else unique[:pos_num]
    if pos_num is not None and len(positives) < pos_num:
        stats.notes.append(f"asked for {pos_num} positives, only {len(positives)} questions have one")
    train_questions = {t.question_id or t.question for t in positives}
    dev = first_unique_by_question(unique, dev_num, exclude=train_questions) if dev_num else []
    if dev_num and len(dev) < dev_num:
        stats.notes.append(f"asked for {dev_num} dev positives, only {len(dev)} are left over")
    negatives: list[Trajectory] = []
    if VARIANTS[variant].use_negatives:
        if neg_num is None or neg_num >= len(neg_all):
            negatives = list(neg_all)
            if neg_num is not None and neg_num > len(neg_all):
                stats.notes.append(f"asked for {neg_num} negatives, only {len(neg_all)} are available")
        else:
            negatives = random.Random(seed).sample(neg_all, neg_num)
    stats.positives, stats.negatives, stats.dev = len(positives), len(negatives), len(dev)
    return positives, negatives, dev


def reformat(trajs: Sequence[Trajectory], variant: str, markers: str = "correct", placement: Placement = "suffix",
             thresholds: Sequence[float] = (), instruction: str | None = None) -> list[dict[str, Any]]:
    """Training conversations for already selected trajectories under ``variant``.

    The instruction is the task's own (``TASKS[t.task].instruction``) unless given.
    """
    vocab = MARKERS[markers]
    out = []
    for t in trajs:
        label, marker = label_and_marker(t, variant, vocab, thresholds)
        text = instruction if instruction is not None else get_task(t.task).instruction
        out.append(to_conversation(t, text, marker, label, placement))
    return out
