"""DPO and KTO training on NAT's tokenization: the data module, the reference pass and the module.

``objective: sft`` is :class:`~lightning_nat.train.model.NATModule` /
:class:`~lightning_nat.train.datamodule.NATDataModule` unchanged. ``dpo`` trains on a
``nat build --variant dpo`` folder, ``kto`` on a ``--variant kto`` one. Both sides
of a pair, and every KTO row, are tokenized by
:func:`lightning_nat.train.tokenization.tokenize_batch`, so their assistant-only masks are
token for token the ones SFT trains on.

The reference model's log-probabilities are computed once, before the first step,
by the model being trained (the starting checkpoint), one forward pass per sequence,
sharded across ranks; they are kept with the tokenized rows and in every checkpoint
(a resumed run does not recompute them from trained weights). Under ZeRO-3 only one
model is ever held. With LoRA, ``reference: adapter_disabled`` uses the base model
(adapters switched off) as a live reference instead.

KTO's reference point needs mismatched (prompt, completion) pairs: each row carries
one, seeded and fixed at tokenization: its own prompt tokens (everything before its
first target token) followed by another row's trajectory from that row's first target
token on. A micro-batch estimates the reference point from the pairs its rows carry.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from lightning_nat.train.datamodule import NATDataModule, ResumableLoader, _KeyedBatches
from lightning_nat.train.model import NATModule, target_nll
from lightning_nat.train.preference_losses import dpo_losses, kto_losses, kto_reference_point, sequence_logps
from lightning_nat.train.sampling import StepBatchSampler
from lightning_nat.train.tokenization import IGNORE_INDEX, tokenize_batch

Objective = Literal["sft", "dpo", "kto"]


# -- data ------------------------------------------------------------------------------------------------------
def tokenize_pair_batch(batch: dict[str, list], tokenizer: Any, max_length: int,
                        overlong: Literal["truncate", "drop"] = "truncate") -> dict[str, list]:
    """``datasets.map`` function for DPO rows: both sides through :func:`tokenize_batch`, kept only if both are."""
    chosen = tokenize_batch({"id": batch["id"], "messages": batch["messages"]}, tokenizer, max_length, overlong)
    rejected = tokenize_batch({"id": [f"{i} (rejected side)" for i in batch["id"]], "messages": batch["rejected"]},
                              tokenizer, max_length, overlong)
    out = dict(chosen)
    out["rejected_input_ids"], out["rejected_labels"] = rejected["input_ids"], rejected["labels"]
    out["rejected_n_targets"] = rejected["n_targets"]
    out["pair_length"] = [max(a, b) for a, b in zip(chosen["length"], rejected["length"])]
    out["truncated"] = [a or b for a, b in zip(chosen["truncated"], rejected["truncated"])]
    out["keep"] = [a and b for a, b in zip(chosen["keep"], rejected["keep"])]
    return out


def first_target(labels: list[int]) -> int:
    """Index of the first target token: where the prompt ends and the trajectory begins.

    >>> first_target([-100, -100, 7, -100, 9])
    2
    """
    return next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)


def mismatched_pair(prompt_ids: list[int], prompt_labels: list[int], other_ids: list[int], other_labels: list[int],
                    max_length: int) -> tuple[list[int], list[int]]:
    """One row's prompt followed by another row's trajectory (KTO's mismatched pair), as ids and labels.

    >>> mismatched_pair([1, 2, 3, 4], [-100, -100, 3, 4], [5, 6, 7], [-100, 6, 7], max_length=10)
    ([1, 2, 6, 7], [-100, -100, 6, 7])
    """
    p, o = first_target(prompt_labels), first_target(other_labels)
    ids = prompt_ids[:p] + other_ids[o:]
    labels = [IGNORE_INDEX] * p + other_labels[o:]
    return ids[:max_length], labels[:max_length]


def mismatch_partners(n: int, seed: int) -> list[int]:
    """A seeded derangement: row ``i`` borrows the trajectory of row ``partners[i] != i``.

    >>> p = mismatch_partners(5, seed=0); sorted(p) == list(range(5)) and all(i != j for i, j in enumerate(p))
    True
    """
    if n < 2:
        raise ValueError("KTO needs at least two rows to form mismatched pairs")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partners = [0] * n
    for k, i in enumerate(order):
        partners[i] = order[(k + 1) % n]
    return partners


class _PreferenceRows(Dataset):
    """Rows fetched by ``(index, step_rows, weight)`` with their stored reference log-probs.

    The reference is looked up when a row is fetched: Lightning builds the training loader
    (to count the steps) before the reference pass has run.
    """

    def __init__(self, ds: Any, dm: PreferenceDataModule | None):
        self.ds, self.dm = ds, dm

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, float]) -> dict[str, Any]:
        i, step_rows, _ = key
        row = dict(self.ds[int(i)])
        row["index"], row["step_targets"] = int(i), step_rows
        if self.dm is None:
            row["ref"] = torch.zeros(2)
        elif self.dm.reference is None:
            raise RuntimeError("the reference log-probs were not computed: train with PreferenceModule")
        else:
            row["ref"] = self.dm.reference[int(i)]
        return row


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for r, s in enumerate(seqs):
        out[r, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_preference(items: list[dict[str, Any]], pad_id: int, objective: str) -> dict[str, torch.Tensor]:
    """DPO: chosen rows then rejected rows in one batch (one forward pass). KTO: rows plus their mismatched pairs.

    >>> it = {"input_ids": [5, 6], "labels": [-100, 6], "rejected_input_ids": [5], "rejected_labels": [5],
    ...       "index": 0, "step_targets": 1, "ref": torch.zeros(2)}
    >>> b = collate_preference([it], pad_id=0, objective="dpo")
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6], [5, 0]], [[-100, 6], [5, -100]], [[1, 1], [1, 0]])
    """
    if objective == "dpo":
        ids = [it["input_ids"] for it in items] + [it["rejected_input_ids"] for it in items]
        labels = [it["labels"] for it in items] + [it["rejected_labels"] for it in items]
    else:
        ids, labels = [it["input_ids"] for it in items], [it["labels"] for it in items]
    batch = {"input_ids": _pad(ids, pad_id), "labels": _pad(labels, IGNORE_INDEX),
             "attention_mask": _pad([[1] * len(s) for s in ids], 0),
             "ref": torch.stack([torch.as_tensor(it["ref"], dtype=torch.float32) for it in items]),
             "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
             "step_targets": torch.tensor(items[0]["step_targets"], dtype=torch.long)}
    if objective == "kto":
        batch["desirable"] = torch.tensor([it["label"] == "positive" for it in items])
        batch["kl_input_ids"] = _pad([it["kl_input_ids"] for it in items], pad_id)
        batch["kl_labels"] = _pad([it["kl_labels"] for it in items], IGNORE_INDEX)
        batch["kl_attention_mask"] = _pad([[1] * len(it["kl_input_ids"]) for it in items], 0)
    return batch


class PreferenceDataModule(NATDataModule):
    """:class:`NATDataModule` that also serves DPO pairs and KTO rows (``objective``, linked to the model's).

    Args:
        objective: ``sft`` (NAT, NUT, w/o Neg), ``dpo`` (a ``--variant dpo`` build) or ``kto`` (a ``--variant kto``
            build). ``nat fit`` copies ``model.objective`` here.
    """

    def __init__(self, *args: Any, objective: Objective = "sft", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        self.reference: torch.Tensor | None = None

    def _tokenize(self, ds: Any, split: str = "train") -> Any:
        objective = self.hparams.objective
        if objective == "sft" or split != "train":
            if objective == "sft" and "rejected" in ds.column_names and split == "train":
                raise ValueError("this dataset is a DPO build (it has a rejected side): train it with "
                                 "model.objective: dpo")
            return super()._tokenize(ds, split)
        if objective == "dpo":
            return self._tokenize_pairs(ds)
        labels = set(ds.unique("label"))
        if not labels <= {"positive", "negative"}:
            raise ValueError(f"KTO needs rows labelled positive/negative (a --variant kto build), got {sorted(labels)}")
        kept, truncated, dropped = super()._tokenize(ds, split)
        return self._add_mismatched_pairs(kept), truncated, dropped

    def _tokenize_pairs(self, ds: Any) -> Any:
        from datasets.fingerprint import Hasher

        from lightning_nat.train.datamodule import tokenizer_fingerprint

        if "rejected" not in ds.column_names:
            raise ValueError("model.objective dpo needs a `nat build --variant dpo` dataset (rows with a rejected side)")
        hp = self.hparams
        fp = Hasher.hash((ds._fingerprint, tokenizer_fingerprint(self.tokenizer), hp.max_length, hp.overlong, "pairs-v1"))
        out = ds.map(tokenize_pair_batch, batched=True,
                     fn_kwargs={"tokenizer": self.tokenizer, "max_length": hp.max_length, "overlong": hp.overlong},
                     remove_columns=[c for c in ds.column_names if c not in ("id", "label")],
                     num_proc=hp.num_proc if hp.num_proc > 1 else None, new_fingerprint=fp, desc="tokenizing pairs")
        truncated = sum(out["truncated"])
        kept = out.filter(lambda keep: keep, input_columns="keep", new_fingerprint=fp + "-kept")
        return kept, truncated, len(out) - len(kept)

    def _add_mismatched_pairs(self, rows: Any) -> Any:
        partners = mismatch_partners(len(rows), self.hparams.seed)
        ids, labels = rows["input_ids"], rows["labels"]
        pairs = [mismatched_pair(ids[i], labels[i], ids[j], labels[j], self.hparams.max_length)
                 for i, j in enumerate(partners)]
        rows = rows.add_column("kl_input_ids", [p[0] for p in pairs])
        rows = rows.add_column("kl_labels", [p[1] for p in pairs])
        return rows.add_column("pair_length", [max(len(a), len(p[0])) for a, p in zip(ids, pairs)])

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.hparams.objective != "sft":
            self.stats["rows"] = len(self.train_rows)
            if self.hparams.objective == "kto":
                self.stats["desirable"] = sum(lab == "positive" for lab in self.train_rows["label"])

    def train_sampler(self) -> StepBatchSampler:
        if self.hparams.objective == "sft":
            return super().train_sampler()
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        # A preference loss averages over rows (pairs), so each row counts once in its step's divisor.
        return StepBatchSampler(self.train_rows["pair_length"], [1] * len(self.train_rows), self.hparams.micro_batch_size,
                                self.accumulation(), world, rank, self.hparams.seed, self.hparams.order)

    def preference_columns(self) -> list[str]:
        extra = ["rejected_input_ids", "rejected_labels"] if self.hparams.objective == "dpo" else \
            ["label", "kl_input_ids", "kl_labels"]
        return ["input_ids", "labels", *extra]

    def preference_loader(self, batches: Any, with_reference: bool = True) -> Any:
        from torch.utils.data import DataLoader

        rows = _PreferenceRows(self.train_rows.select_columns(self.preference_columns()), self if with_reference else None)
        collate = partial(collate_preference, pad_id=self.tokenizer.pad_token_id, objective=self.hparams.objective)
        cls = ResumableLoader if isinstance(batches, _KeyedBatches) else DataLoader
        return cls(rows, batch_sampler=batches, num_workers=self.hparams.num_workers, collate_fn=collate)

    def train_dataloader(self) -> Any:
        if self.hparams.objective == "sft":
            return super().train_dataloader()
        sampler = self.train_sampler()
        self.stats["pad_fraction"] = round(sampler.pad_fraction(), 4)
        self.stats["accumulation"] = sampler.accumulation
        self._train_loader = self.preference_loader(_KeyedBatches(sampler))
        return self._train_loader


# -- model -----------------------------------------------------------------------------------------------------
class PreferenceModule(NATModule):
    """:class:`NATModule` with DPO and KTO objectives on assistant tokens of every turn.

    Start from the model you want to improve (``model_name_or_path``: e.g. the exported w/o-Neg SFT model, the usual
    SFT-then-DPO recipe); it is also the reference.

    Args:
        objective: ``sft`` (NAT's cross-entropy, unchanged), ``dpo`` or ``kto``.
        beta: DPO/KTO temperature of the log-ratios (TRL's default: 0.1).
        sft_weight: DPO only: adds this times the token-mean NLL of the chosen trajectories of each micro-batch
            (TRL's ``loss_type=["sigmoid", "sft"]`` with this weight); 0 for plain DPO.
        desirable_weight: KTO weight of desirable (positive) rows.
        undesirable_weight: KTO weight of undesirable (negative) rows.
        reference: ``precomputed`` (one pass before training, stored with the rows and in checkpoints) or
            ``adapter_disabled`` (with ``lora_r > 0``: the base model with adapters off, computed live).
    """

    def __init__(self, *args: Any, objective: Objective = "sft", beta: float = 0.1, sft_weight: float = 0.0,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 reference: Literal["precomputed", "adapter_disabled"] = "precomputed", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters()
        if reference == "adapter_disabled" and self.hparams.lora_r <= 0:
            raise ValueError("reference: adapter_disabled needs LoRA (lora_r > 0); use reference: precomputed")
        self.reference: torch.Tensor | None = None

    # -- reference pass ------------------------------------------------------------------------------------------
    def _sequence_logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) log-probs: DPO chosen and rejected; KTO the row and its mismatched pair."""
        logps = sequence_logps(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        if self.hparams.objective == "dpo":
            return torch.stack(logps.chunk(2), dim=1)
        kl = sequence_logps(self(batch["kl_input_ids"], batch["kl_attention_mask"]), batch["kl_labels"])
        return torch.stack([logps, kl], dim=1)

    @torch.no_grad()
    def compute_reference(self, dm: PreferenceDataModule) -> torch.Tensor:
        """One forward pass per sequence with the starting weights, in eval mode; rows sharded across ranks."""
        trainer = self.trainer
        world, rank = trainer.world_size, trainer.global_rank
        lengths = dm.train_rows["pair_length"]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        per_rank = -(-len(order) // world)
        # Every rank runs the same number of passes (ZeRO-3); fillers are real rows, computed again.
        mine = order[rank::world]
        mine += order[:per_rank - len(mine)]
        bs = dm.hparams.micro_batch_size
        batches = [[(i, 1, 1.0) for i in mine[s:s + bs]] for s in range(0, len(mine), bs)]
        was_training = self.training
        self.eval()
        values, indices = [], []
        try:
            for batch in dm.preference_loader(batches, with_reference=False):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                values.append(self._sequence_logps(batch).float())
                indices.append(batch["index"])
        finally:
            self.train(was_training)
        vals, idx = torch.cat(values), torch.cat(indices)
        if world > 1:
            vals = trainer.strategy.all_gather(vals).reshape(-1, 2)
            idx = trainer.strategy.all_gather(idx).reshape(-1)
        out = torch.full((len(order), 2), float("nan"))
        out[idx.cpu()] = vals.cpu()
        if torch.isnan(out).any() or not torch.isfinite(out).all():
            raise FloatingPointError("the reference pass left non-finite log-probs; check the data and the model")
        return out

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.hparams.objective == "sft":
            return
        dm = self.trainer.datamodule
        if not isinstance(dm, PreferenceDataModule) or dm.hparams.objective != self.hparams.objective:
            raise ValueError(f"model.objective {self.hparams.objective} needs PreferenceDataModule with the same "
                             "objective (nat fit links them)")
        if self.hparams.reference == "adapter_disabled":
            dm.reference = torch.zeros(len(dm.train_rows), 2)
            return
        if self.reference is None or len(self.reference) != len(dm.train_rows):
            self.reference = self.compute_reference(dm)
        dm.reference = self.reference

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.reference is not None:
            checkpoint["preference_reference"] = self.reference

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        # A resumed run keeps the reference of the starting weights, not of the trained ones.
        self.reference = checkpoint.get("preference_reference")

    def _live_reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad(), self.model.disable_adapter():
                return self._sequence_logps(batch).float()
        finally:
            self.train(was_training)

    # -- training ------------------------------------------------------------------------------------------------
    def preference_loss(self, batch: dict[str, torch.Tensor], ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Summed loss of the micro-batch's rows and the metrics to log."""
        hp = self.hparams
        logits = self(batch["input_ids"], batch["attention_mask"])
        logps = sequence_logps(logits, batch["labels"])
        if hp.objective == "dpo":
            chosen, rejected = logps.chunk(2)
            losses = dpo_losses(chosen, rejected, ref[:, 0], ref[:, 1], hp.beta)
            total = losses.sum()
            if hp.sft_weight:
                n_rows = chosen.shape[0]
                nll, n = target_nll(logits[:n_rows], batch["labels"][:n_rows])
                total = total + hp.sft_weight * n_rows * nll / n.clamp(min=1)
            margin = hp.beta * ((chosen - ref[:, 0]) - (rejected - ref[:, 1])).detach()
            metrics = {"rewards/margin": margin.mean(), "rewards/accuracy": (margin > 0).float().mean()}
            return total, {"loss": losses.detach().mean(), **metrics}
        with torch.no_grad():
            kl_logps = sequence_logps(self(batch["kl_input_ids"], batch["kl_attention_mask"]), batch["kl_labels"])
        kl = kto_reference_point(kl_logps, ref[:, 1])
        trainer = self._trainer  # None when called outside a run (tests, notebooks)
        if trainer is not None and trainer.world_size > 1:
            # TRL's estimate too: each rank's batch mean, averaged over ranks.
            kl = trainer.strategy.reduce(kl, reduce_op="mean").clamp(min=0)
        losses = kto_losses(logps, ref[:, 0], batch["desirable"], kl, hp.beta, hp.desirable_weight,
                            hp.undesirable_weight)
        return losses.sum(), {"loss": losses.detach().mean(), "kl": kl}

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.hparams.objective == "sft":
            return super().training_step(batch, batch_idx)
        ref = self._live_reference(batch) if self.hparams.reference == "adapter_disabled" else batch["ref"]
        total, metrics = self.preference_loss(batch, ref.to(self.device))
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite {self.hparams.objective} loss ({total.item()}) at global step "
                                     f"{self.global_step}, batch {batch_idx}: lower the learning rate or beta")
        rows = batch["index"].numel()
        for name, value in metrics.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=False, batch_size=rows)
        return total * self.loss_scale() / batch["step_targets"].to(total.dtype)
