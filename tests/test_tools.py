import json
import time

import pytest

from lightning_nat.core.tools import calculate, format_snippets, make_search, make_tools

HOSTILE = [
    "__import__('os').system('touch /tmp/nat_pwned')",
    "open('/tmp/nat_pwned', 'w').write('x')",
    "().__class__.__base__.__subclasses__()",
    "(1).__class__",
    "lambda: 1",
    "(lambda x: x)(1)",
    "[x for x in range(10**9)]",
    "9**9**9**9",
    "factorial(10**9)",
    "factorial(factorial(20))",
    "10**10**10",
    "2**(2**64)",
    "(10**1000)*(10**1000)",
    "exp(10**9)",
    "sqrt(10**100000)",
    "1" * 1_000_000,
    "(" * 100_000 + "1" + ")" * 100_000,
    "-" * 400 + "1",
    "1+" * 240 + "1",
    "max(*[1]*10)",
    "import os",
    "os.system('id')",
    "globals()",
    "__builtins__",
    "'a' * 10**9",
    "b'\\x00'",
]


@pytest.mark.parametrize("expr", HOSTILE, ids=range(len(HOSTILE)))
def test_calculator_hostile_inputs(expr, tmp_path):
    start = time.perf_counter()
    out = calculate(expr)
    elapsed = time.perf_counter() - start
    assert out.startswith("Error:"), out
    # A safety property, not a speed target: a hostile expression must not stall the agent.
    assert elapsed < 2.0, elapsed
    assert not (tmp_path.parent / "nat_pwned").exists()
    import os

    assert not os.path.exists("/tmp/nat_pwned")


@pytest.mark.parametrize("expr, want", [
    ("16 - 3 - 4", "9"), ("9 * 2", "18"), ("(12 + 7) * 3 / 4", "14.25"), ("1,200 + 300", "1500"),
    ("2^10", "1024"), ("10 % 3", "1"), ("20% * 50", "10"), ("1/3", "0.333333"), ("sqrt(16)", "4"),
    ("round(2.567, 2)", "2.57"), ("factorial(5)", "120"), ("$5 * 4", "20"), ("-(3 - 5)", "2"), ("7 // 2", "3"),
    ("0.1 + 0.2", "0.3"), ("100 / 8", "12.5"), ("max(3, 9, 4)", "9"), ("1e3", "1000"),
])
def test_calculator_arithmetic(expr, want):
    assert calculate(expr) == want


def test_calculator_errors_are_observations():
    assert calculate("1/0") == "Error: division by zero"
    assert calculate("") == "Error: empty expression"
    assert calculate("two plus two").startswith("Error:")


def test_bm25_search(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"title": "Genghis Khan", "text": "Genghis Khan had many descendants across Asia."},
            {"title": "Julius Caesar", "text": "Julius Caesar was a Roman general with three children."},
            {"title": "Pea", "text": "A pea pod holds about seven peas."}]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    search = make_search("bm25", k=2, corpus_path=str(corpus))
    out = search("how many children did Julius Caesar have")
    assert out.startswith(" #1: Julius Caesar: Julius Caesar was a Roman general")
    assert search("   ") == "Error: empty search query"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    assert "line 1" in make_search("bm25", corpus_path=str(bad))("anything")
    assert format_snippets([]) == "No results found."


def test_serper_without_key_is_an_observation(monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY", raising=False)
    assert "set SERPER_API_KEY" in make_search("serper")("who?")


def test_tool_registry():
    tools = make_tools(("calculate", "finish"))
    assert list(tools) == ["calculate"]
    with pytest.raises(ValueError, match="search"):
        make_tools(("search", "finish"))
