"""Training on the invented fixture (tests/fixture_data.py): runs in a clone without ../shared/data."""

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_nat.callbacks import ExportHF
from lightning_nat.train.datamodule import NATDataModule, micro_batches, step_schedule
from lightning_nat.train.model import NATModule
from lightning_nat.train.trainer import make_trainer


def nll_sum(logits, labels):
    """Summed next-token NLL over labels != -100 (the loss's oracle, from the model's full logits)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


def _make(fixture_model, fixture_dataset, tmp_path, callbacks=(), lr=3e-3, micro=2, global_batch=4, **trainer_kw):
    dm = NATDataModule(dataset_dir=str(fixture_dataset), tokenizer=str(fixture_model), micro_batch_size=micro,
                       global_batch_size=global_batch, max_length=4096)
    module = NATModule(str(fixture_model), learning_rate=lr, warmup_ratio=0.1)
    kw = dict(logger=CSVLogger(str(tmp_path), name="log"), enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=str(tmp_path), callbacks=list(callbacks), log_every_n_steps=1)
    kw.update(trainer_kw)
    return dm, module, make_trainer(dm, **kw)


class Recorder(Callback):
    """Keeps every micro-batch and the gradients seen before each optimizer step."""

    def __init__(self):
        self.batches, self.grads, self.lrs, self.start = [], [], [], None

    def on_train_start(self, trainer, pl_module):
        self.start = copy.deepcopy(pl_module.model.state_dict())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({k: v.clone() for k, v in batch.items()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append({n: p.grad.clone() for n, p in pl_module.model.named_parameters() if p.grad is not None})
        self.lrs.append(optimizer.param_groups[0]["lr"])


class StopAt(Callback):
    """Stops a run after ``step`` optimizer steps, as a killed job would (its schedule still planned for more)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_loss_is_sum_over_step_targets(fixture_model, fixture_dataset, tmp_path):
    rec = Recorder()
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path, [rec], max_steps=1, gradient_clip_val=None)
    trainer.fit(module, dm)
    b1, b2 = rec.batches
    n1, n2 = [int((b["labels"][:, 1:] != -100).sum()) for b in (b1, b2)]
    assert n1 != n2 and int(b1["step_targets"]) == n1 + n2 == int(b2["step_targets"])
    # Hand computation: summed NLL of both micro-batches over all their targets.
    model = AutoModelForCausalLM.from_pretrained(fixture_model)
    model.load_state_dict(rec.start)
    model.train()
    total = 0
    for b in (b1, b2):
        total = total + nll_sum(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
    (total / (n1 + n2)).backward()
    # Not the mean of per-micro-batch means:
    for name, p in model.named_parameters():
        torch.testing.assert_close(rec.grads[0][name], p.grad, rtol=1e-4, atol=1e-6)


def _losses(log_dir):
    rows = list(csv.DictReader(open(Path(log_dir) / "metrics.csv")))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_fit_lowers_loss_and_exports(fixture_model, fixture_dataset, tmp_path):
    export = tmp_path / "hf"
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path, [ExportHF(str(export)), ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), save_last=True)], max_epochs=4, lr=5e-3, val_check_interval=1.0)
    trainer.fit(module, dm)
    losses = _losses(trainer.logger.log_dir)
    assert len(losses) >= 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert 0 < dm.stats["pad_fraction"] < 0.5 and dm.stats["train_rows"] == 40
    assert "dev/perplexity" in trainer.callback_metrics and (tmp_path / "ckpt" / "last.ckpt").exists()
    # The export is complete and equal to the trained weights, and it generates.
    reloaded = AutoModelForCausalLM.from_pretrained(export)
    trained = module.model.state_dict()
    for name, tensor in reloaded.state_dict().items():
        assert tensor.shape == trained[name].shape and torch.equal(tensor, trained[name]), name
    tok = AutoTokenizer.from_pretrained(export)
    ids = tok.apply_chat_template([{"role": "user", "content": "Is ice cold?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = reloaded.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_resume_continues_exactly(fixture_model, fixture_dataset, tmp_path):
    straight = Recorder()
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path / "a", [straight], max_steps=6)
    trainer.fit(module, dm)
    final = {k: v.clone() for k, v in module.model.state_dict().items()}

    first, second = Recorder(), Recorder()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=1, save_last=True)
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path / "b", [first, ckpt, StopAt(3)], max_steps=6)
    trainer.fit(module, dm)
    assert trainer.global_step == 3
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path / "b", [second], max_steps=6)
    trainer.fit(module, dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer.global_step == 6
    # Same data position, same learning rates, same weights as the uninterrupted run.
    resumed = first.batches + second.batches
    assert len(resumed) == len(straight.batches) == 12
    for a, b in zip(straight.batches, resumed):
        assert torch.equal(a["input_ids"], b["input_ids"])
    assert second.lrs == pytest.approx(straight.lrs[3:])
    for k, v in module.model.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=1e-5, atol=1e-6)


def test_nan_loss_is_a_clear_error(fixture_model, fixture_dataset, tmp_path):
    dm, module, trainer = _make(fixture_model, fixture_dataset, tmp_path, max_steps=2)
    module.configure_model()
    with torch.no_grad():
        next(module.model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss .* at global step 0"):
        trainer.fit(module, dm)


def test_step_schedule_covers_every_row_once():
    lengths = list(range(3, 50))
    n_targets = [x // 2 for x in lengths]
    batches = micro_batches(lengths, 3, seed=1, epoch=0)
    ranks = step_schedule(batches, n_targets, world_size=2, accumulation=2)
    assert len(ranks[0]) == len(ranks[1])
    seen = [i for r in ranks for indices, _ in r for i in indices]
    assert set(seen) == set(range(len(lengths)))
    for s in range(len(ranks[0]) // 2):
        step = [mb for r in ranks for mb in r[2 * s:2 * s + 2]]
        assert {total for _, total in step} == {sum(n_targets[i] for indices, _ in step for i in indices)}
    assert micro_batches(lengths, 3, 1, 0) == batches and micro_batches(lengths, 3, 1, 1) != batches


@pytest.mark.slow
def test_nat_fit_cli_ddp_two_processes(fixture_model, fixture_dataset, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(fixture_model), "learning_rate": 1e-3},
        "data": {"dataset_dir": str(fixture_dataset), "micro_batch_size": 2, "global_batch_size": 8, "max_length": 2048},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 3, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path), "enable_progress_bar": False},
    }))
    nat = Path(sys.executable).with_name("nat")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(nat), "fit", "--config", str(cfg)], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exported = list(tmp_path.glob("**/hf/config.json"))
    assert len(exported) == 1
    metrics = list(csv.DictReader(open(next(tmp_path.glob("**/metrics.csv")))))
    assert max(int(r["step"]) for r in metrics) >= 1
