"""The contract of a custom tool: argument string in, observation string out, never raising.

What the model writes inside ``tool[...]`` is untrusted input, and a user's tool may
be slow or buggy. :func:`guard` wraps a plain function so that the agent loop always
gets a short string back: exceptions become ``Error: ...`` observations, a call that
runs past its timeout is answered ``Error: ... timed out``, anything that is not a
string is converted with ``str``, long outputs are cut, and the API keys the package
knows of are masked (a tool's error message may echo a request URL or header).

A Python thread cannot be killed: a timed-out call is abandoned (its daemon thread
finishes or dies with the process), so a tool that may block forever should use its
own timeouts (sockets, subprocesses) as well.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lightning_nat.core.secrets import mask

DEFAULT_TIMEOUT_S = 10.0
MAX_OBSERVATION_CHARS = 2000


def guard(fn: Callable[[str], object], name: str, timeout: float | None = DEFAULT_TIMEOUT_S,
          max_chars: int = MAX_OBSERVATION_CHARS) -> Callable[[str], str]:
    """``fn`` under the tool contract (see the module doc).

    >>> safe = guard(lambda s: 1 / int(s), "inverse")
    >>> safe("4"), safe("0"), safe("x")
    ('0.25', 'Error: ZeroDivisionError: division by zero', "Error: ValueError: invalid literal for int() with base 10: 'x'")
    """

    def call(argument: str) -> str:
        if not isinstance(argument, str):
            argument = "" if argument is None else str(argument)
        box: dict[str, object] = {}

        def target() -> None:
            try:
                value = fn(argument)
                # Converted here, inside the timed call: a result whose __str__ blocks must time out too.
                box["value"] = "" if value is None else str(value)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes an observation
                box["error"] = exc

        if timeout is None:
            target()
        else:
            worker = threading.Thread(target=target, name=f"nat-tool-{name}", daemon=True)
            worker.start()
            worker.join(timeout)
            if worker.is_alive():
                return f"Error: {name} timed out after {timeout:g} s"
        if "error" in box:
            exc = box["error"]
            return _cut(mask(f"Error: {type(exc).__name__}: {exc}".rstrip(": ")), max_chars)
        return _cut(mask(str(box.get("value", ""))), max_chars)

    call.__name__ = name
    call.__doc__ = fn.__doc__
    return call


def _cut(text: str, max_chars: int) -> str:
    """Observations longer than ``max_chars`` are cut, saying so.

    >>> _cut("abcdef", 3)
    'abc ... (cut at 3 characters)'
    """
    return text if len(text) <= max_chars else f"{text[:max_chars]} ... (cut at {max_chars} characters)"
