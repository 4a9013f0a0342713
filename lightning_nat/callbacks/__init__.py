"""Lightning callbacks of lightning_nat (a subpackage: a top-level ``callbacks`` would collide)."""

from .export import ExportHF
from .perplexity import DevPerplexity, dev_perplexity
from .react_eval import ReActEval

__all__ = ["DevPerplexity", "ExportHF", "ReActEval", "dev_perplexity"]
