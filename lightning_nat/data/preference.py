"""Preference-optimisation baselines from the same labelled trajectories NAT trains on.

``dpo`` pairs a positive and a negative trajectory of the same question (chosen,
rejected); ``kto`` keeps every trajectory with a desirable/undesirable label. Both
start from the trajectories :func:`lightning_nat.data.reformat.select` picks for NUT/NAT
(same cleaning, same sampling) and render them with the plain positive prompt of
w/o Neg, through :func:`lightning_nat.data.reformat.reformat`, so whatever prompt style
is configured there applies here too. No negative marker is ever shown.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.reformat import reformat

PREFERENCE_VARIANTS = ("dpo", "kto")
# The reformat variant whose rendering the preference rows use: every trajectory under the positive prompt.
PLAIN_PROMPT_VARIANT = "nut"


def question_key(traj: Trajectory) -> str:
    """What two trajectories must share to be a pair: the question id, else the question text.

    >>> turns = [{"role": "assistant", "content": "Action: finish[4]"}]
    >>> a, b = Trajectory("t", "", "2+2?", turns, True, question_id="q7"), Trajectory("t", "", "2+2?", turns, True)
    >>> question_key(a), question_key(b)
    ('q7', '2+2?')
    """
    return traj.question_id or traj.question


def pair_trajectories(positives: Sequence[Trajectory], negatives: Sequence[Trajectory], per_question: int | None,
                      seed: int) -> tuple[list[tuple[Trajectory, Trajectory]], dict[str, int]]:
    """Seeded (chosen, rejected) pairs within each question, at most ``per_question`` per question.

    Every (positive, negative) combination of a question is a candidate; when there are
    more than ``per_question`` a seeded sample is kept. Questions with only one side
    make no pair and are counted.

    >>> mk = lambda i, q, r: Trajectory(i, "", q, [{"role": "assistant", "content": i}], r, question_id=q)
    >>> pairs, counts = pair_trajectories([mk("p1", "a", True), mk("p2", "b", True)],
    ...                                   [mk("n1", "a", False), mk("n2", "a", False), mk("n3", "c", False)], 1, seed=0)
    >>> len(pairs), pairs[0][0].id, counts["questions_positive_only"], counts["questions_negative_only"]
    (1, 'p1', 1, 1)
    """
    if per_question is not None and per_question < 1:
        raise ValueError(f"pairs_per_question must be at least 1, got {per_question}")
    pos_by_q: dict[str, list[Trajectory]] = {}
    neg_by_q: dict[str, list[Trajectory]] = {}
    for t in positives:
        pos_by_q.setdefault(question_key(t), []).append(t)
    for t in negatives:
        neg_by_q.setdefault(question_key(t), []).append(t)
    rng = random.Random(seed)
    pairs: list[tuple[Trajectory, Trajectory]] = []
    both = sorted(set(pos_by_q) & set(neg_by_q))
    capped = 0
    for q in both:
        combos = [(p, n) for p in pos_by_q[q] for n in neg_by_q[q]]
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
        "questions_positive_only": len(set(pos_by_q) - set(neg_by_q)),
        "questions_negative_only": len(set(neg_by_q) - set(pos_by_q)),
        "positives_unpaired": sum(t.id not in used_pos for t in positives),
        "negatives_unpaired": sum(t.id not in used_neg for t in negatives),
    }
    return pairs, counts


def pair_row(chosen: dict[str, Any], rejected: dict[str, Any]) -> dict[str, Any]:
    """One DPO row from two rendered conversations: the chosen one's fields plus the rejected side.

    >>> c = {"id": "p", "question_id": "q", "task": "t", "label": "positive", "score": 1.0, "reward": True, "messages": []}
    >>> r = {**c, "id": "n", "label": "negative", "score": 0.0, "reward": False, "messages": [{"role": "assistant"}]}
    >>> row = pair_row(c, r); row["id"], row["label"], row["rejected_id"], row["rejected"]
    ('p|n', 'pair', 'n', [{'role': 'assistant'}])
    """
    if chosen["question_id"] != rejected["question_id"]:
        raise ValueError(f"cannot pair {chosen['id']!r} and {rejected['id']!r}: different questions")
    return {**chosen, "id": f"{chosen['id']}|{rejected['id']}", "label": "pair", "chosen_id": chosen["id"],
            "rejected_id": rejected["id"], "rejected_score": rejected["score"], "rejected": rejected["messages"]}


def unpaired_row(conv: dict[str, Any]) -> dict[str, Any]:
    """A conversation in the DPO row layout with an empty rejected side (dev rows, for perplexity).

    >>> unpaired_row({"id": "p", "messages": []})["rejected"]
    []
    """
    return {**conv, "chosen_id": conv["id"], "rejected_id": "", "rejected_score": None, "rejected": []}


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


def preference_rows(variant: str, positives: Sequence[Trajectory], negatives: Sequence[Trajectory],
                    pairs_per_question: int | None = None, seed: int = 42,
                    **reformat_kw: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Training rows of a preference variant and what the build should report about them."""
    if variant == "kto":
        rows = reformat([*positives, *negatives], PLAIN_PROMPT_VARIANT, **reformat_kw)
        return rows, {"kto": kto_balance(len(positives), len(negatives))}
    if variant != "dpo":
        raise ValueError(f"unknown preference variant {variant!r}; expected one of {', '.join(PREFERENCE_VARIANTS)}")
    pairs, counts = pair_trajectories(positives, negatives, pairs_per_question, seed)
    chosen = reformat([p for p, _ in pairs], PLAIN_PROMPT_VARIANT, **reformat_kw)
    rejected = reformat([n for _, n in pairs], PLAIN_PROMPT_VARIANT, **reformat_kw)
    rows = [pair_row(c, r) for c, r in zip(chosen, rejected)]
    return rows, {"dpo": {**counts, "pairs_per_question": pairs_per_question, "seed": seed}}
