import os
from pathlib import Path

import pytest
from shared_data import require_shared_data  # tests/shared_data.py: test infrastructure, not shipped


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


def _tiny_build(files: dict[str, Path], tmp_path_factory, name: str) -> Path:
    """24 positives, 16 negatives and 8 dev positives of ``files`` saved like `nat build`."""
    from lightning_nat.builders import build_dataset, save_build

    out = tmp_path_factory.mktemp(f"{name}-data") / name
    res = build_dataset([str(files["pos"]), str(files["neg"])], "nat", cache_dir=str(tmp_path_factory.mktemp("cache")),
                        questions=str(files["questions"]), task="strategyqa", on_error="skip", pos_num=24, neg_num=16,
                        dev_num=8)
    save_build(res, out)
    return out


def _tiny_model(dataset: Path, tmp_path_factory) -> Path:
    """A 2-layer random-init Llama with a 384-token BPE tokenizer trained on ``dataset`` (ChatML template)."""
    from lightning_nat.train.scratch import conversation_texts, make_scratch_model

    return make_scratch_model(tmp_path_factory.mktemp("models") / "scratch", conversation_texts(dataset),
                              vocab_size=384, hidden_size=32, num_layers=2, num_heads=2)


@pytest.fixture(scope="session")
def tiny_dataset(strategyqa_files, tmp_path_factory) -> Path:
    """A small real NAT dataset (24 positives, 16 negatives, 8 dev positives) saved like `nat build`."""
    return _tiny_build(strategyqa_files, tmp_path_factory, "sqa-nat")


@pytest.fixture(scope="session")
def scratch_model(tiny_dataset, tmp_path_factory) -> Path:
    """The scratch model of the tests, its tokenizer trained on the tiny dataset."""
    return _tiny_model(tiny_dataset, tmp_path_factory)


@pytest.fixture(scope="session")
def fixture_files(tmp_path_factory) -> dict[str, Path]:
    """The invented StrategyQA-format fixture (tests/fixture_data.py), written for this session: no ../shared needed."""
    import fixture_data

    d = tmp_path_factory.mktemp("fixture-strategyqa")
    fixture_data.main(d)
    return {"pos": d / "trajectories_positive.json", "neg": d / "trajectories_negative.json",
            "questions": d / "train.jsonl"}


@pytest.fixture(scope="session")
def fixture_dataset(fixture_files, tmp_path_factory) -> Path:
    """``tiny_dataset``'s shape built from the invented fixture (the tokenization and training tests use it)."""
    return _tiny_build(fixture_files, tmp_path_factory, "fixture-nat")


@pytest.fixture(scope="session")
def fixture_model(fixture_dataset, tmp_path_factory) -> Path:
    """``scratch_model``'s shape, its tokenizer trained on the fixture dataset."""
    return _tiny_model(fixture_dataset, tmp_path_factory)
