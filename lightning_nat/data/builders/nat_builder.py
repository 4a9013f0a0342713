"""The ``datasets`` builder of NAT/NUT/NAT-k training sets.

``datasets`` 4+ no longer loads builder scripts by path, so this is an importable
class; :func:`build_dataset` runs it in one call. The builder only reads, selects
and reformats through the pure functions of :mod:`lightning_nat.core.readers` and
:mod:`lightning_nat.data.reformat`; tokenization belongs to training.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from lightning_nat.core.artifacts import PREVIEW_FILE, BuildRecord, write_build
from lightning_nat.core.prompts import PromptSpec, default_style, make_spec
from lightning_nat.core.readers import ReadReport, load_questions, read_trajectories
from lightning_nat.core.trajectory import Trajectory
from lightning_nat.data.preference import PLAIN_PROMPT_VARIANT, PREFERENCE_VARIANTS, preference_rows, unpaired_row
from lightning_nat.data.reformat import MARKERS, VARIANTS, BuildStats, instruction_of, reformat, select

FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "question_id": datasets.Value("string"),
    "task": datasets.Value("string"),
    "label": datasets.Value("string"),
    "score": datasets.Value("float64"),
    "reward": datasets.Value("bool"),
    "messages": datasets.List({
        "role": datasets.Value("string"),
        "content": datasets.Value("string"),
        "train": datasets.Value("bool"),
        # Function calls (None on ReAct turns); arguments are JSON text, see lightning_nat.core.function_calls.
        "tool_calls": datasets.List({"id": datasets.Value("string"), "name": datasets.Value("string"),
                                     "arguments": datasets.Value("string")}),
        "tool_call_id": datasets.Value("string"),
    }),
    # The OpenAI-style tools list as JSON text, or None.
    "tools": datasets.Value("string"),
})
# DPO rows: the chosen conversation in ``messages`` (so dev perplexity and previews read it as any row) plus the
# rejected side; dev rows of a DPO build have an empty rejected side.
PAIR_FEATURES = datasets.Features({
    **FEATURES,
    "chosen_id": datasets.Value("string"),
    "rejected_id": datasets.Value("string"),
    "rejected_score": datasets.Value("float64"),
    "rejected": FEATURES["messages"],
})
REPORT_FILE = "nat_build_report.json"


@dataclass
class NATConfig(datasets.BuilderConfig):
    """A variant (what to keep, which markers) and its inputs and sampling parameters."""

    variant: str = "nat"
    markers: str = "correct"
    placement: str = "suffix"
    thresholds: tuple[float, ...] = ()
    trajectories: tuple[str, ...] = ()
    format: str = "nat"
    questions: str | None = None
    task: str = ""
    on_error: str = "raise"
    pos_num: int | None = None
    neg_num: int | None = None
    seed: int = 42
    pos_sampling: str = "first"
    drop_unfinished: bool = True
    min_score: float | None = None
    dedupe: bool = True
    dev_num: int = 0
    # Prompt style (reference | native; None: reference for the paper's tasks) and an instruction override.
    prompt_style: str | None = None
    instruction: str | None = None
    mode: str = "react"
    # "paper": sample after filtering; "reference": sample over every record of the negatives files, in file
    # order, with random.seed(seed), then filter (what the reference code did).
    neg_sampling: str = "paper"
    allow_empty_class: bool = False
    # dpo only: at most this many (positive, negative) pairs per question; None for every combination.
    pairs_per_question: int | None = None
    # sha256 of every input file: part of the cache key, so edited files rebuild.
    input_sha256: str = ""
    # sha256 of the task's instruction and tools: an edited task declaration rebuilds too.
    task_sha256: str = ""


def _cfg(name: str, description: str, **kw: Any) -> NATConfig:
    return NATConfig(name=name, version=datasets.Version("1.1.0"), description=description, **kw)


PRESETS: list[NATConfig] = [
    _cfg("positive", "w/o Neg: positives only, under the positive marker", variant="positive"),
    _cfg("nut", "negative-unaware: positives and negatives under one (positive) marker", variant="nut"),
    _cfg("nat", "negative-aware: 'correctly' for positives, 'incorrectly' for negatives", variant="nat"),
    _cfg("nat-2", "fine-grained NAT: negatives in two score bands, [0, 0.4) and [0.4, 1)", variant="nat",
         thresholds=(0.4,)),
    _cfg("nat-3", "fine-grained NAT: negatives in three score bands", variant="nat", thresholds=(0.3, 0.6)),
    _cfg("nat-prefix", "NAT with the marker before the question", variant="nat", placement="prefix"),
    *[_cfg(f"nat-{name}", f"NAT with the '{name}' marker vocabulary (Table 4 ablation)", variant="nat", markers=name)
      for name in MARKERS if name != "correct"],
    _cfg("dpo", "DPO baseline: (positive, negative) pairs of the same question, plain positive prompt, no markers",
         variant="dpo"),
    _cfg("kto", "KTO baseline: every trajectory labelled desirable/undesirable, plain positive prompt, no markers",
         variant="kto"),
]


def build_spec(cfg: NATConfig) -> PromptSpec:
    """The prompt spec of a build; reference-style builds refuse native-only options that would be ignored."""
    style = cfg.prompt_style or default_style(cfg.task)
    if style == "reference":
        preset = next((c for c in PRESETS if c.name == cfg.name), None)
        if preset is not None:
            for opt, have, default in (("--placement", cfg.placement, preset.placement),
                                       ("--thresholds", tuple(cfg.thresholds), tuple(preset.thresholds)),
                                       ("markers", cfg.markers, preset.markers)):
                if have != default:
                    raise ValueError(f"{opt} {have} applies to --prompt-style native only; the reference style takes "
                                     f"its strings and classes from the preset ({cfg.name}, see nat build --help)")
    # Preference rows (DPO, KTO) take the plain positive prompt, as w/o Neg and NUT do.
    preset_name = PLAIN_PROMPT_VARIANT if cfg.variant in PREFERENCE_VARIANTS else cfg.name
    return make_spec(cfg.task, preset_name, style, cfg.mode, cfg.markers, cfg.placement,  # type: ignore[arg-type]
                     tuple(cfg.thresholds), cfg.instruction)


def _own_instructions(cfg: NATConfig) -> bool:
    """Whether a build's trajectories train under their own system turns (no task, or a ``from_data`` one)."""
    from lightning_nat.core.registry import find_task

    if cfg.instruction is not None:
        return False
    task = find_task(cfg.task) if cfg.task else None
    return task is None or task.instruction_from_data


def reference_population(trajs: Sequence[Trajectory], read: ReadReport, files: Sequence[str]
                         ) -> list[Trajectory | None]:
    """Every record of the negatives files in file order (``None`` for a record that could not be read).

    The reference code sampled ``random.sample(all_negatives, n)`` after ``random.seed(42)``
    over its whole negatives file; sampling the same positions reproduces its choice.
    The negatives must therefore sit in files of their own.
    """
    out: list[Trajectory | None] = []
    for path in files:
        key = str(Path(path))
        mine = [t for t in trajs if read.origin.get(id(t), ("",))[0] == key]
        if not any(not t.reward for t in mine):
            continue
        if any(t.reward for t in mine):
            raise ValueError(f"--neg-sampling reference needs the negatives in files of their own (as the reference's "
                             f"*_negative.json); {path} mixes positives and negatives")
        slots: list[Trajectory | None] = [None] * read.records[key]
        for t in mine:
            slots[read.origin[id(t)][1]] = t
        out += slots
    return out


class NATBuilder(datasets.GeneratorBasedBuilder):
    """Builds the training conversations of one variant from trajectory files."""

    BUILDER_CONFIG_CLASS = NATConfig
    BUILDER_CONFIGS = PRESETS
    DEFAULT_CONFIG_NAME = "nat"

    def _info(self) -> datasets.DatasetInfo:
        features = PAIR_FEATURES if self.config.variant == "dpo" else FEATURES
        return datasets.DatasetInfo(description=self.config.description or "", features=features)

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        cfg = self.config
        if not cfg.trajectories:
            raise ValueError("no trajectory files given (trajectories=...)")
        if cfg.variant not in VARIANTS and cfg.variant not in PREFERENCE_VARIANTS:
            raise ValueError(f"unknown variant {cfg.variant!r}; expected one of "
                             f"{', '.join([*VARIANTS, *PREFERENCE_VARIANTS])}")
        if cfg.markers not in MARKERS:
            raise ValueError(f"unknown markers {cfg.markers!r}; expected one of {', '.join(MARKERS)}")
        questions = load_questions(cfg.questions) if cfg.questions else None
        read = ReadReport()
        trajs = []
        for path in cfg.trajectories:
            trajs += read_trajectories(path, cfg.format, questions, cfg.task, cfg.on_error, read)  # type: ignore[arg-type]
        stats = BuildStats()
        population = reference_population(trajs, read, cfg.trajectories) if cfg.neg_sampling == "reference" else None
        preference = cfg.variant in PREFERENCE_VARIANTS
        # Preference variants select exactly the trajectories NUT/NAT would train on, under the plain positive prompt.
        select_variant = PLAIN_PROMPT_VARIANT if preference else cfg.variant
        pos, neg, dev = select(trajs, select_variant, cfg.pos_num, cfg.neg_num, cfg.seed, cfg.pos_sampling,  # type: ignore[arg-type]
                               cfg.drop_unfinished, cfg.min_score, cfg.dedupe, cfg.dev_num, stats,
                               neg_population=population, allow_empty_class=cfg.allow_empty_class)
        if not pos and not neg:
            raise ValueError(_no_rows_message(cfg.trajectories, trajs, read, stats))
        preset = PLAIN_PROMPT_VARIANT if preference else cfg.name
        if _own_instructions(cfg):
            # Task-less (or ``instruction: from_data``) builds: each trajectory keeps its own system turn, so the
            # spec is made per trajectory; the recorded one carries the first kept trajectory's instruction.
            kw: dict[str, Any] = dict(markers=cfg.markers, placement=cfg.placement, thresholds=tuple(cfg.thresholds),
                                      style=cfg.prompt_style, preset=preset, mode=cfg.mode)
            spec = make_spec(cfg.task, preset, cfg.prompt_style, cfg.mode, cfg.markers, cfg.placement,
                             tuple(cfg.thresholds), instruction_of((pos + neg)[0]))
        else:
            spec = build_spec(cfg)
            kw = dict(spec=spec)
        extra: dict[str, Any] = {}
        if preference:
            train, extra = preference_rows(cfg.variant, pos, neg, cfg.pairs_per_question, cfg.seed, **kw)
            if not train:
                raise ValueError(f"the {cfg.variant} build has no training row: no question has both a positive and a "
                                 f"negative among the {len(pos)} positives and {len(neg)} negatives selected")
            splits = {"train": train}
            if dev:
                dev_rows = reformat(dev, PLAIN_PROMPT_VARIANT, **kw)
                splits["dev"] = [unpaired_row(r) for r in dev_rows] if cfg.variant == "dpo" else dev_rows
        else:
            splits = {"train": reformat(pos + neg, cfg.variant, **kw)}
            if dev:
                splits["dev"] = reformat(dev, cfg.variant, **kw)
        self.build_report = {
            "read": dict(read.read), "skipped": [list(s) for s in read.skipped], "skipped_by_reason": dict(read.reasons()),
            "stats": {**asdict(stats), "filtered": dict(stats.filtered)}, "prompt": spec.to_dict(), **extra,
        }
        return [datasets.SplitGenerator(name=name, gen_kwargs={"rows": rows}) for name, rows in splits.items()]

    def _generate_examples(self, rows: list[dict[str, Any]]):
        yield from enumerate(rows)


def _no_rows_message(files: Sequence[str], trajs: list, read: ReadReport, stats: BuildStats) -> str:
    """Why a build has nothing to train on, with what was read, skipped and filtered."""
    names = ", ".join(files)
    why = [f"read {len(trajs)} trajectories"]
    if read.skipped:
        reasons = "; ".join(f"{n} x {p}" for p, n in read.reasons().most_common(3))
        why.append(f"skipped {len(read.skipped)} bad records ({reasons})")
    if stats.filtered:
        why.append("filtered " + ", ".join(f"{n} {r}" for r, n in stats.filtered.items()))
    return f"{names}: no training conversation is left ({'; '.join(why)})"


def file_sha256(paths: Sequence[str | os.PathLike]) -> str:
    """One digest over the contents of ``paths`` (order matters)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class BuildResult:
    """A built dataset, what the build read and skipped, and whether the cache served it."""

    dataset: datasets.DatasetDict
    report: dict[str, Any]
    config: dict[str, Any]
    from_cache: bool = False
    cache_dir: str = ""
    notes: list[str] = field(default_factory=list)


def build_dataset(trajectories: Sequence[str | os.PathLike], config: str = "nat", *, cache_dir: str | None = None,
                  **params: Any) -> BuildResult:
    """Build (or load from cache) one variant in one call.

    ``config`` names a preset (``positive``, ``nut``, ``nat``, ``nat-2``, ...); ``params``
    override any :class:`NATConfig` field (``questions``, ``format``, ``task``, ``pos_num``,
    ``neg_num``, ``seed``, ...). The cache keys on every parameter and on the input files'
    contents.
    """
    if config not in {c.name for c in PRESETS}:
        raise ValueError(f"unknown config {config!r}; expected one of {', '.join(c.name for c in PRESETS)}")
    files = [str(Path(p).resolve()) for p in trajectories]
    for f in files + ([params["questions"]] if params.get("questions") else []):
        if not Path(f).is_file():
            raise FileNotFoundError(f"no such file: {f}")
    if params.get("questions"):
        params["questions"] = str(Path(params["questions"]).resolve())
    if params.get("task"):
        from lightning_nat.core.registry import resolve_task

        # A task YAML path is loaded and registered here; the rows then carry its name.
        task = resolve_task(params["task"])
        params["task"] = task.name
        params["task_sha256"] = hashlib.sha256(repr((task.instruction, task.tools, task.instruction_from_data,
                                                     task.source)).encode()).hexdigest()
    if "thresholds" in params and params["thresholds"] is not None:
        params["thresholds"] = tuple(float(t) for t in params["thresholds"])
    unknown = set(params) - set(NATConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown build parameter(s): {', '.join(sorted(unknown))}")
    digest = file_sha256(files + ([params["questions"]] if params.get("questions") else []))
    preset = next(c for c in PRESETS if c.name == config)
    # Pass every field explicitly so the cache key covers defaults too.
    full = {k: v for k, v in asdict(preset).items()
            if k in NATConfig.__dataclass_fields__ and k not in ("name", "version", "data_dir", "data_files", "description")}
    full.update(params, trajectories=tuple(files), input_sha256=digest)
    builder = NATBuilder(config_name=config, cache_dir=cache_dir, **full)
    report_path = Path(builder.cache_dir) / REPORT_FILE
    from_cache = (Path(builder.cache_dir) / "dataset_info.json").exists() and report_path.exists()
    builder.download_and_prepare()
    if from_cache:
        report = json.loads(report_path.read_text())
    else:
        report = builder.build_report
        report_path.write_text(json.dumps(report, indent=1))
    ds = builder.as_dataset()
    return BuildResult(dataset=ds, report=report, config={"name": config, **full}, from_cache=from_cache,
                       cache_dir=builder.cache_dir, notes=list(report["stats"].get("notes", [])))


def save_build(result: BuildResult, out: str | os.PathLike, preview_per_label: int = 5) -> Path:
    """Write a built dataset where ``datasets.load_from_disk`` opens it, with a preview and the build record."""
    out = Path(out)
    result.dataset.save_to_disk(str(out))
    shown: dict[str, int] = {}
    with open(out / PREVIEW_FILE, "w", encoding="utf-8") as fh:
        for split, ds in result.dataset.items():
            for row in ds:
                key = f"{split}/{row['label']}"
                if shown.get(key, 0) >= preview_per_label:
                    continue
                shown[key] = shown.get(key, 0) + 1
                fh.write(json.dumps({"split": split, **row}, ensure_ascii=False) + "\n")
    write_build(out, BuildRecord(config=result.config, report=result.report, prompt=result.report.get("prompt")))
    return out


def summarize(ds: datasets.DatasetDict) -> dict[str, dict[str, Any]]:
    """Counts per label, turns and characters per conversation, for each split.

    >>> d = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"label": "positive",
    ...     "messages": [{"role": "user", "content": "ab", "train": False}]}])})
    >>> summarize(d)["train"]["labels"], summarize(d)["train"]["chars"]["mean"]
    ({'positive': 1}, 2.0)
    """
    out = {}
    for split, d in ds.items():
        labels: dict[str, int] = {}
        turns, chars = [], []
        for row in d.select_columns(["label", "messages"]):
            labels[row["label"]] = labels.get(row["label"], 0) + 1
            turns.append(len(row["messages"]))
            chars.append(sum(len(m["content"]) for m in row["messages"]))

        def stat(xs: list[int]) -> dict[str, float]:
            return {"min": min(xs), "mean": round(sum(xs) / len(xs), 1), "max": max(xs)} if xs else {}

        out[split] = {"rows": len(d), "labels": dict(sorted(labels.items())), "turns": stat(turns), "chars": stat(chars)}
    return out
