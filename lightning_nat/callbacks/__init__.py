"""Lightning callbacks of lightning_nat (a subpackage: a top-level ``callbacks`` would collide)."""

from .export import ExportHF

__all__ = ["ExportHF"]
