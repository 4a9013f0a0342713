"""DPO and KTO training on the scratch model: NAT's masks, zero gradient on observations, the reference pass, nat fit."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightning_nat.builders import build_dataset, save_build
from lightning_nat.train.datamodule import NATDataModule, accumulation_steps
from lightning_nat.train.model import NATModule, dpo_loss, kto_loss
from lightning_nat.train.tokenization import IGNORE_INDEX


def _build(files, tmp_path_factory, variant, **kw):
    out = tmp_path_factory.mktemp("pref") / variant
    res = build_dataset([str(files["pos"]), str(files["neg"])], variant, cache_dir=str(tmp_path_factory.mktemp("cache")),
                        questions=str(files["questions"]), task="strategyqa", on_error="skip", **kw)
    return save_build(res, out)


@pytest.fixture(scope="module")
def dpo_dataset(strategyqa_files, tmp_path_factory):
    return _build(strategyqa_files, tmp_path_factory, "dpo", pos_num=120, neg_num=200, pairs_per_question=1, dev_num=4)


@pytest.fixture(scope="module")
def kto_dataset(strategyqa_files, tmp_path_factory):
    return _build(strategyqa_files, tmp_path_factory, "kto", pos_num=8, neg_num=8, dev_num=4)


def _trainer(tmp_path, steps=2, callbacks=(), micro=2, global_batch=4):
    acc = accumulation_steps(global_batch, micro)
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, accumulate_grad_batches=acc,
                     use_distributed_sampler=False, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=list(callbacks),
                     limit_val_batches=0, num_sanity_val_steps=0)


def _modules(scratch_model, data, objective, micro=2, global_batch=4, seed=42, **model_kw):
    dm = NATDataModule(dataset_dir=str(data), tokenizer=str(scratch_model), micro_batch_size=micro,
                       global_batch_size=global_batch, max_length=1024, objective=objective, seed=seed)
    module = NATModule(str(scratch_model), objective=objective, learning_rate=1e-3, warmup_ratio=0.0, **model_kw)
    return dm, module


class FirstBatch(Callback):
    def __init__(self):
        self.batches, self.losses = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({k: v.clone() for k, v in batch.items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def test_pairs_use_exactly_the_sft_masks(scratch_model, dpo_dataset):
    """Both sides of a pair tokenize to the ids and labels NAT's SFT data module gives the same conversation."""
    import datasets

    pref = NATDataModule(dataset_dir=str(dpo_dataset), tokenizer=str(scratch_model), objective="dpo",
                         max_length=4096)
    pref.setup("fit")
    raw = datasets.load_from_disk(str(dpo_dataset))["train"]
    for side, ids_col, labels_col in (("messages", "input_ids", "labels"),
                                      ("rejected", "rejected_input_ids", "rejected_labels")):
        as_sft = raw.select_columns(["id", "label", side]).rename_columns({side: "messages"}) if side != "messages" \
            else raw.select_columns(["id", "label", "messages"])
        sft = NATDataModule(dataset_dir=str(dpo_dataset), tokenizer=str(scratch_model), max_length=4096)
        rows, _, _ = sft._tokenize(as_sft)
        assert rows["input_ids"] == pref.train_rows[ids_col] and rows["labels"] == pref.train_rows[labels_col]
    # Multi-turn: targets in several separate assistant turns, observations in between left out.
    labels = pref.train_rows[0]["labels"]
    runs = sum(1 for a, b in zip(labels, labels[1:]) if a == IGNORE_INDEX and b != IGNORE_INDEX)
    assert runs >= 2


@pytest.mark.parametrize("packing", [False, True])
def test_sequence_logps_are_summed_target_log_probs(scratch_model, dpo_dataset, packing):
    """Each sequence's log-prob (LM head at target positions, packed or not) is the sum, over its own targets, of the
    log-softmax of the model's full logits for that sequence alone."""
    dm, module = _modules(scratch_model, dpo_dataset, "dpo")
    dm.hparams.packing = packing
    dm.setup("fit")
    module.configure_model()
    batch = next(iter(dm.loader([[(0, 1, 1.0), (1, 1, 1.0), (2, 1, 1.0)]])))
    got = module.sequence_logps(batch, 6)
    rows = dm.train_rows.select([0, 1, 2])
    seqs = [(r["input_ids"], r["labels"]) for r in rows] + [(r["rejected_input_ids"], r["rejected_labels"]) for r in rows]
    for k, (ids, labels) in enumerate(seqs):
        logps = torch.log_softmax(module.model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
        labels = torch.tensor(labels[1:])
        want = logps[labels != IGNORE_INDEX].gather(1, labels[labels != IGNORE_INDEX, None]).sum()
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-4)
    assert ("position_ids" in batch) == packing


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_observation_and_prompt_tokens_get_exactly_zero_gradient(scratch_model, dpo_dataset, kto_dataset, objective):
    # With the full logits (target_logits=False), so that every position's logits exist to be looked at.
    dm, module = _modules(scratch_model, dpo_dataset if objective == "dpo" else kto_dataset, objective, micro=4,
                          global_batch=4, target_logits=False)
    dm.setup("fit")
    module.configure_model()
    captured = []

    def keep_logits(mod, args, output):
        if output.logits.requires_grad:
            output.logits.retain_grad()
            captured.append(output.logits)

    batch = next(iter(dm.loader([[(i, 4, 1.0) for i in range(4)]])))
    # A reference a little away from the policy, so that every row's loss has a non-zero (unsaturated) slope.
    with torch.no_grad():
        batch["ref"] = module.pair_logps(batch) + torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    module.model.register_forward_hook(keep_logits)
    total, _, _ = (dpo_loss if objective == "dpo" else kto_loss)(module, batch)
    total.backward()
    (logits,) = captured
    grad_norm = logits.grad.abs().sum(-1)[:, :-1]  # position t predicts token t + 1
    target = batch["labels"][:, 1:] != IGNORE_INDEX
    real = batch["attention_mask"][:, 1:].bool()
    assert torch.all(grad_norm[~target] == 0)
    assert torch.all(grad_norm[target] > 0)
    # The rows really hold observations after the first assistant turn (tokens that are neither prompt nor target).
    first = target.float().argmax(1)
    after_first = torch.arange(target.shape[1])[None, :] > first[:, None]
    observations = after_first & ~target & real
    assert observations.sum(1).min() > 0


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_packed_preference_loss_equals_the_unpacked_one(scratch_model, dpo_dataset, kto_dataset, objective):
    """data.packing for DPO/KTO: the same micro-batch, laid out in shared rows, gives the same loss and gradients."""
    dm, module = _modules(scratch_model, dpo_dataset if objective == "dpo" else kto_dataset, objective, micro=6,
                          global_batch=6)
    dm.setup("fit")
    module.configure_model()
    ref = torch.randn(6, 2, generator=torch.Generator().manual_seed(0)) - 40
    results = []
    for packing in (False, True):
        dm.hparams.packing = packing
        batch = {**next(iter(dm.loader([[(i, 6, 1.0) for i in range(6)]]))), "ref": ref}
        module.zero_grad()
        total, _, _ = (dpo_loss if objective == "dpo" else kto_loss)(module, batch)
        total.backward()
        results.append((total.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters()}))
        assert ("position_ids" in batch) == packing
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_reference_pass_is_the_starting_model(scratch_model, dpo_dataset, tmp_path):
    rec = FirstBatch()
    dm, module = _modules(scratch_model, dpo_dataset, "dpo")
    trainer = _trainer(tmp_path, steps=1, callbacks=[rec])
    trainer.fit(module, dm)
    assert module.reference.shape == (len(dm.train_rows), 2) and torch.isfinite(module.reference).all()
    fresh = NATModule(str(scratch_model), objective="dpo")
    fresh.configure_model()
    fresh.eval()
    batch = rec.batches[0]
    with torch.no_grad():
        logps = fresh.pair_logps(batch)
    torch.testing.assert_close(logps, module.reference[batch["index"]], rtol=1e-5, atol=1e-4)
    # Step 0: the policy is its reference (the train-mode forward agrees with the eval-mode pass).
    margin = (logps[:, 0] - batch["ref"][:, 0]) - (logps[:, 1] - batch["ref"][:, 1])
    assert torch.allclose(margin, torch.zeros_like(margin), atol=1e-4)


def test_reference_is_kept_in_checkpoints(scratch_model, kto_dataset, tmp_path):
    dm, module = _modules(scratch_model, kto_dataset, "kto")
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(module, dm)
    ckpt = tmp_path / "x.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["preference_reference"]
    torch.testing.assert_close(saved, module.reference)
    resumed = NATModule(str(scratch_model), objective="kto")
    resumed.on_load_checkpoint({"preference_reference": saved})
    assert resumed.reference is saved  # a resumed run does not recompute it from trained weights


@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_same_seed_same_result(scratch_model, dpo_dataset, kto_dataset, objective, tmp_path):
    data = dpo_dataset if objective == "dpo" else kto_dataset
    finals = []
    for run in range(2):
        L.seed_everything(7)
        dm, module = _modules(scratch_model, data, objective, seed=7)
        _trainer(tmp_path / str(run), steps=3).fit(module, dm)
        finals.append({k: v.clone() for k, v in module.model.state_dict().items()})
    for k in finals[0]:
        torch.testing.assert_close(finals[0][k], finals[1][k], rtol=0, atol=0)
    start = NATModule(str(scratch_model))
    start.configure_model()
    assert any(not torch.equal(v, finals[0][k]) for k, v in start.model.state_dict().items())


def test_lora_adapter_disabled_reference_equals_the_precomputed_one(scratch_model, dpo_dataset):
    pytest.importorskip("peft")
    dm, module = _modules(scratch_model, dpo_dataset, "dpo", lora_r=4, reference="adapter_disabled")
    dm.setup("fit")
    module.configure_model()
    batch = next(iter(dm.loader([[(0, 1, 1.0), (1, 1, 1.0)]])))
    live = module.reference_of(batch)
    plain = NATModule(str(scratch_model), objective="dpo")
    plain.configure_model()
    plain.eval()
    with torch.no_grad():
        expected = plain.pair_logps(batch)
    torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-4)


def test_wrong_dataset_for_the_objective_is_a_clear_error(scratch_model, dpo_dataset, tiny_dataset):
    with pytest.raises(ValueError, match="DPO build"):
        NATDataModule(dataset_dir=str(dpo_dataset), tokenizer=str(scratch_model), objective="sft").setup("fit")
    with pytest.raises(ValueError, match="--variant dpo"):
        NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), objective="dpo").setup("fit")


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["dpo", "kto"])
def test_nat_fit_trains_dpo_and_kto(scratch_model, dpo_dataset, kto_dataset, objective, tmp_path):
    data = dpo_dataset if objective == "dpo" else kto_dataset
    cmd = [sys.executable, "-m", "lightning_nat.cli", "fit", "--model.model_name_or_path", str(scratch_model),
           "--model.objective", objective, "--model.learning_rate", "1e-3", "--data.dataset_dir", str(data),
           "--data.micro_batch_size", "2", "--data.global_batch_size", "4", "--data.max_length", "1024",
           "--trainer.accelerator", "cpu", "--trainer.max_steps", "3", "--trainer.log_every_n_steps", "1",
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    version = tmp_path / "run" / "nat" / "version_0"
    assert (version / "hf" / "config.json").exists()
    assert f"objective: {objective}" in (version / "config.yaml").read_text()
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    # Step 0: the policy equals its reference (DPO: log 2 per pair; KTO: 1 - sigmoid(0) = 0.5 per row).
    assert losses[0] == pytest.approx(math.log(2) if objective == "dpo" else 0.5, abs=1e-5)
    ckpt = torch.load(Path(tmp_path / "run" / "checkpoints" / "last.ckpt"), weights_only=False)
    assert ckpt["preference_reference"].shape[1] == 2


@pytest.mark.slow
def test_reference_pass_shards_rows_across_ddp_ranks(scratch_model, dpo_dataset, tmp_path):
    """Two DDP processes each compute half of the reference; the gathered result is every row's, in order."""
    import json
    import os

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(json.dumps({
        "model": {"model_name_or_path": str(scratch_model), "objective": "dpo", "learning_rate": 1e-3},
        "data": {"dataset_dir": str(dpo_dataset), "micro_batch_size": 2, "global_batch_size": 4, "max_length": 1024},
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "max_steps": 1, "log_every_n_steps": 1,
                    "default_root_dir": str(tmp_path / "run"), "enable_progress_bar": False},
    }))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "fit", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gathered = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["preference_reference"]
    dm, module = _modules(scratch_model, dpo_dataset, "dpo")
    dm.setup("fit")
    module.configure_model()
    module.eval()
    n = len(dm.train_rows)
    assert gathered.shape == (n, 2)
    with torch.no_grad():
        for start in range(0, n, 4):
            batch = next(iter(dm.loader([[(i, 1, 1.0) for i in range(start, min(n, start + 4))]])))
            torch.testing.assert_close(gathered[batch["index"]], module.pair_logps(batch), rtol=1e-4, atol=1e-3)


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["sft", "dpo", "kto"])
def test_nat_fit_leaves_the_dataset_folder_byte_identical(scratch_model, tiny_dataset, dpo_dataset, kto_dataset,
                                                          objective, tmp_path):
    """Tokenization caches go to the cache folder, never into the `nat build` folder (which `nat push` uploads)."""
    import os
    import shutil

    data = tmp_path / "data"  # a fresh copy: no earlier test in this process has tokenized it
    shutil.copytree({"sft": tiny_dataset, "dpo": dpo_dataset, "kto": kto_dataset}[objective], data)
    before = _digests(data)
    cmd = [sys.executable, "-m", "lightning_nat.cli", "fit", "--model.model_name_or_path", str(scratch_model),
           "--model.objective", objective, "--data.dataset_dir", str(data), "--data.micro_batch_size", "2",
           "--data.global_batch_size", "2", "--data.max_length", "512", "--trainer.accelerator", "cpu",
           "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(tmp_path / "run")]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert list((tmp_path / "hf-cache" / "lightning_nat" / "tokenized").glob("*.arrow"))  # the caches went there
    assert _digests(data) == before
