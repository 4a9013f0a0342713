"""lightning_nat: fine-tune LLM agents on successful and failed trajectories (NAT, arXiv 2402.11651)."""

__version__ = "0.1.0"
