"""The one secret mask: the values of known secrets never reach a file, a log line or an error message.

Text is masked where it is written (every writer of the package calls :func:`mask`), whatever echoed it. A
secret is the value (at least :data:`MIN_LENGTH` characters) of an environment variable a command names as
one (``--api-key-env``, ``SERPER_API_KEY``, ``HF_TOKEN``) or whose name says so (``*KEY*``, ``*TOKEN*``, ...).
"""

from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
MIN_LENGTH = 8
_NAMED = {"OPENAI_API_KEY", "SERPER_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)


def watch(env_name: str) -> None:
    """Treat the value of ``env_name`` as a secret (a policy's ``--api-key-env``)."""
    _NAMED.add(env_name)


def secret_values() -> list[str]:
    """The secrets set in the environment now, longest first (a key that contains another is masked whole)."""
    values = {v for k, v in os.environ.items() if (k in _NAMED or _SECRET_NAME.search(k)) and len(v) >= MIN_LENGTH}
    return sorted(values, key=len, reverse=True)


def mask(text: str) -> str:
    """``text`` with every secret value replaced by ``***``.

    >>> os.environ["NAT_DOCTEST_API_KEY"] = "sk-canary-123"
    >>> mask("echo: sk-canary-123!")
    'echo: ***!'
    >>> del os.environ["NAT_DOCTEST_API_KEY"]
    """
    return _replace(text, secret_values())


def _replace(text: str, values: list[str]) -> str:
    for value in values:
        text = text.replace(value, MASK)
    return text


def mask_all(obj: Any) -> Any:
    """Every string inside a JSON-like value masked (dicts, lists and tuples rebuilt, other values kept).

    >>> os.environ["NAT_DOCTEST_TOKEN"] = "hf_canary_456"
    >>> mask_all({"messages": [{"content": "token hf_canary_456"}], "reward": True})
    {'messages': [{'content': 'token ***'}], 'reward': True}
    >>> del os.environ["NAT_DOCTEST_TOKEN"]
    """
    values = secret_values()
    if not values:
        return obj

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            return _replace(x, values)
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(walk(v) for v in x)
        return x

    return walk(obj)
