"""The prompt a model was trained with travels: build.json -> exported model -> nat eval / ReActAgent (issue 10)."""

import json
import subprocess
import sys

import datasets
import pytest
from transformers import AutoTokenizer

from lightning_nat.agent.react import ReActAgent
from lightning_nat.builders import PRESETS, build_dataset, save_build
from lightning_nat.callbacks import ExportHF
from lightning_nat.core.artifacts import PROMPT_FILE, read_spec
from lightning_nat.core.prompts import resolve_eval_spec
from lightning_nat.core.tasks import TASKS
from lightning_nat.train.datamodule import NATDataModule
from lightning_nat.train.model import NATModule
from lightning_nat.train.trainer import make_trainer


def _train_and_export(scratch_model, data_dir, out):
    dm = NATDataModule(dataset_dir=str(data_dir), tokenizer=str(scratch_model), micro_batch_size=2,
                       global_batch_size=2, max_length=1024)
    module = NATModule(str(scratch_model), learning_rate=1e-3, warmup_ratio=0.0)
    trainer = make_trainer(dm, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(out), callbacks=[ExportHF(dirpath=str(out / "hf"))])
    trainer.fit(module, datamodule=dm)
    return out / "hf"


@pytest.mark.slow
def test_every_preset_is_evaluated_under_its_trained_positive_prompt(strategyqa_files, scratch_model, tmp_path):
    files = [str(strategyqa_files["pos"]), str(strategyqa_files["neg"])]
    tok = AutoTokenizer.from_pretrained(str(scratch_model))
    # DPO and KTO are objectives, not prompts: their rows take the plain positive (nut) prompt, tested elsewhere.
    for name in [n for n, p in PRESETS.items() if p["keeps"] not in ("dpo", "kto")]:
        res = build_dataset(files, name, cache_dir=str(tmp_path / "cache"),
                            questions=str(strategyqa_files["questions"]), task="strategyqa", on_error="skip",
                            pos_num=4, neg_num=4)
        data_dir = save_build(res, tmp_path / name / "data")
        hf = _train_and_export(scratch_model, data_dir, tmp_path / name)
        assert (hf / PROMPT_FILE).is_file(), name
        saved = read_spec(str(hf))
        assert saved.preset == name and saved.style == "reference"
        # What nat eval asks the exported model, with no marker options given ...
        spec = resolve_eval_spec(TASKS["strategyqa"], saved)
        agent = ReActAgent(TASKS["strategyqa"], policy=None, tools={}, prompt_spec=spec)  # type: ignore[arg-type]
        row = next(r for r in datasets.load_from_disk(str(data_dir))["train"] if r["label"] == "positive")
        prompt = tok.apply_chat_template(agent.prompt(_question(strategyqa_files, row)), tokenize=False,
                                         add_generation_prompt=True)
        # ... is exactly the start of that preset's rendered positive training conversation.
        trained = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in row["messages"]],
                                          tokenize=False)
        assert trained.startswith(prompt), name
        assert len(trained) > len(prompt)


def _question(files, row):
    for line in open(files["questions"], encoding="utf-8"):
        rec = json.loads(line)
        if rec["id"] == row["question_id"]:
            return rec["question"]
    raise KeyError(row["question_id"])


@pytest.mark.slow
def test_nat_eval_reads_the_exported_prompt(strategyqa_files, scratch_model, shared_data, tmp_path):
    res = build_dataset([str(strategyqa_files["pos"]), str(strategyqa_files["neg"])], "nat-ab",
                        cache_dir=str(tmp_path / "cache"), questions=str(strategyqa_files["questions"]),
                        task="strategyqa", on_error="skip", pos_num=4, neg_num=4)
    hf = _train_and_export(scratch_model, save_build(res, tmp_path / "data"), tmp_path / "run")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"title": f"t{i}", "text": f"fact number {i} about ice"}) + "\n"
                              for i in range(5)))
    base = [sys.executable, "-m", "lightning_nat.cli", "eval", "--model", str(hf), "--tasks", "strategyqa",
            "--data-dir", str(shared_data), "--limit", "2", "--max-new-tokens", "4", "--max-turns", "1",
            "--search-corpus", str(corpus)]
    done = subprocess.run(base + ["--out", str(tmp_path / "ev")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    used = json.loads((tmp_path / "ev" / "results.json").read_text())["results"]["strategyqa"]["prompt"]
    assert used["preset"] == "nat-ab" and used["templates"][-1] == "[A] Question: {question}."
    done = subprocess.run(base + ["--prompt-style", "native", "--out", str(tmp_path / "ev2")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 1 and "--prompt-style native contradicts" in done.stderr
