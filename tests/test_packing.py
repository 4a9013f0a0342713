"""`data.packing`: the same optimisation as unpacked training, laid out in fewer, fuller rows.

A packed micro-batch holds the same conversations as the unpacked one; only the rows differ. The proofs:
one optimizer step on real StrategyQA rows gives the same loss and gradients, `nat fit` gives the same
losses over 20 steps, no conversation sees another's tokens, a function-calling build keeps its trained
tokens, and a killed packed run resumes exactly through the CLI. (DDP and ZeRO-3: tests/test_zero3.py.)
"""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForCausalLM
from zero3_probe import nat_fit, read_rows

from lightning_nat.train.datamodule import NATDataModule, micro_batches, pack_rows, rows
from lightning_nat.train.model import NATModule
from lightning_nat.train.tokenization import IGNORE_INDEX
from lightning_nat.train.trainer import make_trainer

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_task"


class FirstStep(Callback):
    def __init__(self):
        self.batches, self.grads, self.losses = [], None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.clone() for n, p in pl_module.model.named_parameters()}


def _one_step(model, data, tmp_path, packing, seed):
    rec = FirstStep()
    dm = NATDataModule(dataset_dir=str(data), tokenizer=str(model), micro_batch_size=8, global_batch_size=16,
                       max_length=4096, order="random", packing=packing, seed=seed)
    module = NATModule(str(model), learning_rate=1e-3, warmup_ratio=0.0)
    make_trainer(dm, max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                 enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[rec],
                 default_root_dir=str(tmp_path)).fit(module, dm)
    return rec


def test_one_packed_step_equals_the_unpacked_step(scratch_model, tiny_dataset, tmp_path):
    """Real StrategyQA rows, random order (so that short conversations sit beside long ones): fp32, 1e-5."""
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), max_length=4096)
    dm.setup("fit")
    lengths = dm.train_rows["length"][:]
    # A data order whose first step packs (these conversations are 0.9k-2.4k tokens: not every batch can).
    seed = next(s for s in range(100) if sum(len(pack_rows([lengths[i] for i in b]))
                                             for b in micro_batches(lengths, 8, s, 0, "random")[:2]) <= 14)
    plain, packed = (_one_step(scratch_model, tiny_dataset, tmp_path, p, seed) for p in (False, True))
    assert [b["input_ids"].shape[0] for b in plain.batches] == [8, 8]
    assert sum(b["input_ids"].shape[0] for b in packed.batches) <= 14 and "attention_mask" not in packed.batches[0]
    for a, b in zip(plain.batches, packed.batches):  # the same conversations, the same targets
        assert sorted(a["input_ids"][a["seq"] >= 0].tolist()) == sorted(b["input_ids"][b["seq"] >= 0].tolist())
        assert int((a["labels"] != IGNORE_INDEX).sum()) == int((b["labels"] != IGNORE_INDEX).sum())
    assert packed.losses == pytest.approx(plain.losses, rel=1e-5)
    assert plain.grads.keys() == packed.grads.keys()
    for name, grad in plain.grads.items():
        torch.testing.assert_close(packed.grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    assert sum(g.abs().sum() for g in plain.grads.values()) > 0


def test_no_conversation_sees_another(scratch_model):
    """Changing one conversation's tokens leaves every other conversation's logits in its packed row unchanged."""
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randint(5, 300, (n,), generator=gen).tolist(), [IGNORE_INDEX] + [1] * (n - 1))
            for n in (60, 25, 20, 15)]
    model = AutoModelForCausalLM.from_pretrained(scratch_model, attn_implementation="sdpa").eval()

    def logits(seqs):
        batch = rows(seqs, pad_id=0, packing=True)
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        return {s: out[batch["seq"] == s] for s in range(len(seqs))}, batch

    before, batch = logits(seqs)
    assert batch["input_ids"].shape[0] == 2 and set(batch["seq"][1].tolist()) == {1, 2, 3}  # three share a row
    changed = list(seqs)
    changed[2] = ([7] * 20, seqs[2][1])
    after, _ = logits(changed)
    assert not torch.allclose(after[2], before[2])
    for s in (0, 1, 3):
        torch.testing.assert_close(after[s], before[s], rtol=0, atol=1e-6)
    # and each conversation's logits are those it gets alone, from position 0
    for s, (ids, _) in enumerate(seqs):
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
        torch.testing.assert_close(before[s], alone, rtol=1e-4, atol=1e-5)


def test_flash_attention_layout_is_one_row_without_padding_and_the_same_log_probs(scratch_model, tiny_dataset):
    """Under flash attention the packed rows join into one row without their padding (the variable-length kernels'
    input); run here through sdpa, which reads the same position_ids, it gives every sequence the same log-probs."""
    dm = NATDataModule(dataset_dir=str(tiny_dataset), tokenizer=str(scratch_model), max_length=4096, packing=True)
    dm.setup("fit")
    batch = next(iter(dm.loader([[(i, 1, 1.0) for i in range(6)]])))
    module = NATModule(str(scratch_model))
    module.configure_model()
    module.eval()
    shapes = []
    module._decoder.register_forward_pre_hook(lambda mod, args, kw: shapes.append(kw["input_ids"].shape),
                                              with_kwargs=True)
    with torch.no_grad():
        rows_ = module.sequence_logps(batch, 6)
        module.hparams.attn_implementation = "flash_attention_2"  # the layout only: the kernels stay sdpa's
        flat = module.sequence_logps(batch, 6)
    assert (batch["seq"] < 0).any()  # the rows had padding, which the flat row drops
    assert shapes == [batch["input_ids"].shape, (1, int((batch["seq"] >= 0).sum()))]
    torch.testing.assert_close(flat, rows_, rtol=1e-5, atol=1e-4)


def test_packed_function_calling_build_keeps_its_trained_tokens(scratch_model, tmp_path):
    """docs/own-agent.md's function-calling build, tokenized by the data module (Hermes tool template): every conversation
    trains the same tokens packed as unpacked, tool calls included (no label lost or shifted at a boundary)."""
    from lightning_nat.builders import build_dataset, save_build

    res = build_dataset([str(EXAMPLE / "trajectories_fc.jsonl")], "nat", cache_dir=str(tmp_path / "cache"),
                        format="openai", task=str(EXAMPLE / "task_fc.yaml"), placement="system", pos_num=20, dev_num=4)
    dm = NATDataModule(dataset_dir=str(save_build(res, tmp_path / "data")), tokenizer=str(scratch_model),
                       max_length=4096, chat_template=str(EXAMPLE / "hermes.jinja"), cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    tokenized = dm.train_rows.select(range(8))
    seqs = [(r["input_ids"], r["labels"]) for r in tokenized]
    # These conversations are all about 1.1k tokens; beside one twice as long, they share rows two by two.
    seqs.append((seqs[0][0] + seqs[1][0], seqs[0][1] + seqs[1][1]))
    trained = []
    for packing in (False, True):
        batch = rows(seqs, dm.tokenizer.pad_token_id, packing)
        keep = batch["labels"] != IGNORE_INDEX
        trained.append({s: batch["labels"][keep & (batch["seq"] == s)].tolist() for s in range(8)})
    assert batch["input_ids"].shape[0] == 5  # packed: the long one, then four rows of two
    assert trained[0] == trained[1]
    for s, r in enumerate(tokenized):  # every target of every row, its tool calls among them
        assert trained[1][s] == [t for t in r["labels"] if t != IGNORE_INDEX] and len(trained[1][s]) == r["n_targets"]
        assert '"name": "convert"' in dm.tokenizer.decode(trained[1][s])


def _fit_losses(model, data, root: Path, packing: bool, steps: int) -> list[float]:
    cmd = [sys.executable, "-m", "lightning_nat.cli", "fit", "--model.model_name_or_path", str(model),
           "--model.learning_rate", "3e-3", "--data.dataset_dir", str(data), "--data.micro_batch_size", "4",
           "--data.global_batch_size", "8", "--data.order", "random", "--data.packing", str(packing).lower(),
           "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
           "--trainer.max_epochs", "100", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
           "--trainer.default_root_dir", str(root)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=root.parent)
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = list(csv.DictReader(open(root / "nat" / "version_0" / "metrics.csv")))
    return [float(r["train/loss"]) for r in metrics if r.get("train/loss")]


@pytest.mark.slow
def test_nat_fit_packed_and_unpacked_give_the_same_losses_over_20_steps(scratch_model, tiny_dataset, tmp_path):
    plain = _fit_losses(scratch_model, tiny_dataset, tmp_path / "plain", False, 20)
    packed = _fit_losses(scratch_model, tiny_dataset, tmp_path / "packed", True, 20)
    assert len(plain) == 20 and plain[-1] < plain[0]  # it trained (lr 3e-3)
    assert packed == pytest.approx(plain, rel=1e-4)


@pytest.mark.slow
def test_packed_run_killed_then_resumed_through_the_cli_matches_uninterrupted(scratch_model, tiny_dataset, tmp_path):
    def config(name, **probe):
        return {"model": {"model_name_or_path": str(scratch_model), "learning_rate": 1e-3, "warmup_ratio": 0.0},
                "data": {"dataset_dir": str(tiny_dataset), "micro_batch_size": 4, "global_batch_size": 8,
                         "order": "random", "packing": True},
                "checkpoint": {"every_n_train_steps": 1},
                "trainer": {"accelerator": "cpu", "max_steps": 5, "log_every_n_steps": 1, "limit_val_batches": 0,
                            "default_root_dir": str(tmp_path / name), "enable_progress_bar": False,
                            "callbacks": [{"class_path": "zero3_probe.Probe",
                                           "init_args": {"out": str(tmp_path / name / "probe"), **probe}}]}}

    assert nat_fit(config("straight"), tmp_path).returncode == 0
    killed = nat_fit(config("resumed", kill_at_step=2), tmp_path)
    assert killed.returncode == -9, killed.stdout[-3000:]
    resumed = nat_fit(config("resumed"), tmp_path, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    straight, after = read_rows(tmp_path / "straight" / "probe", 1)[0], read_rows(tmp_path / "resumed" / "probe", 1)[0]
    assert [r["step"] for r in after] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert [r["ids"] for r in after] == [r["ids"] for r in straight]  # the same data position, packed the same way
    assert [r["lr"] for r in after] == pytest.approx([r["lr"] for r in straight], rel=1e-9)
    assert [r["loss"] for r in after] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    w1, w2 = (torch.load(tmp_path / n / "probe" / "weights_end.pt") for n in ("straight", "resumed"))
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
