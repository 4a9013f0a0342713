"""The answer a finished trajectory gave, read from its last assistant turn.

ReAct turns end with ``finish[answer]``; chain-of-thought solutions end with a
final-answer line in one of the forms found in labelled CoT data (``A: 18``,
``#### 18``, ``Final answer: 18``, ``The answer is 18``). Model-written text is
untrusted: nothing here evaluates it, and an answer is at most one line.
"""

from __future__ import annotations

import re

_FINISH = re.compile(r"\bfinish\s*\[", re.IGNORECASE)
# Last-line forms, most specific first; each captures the rest of its line.
_COT_FORMS = (
    re.compile(r"^\s*#{4}\s*(.+?)\s*$", re.MULTILINE),
    re.compile(r"final answer\s*(?:is)?\s*[:：]?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"\bthe (?:final )?answer is\s*[:：]?\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"^\s*A\s*[:：]\s*(.+?)\s*$", re.MULTILINE),
)


def finish_argument(text: str) -> str | None:
    """The argument of the last ``finish[...]`` call (nested brackets honoured), if any.

    >>> finish_argument("Thought: done.\\nAction: finish[[1, 2]]"), finish_argument("Action: search[x]")
    ('[1, 2]', None)
    """
    calls = list(_FINISH.finditer(text))
    if not calls:
        return None
    argument, _ = bracket_argument(text, calls[-1].end() - 1)
    return argument.strip()


def bracket_argument(text: str, start: int) -> tuple[str, bool]:
    """The text inside the bracket opening at ``start``, nesting honoured, and whether it closed.

    An unclosed bracket gives the rest of its line (trailing ``]`` stripped).

    >>> bracket_argument("f[a[1]] x", 1), bracket_argument("f[abc\\nmore", 1)
    (('a[1]', True), ('abc', False))
    """
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "[":
            depth += 1
        elif text[i] == "]":
            depth -= 1
            if depth == 0:
                return text[start + 1:i], True
    rest = text[start + 1:].split("\n", 1)[0]
    return rest.rstrip().rstrip("]"), False


def cot_answer(text: str) -> str | None:
    """The final answer of a chain-of-thought solution, from its last answer line.

    >>> [cot_answer(t) for t in ("So 3*6 = 18.\\nA: 18", "... \\n#### 1,800", "Final answer: 18 apples",
    ...                          "Therefore, the answer is 18.", "I am not sure.")]
    ['18', '1,800', '18 apples', '18', None]
    """
    best: tuple[int, str] | None = None
    for form in _COT_FORMS:
        for m in form.finditer(text):
            if best is None or m.start() > best[0]:
                best = (m.start(), m.group(1))
    if best is None:
        return None
    answer = best[1].strip()
    # "The answer is 18." ends a sentence; the full stop is not part of the answer.
    return answer[:-1].rstrip() if answer.endswith(".") and not answer[:-1].rstrip().endswith(".") else answer


def extract_answer(text: str) -> str | None:
    """A trajectory's answer: ``finish[...]`` when the turn calls it, else a CoT final-answer line.

    >>> extract_answer("Thought: ok\\nAction: finish[Yes]"), extract_answer("6*3=18\\nThe answer is 18")
    ('Yes', '18')
    """
    found = finish_argument(text)
    return found if found is not None else cot_answer(text)
