"""The LightningDataModule of every objective: built dataset -> tokenized rows -> per-step micro-batches.

Every rank computes the same global schedule from ``(seed, epoch)``, so each micro-batch carries the number of
target tokens (SFT) or rows (DPO, KTO) in its whole optimizer step over all ranks, which the loss divides by.
``packing`` changes the layout of a forward pass (:func:`rows`), nothing in the loss.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import datasets
import lightning as L
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader, Dataset

from lightning_nat.core.artifacts import BuildRecord, check_dataset_folder, maybe_read_build, read_spec
from lightning_nat.core.prompts import PromptSpec
from lightning_nat.data.build import BuildSpec, build_dataset
from lightning_nat.train.tokenization import (
    IGNORE_INDEX,
    ensure_chat_template,
    mismatch_partners,
    mismatched_pair,
    tokenize_batch,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Objective = Literal["sft", "dpo", "kto"]
# What each objective reads of a tokenized row, besides input_ids and labels.
EXTRA_COLUMNS = {"sft": [], "dpo": ["rejected_input_ids", "rejected_labels"], "kto": ["label", "kl_input_ids",
                                                                                      "kl_labels"]}


# -- batch arithmetic --------------------------------------------------------------------------------------------
def accumulation_steps(global_batch_size: int, micro_batch_size: int, devices: int = 1, num_nodes: int = 1) -> int:
    """Micro-batches per optimizer step per device: ``global / (micro x devices x nodes)``, which must divide.

    >>> accumulation_steps(64, 2, devices=4), accumulation_steps(64, 4, devices=8, num_nodes=2)
    (8, 1)
    >>> accumulation_steps(64, 3)
    Traceback (most recent call last):
    ...
    ValueError: global_batch_size=64 is not a multiple of micro_batch_size x devices = 3 (3 x 1 device(s) x 1 node(s))
    """
    for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size),
                        ("devices", devices), ("num_nodes", num_nodes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive whole number")
    per_pass = micro_batch_size * devices * num_nodes
    if global_batch_size % per_pass:
        raise ValueError(f"global_batch_size={global_batch_size} is not a multiple of micro_batch_size x devices = "
                         f"{per_pass} ({micro_batch_size} x {devices} device(s) x {num_nodes} node(s))")
    return global_batch_size // per_pass


def device_count(devices: Any, accelerator: Any = None) -> int:
    """How many devices a Lightning ``devices`` setting means on this machine (``"auto"``/``-1``: all there are).

    >>> device_count(4), device_count([0, 2]), device_count("3"), device_count("0,1,"), device_count("auto", "cpu")
    (4, 2, 3, 2, 1)
    """
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.isdigit():
        return int(devices)
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if accelerator == "cpu" or not torch.cuda.is_available():
        return 1
    return torch.cuda.device_count()


def shard(items: Sequence[T], world: int, rank: int) -> list[tuple[T, bool]]:
    """This rank's share, ``items[rank::world]`` after repeating the first items up to a multiple of ``world``, each
    with whether it is its first occurrence: every rank makes the same number of passes (ZeRO-3 needs it).

    >>> shard([1, 2, 3], 2, 0), shard([1, 2, 3], 2, 1)
    ([(1, True), (3, True)], [(2, True), (1, False)])
    """
    n = len(items)
    padded = list(items) + [items[i % n] for i in range(-n % world)] if n else []
    return [(padded[i], i < n) for i in range(rank, len(padded), world)]


# -- the schedule ------------------------------------------------------------------------------------------------
def micro_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  order: Literal["length_grouped", "random"] = "length_grouped", group_size: int = 64) -> list[list[int]]:
    """Shuffled micro-batches; ``length_grouped`` sorts within windows of ``group_size`` batches.

    >>> bs = micro_batches([5, 50, 6, 49, 7, 48, 8, 47], 2, seed=0, epoch=0)
    >>> sorted(sorted([5, 50, 6, 49, 7, 48, 8, 47][i] for i in b) for b in bs)
    [[5, 6], [7, 8], [47, 48], [49, 50]]
    """
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if order == "length_grouped":
        window = batch_size * group_size
        idx = [i for s in range(0, len(idx), window) for i in sorted(idx[s:s + window], key=lambda i: -lengths[i])]
    elif order != "random":
        raise ValueError(f"order must be 'length_grouped' or 'random', got {order!r}")
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def step_schedule(batches: list[list[int]], n_targets: Sequence[int], world_size: int,
                  accumulation: int) -> list[list[tuple[list[int], int]]]:
    """Per rank (:func:`shard`), ``(indices, step_targets)`` of each micro-batch: the step's target count over all
    ranks, a step being ``accumulation`` consecutive micro-batches of every rank.

    >>> step_schedule([[0], [1], [2]], [1, 2, 4], world_size=2, accumulation=1)
    [[([0], 3), ([2], 5)], [([1], 3), ([0], 5)]]
    """
    ranks = [[b for b, _ in shard(batches, world_size, r)] for r in range(world_size)]
    steps = -(-len(ranks[0]) // accumulation)
    totals = [sum(n_targets[i] for rank in ranks for b in rank[k * accumulation:(k + 1) * accumulation] for i in b)
              for k in range(steps)]
    return [[(b, totals[j // accumulation]) for j, b in enumerate(rank)] for rank in ranks]


class StepBatchSampler:
    """One rank's micro-batches as ``(index, step_targets, weight)`` keys; Lightning calls ``set_epoch``, and
    ``skip`` (set on resume) drops the micro-batches of the current epoch already trained on."""

    def __init__(self, lengths: Sequence[int], n_targets: Sequence[int], batch_size: int, accumulation: int = 1,
                 world_size: int = 1, rank: int = 0, seed: int = 42,
                 order: Literal["length_grouped", "random"] = "length_grouped"):
        self.lengths, self.n_targets = list(lengths), list(n_targets)
        self.batch_size, self.accumulation = batch_size, accumulation
        self.world_size, self.rank, self.seed, self.order = world_size, rank, seed, order
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.skip = 0
        self.epoch = epoch

    @property
    def sampler(self) -> StepBatchSampler:
        # Lightning sets the epoch of `loader.sampler` and `loader.batch_sampler.sampler`: this is both.
        return self

    def schedule(self) -> list[tuple[list[int], int]]:
        batches = micro_batches(self.lengths, self.batch_size, self.seed, self.epoch, self.order)
        return step_schedule(batches, self.n_targets, self.world_size, self.accumulation)[self.rank]

    def __iter__(self) -> Iterator[list[tuple[int, int, float]]]:
        sched, self.skip = self.schedule()[self.skip:], 0
        for indices, step_targets in sched:
            yield [(i, step_targets, 1.0) for i in indices]

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return -(-n // self.world_size)

    def pad_fraction(self, packing: bool = False) -> float:
        """Share of pad tokens over this rank's epoch in the layout :func:`rows` gives."""
        real = padded = 0
        for indices, _ in self.schedule():
            lens = [self.lengths[i] for i in indices]
            real += sum(lens)
            padded += max(lens) * (len(pack_rows(lens)) if packing else len(lens))
        return 1 - real / padded if padded else 0.0


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints (Lightning's stateful loader API)."""

    consumed: int = 0

    def __iter__(self):
        self.consumed = self.batch_sampler.skip  # type: ignore[union-attr]
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "consumed": self.consumed}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.batch_sampler
        sampler.epoch, sampler.skip = state["epoch"], state["consumed"]  # type: ignore[union-attr]
        # The iterator may already exist (Lightning builds it to count steps); its lazy sampler reads `skip`
        # at the first batch, but the count must start from the restored position now.
        self.consumed = state["consumed"]


# -- collation ---------------------------------------------------------------------------------------------------
def pack_rows(lengths: Sequence[int]) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, no row longer than the longest sequence (so a row costs the
    attention of an unpacked one, while short sequences fill the padding beside a long one).

    >>> pack_rows([5, 2, 3, 4, 1])
    [[0], [3, 4], [2, 1]]
    """
    width = max(lengths)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), None)
        if r is None:
            rows.append([i])
            free.append(width - lengths[i])
        else:
            rows[r].append(i)
            free[r] -= lengths[i]
    return rows


def rows(seqs: list[tuple[list[int], list[int]]], pad_id: int, packing: bool = False) -> dict[str, torch.Tensor]:
    """Sequences as one forward pass: ``input_ids``, ``labels``, ``seq`` (each token's sequence, -1 for pads).

    Unpacked: a right-padded row per sequence, with an ``attention_mask``. Packed: the rows of :func:`pack_rows`
    with ``position_ids`` restarting at each sequence, from which transformers keeps attention within it; a
    sequence's first token is never a target (the position before belongs to another sequence).

    >>> b = rows([([5, 6, 7], [-100, 6, 7]), ([8, 9], [8, 9])], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist(), b["seq"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[-100, 6, 7], [-100, 9, -100]], [[1, 1, 1], [1, 1, 0]], [[0, 0, 0], [1, 1, -1]])
    >>> p = rows([([5, 6, 7], [-100, 6, 7]), ([8], [8]), ([4, 3], [-100, 3])], pad_id=0, packing=True)
    >>> p["input_ids"].tolist(), p["labels"].tolist(), p["position_ids"].tolist(), p["seq"].tolist()
    ([[5, 6, 7], [4, 3, 8]], [[-100, 6, 7], [-100, 3, -100]], [[0, 1, 2], [0, 1, 0]], [[0, 0, 0], [2, 2, 1]])
    """
    layout = pack_rows([len(s[0]) for s in seqs]) if packing else [[i] for i in range(len(seqs))]
    width = max(sum(len(seqs[i][0]) for i in row) for row in layout)
    shape = (len(layout), width)
    out = {"input_ids": torch.full(shape, pad_id, dtype=torch.long), "labels": torch.full(shape, IGNORE_INDEX),
           "seq": torch.full(shape, -1), "position_ids": torch.zeros(shape, dtype=torch.long)}
    for r, row in enumerate(layout):
        at = 0
        for i in row:
            ids, labels = seqs[i]
            n = len(ids)
            out["input_ids"][r, at:at + n] = torch.tensor(ids)
            out["labels"][r, at + 1:at + n] = torch.tensor(labels[1:])
            out["seq"][r, at:at + n] = i
            out["position_ids"][r, at:at + n] = torch.arange(n)
            at += n
        out["position_ids"][r, at:] = torch.arange(width - at)
    if not packing:
        del out["position_ids"]
        out["attention_mask"] = (out["seq"] >= 0).long()
    return out


def collate(items: list[dict[str, Any]], pad_id: int, objective: Objective = "sft",
            packing: bool = False) -> dict[str, torch.Tensor]:
    """One micro-batch of any objective; items of zero weight (evaluation fillers) have no target.

    DPO: chosen sequences, then rejected ones (one forward pass). KTO: the rows, plus their mismatched
    pairs under ``kl_``. Preference batches carry each row's ``index`` and, once computed, its ``ref``.
    """
    def side(ids: str, labels: str) -> list[tuple[list[int], list[int]]]:
        return [(it[ids], it[labels] if it["weight"] > 0 else [IGNORE_INDEX] * len(it[ids])) for it in items]

    seqs = side("input_ids", "labels") + (side("rejected_input_ids", "rejected_labels") if objective == "dpo" else [])
    batch = rows(seqs, pad_id, packing)
    batch["step_targets"] = torch.tensor(items[0]["step_targets"], dtype=torch.long)
    if objective != "sft":
        batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
        if items[0].get("ref") is not None:
            batch["ref"] = torch.stack([torch.as_tensor(it["ref"], dtype=torch.float32) for it in items])
    if objective == "kto":
        batch["desirable"] = torch.tensor([it["label"] == "positive" for it in items])
        batch.update({f"kl_{k}": v for k, v in rows(side("kl_input_ids", "kl_labels"), pad_id, packing).items()})
    return batch


class _Rows(Dataset):
    """Tokenized rows (read once into lists), fetched by ``(index, step_targets, weight)``; a preference row's
    reference log-probs are looked up when fetched (the loader exists before the reference pass)."""

    def __init__(self, ds: Any, columns: list[str], dm: NATDataModule | None = None):
        self.columns, self.dm = {c: ds[c][:] for c in columns}, dm

    def __len__(self) -> int:
        return len(self.columns["input_ids"])

    def __getitem__(self, key: tuple[int, int, float]) -> dict[str, Any]:
        i, step_targets, weight = key
        row = {c: values[i] for c, values in self.columns.items()}
        ref = self.dm.reference if self.dm is not None else None
        return {**row, "index": i, "step_targets": step_targets, "weight": weight,
                "ref": ref[i] if ref is not None else None}


class NATDataModule(L.LightningDataModule):
    """Loads or builds a NAT dataset, tokenizes it with an assistant-only mask and batches it per optimizer step.

    Args:
        dataset_dir: a ``nat build --out`` folder (``datasets.load_from_disk``).
        build: build with the builder instead (ignored when ``dataset_dir`` is set).
        tokenizer: tokenizer folder or Hub id; by default the model's.
        max_length: longest sequence in tokens; longer conversations are truncated or dropped.
        overlong: ``truncate`` (default) or ``drop`` over-long conversations; either way they are counted.
        micro_batch_size: conversations (DPO: pairs) per forward pass per device.
        global_batch_size: conversations per optimizer step over all devices (the paper: 64).
        order: ``length_grouped`` batches of similar length (little padding) or ``random`` (pad-heavy baseline).
        packing: a micro-batch's conversations share rows no longer than its longest one (no padding beside a short
            conversation; attention never crosses conversations): the same steps, the same loss.
        seed: data order seed.
        num_workers: DataLoader workers.
        num_proc: processes for tokenization (``datasets.map``).
        cache_dir: builder cache folder, also where tokenized rows are cached (default: the datasets cache,
            never the dataset folder itself, which may be read-only or about to be pushed).
        chat_template: a Jinja chat template file that replaces the tokenizer's (function-calling data needs one
            that renders ``tools`` and ``tool_calls``); the export saves the tokenizer with it.
        objective: ``sft`` (NAT, NUT, w/o Neg), ``dpo`` (a ``--variant dpo`` build: chosen and rejected sides) or
            ``kto`` (a ``--variant kto`` build: each row with a mismatched pair); ``nat fit`` copies
            ``model.objective`` here.
    """

    def __init__(self, dataset_dir: str | None = None, build: BuildSpec | None = None, tokenizer: str | None = None,
                 max_length: int = 4096, overlong: Literal["truncate", "drop"] = "truncate", micro_batch_size: int = 2,
                 global_batch_size: int = 64, order: Literal["length_grouped", "random"] = "length_grouped",
                 packing: bool = False, seed: int = 42, num_workers: int = 0, num_proc: int = 1,
                 cache_dir: str | None = None, chat_template: str | None = None, objective: Objective = "sft"):
        super().__init__()
        if dataset_dir is None and build is None:
            raise ValueError("give dataset_dir (a `nat build` output) or build (trajectory files to build from)")
        if objective not in EXTRA_COLUMNS:
            raise ValueError(f"objective must be one of {sorted(EXTRA_COLUMNS)}, got {objective!r}")
        self.save_hyperparameters()
        self.stats: dict[str, Any] = {}
        self.train_rows: Any = None
        self.dev_rows: Any = None
        self._dev_loader: tuple[tuple[int, int], Any] | None = None
        self._tokenizer: Any = None
        self._train_loader: ResumableLoader | None = None
        self._loader_state: dict[str, int] | None = None
        # The prompt the conversations were rendered with; the export saves it beside the model.
        self.prompt_spec: Any = None
        self.build_record: Any = None  # the build.json of the rows trained on, read once
        # DPO/KTO: each row's reference log-probs, (rows, 2); NATModule computes them before the first step.
        self.reference: torch.Tensor | None = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if not self.hparams.tokenizer:
                raise ValueError("no tokenizer given (data.tokenizer; the CLI links it to model.model_name_or_path)")
            tok = AutoTokenizer.from_pretrained(self.hparams.tokenizer)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            self._tokenizer = ensure_chat_template(tok, self.hparams.chat_template)
        return self._tokenizer

    def load_conversations(self) -> Any:
        if self.hparams.dataset_dir:
            check_dataset_folder(self.hparams.dataset_dir)
            # Read once: the history rows describe the rows trained on, even if the folder is rebuilt meanwhile.
            self.build_record = maybe_read_build(self.hparams.dataset_dir)
            self.prompt_spec = read_spec(self.hparams.dataset_dir)
            return datasets.load_from_disk(self.hparams.dataset_dir)
        build = self.hparams.build
        res = build_dataset(build if isinstance(build, BuildSpec) else BuildSpec(**build), cache_dir=self.hparams.cache_dir)
        self.prompt_spec = PromptSpec.from_dict(res.report["prompt"]) if "prompt" in res.report else None
        self.build_record = BuildRecord(res.config, res.report, res.report.get("prompt"))
        return res.dataset

    def _tokenize(self, ds: Any, sides: tuple[str, ...] = ("messages",)) -> tuple[Any, int, int]:
        """Tokenized rows that kept a target, how many were truncated and how many dropped (every objective)."""
        hp = self.hparams
        # The tokenizer's hash covers its vocabulary, merges, special tokens and chat template.
        fp = Hasher.hash((ds._fingerprint, self.tokenizer, hp.max_length, hp.overlong, sides, "v3"))
        # datasets would write its cache files beside the input's Arrow files, i.e. into the `nat build` folder
        # (which `nat push` uploads and `load_dataset` then misreads): <cache_dir>/tokenized, or the datasets cache.
        cache = Path(hp.cache_dir or Path(datasets.config.HF_DATASETS_CACHE) / "lightning_nat") / "tokenized"
        cache.mkdir(parents=True, exist_ok=True)
        out = ds.map(tokenize_batch, batched=True, fn_kwargs={"tokenizer": self.tokenizer, "max_length": hp.max_length,
                                                              "overlong": hp.overlong, "sides": sides},
                     remove_columns=[c for c in ds.column_names if c not in ("id", "label")],
                     num_proc=hp.num_proc if hp.num_proc > 1 else None, new_fingerprint=fp, desc="tokenizing",
                     cache_file_name=str(cache / f"{fp}.arrow"))
        kept = out.filter(lambda keep: keep, input_columns="keep", new_fingerprint=fp + "-kept",
                          cache_file_name=str(cache / f"{fp}-kept.arrow"))
        return kept, sum(out["truncated"]), len(out) - len(kept)

    def _train_sides(self, train: Any) -> tuple[str, ...]:
        """What the objective tokenizes of a training row, once the dataset is known to be its kind of build."""
        objective, dpo_build = self.hparams.objective, "rejected" in train.column_names
        if objective == "sft" and dpo_build:
            raise ValueError("this dataset is a DPO build (it has a rejected side): train it with model.objective: dpo")
        if objective == "sft" and self.build_record is not None and self.build_record.variant == "kto":
            raise ValueError("this dataset is a KTO build (failures labelled undesirable, all under the positive "
                             "prompt): SFT would train the failures as successes; train it with model.objective: kto "
                             "(or build --variant nut / nat for SFT)")
        if objective == "dpo" and not dpo_build:
            raise ValueError("model.objective dpo needs a `nat build --variant dpo` dataset (rows with a rejected side)")
        if objective == "kto" and not set(train.unique("label")) <= {"positive", "negative"}:
            raise ValueError("KTO needs rows labelled positive/negative (a --variant kto build), got "
                             f"{sorted(set(train.unique('label')))}")
        return ("messages", "rejected") if objective == "dpo" else ("messages",)

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        hp = self.hparams
        ds = self.load_conversations()
        rows_, truncated, dropped = self._tokenize(ds["train"], self._train_sides(ds["train"]))
        if len(rows_) == 0:
            raise ValueError(f"no training conversation is left: all {len(ds['train'])} lost their assistant turns to "
                             f"max_length={hp.max_length} (or were dropped as over-long); raise max_length")
        if hp.objective == "kto":
            rows_ = self._add_mismatched_pairs(rows_)
        self.train_rows = rows_
        self.stats = {"train_rows": len(rows_), "truncated": truncated, "dropped": dropped,
                      "target_tokens": int(sum(rows_["n_targets"])), "tokens": int(sum(rows_["length"]))}
        if "dev" in ds:  # held-out positives: dev perplexity, whatever the objective
            self.dev_rows, _, _ = self._tokenize(ds["dev"])
            self._dev_loader = None
            self.stats["dev_rows"] = len(self.dev_rows)
        if truncated or dropped:
            how = "dropped" if hp.overlong == "drop" else "truncated"
            log.warning("%d of %d conversations exceed max_length=%d and were %s; %d left no target and were dropped",
                        truncated, len(ds["train"]), hp.max_length, how, dropped if how == "truncated" else 0)

    def _add_mismatched_pairs(self, rows_: Any) -> Any:
        partners = mismatch_partners(len(rows_), self.hparams.seed)
        ids, labels = rows_["input_ids"][:], rows_["labels"][:]
        pairs = [mismatched_pair(ids[i], labels[i], ids[j], labels[j], self.hparams.max_length)
                 for i, j in enumerate(partners)]
        rows_ = rows_.add_column("kl_input_ids", [p[0] for p in pairs]).add_column("kl_labels", [p[1] for p in pairs])
        # A row's length is that of its longest forward pass, which the schedule groups by.
        return rows_.remove_columns("length").add_column("length", [max(len(a), len(p[0])) for a, p in zip(ids, pairs)])

    def accumulation(self) -> int:
        """Micro-batches per optimizer step per device, from the global batch size."""
        hp, world = self.hparams, self.trainer.world_size if self.trainer else 1
        accumulation = accumulation_steps(hp.global_batch_size, hp.micro_batch_size, world)
        if self.trainer is not None and self.trainer.accumulate_grad_batches != accumulation:
            raise ValueError(f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches} but global_batch_size "
                             f"{hp.global_batch_size} / (micro_batch_size {hp.micro_batch_size} x {world} devices) = "
                             f"{accumulation}; `nat fit` sets it for you")
        return accumulation

    def _layout(self) -> tuple[int, int]:
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)

    def loader(self, batches: Any, rows_: Any = None, objective: Objective | None = None, **kwargs: Any) -> Any:
        """A loader over ``batches`` (lists of ``(index, step_targets, weight)``) of the training rows, or ``rows_``."""
        objective = objective or self.hparams.objective
        train = rows_ is None
        cls = ResumableLoader if isinstance(batches, StepBatchSampler) else DataLoader
        data = _Rows(self.train_rows if train else rows_, ["input_ids", "labels", *EXTRA_COLUMNS[objective]],
                     self if train and objective != "sft" else None)
        return cls(data, batch_sampler=batches, num_workers=self.hparams.num_workers, **kwargs,
                   collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id, objective=objective,
                                      packing=self.hparams.packing))

    def train_dataloader(self) -> ResumableLoader:
        hp = self.hparams
        world, rank = self._layout()
        # SFT divides by the step's target tokens; a preference loss averages over rows (pairs), one each.
        counts = self.train_rows["n_targets"][:] if hp.objective == "sft" else [1] * len(self.train_rows)
        sampler = StepBatchSampler(self.train_rows["length"][:], counts, hp.micro_batch_size, self.accumulation(), world,
                                   rank, hp.seed, hp.order)
        self.stats["pad_fraction"] = round(sampler.pad_fraction(hp.packing), 4)
        self.stats["accumulation"] = sampler.accumulation
        self._train_loader = self.loader(sampler)
        if self._loader_state is not None:  # once: a loader rebuilt at a later epoch starts that epoch whole
            self._train_loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return self._train_loader

    # The data position also travels in the datamodule's own checkpoint entry: Lightning restores a loader's
    # state only when it builds the loader after the restore, and `estimated_stepping_batches` (called by
    # `configure_optimizers` when training by epochs) builds it before, which silently restarted the epoch.
    def state_dict(self) -> dict[str, Any]:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loader_state = state.get("train_loader")
        if self._loader_state is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(self._loader_state)
            self._loader_state = None

    def val_dataloader(self) -> Any:
        if self.dev_rows is None or len(self.dev_rows) == 0:
            return []
        layout = self._layout()
        # Built once per layout: validation and DevPerplexity's every-N-steps pass both ask for it.
        if self._dev_loader is None or self._dev_loader[0] != layout:
            self._dev_loader = (layout, self.sharded_loader(self.dev_rows, "sft"))
        return self._dev_loader[1]

    def sharded_loader(self, rows_: Any = None, objective: Objective | None = None, repeat_weight: float = 0.0) -> Any:
        """Every row of ``rows_`` (default: the training rows), longest first, shared out over the ranks by
        :func:`shard`; the repeats that even out the ranks' passes weigh ``repeat_weight``."""
        lengths = (self.train_rows if rows_ is None else rows_)["length"][:]
        mine = shard(sorted(range(len(lengths)), key=lambda i: -lengths[i]), *self._layout())
        keys = [(i, 0, 1.0 if first else repeat_weight) for i, first in mine]
        bs = self.hparams.micro_batch_size
        return self.loader([keys[s:s + bs] for s in range(0, len(keys), bs)], rows_, objective)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.consumed += 1
        return batch
