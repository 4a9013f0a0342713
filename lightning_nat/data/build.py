"""`nat build`: labelled trajectories -> the conversations one variant trains on, as a ``datasets`` folder.

This is the paper's method. A training conversation is the prompt spec's head turns (instruction, and the
question in the template of its trajectory's class, :mod:`lightning_nat.core.prompts`), then the
trajectory's own turns; only assistant turns carry ``train=True``. The variants (presets) differ in which
trajectories they keep (:mod:`lightning_nat.data.select`) and which class each gets. :class:`BuildSpec` is the
one build config (the CLI's options, ``nat fit``'s ``data.build``, a card's rebuild command);
:func:`build_dataset` runs the importable :class:`NATBuilder`, cached by every parameter and input's contents.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import datasets

from lightning_nat.core.artifacts import PREVIEW_FILE, BuildRecord, write_build
from lightning_nat.core.console import print_build_summary
from lightning_nat.core.jsonl import dumps_line
from lightning_nat.core.options import check_numbers, option
from lightning_nat.core.outputs import writing
from lightning_nat.core.prompts import (
    PRESETS,
    STYLES,
    PromptSpec,
    default_style,
    head_messages,
    make_spec,
    negative_class,
    preset,
)
from lightning_nat.core.readers import ReadReport, load_questions, read_trajectories
from lightning_nat.core.secrets import mask_all
from lightning_nat.core.tasks import Task
from lightning_nat.core.trajectory import Trajectory, message_to_row
from lightning_nat.data.select import BuildStats, kto_balance, pair_trajectories, reference_population, select

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
        # Function calls (None on ReAct turns); arguments are JSON text, see lightning_nat.core.trajectory.
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
PREFERENCE = ("dpo", "kto")
# The preset whose prompt preference rows take: every trajectory under the plain positive prompt, as w/o Neg and NUT.
PLAIN_PROMPT = "nut"


# ---------------------------------------------------------------- the config


@dataclass(kw_only=True)
class BuildSpec:
    """What a build reads, keeps and how it renders it (see ``nat build --help``); ``nat fit``'s ``data.build``."""

    format: Literal["nat", "openai", "sharegpt", "jsonl"] = option(
        "nat", "input format: the NAT reference JSON (joined with --questions), OpenAI messages JSONL, ShareGPT JSONL, "
               "or our canonical trajectory JSONL (default: nat)", always=True)
    trajectories: tuple[str, ...] = option(
        help="trajectory files (positives and negatives may share a file or not)", metavar="FILE")
    questions: str | None = option(
        None, "question file (JSON or JSONL with id, question, answer); needed by --format nat", metavar="FILE")
    task: str = option(
        "", "task name or task YAML, which picks the instruction text; without it, each trajectory keeps its own "
            "leading system turn(s) as the instruction (task-less build)")
    variant: str = option(
        "nat", "which training set to build: " + "; ".join(f"{name}: {p['description']}" for name, p in PRESETS.items()),
        choices=list(PRESETS), always=True)
    pos_num: int | None = option(None, "positives to keep: the first N unique by question (default: all)", min=0)
    neg_num: int | None = option(None, "negatives to sample with --seed (default: all)", min=0)
    seed: int = option(42, "sampling seed (default: 42)", always=True)
    pos_sampling: Literal["first", "random", "reference"] = option(
        "first", "first N unique positives in file order, a seeded random N, or the first N records with repeated "
                 "questions kept, as the reference code took them (default: first)")
    neg_sampling: Literal["paper", "reference"] = option(
        "paper", "paper: a seeded sample of the negatives left after filtering; reference: random.seed(SEED) sample over "
                 "every record of the negatives file(s) in file order, then filter, which reproduces the reference "
                 "code's choice (default: paper)")
    prompt_style: str | None = option(
        None, "reference: the paper's reference strings verbatim (instruction turn, acknowledgement, 'Question: ... "
              "**correctly**.', NAT-2's four F1 prefixes, Table 4 ablations); native: this package's system instruction "
              "and marker sentence (default: reference for the tasks whose declaration names reference_prompts, the "
              "paper's six; native otherwise)", choices=list(STYLES))
    mode: Literal["react", "cot"] = option(
        "react", "react (tools) or cot: chain-of-thought solutions, prompted as the reference's "
                 "cot-zero-shot-target-aware (paper Table 7) (default: react)", flag="--prompt-mode")
    allow_empty_class: bool = option(
        False, "build even when a filter removed every positive or every negative (an error otherwise)")
    thresholds: tuple[float, ...] | None = option(
        None, "native style: score bands for fine-grained NAT, overriding the variant's (e.g. 0.4 for NAT-2); the "
              "reference style's NAT-2 bands are F1 = 0, < 0.4, < 1, = 1")
    placement: Literal["suffix", "prefix", "system"] | None = option(
        None, "native style: marker after (default) or before the question in the first user turn, or (system) at the "
              "end of the system turn, the question left bare")
    drop_unfinished: bool = option(True, "keep negatives that never called finish", flag="--keep-unfinished")
    min_score: float | None = option(
        None, "drop negatives scoring below this (1e-6 drops negatives with F1 = 0, as the paper does)")
    dedupe: bool = option(True, "keep identical trajectories", flag="--no-dedupe")
    dev_num: int = option(
        0, "held-out positives (questions with no training positive) in a 'dev' split, for perplexity", min=0)
    on_error: Literal["raise", "skip"] = option(
        "raise", "on a bad record: stop with an error naming it (default), or skip it and report it")
    pairs_per_question: int | None = option(
        None, "--variant dpo: at most N seeded (positive, negative) pairs per question (default: every pair)",
        metavar="N", min=1)

    def __post_init__(self) -> None:
        check_numbers(self)
        if isinstance(self.trajectories, (str, os.PathLike)):
            self.trajectories = (str(self.trajectories),)
        self.trajectories = tuple(str(t) for t in self.trajectories)
        if self.thresholds is not None:
            self.thresholds = tuple(float(t) for t in self.thresholds)
        if self.variant not in PRESETS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {', '.join(PRESETS)}")
        if self.pairs_per_question is not None and self.variant != "dpo":
            raise ValueError(f"--pairs-per-question applies to --variant dpo only, not {self.variant}")

    def spec(self) -> BuildSpec:
        """The build itself, without where it is written."""
        return BuildSpec(**{f.name: getattr(self, f.name) for f in fields(BuildSpec)})


@dataclass(kw_only=True)
class BuildConfig(BuildSpec):
    """The options of ``nat build``: a :class:`BuildSpec` and where to write it."""

    cache_dir: str | None = option(None, "builder cache folder (default: the datasets cache)")
    out: str = option(help="output folder for datasets.load_from_disk (written whole at the end: a failed build "
                           "leaves the previous one as it was)")
    overwrite: bool = option(
        False, "replace --out even if it is a non-empty folder that is not an earlier `nat build` output (its "
               "files are deleted)")

    @classmethod
    def from_record(cls, config: dict[str, Any], out: str = "DIR") -> BuildConfig:
        """The config that rebuilds a ``build.json`` ``config`` record, inputs named by file name (as a card shows)."""
        kw: dict[str, Any] = {f.name: config[f.name] for f in fields(BuildSpec) if f.name in config}
        kw["variant"] = config.get("name", kw.get("variant", "nat"))
        kw["trajectories"] = tuple(Path(p).name for p in config.get("trajectories", ()))
        if config.get("questions"):
            kw["questions"] = Path(config["questions"]).name
        p = preset(kw["variant"])
        if tuple(float(t) for t in config.get("thresholds") or ()) == p["thresholds"]:
            kw["thresholds"] = None
        if config.get("placement") == p["placement"]:
            kw["placement"] = None
        return cls(**kw, out=out)


# ---------------------------------------------------------------- one trajectory -> one row


def label_and_class(traj: Trajectory, keeps: str, spec: PromptSpec) -> tuple[str, int]:
    """The label a trajectory gets in a training set that ``keeps`` so, and its class (index into ``spec.templates``).

    >>> t = Trajectory("t", "", "q?", [{"role": "assistant", "content": "x"}], reward=False, score=0.5)
    >>> two = PromptSpec("native", "", "nat", ("neg {question}", "pos {question}"))
    >>> label_and_class(t, "nat", two), label_and_class(t, "nut", two)
    (('negative', 0), ('negative', 1))
    >>> label_and_class(t, "nat", PromptSpec("native", "", "nat-2", ("a", "b", "c"), thresholds=(0.4,)))
    ('negative-2', 1)
    """
    top = len(spec.templates) - 1
    if traj.reward:
        return "positive", top
    if keeps == "positive":
        raise ValueError(f"variant {keeps!r} takes no negatives (trajectory {traj.id})")
    if keeps != "nat":
        return "negative", top
    if top > 1 and traj.score is None:
        raise ValueError(f"trajectory {traj.id} has no score, so fine-grained NAT cannot place it in a class")
    cls = negative_class(spec, traj.score, False)
    return ("negative" if top == 1 else f"negative-{cls + 1}"), cls


def to_conversation(traj: Trajectory, spec: PromptSpec, cls: int, label: str) -> dict[str, Any]:
    """One training row: the spec's head turns for class ``cls``, then the trajectory's turns.

    >>> t = Trajectory("t1", "", "2+3?", [{"role": "assistant", "content": "Action: finish[5]"}], reward=True)
    >>> c = to_conversation(t, PromptSpec("native", "", "nat", ("n {question}", "p {question}"), "Solve."), 1, "positive")
    >>> [(m["role"], m["train"]) for m in c["messages"]]
    [('system', False), ('user', False), ('assistant', True)]
    """
    messages = [message_to_row(m, False) for m in head_messages(spec, traj.question, cls)]
    messages += [message_to_row(m, m["role"] == "assistant") for m in traj.messages]
    return mask_all({
        "id": traj.id,
        "question_id": traj.question_id or traj.id,
        "task": traj.task,
        "label": label,
        "score": traj.score,
        "reward": traj.reward,
        "messages": messages,
        # JSON text: Arrow needs one schema for every row, and tool schemas differ from tool to tool.
        "tools": json.dumps(traj.tools, ensure_ascii=False) if traj.tools else None,
    })


def instruction_of(traj: Trajectory, task: Task | None) -> str | None:
    """The instruction a trajectory trains under when not its task's (None): its own leading system turn(s).

    >>> t = Trajectory("r0", "", "2+3?", [{"role": "assistant", "content": "Action: finish[5]"}], True,
    ...                meta={"source_system": "You are a calculator agent."})
    >>> instruction_of(t, None)
    'You are a calculator agent.'
    """
    if task is not None and not task.instruction_from_data:
        return None
    source = traj.meta.get("source_system")
    if isinstance(source, str) and source.strip():
        return source
    why = (f"task {task.name!r} takes its instruction from the data" if task is not None
           else f"task {traj.task!r} is not registered" if traj.task else "no task was given")
    raise ValueError(f"trajectory {traj.id}: no instruction: {why} and the trajectory has no leading system turn "
                     "(give --task NAME or a task YAML, or record the system prompt)")


def pair_row(chosen: dict[str, Any], rejected: dict[str, Any]) -> dict[str, Any]:
    """One DPO row from two rendered conversations: the chosen one's fields plus the rejected side.

    >>> c = {"id": "p", "question_id": "q", "task": "t", "label": "positive", "score": 1.0, "reward": True, "messages": []}
    >>> r = {**c, "id": "n", "label": "negative", "score": 0.0, "reward": False, "messages": [{"role": "assistant"}]}
    >>> row = pair_row(c, r); row["id"], row["label"], row["rejected_id"], row["rejected"]
    ('p|n', 'pair', 'n', [{'role': 'assistant'}])
    """
    if chosen["question_id"] != rejected["question_id"]:
        raise ValueError(f"cannot pair {chosen['id']!r} and {rejected['id']!r}: different questions")
    return {**chosen, "id": f"{chosen['id']}|{rejected['id']}", "label": "pair", "chosen_id": chosen["id"],
            "rejected_id": rejected["id"], "rejected_score": rejected["score"], "rejected": rejected["messages"]}


def unpaired_row(conv: dict[str, Any]) -> dict[str, Any]:
    """A conversation in the DPO row layout with an empty rejected side (dev rows, for perplexity).

    >>> unpaired_row({"id": "p", "messages": []})["rejected"]
    []
    """
    return {**conv, "chosen_id": conv["id"], "rejected_id": "", "rejected_score": None, "rejected": []}


# ---------------------------------------------------------------- the builder


@dataclass
class NATConfig(datasets.BuilderConfig):
    """The builder's config: one :class:`BuildSpec` (absolute paths) and digests of the inputs and the task, which
    ``datasets`` keys its cache on (an edited file or task declaration rebuilds)."""

    spec: BuildSpec | None = None
    input_sha256: str = ""
    task_sha256: str = ""


class NATBuilder(datasets.GeneratorBasedBuilder):
    """Builds the training conversations of one variant from trajectory files."""

    BUILDER_CONFIG_CLASS = NATConfig
    BUILDER_CONFIGS = [NATConfig(name=name, version=datasets.Version("1.1.0"), description=p["description"])
                       for name, p in PRESETS.items()]
    DEFAULT_CONFIG_NAME = "nat"

    def _info(self) -> datasets.DatasetInfo:
        features = PAIR_FEATURES if self.config.name == "dpo" else FEATURES
        return datasets.DatasetInfo(description=self.config.description or "", features=features)

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        splits, self.build_report = build_rows(self.config.spec)
        return [datasets.SplitGenerator(name=name, gen_kwargs={"rows": rows}) for name, rows in splits.items()]

    def _generate_examples(self, rows: list[dict[str, Any]]):
        yield from enumerate(rows)


def build_rows(spec: BuildSpec) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """Read, select and render: the rows of every split, and the build's report (what was read, skipped, kept)."""
    from lightning_nat.core.tasks import find_task, get_task

    p = preset(spec.variant)
    keeps = p["keeps"]
    task = get_task(spec.task) if spec.task else None
    style = spec.prompt_style or default_style(task)
    thresholds = p["thresholds"] if spec.thresholds is None else spec.thresholds
    placement = p["placement"] if spec.placement is None else spec.placement
    if style == "reference" and (thresholds != p["thresholds"] or placement != p["placement"]):
        opt, value = ("--thresholds", thresholds) if thresholds != p["thresholds"] else ("--placement", placement)
        raise ValueError(f"{opt} {value} applies to --prompt-style native only; the reference style takes its strings "
                         f"and classes from the preset ({spec.variant}, see nat build --help)")
    questions = load_questions(spec.questions) if spec.questions else None
    read = ReadReport()
    trajs = []
    for path in spec.trajectories:
        trajs += read_trajectories(path, spec.format, questions, task.name if task else "", spec.on_error, read)
    stats = BuildStats()
    population = reference_population(trajs, read, spec.trajectories) if spec.neg_sampling == "reference" else None
    pos, neg, dev = select(trajs, "nut" if keeps in PREFERENCE else keeps, spec.pos_num, spec.neg_num, spec.seed,
                           spec.pos_sampling, spec.drop_unfinished, spec.min_score, spec.dedupe, spec.dev_num, stats,
                           neg_population=population, allow_empty_class=spec.allow_empty_class)
    if not pos and not neg:
        why = [f"read {len(trajs)} trajectories"]
        if read.skipped:
            reasons = "; ".join(f"{n} x {problem}" for problem, n in read.reasons().most_common(3))
            why.append(f"skipped {len(read.skipped)} bad records ({reasons})")
        if stats.filtered:
            why.append("filtered " + ", ".join(f"{n} {r}" for r, n in stats.filtered.items()))
        raise ValueError(f"{', '.join(spec.trajectories)}: no training conversation is left ({'; '.join(why)})")
    replaced = sum("question_turn" in t.meta for t in pos + neg + dev)
    if replaced:
        stats.notes.append(f"{replaced} kept trajectories had a question turn holding more than the 'question' field "
                           "(a few-shot prefix or a template); the marked prompt replaced it (its text is in the "
                           "trajectory's meta.question_turn)")
    prompt_preset = PLAIN_PROMPT if keeps in PREFERENCE else spec.variant
    specs: dict[tuple[str, str | None], PromptSpec] = {}

    def spec_of(t: Trajectory) -> PromptSpec:
        # Task-less (or ``instruction: from_data``) builds: each trajectory trains under its own system turn.
        own = task if task is not None or not t.task else find_task(t.task)
        key = (own.name if own else "", instruction_of(t, own))
        if key not in specs:
            specs[key] = make_spec(own, prompt_preset, style, spec.mode, p["markers"], placement, thresholds, key[1])
        return specs[key]

    def render(ts: Sequence[Trajectory], how: str) -> list[dict[str, Any]]:
        rows = []
        for t in ts:
            s = spec_of(t)
            label, cls = label_and_class(t, how, s)
            rows.append(to_conversation(t, s, cls, label))
        return rows

    extra: dict[str, Any] = {}
    if keeps == "kto":
        splits = {"train": render([*pos, *neg], PLAIN_PROMPT)}
        extra["kto"] = kto_balance(len(pos), len(neg))
    elif keeps == "dpo":
        pairs, counts = pair_trajectories(pos, neg, spec.pairs_per_question, spec.seed)
        splits = {"train": [pair_row(c, r) for c, r in zip(render([c for c, _ in pairs], PLAIN_PROMPT),
                                                            render([r for _, r in pairs], PLAIN_PROMPT))]}
        extra["dpo"] = {**counts, "pairs_per_question": spec.pairs_per_question, "seed": spec.seed}
        if not splits["train"]:
            raise ValueError(f"the dpo build has no training row: no question has both a positive and a different "
                             f"negative among the {len(pos)} positives and {len(neg)} negatives selected")
    else:
        splits = {"train": render(pos + neg, keeps)}
    if dev:
        rows = render(dev, PLAIN_PROMPT if keeps in PREFERENCE else keeps)
        splits["dev"] = [unpaired_row(r) for r in rows] if keeps == "dpo" else rows
    report = {"read": dict(read.read), "skipped": [list(s) for s in read.skipped],
              "skipped_by_reason": dict(read.reasons()), "stats": {**asdict(stats), "filtered": dict(stats.filtered)},
              "prompt": spec_of((pos + neg)[0]).to_dict(), **extra}
    return splits, report


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


REPORT_NAME = "nat_build_report.json"  # the build's report, cached beside its Arrow files


def build_dataset(trajectories: Sequence[str | os.PathLike] | BuildSpec, config: str = "nat", *,
                  cache_dir: str | None = None, **params: Any) -> BuildResult:
    """Build (or load from cache) variant ``config``; ``params`` are :class:`BuildSpec` fields, or give a BuildSpec.

    The cache keys on every parameter and on the contents of the input files and the task declaration.
    """
    from lightning_nat.core.tasks import get_task

    unknown = set(params) - {f.name for f in fields(BuildSpec)}
    if unknown:
        raise TypeError(f"unknown build parameter(s): {', '.join(sorted(unknown))}")
    spec = trajectories if isinstance(trajectories, BuildSpec) else \
        BuildSpec(trajectories=tuple(str(p) for p in trajectories), variant=config, **params)
    files = [str(Path(p).resolve()) for p in spec.trajectories]
    questions = str(Path(spec.questions).resolve()) if spec.questions else None
    for f in files + ([questions] if questions else []):
        if not Path(f).is_file():
            raise FileNotFoundError(f"no such file: {f}")
    task_sha256 = ""
    task_name = spec.task
    if spec.task:  # a task YAML path is loaded and registered here; the rows then carry its name
        task = get_task(spec.task)
        task_name = task.name
        task_sha256 = hashlib.sha256(repr((task.instruction, task.tools, task.instruction_from_data,
                                           task.source)).encode()).hexdigest()
    spec = replace(spec, trajectories=tuple(files), questions=questions, task=task_name)
    builder = NATBuilder(config_name=spec.variant, cache_dir=cache_dir, spec=spec,
                         input_sha256=file_sha256(files + ([questions] if questions else [])), task_sha256=task_sha256)
    report_path = Path(builder.cache_dir) / REPORT_NAME
    from_cache = (Path(builder.cache_dir) / "dataset_info.json").exists() and report_path.exists()
    builder.download_and_prepare()
    if from_cache:
        report = json.loads(report_path.read_text())
    else:
        report = builder.build_report
        report_path.write_text(json.dumps(report, indent=1))
    record = {"name": spec.variant, **asdict(spec), "input_sha256": builder.config.input_sha256,
              "task_sha256": task_sha256}
    return BuildResult(dataset=builder.as_dataset(), report=report, config=record, from_cache=from_cache,
                       cache_dir=builder.cache_dir)


def save_build(result: BuildResult, out: str | os.PathLike, preview_per_label: int = 5) -> Path:
    """Write a built dataset where ``datasets.load_from_disk`` opens it, with a preview and the build record."""
    out = Path(out)
    result.dataset.save_to_disk(str(out))
    shown: Counter = Counter()
    with open(out / PREVIEW_FILE, "w", encoding="utf-8") as fh:
        for split, ds in result.dataset.items():
            for row in ds:
                shown[split, row["label"]] += 1
                if shown[split, row["label"]] <= preview_per_label:
                    fh.write(dumps_line({"split": split, **row}))
    write_build(out, BuildRecord(config=result.config, report=result.report, prompt=result.report.get("prompt")))
    return out


def summarize(ds: datasets.DatasetDict) -> dict[str, dict[str, Any]]:
    """Counts per label, turns and characters per conversation, for each split.

    >>> d = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"label": "positive",
    ...     "messages": [{"role": "user", "content": "ab", "train": False}]}])})
    >>> summarize(d)["train"]["labels"], summarize(d)["train"]["chars"]["mean"]
    ({'positive': 1}, 2.0)
    """
    def stat(xs: list[int]) -> dict[str, float]:
        return {"min": min(xs), "mean": round(sum(xs) / len(xs), 1), "max": max(xs)} if xs else {}

    out = {}
    for split, d in ds.items():
        conversations = d["messages"]
        out[split] = {"rows": len(d), "labels": dict(sorted(Counter(d["label"]).items())),
                      "turns": stat([len(c) for c in conversations]),
                      "chars": stat([sum(len(m["content"]) for m in c) for c in conversations])}
    return out


def run_build(cfg: BuildConfig) -> int:
    """``nat build``: build, write ``cfg.out`` whole (under its lock) and print the summary."""
    inputs = [*cfg.trajectories, *([cfg.questions] if cfg.questions else [])]
    with writing(cfg.out, "nat build", cfg.overwrite, inputs) as staged:
        result = build_dataset(cfg.spec(), cache_dir=cfg.cache_dir)
        save_build(result, staged)
    print_build_summary(summarize(result.dataset), result.report, cfg.out, result.from_cache)
    return 0
