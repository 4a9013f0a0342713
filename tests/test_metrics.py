import pytest

from lightning_nat.core.metrics import extract_gold_number, math_metric, parse_yes_no, qa_metric, yesno_metric
from lightning_nat.core.tasks import TASKS, load_questions_for


@pytest.mark.parametrize("pred, gold, ok", [
    ("18", "Janet sells 9 eggs.\n#### 18", True),
    ("$18.00", "#### 18", True),
    ("1,234", "#### 1,234", True),
    ("1234.0", "1234", True),
    ("3/4", "0.75", True),
    ("0.75", "#### 3/4", True),
    ("The answer is 42 apples.", "#### 42", True),
    ("25%", "#### 25", True),
    ("17", "#### 18", False),
    ("18.5", "#### 18", False),
    ("eighteen", "#### 18", False),
    (None, "#### 18", False),
    ("-5", "#### -5", True),
])
def test_math(pred, gold, ok):
    assert math_metric(pred, gold)["accuracy"] == float(ok)


def test_gold_numbers_of_every_math_file(shared_data):
    for name in ("gsm8k", "asdiv", "svamp", "multiarith"):
        records = load_questions_for(TASKS[name], data_dir=str(shared_data), limit=200)
        golds = [TASKS[name].gold(r) for r in records]
        assert all(g is not None for g in golds), name
    assert extract_gold_number("#### 70,000") == 70000.0


@pytest.mark.parametrize("pred, gold, em, f1", [
    ("Richard Strauss", "Richard Strauss", 1.0, 1.0),
    ("the Richard Strauss.", "Richard Strauss", 1.0, 1.0),
    ("Strauss", "Richard Strauss", 0.0, 2 / 3),
    ("1970s and 1980s", "1970s and 1980s", 1.0, 1.0),
    ("yes", "no", 0.0, 0.0),
    ("yes it is", "yes", 0.0, 0.0),  # the official script: a yes/no gold needs an exact yes/no
    ("noanswer", "Paris", 0.0, 0.0),
    ("", "Paris", 0.0, 0.0),
])
def test_hotpotqa(pred, gold, em, f1):
    got = qa_metric(pred, gold)
    assert got["em"] == em and got["f1"] == pytest.approx(f1)


@pytest.mark.parametrize("pred, gold, ok", [
    ("Yes", True, True), ("yes.", True, True), ("No", False, True), ("no, it cannot", False, True),
    ("True", True, True), ("Yes", False, False), ("maybe", True, False), (None, False, False), ("No", "no", True),
])
def test_strategyqa(pred, gold, ok):
    assert yesno_metric(pred, gold)["accuracy"] == float(ok)
    assert parse_yes_no("  YES!") is True


def test_task_reward_and_score():
    hotpot = TASKS["hotpotqa"]
    assert hotpot.score("Strauss", {"answer": "Richard Strauss"})[:2] == (False, pytest.approx(2 / 3))
    assert hotpot.score("richard strauss", {"answer": "Richard Strauss"})[:2] == (True, 1.0)
    assert TASKS["gsm8k"].score("18", {"answer": "#### 18"})[:2] == (True, 1.0)


def test_large_answers_are_compared_exactly():
    assert math_metric("70001", "#### 70000")["accuracy"] == 0.0
    assert math_metric("70,000", "#### 70000")["accuracy"] == 1.0
    assert math_metric("0.33", "#### 1/3")["accuracy"] == 0.0
