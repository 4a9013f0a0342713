"""Answer normalisation and scoring, one pure function per task family."""

from __future__ import annotations

import re
import string
from collections import Counter
from fractions import Fraction

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?%?|-?\.\d+%?")


def parse_number(text: object) -> float | None:
    """The last number written in ``text``, as a float; ``None`` if there is none.

    Commas, currency signs and units are ignored, fractions are divided, a trailing
    ``%`` is kept as written (``50%`` is 50).

    >>> parse_number("$1,234.50"), parse_number("3/4"), parse_number("The answer is 18 dollars.")
    (1234.5, 0.75, 18.0)
    >>> parse_number("50%"), parse_number("-7.0"), parse_number("no number") is None
    (50.0, -7.0, True)
    """
    if text is None or isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    matches = _NUMBER.findall(str(text))
    if not matches:
        return None
    token = matches[-1].replace(",", "").rstrip("%").replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(Fraction(num) / Fraction(den)) if float(den) != 0 else None
        return float(token)
    except (ValueError, ZeroDivisionError):
        return None


def extract_gold_number(answer: object) -> float | None:
    """The gold number of a math record: after GSM8K's ``####`` or the bare answer.

    >>> extract_gold_number("She pays 9 * 2 = 18.\\n#### 1,018"), extract_gold_number("#### 51"), extract_gold_number("9")
    (1018.0, 51.0, 9.0)
    """
    if isinstance(answer, str) and "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return parse_number(answer)


def numbers_equal(a: float | None, b: float | None, tol: float = 1e-3) -> bool:
    """Numeric equality: exact for whole numbers, within ``tol`` otherwise (answers rounded to a few decimals).

    >>> numbers_equal(0.3333, 1/3), numbers_equal(18.0, 18), numbers_equal(70001, 70000), numbers_equal(None, 1.0)
    (True, True, False, False)
    """
    if a is None or b is None:
        return False
    if float(a).is_integer() and float(b).is_integer():
        return a == b
    return abs(a - b) <= tol


def math_metric(prediction: str | None, gold: object) -> dict[str, float]:
    """Accuracy of a numeric answer against a gold number (or gold answer text).

    >>> math_metric("$18.00", "#### 18"), math_metric("17", 18.0)
    ({'accuracy': 1.0}, {'accuracy': 0.0})
    """
    gold_num = gold if isinstance(gold, float) else extract_gold_number(gold)
    return {"accuracy": float(numbers_equal(parse_number(prediction), gold_num))}


def reference_exact_math(prediction: str | None, answer: object) -> dict[str, float]:
    """The reference code's math metric: the prediction string equals the gold's ``####`` number, commas removed.

    Stricter than :func:`math_metric` (``18.0`` or ``$18`` against 18 count as wrong), so
    it is reported beside the lenient accuracy as ``exact_string``.

    >>> reference_exact_math("18", "So 18.\\n#### 18"), reference_exact_math("18.0", "#### 18")
    ({'exact_string': 1.0}, {'exact_string': 0.0})
    >>> reference_exact_math("1800", "#### 1,800"), reference_exact_math("7", "7")
    ({'exact_string': 1.0}, {'exact_string': 1.0})
    """
    text = str(answer)
    m = re.search(r"#### (\-?[0-9\.\,]+)", text)
    gold = m.group(1).strip().replace(",", "") if m else text
    return {"exact_string": float(prediction is not None and prediction == gold)}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_f1(prediction: str, gold: str) -> float:
    """Token F1 as in the official HotpotQA script (yes/no/noanswer must match exactly).

    >>> round(qa_f1("Richard Strauss", "Strauss"), 3), qa_f1("yes", "no"), qa_f1("no", "no")
    (0.667, 0.0, 1.0)
    """
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    special = ("yes", "no", "noanswer")
    if (pred in special or ref in special) and pred != ref:
        return 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    common = Counter(pred_tokens) & Counter(ref_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_metric(prediction: str | None, gold: object) -> dict[str, float]:
    """Exact match and F1 of a short answer.

    >>> qa_metric("the Eiffel tower", "Eiffel Tower")
    {'em': 1.0, 'f1': 1.0}
    """
    if prediction is None:
        return {"em": 0.0, "f1": 0.0}
    gold_text = str(gold)
    return {"em": float(normalize_answer(prediction) == normalize_answer(gold_text)), "f1": qa_f1(prediction, gold_text)}


def parse_yes_no(text: object) -> bool | None:
    """``True``/``False`` for a yes/no answer, ``None`` if it is neither.

    >>> parse_yes_no("Yes."), parse_yes_no(" no, because..."), parse_yes_no(False), parse_yes_no("maybe")
    (True, False, False, None)
    """
    if isinstance(text, bool):
        return text
    if text is None:
        return None
    words = normalize_answer(str(text)).split()
    if not words:
        return None
    if words[0] in ("yes", "true"):
        return True
    if words[0] in ("no", "false"):
        return False
    return None


def yesno_metric(prediction: str | None, gold: object) -> dict[str, float]:
    """Accuracy of a yes/no answer against a boolean (or yes/no) gold.

    >>> yesno_metric("Yes", True), yesno_metric("unknown", False)
    ({'accuracy': 1.0}, {'accuracy': 0.0})
    """
    pred = parse_yes_no(prediction)
    return {"accuracy": float(pred is not None and pred == parse_yes_no(gold))}


def exact_match_metric(prediction: str | None, gold: object) -> dict[str, float]:
    """Accuracy of an answer that must equal the gold one after SQuAD normalisation (case, articles, punctuation).

    >>> exact_match_metric("The Eiffel Tower.", "eiffel tower"), exact_match_metric(None, "x")
    ({'accuracy': 1.0}, {'accuracy': 0.0})
    """
    return {"accuracy": qa_metric(prediction, gold)["em"]}
