"""`nat push`: publish a built dataset or an exported model on the Hugging Face Hub, with a card."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from rich.markup import escape

from lightning_nat.core.artifacts import PROMPT_FILE, RESULTS_FILE, read_build, read_spec
from lightning_nat.core.console import console
from lightning_nat.core.options import command_line, option
from lightning_nat.core.results import EvalReport

TOKEN_ENVS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def hub_token() -> str:
    """The token from the environment, or a clear error naming the variables."""
    for name in TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    raise RuntimeError(f"no Hugging Face token: set {' or '.join(TOKEN_ENVS)} (a write token from your Hub settings)")


def _front_matter(data: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def data_files_config(splits: list[str]) -> list[dict[str, Any]]:
    """The card's ``configs`` entry mapping each split to its Parquet files (how ``load_dataset`` finds them).

    >>> data_files_config(["train", "dev"])
    [{'config_name': 'default', 'data_files': [{'split': 'train', 'path': 'data/train-*.parquet'}, \
{'split': 'dev', 'path': 'data/dev-*.parquet'}]}]
    """
    return [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}]


def dataset_card(folder: str | Path, repo_id: str, splits: list[str] | None = None) -> str:
    """A dataset card from ``build.json``: variant, sources, counts and the exact ``nat build`` command.

    With ``splits``, its front matter maps each split to ``data/<split>-*.parquet``, so ``load_dataset`` keeps
    the split names we wrote (``dev`` stays ``dev``).
    """
    from lightning_nat.data.build import BuildConfig

    record = read_build(folder)
    cfg, report, stats = record.config, record.report, record.stats
    meta = {"license": "other", "task_categories": ["text-generation"], "language": ["en"],
            "tags": ["agents", "react", "negative-aware-training", "lightning_nat"], "pretty_name": repo_id.split("/")[-1]}
    if splits:
        meta["configs"] = data_files_config(splits)
    command = command_line("nat build", BuildConfig.from_record(cfg))
    sources = "\n".join(f"- `{Path(p).name}`" for p in cfg.get("trajectories", []))
    return _front_matter(meta) + f"""
# {repo_id.split('/')[-1]}

Agent trajectories reformatted for Negative-Aware Training (NAT, arXiv 2402.11651) by `lightning_nat`.

- variant: `{record.variant}`; {_prompt_line(record.prompt)}
- task: `{cfg.get('task')}`
- positives: {stats.get('positives')}, negatives: {stats.get('negatives')}, dev positives: {stats.get('dev')}
- sampling seed: {cfg.get('seed')}; filtered: {json.dumps(stats.get('filtered', {}))};
  skipped bad records: {json.dumps(report.get('skipped_by_reason', {}))}

Sources:
{sources}

Rebuild with:

```bash
{command}
```

Each row has `messages` (`role`, `content`, `train`: only assistant turns are trained), `label`,
`score`, `reward`, `id`, `question_id`, `task`.
"""


def _prompt_line(prompt: dict[str, Any] | None) -> str:
    """What a card says about the prompt: the style, and the training and inference question templates."""
    if not prompt:
        return "the prompt it was trained with is not recorded (built before prompt specs were saved)"
    templates = prompt["templates"]
    classes = ", ".join(f"`{t}`" for t in templates[:-1])
    return (f"prompt style `{prompt['style']}` (preset `{prompt['preset']}`): failed trajectories under {classes}, "
            f"successful ones and inference under `{templates[-1]}`; `nat eval` reads it from `nat_prompt.json`")


def model_card(folder: str | Path, repo_id: str) -> str:
    """A model card: base model, data, strategy, hyperparameters, and eval results when present."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder}: no config.json (is it an exported `hf/` folder?)")
    found = next((p for p in (folder.parent / "config.yaml", folder / "training_config.yaml") if p.exists()), None)
    run_config: dict[str, Any] = (yaml.safe_load(found.read_text()) or {}) if found else {}
    model_cfg, data_cfg, trainer_cfg = (run_config.get(k, {}) or {} for k in ("model", "data", "trainer"))
    base = model_cfg.get("model_name_or_path", "unknown")
    spec = read_spec(folder) if (folder / PROMPT_FILE).is_file() else None
    prompt = spec.to_dict() if spec is not None else None
    results_path = folder / RESULTS_FILE
    results = {task: r.metrics for task, r in EvalReport.read(results_path).results.items()} \
        if results_path.exists() else {}
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation",
                            "tags": ["agents", "react", "negative-aware-training", "lightning_nat"]}
    if isinstance(base, str) and "/" in base and not Path(base).exists():
        meta["base_model"] = base
    rows = "\n".join(f"| {task} | " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()
                                               if k in ("accuracy", "em", "f1")) + " |" for task, r in results.items())
    hyper = {"learning_rate": model_cfg.get("learning_rate"), "warmup_ratio": model_cfg.get("warmup_ratio"),
             "global_batch_size": data_cfg.get("global_batch_size"), "micro_batch_size": data_cfg.get("micro_batch_size"),
             "max_epochs": trainer_cfg.get("max_epochs"), "precision": trainer_cfg.get("precision"),
             "max_length": data_cfg.get("max_length")}
    table = ("| task | metrics |\n| --- | --- |\n" + rows) if rows else \
        "No evaluation results were found next to the model (results.json)."
    return _front_matter(meta) + f"""
# {repo_id.split('/')[-1]}

Fine-tuned from `{base}` as a ReAct agent with Negative-Aware Training (arXiv 2402.11651) by `lightning_nat`:
{_prompt_line(prompt)}

- training data: `{data_cfg.get('dataset_dir') or data_cfg.get('build')}`
- hyperparameters: {json.dumps({k: v for k, v in hyper.items() if v is not None})}

## Evaluation

{table}
"""


def stage_dataset(folder: str | Path, repo_id: str, out: str | Path) -> list[str]:
    """Write into ``out`` exactly what a dataset push uploads (a Parquet file per split and the card, nothing a
    Hub folder fails to load with, such as Arrow caches); returns the files, relative to ``out``."""
    import datasets

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out}: not empty; the staged upload needs an empty or new folder")
    ds = datasets.load_from_disk(str(folder))
    if not isinstance(ds, datasets.DatasetDict):
        ds = datasets.DatasetDict({"train": ds})
    (out / "data").mkdir(parents=True, exist_ok=True)
    for split, part in ds.items():
        part.to_parquet(str(out / "data" / f"{split}-00000-of-00001.parquet"))
    (out / "README.md").write_text(dataset_card(folder, repo_id, list(ds)), encoding="utf-8")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def push(kind: str, folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False,
         stage_dir: str | Path | None = None) -> dict[str, Any]:
    """Upload (or, with ``dry_run``, describe) a dataset or model folder and its card; a dataset is staged first
    (:func:`stage_dataset`, into ``stage_dir`` when given, kept to inspect) and that folder uploaded."""
    folder = Path(folder)
    if kind != "dataset" and stage_dir:
        raise ValueError("--stage-dir is for datasets; a model folder is uploaded as it is")
    with tempfile.TemporaryDirectory(prefix="nat-push-") as tmp:
        if kind == "dataset":
            upload = Path(stage_dir) if stage_dir else Path(tmp) / "staged"
            files = stage_dataset(folder, repo_id, upload)
            plan = {"kind": kind, "repo_id": repo_id, "private": private, "files": files,
                    "card": (upload / "README.md").read_text(encoding="utf-8"), "staged": str(upload)}
        else:
            upload = folder
            card = model_card(folder, repo_id)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            plan = {"kind": kind, "repo_id": repo_id, "private": private, "files": files + ["README.md (card)"],
                    "card": card}
        if not dry_run:
            token = hub_token()
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            api.create_repo(repo_id, repo_type=kind, private=private, exist_ok=True)
            api.upload_folder(folder_path=str(upload), repo_id=repo_id, repo_type=kind)
            if upload is folder:  # a model folder's card is not in it
                api.upload_file(path_or_fileobj=plan["card"].encode(), path_in_repo="README.md", repo_id=repo_id,
                                repo_type=kind)
            plan["url"] = f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    return plan


@dataclass(kw_only=True)
class PushConfig:
    """The options of ``nat push``."""

    kind: Literal["dataset", "model"] = option(help="a `nat build --out` folder or an exported `hf/` folder",
                                               positional=True)
    folder: str = option(help="the folder to publish", positional=True)
    repo: str = option(help="Hub repository id, e.g. me/my-nat-data")
    private: bool = option(False, "create the repository private")
    dry_run: bool = option(False, "print the files and the card, upload nothing")
    stage_dir: str | None = option(
        None, "dataset: write the exact upload (data/*.parquet and README.md) into this new folder and keep it (e.g. "
              "with --dry-run, to check it with datasets.load_dataset(DIR))", metavar="DIR")


def run_push(cfg: PushConfig) -> int:
    """``nat push``: upload (or with ``dry_run`` print) the folder and its card."""
    plan = push(cfg.kind, cfg.folder, cfg.repo, private=cfg.private, dry_run=cfg.dry_run, stage_dir=cfg.stage_dir)
    if cfg.dry_run:
        console.print(f"would upload to {cfg.repo} ({cfg.kind}, {'private' if cfg.private else 'public'}):")
        for f in plan["files"]:
            console.print(f"  {escape(f)}")
        console.print(escape(plan["card"]))
    else:
        console.print(f"uploaded to {plan['url']}")
    return 0
