"""The LightningDataModule: built dataset -> tokenized rows -> per-step micro-batches."""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_nat.data.build import BuildSpec
from lightning_nat.train.batching import accumulation_steps
from lightning_nat.train.sampling import StepBatchSampler
from lightning_nat.train.tokenization import IGNORE_INDEX, ensure_chat_template, load_chat_template, tokenize_batch

log = logging.getLogger(__name__)


class _Rows(Dataset):
    """Rows fetched by ``(index, step_targets)`` so the collate function sees the step's count."""

    def __init__(self, ds: Any):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int, float]) -> dict[str, Any]:
        i, step_targets, weight = key
        row = self.ds[int(i)]
        return {"input_ids": row["input_ids"], "labels": row["labels"], "step_targets": step_targets, "weight": weight}


class _KeyedBatches:
    """Adapts :class:`StepBatchSampler` output to per-item keys for :class:`_Rows`."""

    def __init__(self, sampler: StepBatchSampler):
        self.sampler = sampler

    def __iter__(self):
        for indices, step_targets in self.sampler:
            yield [(i, step_targets, 1.0) for i in indices]

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def batch_size(self) -> int:
        # DeepSpeedStrategy reads the loader's batch_sampler.batch_size for its train_micro_batch_size_per_gpu.
        return self.sampler.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class ResumableLoader(DataLoader):
    """A DataLoader whose position in the epoch is saved in checkpoints (Lightning's stateful loader API)."""

    consumed: int = 0

    def __iter__(self):
        self.consumed = self.batch_sampler.sampler.skip  # type: ignore[union-attr]
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.sampler.epoch, "consumed": self.consumed}  # type: ignore[union-attr]

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.batch_sampler.sampler  # type: ignore[union-attr]
        sampler.epoch, sampler.skip = state["epoch"], state["consumed"]
        # The iterator may already exist (Lightning builds it to count steps); its lazy sampler reads `skip`
        # at the first batch, but the count must start from the restored position now.
        self.consumed = state["consumed"]


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; pad positions are never targets.

    >>> b = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "step_targets": 3, "weight": 1.0},
    ...              {"input_ids": [8], "labels": [8], "step_targets": 3, "weight": 1.0}], pad_id=0)
    >>> b["input_ids"].tolist(), b["labels"].tolist(), b["attention_mask"].tolist()
    ([[5, 6, 7], [8, 0, 0]], [[-100, 6, 7], [8, -100, -100]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = torch.tensor(it["input_ids"])
        if it["weight"] > 0:
            labels[r, :n] = torch.tensor(it["labels"])
        mask[r, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask,
            "step_targets": torch.tensor(items[0]["step_targets"], dtype=torch.long)}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of the tokenizer's vocabulary, merges, special tokens and chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(repr((tokenizer.chat_template, tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token)).encode())
    return h.hexdigest()[:16]


def tokenized_cache_dir(cache_dir: str | None = None) -> Path:
    """Where tokenized rows are cached: ``<cache_dir>/tokenized``, by default under the datasets cache."""
    import datasets

    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "lightning_nat"
    path = root / "tokenized"
    path.mkdir(parents=True, exist_ok=True)
    return path


class NATDataModule(L.LightningDataModule):
    """Loads or builds a NAT dataset, tokenizes it with an assistant-only mask and batches it per optimizer step.

    Args:
        dataset_dir: a ``nat build --out`` folder (``datasets.load_from_disk``).
        build: build with the builder instead (ignored when ``dataset_dir`` is set).
        tokenizer: tokenizer folder or Hub id; by default the model's.
        max_length: longest sequence in tokens; longer conversations are truncated or dropped.
        overlong: ``truncate`` (default) or ``drop`` over-long conversations; either way they are counted.
        micro_batch_size: conversations per forward pass per device.
        global_batch_size: conversations per optimizer step over all devices (the paper: 64).
        order: ``length_grouped`` batches of similar length (little padding) or ``random`` (pad-heavy baseline).
        seed: data order seed.
        num_workers: DataLoader workers.
        num_proc: processes for tokenization (``datasets.map``).
        cache_dir: builder cache folder, also where tokenized rows are cached (default: the datasets cache,
            never the dataset folder itself, which may be read-only or about to be pushed).
        chat_template: a Jinja chat template file that replaces the tokenizer's (function-calling data needs one
            that renders ``tools`` and ``tool_calls``); the export saves the tokenizer with it.
    """

    def __init__(self, dataset_dir: str | None = None, build: BuildSpec | None = None, tokenizer: str | None = None,
                 max_length: int = 4096, overlong: Literal["truncate", "drop"] = "truncate", micro_batch_size: int = 2,
                 global_batch_size: int = 64, order: Literal["length_grouped", "random"] = "length_grouped",
                 seed: int = 42, num_workers: int = 0, num_proc: int = 1, cache_dir: str | None = None,
                 chat_template: str | None = None):
        super().__init__()
        if dataset_dir is None and build is None:
            raise ValueError("give dataset_dir (a `nat build` output) or build (trajectory files to build from)")
        self.save_hyperparameters()
        self.stats: dict[str, Any] = {}
        self.train_rows: Any = None
        self.dev_rows: Any = None
        self._dev_loader: tuple[tuple[int, int], Any] | None = None
        self._tokenizer: Any = None
        self._train_loader: ResumableLoader | None = None
        # The prompt the conversations were rendered with; the export saves it beside the model.
        self.prompt_spec: Any = None
        self._loader_state: dict[str, int] | None = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            if not self.hparams.tokenizer:
                raise ValueError("no tokenizer given (data.tokenizer; the CLI links it to model.model_name_or_path)")
            tok = AutoTokenizer.from_pretrained(self.hparams.tokenizer)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            # A Jinja file that replaces the tokenizer's template (one that renders tools, for function calling).
            self._tokenizer = ensure_chat_template(load_chat_template(tok, self.hparams.chat_template))
        return self._tokenizer

    def load_conversations(self) -> Any:
        import datasets

        from lightning_nat.core.artifacts import read_spec

        if self.hparams.dataset_dir:
            self.prompt_spec = read_spec(self.hparams.dataset_dir)
            return datasets.load_from_disk(self.hparams.dataset_dir)
        from lightning_nat.core.prompts import PromptSpec
        from lightning_nat.data.build import build_dataset

        build = self.hparams.build
        res = build_dataset(build if isinstance(build, BuildSpec) else BuildSpec(**build), cache_dir=self.hparams.cache_dir)
        self.prompt_spec = PromptSpec.from_dict(res.report["prompt"]) if "prompt" in res.report else None
        return res.dataset

    def _tokenize(self, ds: Any, split: str = "train") -> Any:
        from datasets.fingerprint import Hasher

        hp = self.hparams
        fp = Hasher.hash((ds._fingerprint, tokenizer_fingerprint(self.tokenizer), hp.max_length, hp.overlong, "v1"))
        # datasets would write its cache files beside the input's Arrow files, i.e. into the `nat build`
        # folder (which `nat push` uploads and `load_dataset` then misreads): name them elsewhere.
        cache = tokenized_cache_dir(hp.cache_dir)
        out = ds.map(tokenize_batch, batched=True, fn_kwargs={"tokenizer": self.tokenizer, "max_length": hp.max_length,
                                                              "overlong": hp.overlong},
                     remove_columns=[c for c in ds.column_names if c not in ("id", "label")],
                     num_proc=hp.num_proc if hp.num_proc > 1 else None, new_fingerprint=fp, desc="tokenizing",
                     cache_file_name=str(cache / f"{fp}.arrow"))
        truncated = sum(out["truncated"])
        kept = out.filter(lambda keep: keep, input_columns="keep", new_fingerprint=fp + "-kept",
                          cache_file_name=str(cache / f"{fp}-kept.arrow"))
        return kept, truncated, len(out) - len(kept)

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        ds = self.load_conversations()
        self.train_rows, truncated, dropped = self._tokenize(ds["train"], "train")
        if len(self.train_rows) == 0:
            raise ValueError(f"no training conversation is left: all {len(ds['train'])} lost their assistant turns to "
                             f"max_length={self.hparams.max_length} (or were dropped as over-long); raise max_length")
        self.stats = {"train_rows": len(self.train_rows), "truncated": truncated, "dropped": dropped,
                      "target_tokens": int(sum(self.train_rows["n_targets"])),
                      "tokens": int(sum(self.train_rows["length"]))}
        if "dev" in ds:
            self.dev_rows, _, _ = self._tokenize(ds["dev"], "dev")
            self._dev_loader = None
            self.stats["dev_rows"] = len(self.dev_rows)
        if truncated or dropped:
            how = "dropped" if self.hparams.overlong == "drop" else "truncated"
            log.warning("%d of %d conversations exceed max_length=%d and were %s; %d left no target and were dropped",
                        truncated, len(ds["train"]), self.hparams.max_length, how, dropped if how == "truncated" else 0)

    def accumulation(self) -> int:
        """Micro-batches per optimizer step per device, from the global batch size."""
        world = self.trainer.world_size if self.trainer else 1
        accumulation = accumulation_steps(self.hparams.global_batch_size, self.hparams.micro_batch_size, world)
        if self.trainer is not None and self.trainer.accumulate_grad_batches != accumulation:
            raise ValueError(f"trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches} but global_batch_size "
                             f"{self.hparams.global_batch_size} / (micro_batch_size {self.hparams.micro_batch_size} x "
                             f"{world} devices) = {accumulation}; `nat fit` sets it for you")
        return accumulation

    def train_sampler(self) -> StepBatchSampler:
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        return StepBatchSampler(self.train_rows["length"], self.train_rows["n_targets"], self.hparams.micro_batch_size,
                                self.accumulation(), world, rank, self.hparams.seed, self.hparams.order)

    def train_dataloader(self) -> ResumableLoader:
        sampler = self.train_sampler()
        self.stats["pad_fraction"] = round(sampler.pad_fraction(), 4)
        self.stats["accumulation"] = sampler.accumulation
        pad = self.tokenizer.pad_token_id
        self._train_loader = ResumableLoader(_Rows(self.train_rows.select_columns(["input_ids", "labels"])),
                                             batch_sampler=_KeyedBatches(sampler), num_workers=self.hparams.num_workers,
                                             collate_fn=partial(collate, pad_id=pad))
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
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        # Built once per layout: validation and DevPerplexity's every-N-steps pass both ask for it.
        if self._dev_loader is not None and self._dev_loader[0] == (world, rank):
            return self._dev_loader[1]
        order = sorted(range(len(self.dev_rows)), key=lambda i: -self.dev_rows[i]["length"])
        mine = order[rank::world]
        # Every rank runs the same number of forward passes (ZeRO-3 needs it); fillers weigh nothing.
        per_rank = -(-len(order) // world)
        keys = [(i, 0, 1.0) for i in mine] + [(order[0], 0, 0.0)] * (per_rank - len(mine))
        bs = self.hparams.micro_batch_size
        batches = [keys[s:s + bs] for s in range(0, len(keys), bs)]
        pad = self.tokenizer.pad_token_id
        loader = DataLoader(_Rows(self.dev_rows.select_columns(["input_ids", "labels"])), batch_sampler=batches,
                            collate_fn=partial(collate, pad_id=pad), num_workers=self.hparams.num_workers)
        self._dev_loader = ((world, rank), loader)
        return loader

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and self._train_loader is not None:
            self._train_loader.consumed += 1
        return batch
