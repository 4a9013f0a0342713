"""The agent's tools: a safe calculator, search backends, and the one registry of tools by name.

A tool takes the text inside ``name[...]`` (written by the model, so untrusted) and
returns the observation text. Tools never raise: problems come back as
``Error: ...`` observations. Python users register their own with :func:`register_tool`;
installed packages through the entry point group ``lightning_nat.tools`` (a plain function,
the entry point's name is the tool's name), loaded the first time a name is not found.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import sympy

from lightning_nat.core.corpus import load_index, passage_text
from lightning_nat.core.imports import entry_points_of
from lightning_nat.core.jsonl import RecordError, read_records
from lightning_nat.core.safe_tool import DEFAULT_TIMEOUT_S, guard
from lightning_nat.core.secrets import mask

MAX_EXPRESSION_CHARS = 500
MAX_NODES = 200
MAX_BITS = 4096  # largest integer magnitude anywhere in a calculation (about 1,200 decimal digits)
MAX_FACTORIAL = 300


class CalculatorError(ValueError):
    pass


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: sympy.floor(a / b),
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: _checked_pow(a, b),
}
_UNARY = {ast.UAdd: lambda a: a, ast.USub: lambda a: -a}
_CONSTANTS = {"pi": sympy.pi, "e": sympy.E}


def _bits(x: sympy.Expr) -> float:
    """An upper estimate of the bits in a number's numerator and denominator."""
    if x.is_Rational:
        return max(int(abs(x.p)).bit_length(), int(abs(x.q)).bit_length())
    if x.is_Float or x.is_number:
        try:
            v = abs(float(x))
        except (TypeError, OverflowError):
            return math.inf
        return math.log2(v) if v > 1 else 0.0
    return 0.0


def _check_size(x: sympy.Expr) -> sympy.Expr:
    if _bits(x) > MAX_BITS:
        raise CalculatorError("number too large")
    return x


def _checked_pow(base: sympy.Expr, exp: sympy.Expr) -> sympy.Expr:
    if base == 0 and exp.is_negative:
        raise CalculatorError("division by zero")
    if base.is_negative and not exp.is_Integer:
        raise CalculatorError("fractional power of a negative number")
    if exp.is_Integer:
        # |base|^exp has about exp * log2|base| bits: refuse before computing it.
        if abs(int(exp)) * max(_bits(base), 1) > MAX_BITS:
            raise CalculatorError("power too large")
        return base ** exp
    if not exp.is_Rational and not exp.is_Float:
        raise CalculatorError("unsupported exponent")
    if abs(float(exp)) * max(_bits(base), 1) > MAX_BITS:
        raise CalculatorError("power too large")
    return sympy.Float(base) ** sympy.Float(exp)


def _factorial(n: sympy.Expr) -> sympy.Expr:
    if not n.is_Integer or n < 0:
        raise CalculatorError("factorial needs a non-negative integer")
    if n > MAX_FACTORIAL:
        raise CalculatorError(f"factorial argument above {MAX_FACTORIAL}")
    return sympy.factorial(n)


def _exp(x: sympy.Expr) -> sympy.Expr:
    if abs(float(x)) > 700:
        raise CalculatorError("exp argument too large")
    return sympy.exp(x)


def _round(x: sympy.Expr, digits: sympy.Expr = sympy.Integer(0)) -> sympy.Expr:
    if not digits.is_Integer or abs(int(digits)) > 50:
        raise CalculatorError("round needs a small integer number of digits")
    # Exact, half to even on the true value (floats would give 1180591620717411300000 for round(2**70 + 1)).
    return sympy.Rational(round(_exact(x), int(digits)))


_FUNCTIONS: dict[str, Callable[..., sympy.Expr]] = {
    "sqrt": lambda x: sympy.sqrt(x) if x >= 0 else _raise("sqrt of a negative number"),
    "abs": lambda x: abs(x),
    "round": _round,
    "floor": lambda x: sympy.floor(x),
    "ceil": lambda x: sympy.ceiling(x),
    "factorial": _factorial,
    "log": lambda x, base=None: (sympy.log(x) if base is None else sympy.log(x, base)) if x > 0
    else _raise("log of a non-positive number"),
    "exp": _exp,
    "min": lambda *xs: sympy.Min(*xs),
    "max": lambda *xs: sympy.Max(*xs),
}


def _raise(msg: str) -> Any:
    raise CalculatorError(msg)


def _eval(node: ast.AST) -> sympy.Expr:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        if isinstance(node.value, int):
            return _check_size(sympy.Integer(node.value))
        return sympy.Rational(repr(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise CalculatorError("division by zero")
        return _check_size(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords and len(node.args) <= 8):
        return _check_size(_FUNCTIONS[node.func.id](*[_eval(a) for a in node.args]))
    raise CalculatorError(f"unsupported syntax: {type(node).__name__}")


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(.])")


def normalize_expression(text: str) -> str:
    """Tidy how models write arithmetic: thousands commas, ``$``, ``×``/``÷``/``^``, ``20%`` as a share.

    >>> normalize_expression("$1,200 × 3 ÷ 4 ^ 2"), normalize_expression("20% * 50"), normalize_expression("10 % 3")
    ('1200 * 3 / 4 ** 2', '(20/100) * 50', '10 % 3')
    """
    text = text.strip().strip("`").replace("$", "")
    text = _THOUSANDS.sub("", text)
    text = _PERCENT.sub(r"(\1/100)", text)
    text = text.replace("×", "*").replace("÷", "/").replace("^", "**").replace("−", "-")
    return text


def _exact(x: sympy.Expr) -> Fraction:
    """A number as an exact fraction: rationals as they are, others from enough significant digits."""
    if x.is_Rational:
        return Fraction(int(x.p), int(x.q))
    digits = 30 + max(0, int(_bits(x) * 0.30103))
    return Fraction(str(sympy.N(x, digits)))


def format_number(x: sympy.Expr) -> str:
    """An observation-friendly number, exact: integers in full, others rounded (half to even) to 6 decimals.

    No float in between, so big values keep every digit and never turn into ``inf``.

    >>> format_number(sympy.Integer(18)), format_number(sympy.Rational(1, 3)), format_number(sympy.Rational(5, 2))
    ('18', '0.333333', '2.5')
    >>> format_number(sympy.Integer(10)**20 + sympy.Rational(1, 2)), format_number(-sympy.sqrt(2))
    ('100000000000000000000.5', '-1.414214')
    """
    if x.is_Integer:
        return str(int(x))
    scaled = round(_exact(x) * 10**6)
    whole, frac = divmod(abs(scaled), 10**6)
    text = f"{whole}.{frac:06d}".rstrip("0").rstrip(".")
    return f"-{text}" if scaled < 0 else text


# The docstring is the tool's one description for both agents: its first line is the ReAct help line, and with the
# Args section it is the JSON schema a function-calling agent is offered (transformers' get_json_schema copies all
# of it, so nothing else goes there). The text is parsed with ast, only numbers, + - * / // % **, parentheses, pi/e
# and a few named functions are accepted, and the tree is evaluated with SymPy numbers under size limits: nothing
# the model writes is executed, every call returns quickly, and a failure is an "Error: ..." observation.
def calculate(expression: str) -> str:
    """Evaluates an arithmetic expression such as (12 + 7) * 3 / 4 and returns the number.

    Args:
        expression: the arithmetic to evaluate, e.g. '(12 + 7) * 3 / 4'
    """
    if not isinstance(expression, str) or not expression.strip():
        return "Error: empty expression"
    if len(expression) > MAX_EXPRESSION_CHARS:
        return f"Error: expression longer than {MAX_EXPRESSION_CHARS} characters"
    text = normalize_expression(expression)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "Error: not a valid arithmetic expression"
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        return "Error: expression too complex"
    try:
        value = _eval(tree)
        if value.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo) or not value.is_number or not value.is_real:
            return "Error: the result is not a finite real number"
        return format_number(value)
    except CalculatorError as exc:
        return f"Error: {exc}"
    except (ZeroDivisionError, OverflowError, TypeError, ValueError, RecursionError, MemoryError, AttributeError):
        return "Error: could not evaluate the expression"


# -- search ------------------------------------------------------------------------------------------------

def format_snippets(snippets: list[str]) -> str:
    """The observation format of the reference trajectories: `` #1: ... #2: ...``.

    >>> format_snippets(["Paris is in France.", "It is big."])
    ' #1: Paris is in France. #2: It is big.'
    """
    if not snippets:
        return "No results found."
    return "".join(f" #{i}: {' '.join(s.split())}" for i, s in enumerate(snippets, start=1))


@dataclass
class BM25Search:
    """Offline search: BM25 (``bm25s``) over a JSONL corpus of ``{"title", "text"}``, or a ``nat corpus`` folder."""

    corpus_path: str
    _passages: list[dict] = field(default_factory=list, repr=False)
    _retriever: Any = field(default=None, repr=False)

    def prepare(self) -> None:
        """Read and index the corpus now (a bad corpus then stops a run before its first episode)."""
        if self._retriever is not None:
            return
        try:
            import bm25s
        except ImportError as exc:
            raise RuntimeError("the bm25 search backend needs `pip install bm25s` (or lightning_nat[search])") from exc
        path = Path(self.corpus_path)
        if path.is_dir():  # a `nat corpus` folder: passages and their saved index
            self._passages, self._retriever = load_index(path)
            return
        for lineno, rec in read_records(path):
            if isinstance(rec, RecordError):
                raise rec
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise RecordError("expected a JSON object with a 'text' string", path, f"line {lineno}")
            self._passages.append(rec)
        if not self._passages:
            raise ValueError(f"{path}: empty search corpus")
        self._retriever = bm25s.BM25()
        self._retriever.index(bm25s.tokenize([passage_text(p) for p in self._passages], show_progress=False),
                              show_progress=False)

    def _top(self, query: str, n: int) -> list[dict]:
        import bm25s

        self.prepare()
        ids, scores = self._retriever.retrieve(bm25s.tokenize([query], show_progress=False),
                                               k=min(n, len(self._passages)), show_progress=False)
        return [self._passages[int(i)] for i, s in zip(ids[0], scores[0]) if s > 0]

    def search(self, query: str, k: int) -> list[str]:
        return [passage_text(p) for p in self._top(query, k)]

    def hits(self, query: str, n: int) -> list[tuple[str, str]]:
        """The ``n`` best BM25 ``(title, text)`` pairs, for re-ranking."""
        return [(str(p.get("title") or "").strip(), p["text"].strip()) for p in self._top(query, n)]


@dataclass
class SerperSearch:
    """Google results through the Serper API (the paper's search); key from ``SERPER_API_KEY``."""

    api_key_env: str = "SERPER_API_KEY"
    endpoint: str = "https://google.serper.dev/search"
    timeout: float = 15.0

    def prepare(self) -> None:
        """Check that the key is set before a run starts."""
        if not os.environ.get(self.api_key_env):
            raise RuntimeError(f"set {self.api_key_env} to use the serper search backend")

    def _request(self, query: str, num: int) -> dict:
        self.prepare()
        req = urllib.request.Request(self.endpoint, data=json.dumps({"q": query, "num": num}).encode(),
                                     headers={"X-API-KEY": os.environ[self.api_key_env], "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 (fixed https endpoint)
            return json.loads(resp.read().decode())

    def hits(self, query: str, n: int) -> list[tuple[str, str]]:
        """The ``n`` organic ``(title, snippet)`` results (no answer box), as the reference re-ranked them."""
        data = self._request(query, n)
        return [(str(r.get("title", "")), str(r.get("snippet", ""))) for r in data.get("organic", [])][:n]

    def search(self, query: str, k: int) -> list[str]:
        data = self._request(query, k)
        out = []
        if box := data.get("answerBox"):
            out.append(box.get("answer") or box.get("snippet") or "")
        out += [r.get("snippet", "") for r in data.get("organic", [])]
        return [s for s in out if s][:k]


SEARCH_BACKENDS = {"bm25": BM25Search, "serper": SerperSearch}


def make_search(backend: str, k: int = 3, reranker: Any = None, pool: int = 10, **kwargs: Any
                ) -> Callable[[str], str]:
    """A ``search[query]`` tool over a backend; failures become ``Error:`` observations.

    With a :class:`~lightning_nat.agent.rerank.Reranker`, ``pool`` results are fetched and re-ranked
    down to the reranker's ``k``, as the reference code did (10 -> 5 -> 3).
    """
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"unknown search backend {backend!r}; expected one of {', '.join(SEARCH_BACKENDS)}")
    impl = SEARCH_BACKENDS[backend](**kwargs)

    def search(query: str) -> str:
        query = query.strip()
        if not query:
            return "Error: empty search query"
        try:
            if reranker is not None:
                return format_snippets([text for _, text in reranker.rank(query, impl.hits(query, pool))])
            return format_snippets(impl.search(query, k))
        except Exception as exc:  # a tool never raises into the agent loop
            return f"Error: search failed ({type(exc).__name__}: {mask(str(exc))})"

    # Callers check the backend up front (corpus readable, key set): problems then stop a run early.
    search.prepare = getattr(impl, "prepare", lambda: None)  # type: ignore[attr-defined]
    return search


def make_tools(names: tuple[str, ...], search: Callable[[str], str] | None = None) -> dict[str, Callable[[str], str]]:
    """The callable tools a task's agent gets (``finish`` is the agent loop's); registered ones come guarded."""
    tools = {}
    for name in names:
        if name == "calculate":
            tools[name] = calculate
        elif name == "search" and search is not None:
            tools[name] = search
        elif name not in ("search", "finish") and (spec := find_tool(name)) is not None:
            tools[name] = spec.call
        elif name != "finish":
            raise ValueError(f"tool {name!r} is not configured (search needs --search-corpus or --search serper)")
    return tools


# -- the registry ------------------------------------------------------------------------------------------

TOOL_GROUP = "lightning_nat.tools"  # the entry point group: a public contract
# Tools the agent loop and `make_tools` provide themselves; `finish` is the agent's own action.
BUILTIN_TOOLS = ("calculate", "search", "finish")
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def _first_line(fn: Callable[..., Any]) -> str:
    doc = (fn.__doc__ or "").strip().splitlines()
    return doc[0].strip() if doc else "a tool."


# The ReAct help line of each built-in: `calculate`'s is its docstring's first line (the same words that
# describe it to a function-calling agent).
BUILTIN_HELP = {
    "calculate": f"calculate[expression]: {_first_line(calculate)[:1].lower()}{_first_line(calculate)[1:]}",
    "search": "search[query]: looks the query up and returns the most relevant passages.",
    "finish": "finish[answer]: gives your final answer and ends the task.",
}


@dataclass(frozen=True)
class ToolSpec:
    """A registered tool: the guarded callable the agent gets, its help line, and the user's function."""

    name: str
    call: Callable[[str], str]
    help: str
    function: Callable[..., Any]
    # Seconds per call (a function-calling agent applies it to the function itself).
    timeout: float | None = DEFAULT_TIMEOUT_S


TOOLS: dict[str, ToolSpec] = {}
_entry_points_loaded: set[str] = set()


def default_help(name: str, fn: Callable[..., Any]) -> str:
    """The instruction line of a tool: ``name[argument]:`` and the first line of its docstring.

    >>> def convert(text):
    ...     '''Converts a quantity between units, e.g. 5 km to mi.'''
    >>> default_help("convert", convert)
    'convert[argument]: Converts a quantity between units, e.g. 5 km to mi.'
    """
    return f"{name}[argument]: {_first_line(fn)}"


def register_tool(name: str, function: Callable[[str], Any], help: str | None = None,
                  timeout: float | None = DEFAULT_TIMEOUT_S, replace: bool = False) -> ToolSpec:
    """Register ``function`` as the tool ``name[...]``, under the tool contract (:mod:`lightning_nat.core.safe_tool`).

    Names are lower case and not a built-in's; the same function again is a no-op, another one under a taken
    name needs ``replace=True``.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"tool name {name!r}: use lower-case letters, digits and underscores")
    if name in BUILTIN_TOOLS:
        raise ValueError(f"tool name {name!r} is built in; choose another name")
    if not callable(function):
        raise ValueError(f"tool {name!r}: {function!r} is not callable")
    old = TOOLS.get(name)
    if old is not None and old.function is not function and not replace:
        where = f"{getattr(old.function, '__module__', '?')}:{getattr(old.function, '__qualname__', '?')}"
        raise ValueError(f"tool {name!r} is already registered ({where}); choose another name")
    spec = ToolSpec(name, guard(function, name, timeout), help or default_help(name, function), function, timeout)
    TOOLS[name] = spec
    return spec


def find_tool(name: str) -> ToolSpec | None:
    """A registered tool, loading the tool entry points if needed; ``None`` when unknown."""
    if name not in TOOLS and TOOL_GROUP not in _entry_points_loaded:
        _entry_points_loaded.add(TOOL_GROUP)
        for ep_name, fn, where in entry_points_of(TOOL_GROUP):
            try:
                register_tool(ep_name, fn)
            except ValueError as exc:  # one bad plug-in is named and skipped; the others still load
                warnings.warn(f"{where}: not registered: {exc}", stacklevel=2)
    return TOOLS.get(name)


def tool_help(name: str) -> str:
    """The instruction line of a built-in or registered tool."""
    if name in BUILTIN_HELP:
        return BUILTIN_HELP[name]
    spec = find_tool(name)
    if spec is None:
        raise KeyError(f"unknown tool {name!r}")
    return spec.help
