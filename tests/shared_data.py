"""Where the shared public data lives, for the tests and the benchmarks (test infrastructure, not shipped).

``NAT_SHARED_DATA`` names the folder; by default ``../shared/data`` beside the repository
(``lightning_nat.core.tasks.default_data_dir``, which ``nat eval`` also uses when given no ``--data-dir``).
The data is read in place and never copied into the repository. Benchmarks put this folder on
``sys.path`` to import it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning_nat.core.tasks import default_data_dir

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` when it is not there."""
    return default_data_dir()


def require_shared_data() -> Path:
    """The shared data folder, or an error saying where it was looked for."""
    found = shared_data_dir()
    if found is None:
        where = os.environ.get("NAT_SHARED_DATA") or str(REPO_ROOT.parent / "shared" / "data")
        raise FileNotFoundError(f"shared data not found at {where}; set NAT_SHARED_DATA to the folder holding "
                                "one folder per task (see ../shared/data/README.md)")
    return found
