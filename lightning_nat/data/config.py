"""`nat build`: its options as one dataclass (the CLI, the library, ``nat fit``'s ``data.build`` and the cards)."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core.artifacts import BUILD_FILE
from lightning_nat.core.options import command_line, option

# Fields of BuildConfig that say where and how to write, not what is built: no part of a rebuild command.
OUTPUT_FIELDS = ("cache_dir", "out", "overwrite")


def _preset_names() -> list[str]:
    from lightning_nat.data.builders import PRESETS

    return [c.name for c in PRESETS]


def _variant_help() -> str:
    from lightning_nat.data.builders import PRESETS

    return "which training set to build: " + "; ".join(f"{c.name}: {c.description}" for c in PRESETS)


def _prompt_styles() -> list[str]:
    from lightning_nat.core.prompts import STYLES

    return list(STYLES)


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
    variant: str = option("nat", _variant_help, choices=_preset_names, always=True)
    pos_num: int | None = option(None, "positives to keep: the first N unique by question (default: all)")
    neg_num: int | None = option(None, "negatives to sample with --seed (default: all)")
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
              "paper's six; native otherwise)", choices=_prompt_styles)
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
        0, "held-out positives (questions with no training positive) in a 'dev' split, for perplexity")
    on_error: Literal["raise", "skip"] = option(
        "raise", "on a bad record: stop with an error naming it (default), or skip it and report it")
    pairs_per_question: int | None = option(
        None, "--variant dpo: at most N seeded (positive, negative) pairs per question (default: every pair)",
        metavar="N")

    def builder_params(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~lightning_nat.builders.build_dataset` (less files and variant).

        ``None`` thresholds and placement leave the preset's; ``pairs_per_question`` belongs to ``dpo`` only.

        >>> BuildSpec(trajectories=("a.json",), placement="prefix").builder_params()["placement"]
        'prefix'
        >>> BuildSpec(trajectories=("a.json",), pairs_per_question=2).builder_params()
        Traceback (most recent call last):
        ...
        ValueError: --pairs-per-question applies to --variant dpo only, not nat
        """
        params = {f.name: getattr(self, f.name) for f in fields(BuildSpec) if f.name not in ("trajectories", "variant")}
        for key in ("thresholds", "placement", "pairs_per_question"):
            if params[key] is None:
                del params[key]
        if "thresholds" in params:
            params["thresholds"] = tuple(float(t) for t in params["thresholds"])
        if "pairs_per_question" in params and self.variant != "dpo":
            raise ValueError(f"--pairs-per-question applies to --variant dpo only, not {self.variant}")
        return params


@dataclass(kw_only=True)
class BuildConfig(BuildSpec):
    """The options of ``nat build``: a :class:`BuildSpec` and where to write it."""

    cache_dir: str | None = option(None, "builder cache folder (default: the datasets cache)")
    out: str = option(help="output folder for datasets.load_from_disk (written whole at the end: a failed build "
                           "leaves the previous one as it was)")
    overwrite: bool = option(
        False, "replace --out even if it is a non-empty folder that is not an earlier `nat build` output")

    @classmethod
    def from_record(cls, config: dict[str, Any], out: str = "DIR") -> BuildConfig:
        """The config that rebuilds a ``build.json`` ``config`` record, inputs named by file name (as a card shows).

        Values equal to the variant preset's (thresholds, placement) are left to the preset.
        """
        from lightning_nat.data.builders import PRESETS

        preset = next((c for c in PRESETS if c.name == config.get("name")), None)
        kw: dict[str, Any] = {f.name: config[f.name] for f in fields(BuildSpec) if f.name in config}
        kw["variant"] = config.get("name", kw.get("variant", "nat"))
        kw["trajectories"] = tuple(Path(p).name for p in config.get("trajectories", ()))
        if config.get("questions"):
            kw["questions"] = Path(config["questions"]).name
        thresholds = tuple(float(t) for t in (config.get("thresholds") or ()))
        kw["thresholds"] = None if preset is not None and thresholds == tuple(preset.thresholds) else thresholds
        if preset is not None and config.get("placement") == preset.placement:
            kw["placement"] = None
        return cls(**kw, out=out)

    def spec(self) -> BuildSpec:
        """The build itself, without where it is written."""
        return BuildSpec(**{k: v for k, v in asdict(self).items() if k not in OUTPUT_FIELDS})


def build_command(cfg: BuildConfig) -> str:
    """The ``nat build`` command line that parses back to ``cfg``.

    >>> build_command(BuildConfig(trajectories=("p.json", "n.json"), neg_num=5, dedupe=False, out="DIR"))
    'nat build --format nat --trajectories p.json n.json --variant nat --neg-num 5 --seed 42 --no-dedupe --out DIR'
    """
    return command_line("nat build", cfg)


def run_build(cfg: BuildConfig) -> int:
    """``nat build``: build, write ``cfg.out`` whole (under its lock) and print the summary."""
    from lightning_nat.core.console import print_build_summary
    from lightning_nat.core.outputs import check_out_folder, output_lock, staged_folder
    from lightning_nat.data.builders import build_dataset, save_build, summarize

    params = cfg.builder_params()
    check_out_folder(cfg.out, BUILD_FILE, "nat build", cfg.overwrite,
                     inputs=[*cfg.trajectories, *([cfg.questions] if cfg.questions else [])])
    with output_lock(cfg.out, "nat build"):
        # Checked again under the lock: another build may have finished into it meanwhile.
        check_out_folder(cfg.out, BUILD_FILE, "nat build", cfg.overwrite)
        result = build_dataset(list(cfg.trajectories), cfg.variant, cache_dir=cfg.cache_dir, **params)
        with staged_folder(cfg.out) as staged:
            save_build(result, staged)
    print_build_summary(summarize(result.dataset), result.report, cfg.out, result.from_cache)
    return 0


def add_build_options(parser: argparse.ArgumentParser) -> None:
    """The ``nat build`` flags, for tools that embed the command."""
    from lightning_nat.core.options import add_options

    add_options(parser, BuildConfig)
