import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_nat.callbacks import DevPerplexity, ReActEval
from lightning_nat.train.datamodule import NATDataModule
from lightning_nat.train.model import NATModule
from lightning_nat.train.trainer import make_trainer


class Probe(Callback):
    """Runs after ReActEval at each epoch end: the RNG and train mode must be as before it."""

    def __init__(self, react):
        self.react, self.checks = react, []

    def on_train_epoch_end(self, trainer, pl_module):
        before = torch.get_rng_state()
        pl_module.train()
        self.react._last_step = -1
        results = self.react.evaluate(trainer, pl_module)
        self.checks.append((torch.equal(before, torch.get_rng_state()), pl_module.training, results))


def test_dev_perplexity_and_react_eval_in_a_fit(scratch_model, tiny_dataset, shared_data, tmp_path):
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), micro_batch_size=4,
                       global_batch_size=8, max_length=4096)
    module = NATModule(str(scratch_model), learning_rate=5e-3)
    react = ReActEval(["gsm8k"], str(shared_data), limit=3, batch_size=2, max_turns=2, max_new_tokens=12)
    probe = Probe(react)
    trainer = make_trainer(dm, max_epochs=2,
                        logger=CSVLogger(str(tmp_path), name="run"), enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[DevPerplexity(every_n_steps=2), react, probe],
                        log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    log_dir = Path(trainer.log_dir)
    history = [json.loads(line) for line in (log_dir / "perplexity.jsonl").read_text().splitlines()]
    by_source = {r["source"] for r in history}
    assert by_source == {"steps", "validation"}
    steps = [r for r in history if r["source"] == "steps"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8, 10] and all(r["perplexity"] > 1 for r in steps)
    assert steps[-1]["perplexity"] < steps[0]["perplexity"]  # training on positives lowers it
    assert history[0]["variant"] == "nat" and history[0]["neg_num"] == 16 and history[0]["target_tokens"] > 0
    rows = [json.loads(line) for line in (log_dir / "react_eval.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 0, 1, 1]
    assert rows[0]["results"]["gsm8k"]["episodes"] == 3
    assert (log_dir / "react_eval" / f"step{rows[-1]['step']}.jsonl").exists()
    assert all(same_rng and training for same_rng, training, _ in probe.checks)
    metrics = list(csv.DictReader(open(log_dir / "metrics.csv")))
    assert any(r.get("react/gsm8k/accuracy") for r in metrics) and any(r.get("dev/perplexity") for r in metrics)


@pytest.mark.slow
def test_react_eval_under_ddp_two_processes(scratch_model, tiny_dataset, shared_data, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(scratch_model)},
        "data": {"dataset_dir": str(tiny_dataset), "micro_batch_size": 2, "global_batch_size": 8},
        "perplexity": {"every_n_steps": 2},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 2, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path), "enable_progress_bar": False,
                    "callbacks": [{"class_path": "lightning_nat.callbacks.ReActEval",
                                   "init_args": {"tasks": ["gsm8k"], "data_dir": str(shared_data), "limit": 5,
                                                 "batch_size": 2, "max_turns": 2, "max_new_tokens": 8,
                                                 "every_n_steps": 2}}]},
    }))
    nat = Path(sys.executable).with_name("nat")
    proc = subprocess.run([str(nat), "fit", "--config", str(cfg)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in next(tmp_path.glob("**/react_eval.jsonl")).read_text().splitlines()]
    # 5 questions split over 2 ranks (3 + 2) and gathered: every question once.
    assert rows[0]["results"]["gsm8k"]["episodes"] == 5
    episodes = [json.loads(line) for line in next(tmp_path.glob("**/react_eval/step2.jsonl")).read_text().splitlines()]
    assert sorted(e["question_id"] for e in episodes) == ["0", "1", "2", "3", "4"]
    history = [json.loads(line) for line in next(tmp_path.glob("**/perplexity.jsonl")).read_text().splitlines()]
    assert any(r["source"] == "steps" and r["step"] == 2 for r in history)


def test_dev_perplexity_measures_the_final_weights_of_a_run_cut_by_max_steps(scratch_model, tiny_dataset, tmp_path):
    # 3 steps of a 5-step epoch: no validation ran and 3 is no multiple of every_n_steps=2.
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), micro_batch_size=4,
                       global_batch_size=8, max_length=4096)
    trainer = make_trainer(dm, max_steps=3, logger=CSVLogger(str(tmp_path), name="run"), enable_progress_bar=False,
                           enable_model_summary=False, callbacks=[DevPerplexity(every_n_steps=2)],
                           log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(NATModule(str(scratch_model), learning_rate=5e-3), dm)
    history = [json.loads(line) for line in (Path(trainer.log_dir) / "perplexity.jsonl").read_text().splitlines()]
    assert [(r["source"], r["step"]) for r in history] == [("steps", 2), ("end", 3)]
    assert history[-1]["perplexity"] > 1
    metrics = list(csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")))
    last = [r for r in metrics if r.get("dev/perplexity")][-1]
    assert last["step"] == "3" and abs(float(last["dev/perplexity"]) - history[-1]["perplexity"]) < 1e-4
