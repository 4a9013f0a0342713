"""Where the shared public data lives, for tests, benchmarks and examples.

``NAT_SHARED_DATA`` names the folder; by default ``../shared/data`` beside the
repository. The data is read in place and never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """The shared data folder, or ``None`` when it is not there."""
    env = os.environ.get("NAT_SHARED_DATA")
    candidates = [Path(env)] if env else [_REPO_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / "README.md").is_file():
            return c
    return None


def require_shared_data() -> Path:
    """The shared data folder, or an error saying where it was looked for."""
    found = shared_data_dir()
    if found is None:
        where = os.environ.get("NAT_SHARED_DATA") or str(_REPO_ROOT.parent / "shared" / "data")
        raise FileNotFoundError(f"shared data not found at {where}; set NAT_SHARED_DATA to the folder holding "
                                "one folder per task (see ../shared/data/README.md)")
    return found
