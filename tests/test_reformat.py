import pytest

from lightning_nat.core.prompts import MARKERS, head_messages, make_spec
from lightning_nat.core.readers import ReadReport, load_questions, read_trajectories
from lightning_nat.core.tasks import TASKS
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.build import label_and_class, to_conversation
from lightning_nat.data.select import BuildStats, select

POSITIVE, NEGATIVE = MARKERS["correct"]


@pytest.fixture(scope="module")
def real(strategyqa_files):
    q = load_questions(strategyqa_files["questions"])
    rep = ReadReport()
    trajs = []
    for key in ("pos", "neg"):
        trajs += read_trajectories(strategyqa_files[key], "nat", q, "strategyqa", on_error="skip", report=rep)
    return trajs


def reformat(trajs, keeps, markers="correct", placement="suffix", thresholds=()):
    """The rows of trajectories in the native style (the reference style is tested in test_prompts.py)."""
    rows = []
    for t in trajs:
        spec = make_spec(TASKS[t.task], "nat", "native", "react", markers, placement, tuple(thresholds))
        label, cls = label_and_class(t, keeps, spec)
        rows.append(to_conversation(t, spec, cls, label))
    return rows


def _questions(convs):
    return {c["messages"][1]["content"].rsplit("\n", 1)[1] for c in convs}


def test_nat_1000_500(real):
    pos, neg, _ = select(real, "nat", pos_num=1000, neg_num=500, seed=42)
    convs = reformat(pos + neg, "nat")
    assert len(convs) == 1500
    assert _questions(convs) == {POSITIVE, NEGATIVE}
    assert {c["label"] for c in convs} == {"positive", "negative"}
    assert sum(c["label"] == "negative" for c in convs) == 500
    assert len({c["question_id"] for c in convs if c["label"] == "positive"}) == 1000


def test_nut_and_positive(real):
    pos, neg, _ = select(real, "nut", pos_num=1000, neg_num=500)
    nut = reformat(pos + neg, "nut")
    assert len(nut) == 1500 and _questions(nut) == {POSITIVE}
    pos, neg, _ = select(real, "positive", pos_num=1000, neg_num=500)
    assert neg == []
    only = reformat(pos, "positive")
    assert len(only) == 1000 and all(c["reward"] for c in only) and {c["label"] for c in only} == {"positive"}


def test_only_assistant_turns_train(real):
    pos, neg, _ = select(real, "nat", pos_num=50, neg_num=50)
    for conv in reformat(pos + neg, "nat"):
        assert conv["messages"][0]["content"] == TASKS["strategyqa"].instruction
        for m in conv["messages"]:
            assert m["train"] == (m["role"] == "assistant")
        assert any(m["train"] for m in conv["messages"])


def test_seeded_sampling(real):
    ids = lambda seed: [t.id for t in select(real, "nat", 100, 200, seed=seed)[1]]  # noqa: E731
    assert ids(42) == ids(42)
    assert ids(42) != ids(7)
    first = [t.id for t in select(real, "nat", 100, 0, seed=1)[0]]
    assert first == [t.id for t in select(real, "nat", 100, 0, seed=2)[0]]  # "first" ignores the seed
    rnd = lambda seed: [t.id for t in select(real, "nat", 100, 0, seed=seed, pos_sampling="random")[0]]  # noqa: E731
    assert rnd(1) == rnd(1) != rnd(2)


def test_filters_and_dev_split(real):
    stats = BuildStats()
    pos, neg, dev = select(real, "nat", pos_num=1000, neg_num=None, dev_num=60, stats=stats)
    assert stats.filtered == {"unfinished": 13, "duplicate": 1}
    assert all(t.finished for t in neg) and len(neg) == 1263 - 7 - 13 - 1
    assert len(dev) == 60 and not ({t.question_id for t in dev} & {t.question_id for t in pos})
    stats = BuildStats()
    select(real, "nat", pos_num=5000, dev_num=500, stats=stats)
    assert any("asked for 5000 positives" in n for n in stats.notes)


def _traj(i, reward, score):
    return Trajectory(f"t{i}", "hotpotqa", f"question {i}?", [{"role": "assistant", "content": f"Action: finish[{i}]"}],
                      reward, score, prediction=str(i), question_id=f"q{i}")


def test_nat_k_bins_by_score():
    trajs = [_traj(0, True, 1.0), _traj(1, False, 0.1), _traj(2, False, 0.4), _traj(3, False, 0.8)]
    convs = reformat(trajs, "nat", thresholds=[0.4])
    assert [c["label"] for c in convs] == ["positive", "negative-1", "negative-2", "negative-2"]
    assert len({c["messages"][1]["content"].split("\n", 1)[1] for c in convs}) == 3
    with pytest.raises(ValueError, match="t9 has no score"):
        reformat([_traj(9, False, None)], "nat", thresholds=[0.4])
    pos, neg, _ = select(trajs, "nat", min_score=0.2)
    assert [t.id for t in neg] == ["t2", "t3"]


def test_marker_ablations_and_placement():
    pos, neg = _traj(0, True, 1.0), _traj(1, False, 0.0)
    inv = reformat([pos, neg], "nat", markers="inverse")
    assert inv[0]["messages"][1]["content"].endswith("Please solve it incorrectly.")
    assert inv[1]["messages"][1]["content"].endswith("Please solve it correctly.")
    for name in ("good", "ab", "random"):
        a, b = reformat([pos, neg], "nat", markers=name)
        assert a["messages"][1]["content"] != b["messages"][1]["content"]
    pre = reformat([pos], "nat", placement="prefix")[0]
    assert pre["messages"][1]["content"] == "Please solve it correctly.\nquestion 0?"


def test_inference_prompt_is_positive():
    spec = make_spec(TASKS["strategyqa"], style="native", thresholds=(0.4,))
    assert head_messages(spec, "Is ice cold?")[1]["content"] == "Is ice cold?\n" + POSITIVE
    assert label_and_class(_traj(0, True, 1.0), "nat", spec) == ("positive", 2)
    with pytest.raises(ValueError, match="takes no negatives"):
        label_and_class(_traj(1, False, 0.0), "positive", spec)


def test_single_turn_chain_of_thought_trajectory():
    cot = Trajectory("c", "gsm8k", "2+2?", [{"role": "assistant", "content": "2+2=4.\nFinal answer: 4"}], True,
                     prediction="4")
    conv = reformat([cot], "nat")[0]
    assert [m["train"] for m in conv["messages"]] == [False, False, True]
