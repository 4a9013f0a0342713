"""Negative-aware reformatting: from labelled trajectories to training conversations.

This is the method of the paper. Every training conversation is

    the task instruction (tools, action format): a system turn (native style), or the
        first user turn and an assistant acknowledgement (the reference's style)
    user:   the question, in the template of the class of solution that follows
    ...:    the trajectory's own turns

The strings live in :mod:`lightning_nat.core.prompts`.
and only the assistant turns carry ``train=True``. The variants differ in which
trajectories they keep and which marker each gets:

- ``positive`` ("w/o Neg"): positives only;
- ``nut``: positives and negatives, all under the positive marker;
- ``nat``: positives under the positive marker, negatives under the negative one;
- ``nat-k``: negatives binned by ``score`` into k classes, one marker per class.

At inference the positive marker is used: :func:`inference_messages`.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lightning_nat.core.function_calls import message_to_row
from lightning_nat.core.prompts import NATIVE_MARKERS, PromptSpec, head_messages, make_spec, native_spec, negative_class
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.cleaning import FilterReport, filter_trajectories, trajectory_key

Placement = Literal["suffix", "prefix", "system"]


@dataclass(frozen=True)
class MarkerVocab:
    """The two native markers of one ablation of the paper's Table 4."""

    name: str
    positive: str
    negative: str


MARKERS: dict[str, MarkerVocab] = {name: MarkerVocab(name, pos, neg) for name, (pos, neg) in NATIVE_MARKERS.items()}


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


def label_and_class(traj: Trajectory, variant: str, spec: PromptSpec) -> tuple[str, int]:
    """The label a trajectory gets under ``variant`` and its class (index into ``spec.templates``).

    >>> t = Trajectory("t", "strategyqa", "q?", [{"role": "assistant", "content": "x"}], reward=False, score=0.5)
    >>> label_and_class(t, "nat", make_spec("strategyqa", "nat"))
    ('negative', 0)
    >>> label_and_class(t, "nut", make_spec("strategyqa", "nut"))
    ('negative', 1)
    >>> label_and_class(t, "nat", make_spec("hotpotqa", "nat-2"))
    ('negative-3', 2)
    """
    top = len(spec.templates) - 1
    if traj.reward:
        return "positive", top
    spec_v = VARIANTS[variant]
    if not spec_v.use_negatives:
        raise ValueError(f"variant {variant!r} takes no negatives (trajectory {traj.id})")
    if not spec_v.negative_aware:
        return "negative", top
    if top > 1 and traj.score is None:
        raise ValueError(f"trajectory {traj.id} has no score, so fine-grained NAT cannot place it in a class")
    cls = negative_class(spec, traj.score, False)
    return ("negative" if top == 1 else f"negative-{cls + 1}"), cls


def label_and_marker(traj: Trajectory, variant: str, vocab: MarkerVocab,
                     thresholds: Sequence[float] = ()) -> tuple[str, str]:
    """The label and native marker a trajectory gets under ``variant`` (the native style's view).

    >>> t = Trajectory("t", "strategyqa", "q?", [{"role": "assistant", "content": "x"}], reward=False, score=0.5)
    >>> label_and_marker(t, "nat", MARKERS["correct"])
    ('negative', 'Please solve it incorrectly.')
    >>> label_and_marker(t, "nat", MARKERS["correct"], [0.4])[0]
    'negative-2'
    """
    # Only the markers matter here: an empty instruction keeps the task out of it.
    spec = native_spec(traj.task, markers=vocab.name, thresholds=tuple(thresholds), instruction="")
    label, cls = label_and_class(traj, variant, spec)
    return label, spec.templates[cls].replace("{question}\n", "")


def to_conversation(traj: Trajectory, spec: PromptSpec, cls: int, label: str) -> dict[str, Any]:
    """One training conversation: the spec's head turns for class ``cls``, then the trajectory's turns.

    >>> t = Trajectory("t1", "gsm8k", "2+3?", [{"role": "assistant", "content": "Action: finish[5]"}], reward=True)
    >>> c = to_conversation(t, make_spec("gsm8k", style="native"), 1, "positive")
    >>> [(m["role"], m["train"]) for m in c["messages"]]
    [('system', False), ('user', False), ('assistant', True)]
    >>> c = to_conversation(t, make_spec("gsm8k"), 1, "positive")
    >>> [(m["role"], m["train"]) for m in c["messages"]]
    [('user', False), ('assistant', False), ('user', False), ('assistant', True)]
    """
    messages = [message_to_row(m, False) for m in head_messages(spec, traj.question, cls)]
    messages += [message_to_row(m, m["role"] == "assistant") for m in traj.messages]
    return {
        "id": traj.id,
        "question_id": traj.question_id or traj.id,
        "task": traj.task,
        "label": label,
        "score": traj.score,
        "reward": traj.reward,
        "messages": messages,
        # JSON text: Arrow needs one schema for every row, and tool schemas differ from tool to tool.
        "tools": json.dumps(traj.tools, ensure_ascii=False) if traj.tools else None,
    }


def inference_messages(task: str, question: str, spec: PromptSpec | None = None) -> list[dict[str, str]]:
    """The prompt a NAT-trained agent is run with: the spec's positive (highest) class.

    >>> [m["role"] for m in inference_messages("gsm8k", "What is 2+3?")]
    ['user', 'assistant', 'user']
    >>> inference_messages("gsm8k", "What is 2+3?", make_spec("gsm8k", style="native"))[1]["content"]
    'What is 2+3?\\nPlease solve it correctly.'
    """
    return head_messages(spec if spec is not None else make_spec(task), question)


def instruction_of(traj: Trajectory) -> str:
    """The instruction a trajectory trains under: its task's, else its own leading system turn(s).

    A trajectory of no known task (a task-less build), or of a task declared
    ``instruction: from_data``, keeps the system prompt it was recorded with.

    >>> t = Trajectory("r0", "", "2+3?", [{"role": "assistant", "content": "Action: finish[5]"}], True,
    ...                meta={"source_system": "You are a calculator agent."})
    >>> instruction_of(t)
    'You are a calculator agent.'
    """
    from lightning_nat.core.registry import find_task

    task = find_task(traj.task) if traj.task else None
    if task is not None and not task.instruction_from_data:
        return task.instruction
    source = traj.meta.get("source_system")
    if isinstance(source, str) and source.strip():
        return source
    why = (f"task {traj.task!r} takes its instruction from the data" if task is not None
           else f"task {traj.task!r} is not registered" if traj.task else "no task was given")
    raise ValueError(f"trajectory {traj.id}: no instruction: {why} and the trajectory has no leading system turn "
                     "(give --task NAME or a task YAML, or record the system prompt)")


def _own_instruction(traj: Trajectory) -> bool:
    """Whether a trajectory trains under its own system turn (no known task, or a ``from_data`` one)."""
    from lightning_nat.core.registry import find_task

    task = find_task(traj.task) if traj.task else None
    return task is None or task.instruction_from_data


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
    """Filter and sample as in the paper: ``(positives, negatives, dev positives)``.

    Positives are the first ``pos_num`` unique by question (``random``: a seeded random
    sample of them; ``reference``: the first ``pos_num`` records, repeats included, as the
    reference code took them); negatives a seeded sample of ``neg_num`` after filtering,
    or, given ``neg_population`` (every record of the negatives files in file order,
    ``None`` for unreadable ones), ``random.Random(seed).sample`` over that population,
    filtered afterwards: the reference code's choice. ``dev_num`` further positives, on
    questions with no training positive, are held out for dev perplexity. ``None`` means all.
    A filter that removes every positive or every negative is an :class:`EmptyClassError`
    unless ``allow_empty_class``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    stats = stats if stats is not None else BuildStats()
    use_neg = VARIANTS[variant].use_negatives
    rep = FilterReport()
    neg_rep = FilterReport()
    pos_in = [t for t in trajs if t.reward]
    neg_in = [t for t in trajs if not t.reward]
    pos_all = filter_trajectories(pos_in, drop_unfinished=drop_unfinished, min_score=min_score, dedupe=dedupe,
                                  report=rep)
    neg_all = filter_trajectories(neg_in, drop_unfinished=drop_unfinished, min_score=min_score, dedupe=dedupe,
                                  report=neg_rep) if neg_population is None else list(neg_in)
    stats.positives_available, stats.negatives_available = len(pos_all), len(neg_all)
    _check_class("positive", len(pos_in), len(pos_all), rep.removed, allow_empty_class, stats)
    rng = random.Random(seed)
    if pos_sampling == "reference":
        unique = list(pos_all)
    else:
        unique = first_unique_by_question(pos_all, None)
        if len(unique) < len(pos_all):
            # Kept out of the training set by design ("first unique by question"), but never silently.
            stats.filtered["positive on a question that already has one"] += len(pos_all) - len(unique)
    for note in conflicting_ids(trajs):
        stats.notes.append(note)
    if pos_sampling == "random":
        unique = rng.sample(unique, len(unique))
    elif pos_sampling not in ("first", "reference"):
        raise ValueError(f"pos_sampling must be 'first', 'random' or 'reference', got {pos_sampling!r}")
    positives = unique if pos_num is None else unique[:pos_num]
    if pos_num is not None and len(positives) < pos_num:
        stats.notes.append(f"asked for {pos_num} positives, only {len(positives)} are available")
    train_questions = {t.question_id or t.question for t in positives}
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
        neg_rep.removed["unreadable record"] += unreadable
        negatives = filter_trajectories([p for p in picked if p is not None], drop_unfinished=drop_unfinished,
                                        min_score=min_score, dedupe=dedupe, report=neg_rep)
        _check_class("negative", k - unreadable, len(negatives), neg_rep.removed, allow_empty_class, stats)
    elif use_neg:
        _check_class("negative", len(neg_in), len(neg_all), neg_rep.removed, allow_empty_class, stats)
        if neg_num is None or neg_num >= len(neg_all):
            negatives = list(neg_all)
            if neg_num is not None and neg_num > len(neg_all):
                stats.notes.append(f"asked for {neg_num} negatives, only {len(neg_all)} are available")
        else:
            negatives = random.Random(seed).sample(neg_all, neg_num)
    stats.filtered.update(rep.removed)
    stats.filtered.update(neg_rep.removed)
    stats.positives, stats.negatives, stats.dev = len(positives), len(negatives), len(dev)
    return positives, negatives, dev


def reformat(trajs: Sequence[Trajectory], variant: str, markers: str = "correct", placement: Placement = "suffix",
             thresholds: Sequence[float] = (), instruction: str | None = None, style: str | None = None,
             preset: str | None = None, spec: PromptSpec | None = None, mode: str = "react") -> list[dict[str, Any]]:
    """Training conversations for already selected trajectories under ``variant``.

    The prompt is ``spec``, else :func:`~lightning_nat.core.prompts.make_spec` of each
    trajectory's task with ``style`` (default: the task's declared style) and ``preset``
    (default: the variant); markers, placement and thresholds shape the native style only.
    A trajectory of no known task, or of a task declared ``instruction: from_data``,
    trains under the given ``instruction``, else :func:`instruction_of` it (its own system turn).
    """
    specs: dict[tuple, PromptSpec] = {}
    out = []
    for t in trajs:
        s = spec
        if s is None:
            text = instruction
            if text is None and _own_instruction(t):
                text = instruction_of(t)
            key = (t.task, text)
            if key not in specs:
                specs[key] = make_spec(t.task, preset or _preset_of(variant, thresholds), style, mode, markers,
                                       placement, tuple(thresholds), text)
            s = specs[key]
        label, cls = label_and_class(t, variant, s)
        out.append(to_conversation(t, s, cls, label))
    return out


def _preset_of(variant: str, thresholds: Sequence[float]) -> str:
    return f"nat-{len(thresholds) + 1}" if variant == "nat" and thresholds else variant
