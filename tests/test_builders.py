import json
import shutil

import datasets
import pytest

from lightning_nat.builders import PRESETS, build_dataset
from lightning_nat.cli import main
from lightning_nat.core.trajectory import TrajectoryFormatError


@pytest.fixture
def sqa(strategyqa_files):
    files = [str(strategyqa_files["pos"]), str(strategyqa_files["neg"])]
    return files, dict(questions=str(strategyqa_files["questions"]), task="strategyqa", on_error="skip")


def test_variants_from_the_builder(sqa, tmp_path):
    files, kw = sqa
    nat = build_dataset(files, "nat", cache_dir=str(tmp_path), pos_num=1000, neg_num=500, **kw)
    train = nat.dataset["train"]
    assert train.num_rows == 1500 and train.features["messages"].feature["train"].dtype == "bool"
    assert len({row[2]["content"].rsplit(". ", 1)[1] for row in train["messages"]}) == 2  # reference style
    assert nat.report["skipped_by_reason"] == {"empty conversation": 7}
    nut = build_dataset(files, "nut", cache_dir=str(tmp_path), pos_num=1000, neg_num=500, **kw).dataset["train"]
    assert len({row[2]["content"].rsplit(". ", 1)[1] for row in nut["messages"]}) == 1
    pos = build_dataset(files, "positive", cache_dir=str(tmp_path), pos_num=1000, neg_num=500, **kw).dataset["train"]
    assert pos.num_rows == 1000 and set(pos["label"]) == {"positive"} and all(pos["reward"])


def test_cache_reused_and_invalidated(sqa, tmp_path):
    files, kw = sqa
    cache = str(tmp_path / "cache")
    first = build_dataset(files, "nat", cache_dir=cache, pos_num=100, neg_num=50, **kw)
    again = build_dataset(files, "nat", cache_dir=cache, pos_num=100, neg_num=50, **kw)
    assert not first.from_cache and again.from_cache and again.cache_dir == first.cache_dir
    assert again.report == first.report and again.dataset["train"]["id"] == first.dataset["train"]["id"]
    other = build_dataset(files, "nat", cache_dir=cache, pos_num=100, neg_num=60, **kw)
    assert not other.from_cache and other.dataset["train"].num_rows == 160
    # Same path, edited content: the cache must not serve the old rows.
    copy = tmp_path / "neg.json"
    shutil.copy(files[1], copy)
    base = build_dataset([files[0], str(copy)], "nat", cache_dir=cache, pos_num=100, neg_num=50, **kw)
    records = json.loads(copy.read_text())
    copy.write_text(json.dumps(records[:400]))
    edited = build_dataset([files[0], str(copy)], "nat", cache_dir=cache, pos_num=100, neg_num=50, **kw)
    assert not edited.from_cache and edited.cache_dir != base.cache_dir
    assert edited.report["stats"]["negatives_available"] < base.report["stats"]["negatives_available"]


def test_builder_errors(sqa, tmp_path):
    files, kw = sqa
    with pytest.raises(TrajectoryFormatError, match="record 282: empty conversation"):
        build_dataset(files, "nat", cache_dir=str(tmp_path), **{**kw, "on_error": "raise"})
    with pytest.raises(ValueError, match="unknown variant 'nat-9'"):
        build_dataset(files, "nat-9", cache_dir=str(tmp_path), **kw)
    with pytest.raises(TypeError, match="unknown build parameter"):
        build_dataset(files, "nat", cache_dir=str(tmp_path), negnum=3, **kw)
    with pytest.raises(FileNotFoundError):
        build_dataset([str(tmp_path / "missing.json")], "nat", cache_dir=str(tmp_path), **kw)


def test_every_preset_builds(tmp_path):
    rows = [{"id": f"t{i}", "question": f"question {i}?", "reward": i % 3 == 0, "score": (i % 10) / 10,
             "prediction": "x", "messages": [{"role": "assistant", "content": f"Action: finish[{i}]"}]}
            for i in range(30)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, preset in PRESETS.items():
        if preset["keeps"] == "dpo":
            # Every question here has one trajectory: nothing to pair, and the build says so.
            with pytest.raises(ValueError, match="no question has both a positive and a different negative"):
                build_dataset([str(path)], name, cache_dir=str(tmp_path / "c"), format="openai",
                              task="hotpotqa", seed=0)
            continue
        res = build_dataset([str(path)], name, cache_dir=str(tmp_path / "c"), format="openai",
                            task="hotpotqa", seed=0)
        labels = set(res.dataset["train"]["label"])
        assert "positive" in labels
        assert ("negative" in labels or "negative-1" in labels) == (preset["keeps"] != "positive"), name


def test_nat_build_cli(strategyqa_files, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["build", "--format", "nat", "--trajectories", str(strategyqa_files["pos"]), str(strategyqa_files["neg"]),
            "--questions", str(strategyqa_files["questions"]), "--task", "strategyqa", "--variant", "nat",
            "--pos-num", "1000", "--neg-num", "500", "--seed", "42", "--out", str(out), "--cache-dir",
            str(tmp_path / "cache")]
    assert main(args) == 1  # strict by default: the real file has empty conversations
    assert "record 282: empty conversation" in capsys.readouterr().err  # errors go to stderr
    assert main(args + ["--on-error", "skip", "--dev-num", "20"]) == 0
    text = capsys.readouterr().out
    assert "skipped 7 bad record(s): empty conversation" in text and "1000" in text
    ds = datasets.load_from_disk(str(out))
    assert ds["train"].num_rows == 1500 and ds["dev"].num_rows == 20
    preview = [json.loads(line) for line in (out / "preview.jsonl").read_text().splitlines()]
    assert {p["label"] for p in preview} == {"positive", "negative"}
    assert json.loads((out / "build.json").read_text())["config"]["neg_num"] == 500


def test_help_is_complete(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "build" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    for flag in ("--format", "--trajectories", "--questions", "--task", "--variant", "--pos-num", "--neg-num",
                 "--seed", "--on-error", "--out", "nat-2", "nat-inverse"):
        assert flag in text
