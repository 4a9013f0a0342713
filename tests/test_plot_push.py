import json
import os

import pytest

from lightning_nat.cli import main
from lightning_nat.report.hub import dataset_card, model_card, push


def _perplexity_run(root, name, variant, negatives, values):
    d = root / name / "nat" / "version_0"
    d.mkdir(parents=True)
    d.joinpath("perplexity.jsonl").write_text("".join(
        json.dumps({"step": 10 * (i + 1), "epoch": 0, "source": "steps", "perplexity": v, "nll": 1.0,
                    "target_tokens": 100, "variant": variant, "positives": 1000, "negatives": negatives}) + "\n"
        for i, v in enumerate(values)))
    return root / name


def _results(root, variant, neg, acc):
    d = root / f"{variant}-{neg}" / "eval"
    d.mkdir(parents=True)
    d.joinpath("results.json").write_text(json.dumps({"results": {"gsm8k": {"accuracy": acc, "episodes": 10}},
                                                      "tags": {"variant": variant, "neg_num": str(neg)}}))
    return d / "results.json"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF")])
def test_plots_are_valid_images(tmp_path, suffix, magic):
    runs = [_perplexity_run(tmp_path, "positive", "positive", 0, [9.0, 7.0, 6.5]),
            _perplexity_run(tmp_path, "nat-500", "nat", 500, [9.0, 7.2, 6.6]),
            _perplexity_run(tmp_path, "nut-500", "nut", 500, [9.0, 7.9, 7.7])]
    out = tmp_path / f"ppl{suffix}"
    assert main(["plot", "perplexity", *map(str, runs), "--out", str(out)]) == 0
    assert out.read_bytes().startswith(magic) and out.stat().st_size > 5000
    out2 = tmp_path / f"ppl-neg{suffix}"
    assert main(["plot", "perplexity", str(tmp_path), "--x", "negatives", "--out", str(out2)]) == 0
    assert out2.read_bytes().startswith(magic)
    files = [_results(tmp_path / "sweep", v, n, a) for v, n, a in
             [("nat", 0, 0.30), ("nat", 500, 0.36), ("nat", 1000, 0.38), ("nut", 0, 0.30), ("nut", 500, 0.31)]]
    sweep = tmp_path / f"sweep{suffix}"
    assert main(["plot", "sweep", *map(str, files), "--out", str(sweep)]) == 0
    assert sweep.read_bytes().startswith(magic)


def test_plot_errors(tmp_path, capsys):
    assert main(["plot", "perplexity", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
    assert "no such file or folder" in capsys.readouterr().err  # errors go to stderr
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"results": {"gsm8k": {"accuracy": 0.1}}}))
    assert main(["plot", "sweep", str(bad), "--out", str(tmp_path / "x.png")]) == 1
    assert "--tag variant=NAME" in capsys.readouterr().err  # errors go to stderr


def test_dataset_and_model_cards(tiny_dataset, scratch_model, tmp_path):
    from huggingface_hub import DatasetCard, ModelCard

    card = dataset_card(tiny_dataset, "me/sqa-nat")
    data = DatasetCard(card).data.to_dict()
    assert data["task_categories"] == ["text-generation"] and "negative-aware-training" in data["tags"]
    assert "nat build --format nat" in card and "--pos-num 24" in card and "--neg-num 16" in card
    assert "positives: 24, negatives: 16" in card
    model_dir = tmp_path / "run" / "hf"
    model_dir.mkdir(parents=True)
    for f in scratch_model.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    (tmp_path / "run" / "config.yaml").write_text(
        "model:\n  model_name_or_path: meta-llama/Llama-2-7b-chat-hf\n  learning_rate: 5.0e-05\n"
        "data:\n  global_batch_size: 64\ntrainer:\n  max_epochs: 2\n")
    (model_dir / "results.json").write_text(json.dumps({"results": {"gsm8k": {"accuracy": 0.5}}}))
    mcard = model_card(model_dir, "me/model")
    mdata = ModelCard(mcard).data.to_dict()
    assert mdata["base_model"] == "meta-llama/Llama-2-7b-chat-hf" and mdata["library_name"] == "transformers"
    assert "| gsm8k | accuracy 0.500 |" in mcard and '"global_batch_size": 64' in mcard


def test_push_dry_run_and_missing_token(tiny_dataset, monkeypatch, capsys):
    plan = push("dataset", tiny_dataset, "me/sqa", dry_run=True)
    assert plan["files"] == ["README.md", "data/dev-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert plan["card"].startswith("---\n")
    assert main(["push", "dataset", str(tiny_dataset), "--repo", "me/sqa", "--dry-run"]) == 0
    assert "would upload to me/sqa" in capsys.readouterr().out
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["push", "dataset", str(tiny_dataset), "--repo", "me/sqa"]) == 1
    assert "no Hugging Face token: set HF_TOKEN" in capsys.readouterr().err  # errors go to stderr


def test_pushed_dataset_layout_loads_with_load_dataset(tiny_dataset, tmp_path):
    # The staged folder of a dry run is byte for byte what a push uploads; the Hub reads it with load_dataset.
    import subprocess
    import sys

    import datasets

    before = sorted(p.name for p in tiny_dataset.rglob("*"))
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "push", "dataset", str(tiny_dataset), "--repo",
                           "me/sqa", "--dry-run", "--stage-dir", str(tmp_path / "staged")], capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items() if "TOKEN" not in k})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    staged = tmp_path / "staged"
    files = sorted(str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file())
    assert files == ["README.md", "data/dev-00000-of-00001.parquet", "data/train-00000-of-00001.parquet"]
    assert all(f in proc.stdout for f in files)
    loaded = datasets.load_dataset(str(staged), cache_dir=str(tmp_path / "hf-cache"))  # no stale cache hit
    built = datasets.load_from_disk(str(tiny_dataset))
    assert set(loaded) == {"train", "dev"}
    for split in ("train", "dev"):
        assert loaded[split].to_list() == built[split].to_list()
    assert sorted(p.name for p in tiny_dataset.rglob("*")) == before


def test_push_uploads_the_staged_folder_and_nothing_else(tiny_dataset, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:  # records what would go to the Hub, at the moment it would go
        def __init__(self, token):
            assert token == "hf_test"

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls.append(("create", repo_id, repo_type, private))

        def upload_folder(self, folder_path, repo_id, repo_type):
            from pathlib import Path

            root = Path(folder_path)
            calls.append(("folder", sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())))

        def upload_file(self, **kw):
            calls.append(("file", kw["path_in_repo"]))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    dry = push("dataset", tiny_dataset, "me/sqa", dry_run=True)
    real = push("dataset", tiny_dataset, "me/sqa")
    assert calls == [("create", "me/sqa", "dataset", False), ("folder", dry["files"])]
    assert real["url"] == "https://huggingface.co/datasets/me/sqa"


def test_sweep_uses_the_count_trained_on_not_the_one_asked_for(tmp_path):
    """A ReActEval row carries the build's actual count; a stale tag saying otherwise does not move the point."""
    from lightning_nat.core.artifacts import NEG_NUM, read_rows
    from lightning_nat.report.plot import load_sweep

    rows = tmp_path / "react_eval.jsonl"
    rows.write_text(json.dumps({"step": 4, "epoch": 0, "results": {"gsm8k": {"accuracy": 0.5, "episodes": 4}},
                                "variant": "nat", "pos_num": 9, NEG_NUM: 37, "tags": {"neg_num": 500}}) + "\n"
                    # a row written before the spelling was settled
                    + json.dumps({"step": 8, "epoch": 1, "results": {"gsm8k": {"accuracy": 0.75, "episodes": 4}},
                                  "variant": "nat", "positives": 9, "negatives": 37}) + "\n")
    assert [p[NEG_NUM] for p in load_sweep([rows])] == [37.0, 37.0]
    assert read_rows(rows)[1][NEG_NUM] == 37 and "negatives" not in read_rows(rows)[1]
    # nat eval results know only the tag
    assert [p[NEG_NUM] for p in load_sweep([_results(tmp_path, "nat", 500, 0.4)])] == [500.0]
