import os
from pathlib import Path

import pytest

from lightning_nat.shared_data import require_shared_data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public data in ../shared/data: a failure under CI, a skip elsewhere."""
    try:
        return require_shared_data()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def strategyqa_files(shared_data: Path) -> dict[str, Path]:
    d = shared_data / "strategyqa"
    return {"pos": d / "trajectories_positive.json", "neg": d / "trajectories_negative.json",
            "questions": d / "train.jsonl"}
