"""The contract of a custom tool: argument string in, observation string out, never raising.

:func:`guard` wraps a plain function so that the agent always gets a short string back: exceptions become
``Error: ...`` observations, a call past its timeout is abandoned (a thread cannot be killed: a tool that may
block forever should use its own timeouts too), results are made text, cut, and known secrets masked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lightning_nat.core.secrets import mask

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0
MAX_OBSERVATION_CHARS = 2000


def guard(fn: Callable[[str], object], name: str, timeout: float | None = DEFAULT_TIMEOUT_S) -> Callable[[str], str]:
    """``fn`` under the tool contract (see the module doc).

    >>> safe = guard(lambda s: 1 / int(s), "inverse")
    >>> safe("4"), safe("0"), safe("x")
    ('0.25', 'Error: ZeroDivisionError: division by zero', "Error: ValueError: invalid literal for int() with base 10: 'x'")
    """

    def call(argument: str) -> str:
        if not isinstance(argument, str):
            argument = "" if argument is None else str(argument)
        try:  # the result is made text inside the timed call: a __str__ that blocks is cut off too
            text = call_with_timeout(lambda: "" if (value := fn(argument)) is None else str(value), timeout, name)
        except ToolTimeout as exc:
            return f"Error: {exc}"
        except BaseException as exc:  # noqa: BLE001 - every failure of the tool becomes an observation
            if isinstance(exc, KeyboardInterrupt):
                raise
            return _cut(mask(f"Error: {type(exc).__name__}: {exc}".rstrip(": ")), MAX_OBSERVATION_CHARS)
        return _cut(mask(text), MAX_OBSERVATION_CHARS)

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


class ToolTimeout(TimeoutError):
    """A tool call ran past its timeout (and was abandoned: a thread cannot be killed)."""


def call_with_timeout(fn: Callable[[], T], timeout: float | None, name: str) -> T:
    """``fn()`` in a daemon thread, abandoned with :class:`ToolTimeout` after ``timeout`` seconds (None: no limit).

    Whatever ``fn`` raises is raised here. Convert a tool's result to text inside ``fn``, so that
    a result whose ``__str__`` blocks is cut off by the timeout as well.

    >>> call_with_timeout(lambda: 2 + 2, 1.0, "add")
    4
    >>> import time
    >>> call_with_timeout(lambda: time.sleep(5), 0.1, "nap")
    Traceback (most recent call last):
    ...
    lightning_nat.core.safe_tool.ToolTimeout: nap timed out after 0.1 s
    """
    if timeout is None:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"nat-tool-{name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ToolTimeout(f"{name} timed out after {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _cut(text: str, max_chars: int) -> str:
    """Observations longer than ``max_chars`` are cut, saying so.

    >>> _cut("abcdef", 3)
    'abc ... (cut at 3 characters)'
    """
    return text if len(text) <= max_chars else f"{text[:max_chars]} ... (cut at {max_chars} characters)"
