"""The Lightning callbacks under one name (a subpackage: a top-level ``callbacks`` would collide).

Each callback is imported when first asked for, so ``nat fit`` (which needs ``ExportHF`` and
``DevPerplexity``) does not load the agent, its tools and sympy unless a config names ``ReActEval``.
``from lightning_nat.callbacks import ReActEval`` and ``class_path: lightning_nat.callbacks.ReActEval``
work as before.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_nat.agent.react_eval import ReActEval
    from lightning_nat.train.export import ExportHF
    from lightning_nat.train.perplexity import DevPerplexity

# Where each callback lives: training's with the training stage, ReActEval (it runs the agent) with the agent's.
_WHERE = {"ExportHF": "lightning_nat.train.export", "DevPerplexity": "lightning_nat.train.perplexity",
          "ReActEval": "lightning_nat.agent.react_eval"}
__all__ = ["DevPerplexity", "ExportHF", "ReActEval"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
