"""``nat iterate``: NAT on the model's own trajectories, round after round: collect -> build -> fit -> eval.

Round ``k`` collects with the current model (the starting one in round 0, else round ``k-1``'s export),
labels every trajectory by the task's metric, builds the round's training set, fits (``nat fit`` in a
child process, from a YAML the round writes), and evaluates the new model on held-out questions.
Everything stays under ``<out>/<name>/round<k>/``: ``trajectories.jsonl``, ``data/`` (the build),
``fit.yaml`` and ``fit/`` (the run), ``model/`` (its export), ``eval/`` and ``round.json``.

A step whose output is complete is skipped, so a killed run resumes where it stopped and a finished one
does nothing. Collection runs each pass in seeded blocks of questions; with ``--policy hf`` a block
that a kill left partial is set aside (``trajectories.jsonl.superseded``) and collected again whole, so
the resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from lightning_nat.agent.config import AgentKindConfig, check_error_rate
from lightning_nat.core.console import console
from lightning_nat.core.jsonl import atomic_write_text, dumps_line, write_jsonl
from lightning_nat.core.options import option

BLOCK_POOLS = 8  # questions per seeded collection block, in pools: a kill costs at most one block of episodes
# Options a re-run may change: where and how fast things run, and how many rounds.
OPERATIONAL = {"rounds", "base_url", "api_key_env", "concurrency", "max_retries", "timeout", "tensor_parallel_size",
               "gpu_memory_utilization", "batch_size", "max_error_rate"}


def as_in_collect(name: str) -> Any:
    """``nat collect``'s option ``name``: the same default, help and bounds (one definition per option)."""
    from lightning_nat.agent.collect import CollectConfig

    f = next(f for f in fields(CollectConfig) if f.name == name)
    return option(f.default, **f.metadata)


@dataclass(kw_only=True)
class IterateConfig(AgentKindConfig):
    """The options of ``nat iterate`` (``--model`` is the starting model); ``--config FILE.yaml`` holds the same."""

    name: str = option(help="the run's name: everything is written under OUT/NAME/")
    out: str = option("runs", "root of the runs (default: runs)")
    task: str = as_in_collect("task")
    data: str = as_in_collect("data")
    held_out: str | None = option(None, "held-out questions each round's model is evaluated on")
    held_out_num: int = option(0, "hold out the last N questions of --data instead", min=0)
    eval_limit: int | None = option(None, "evaluate on the first N held-out questions", min=1)
    teacher: tuple[str, ...] = option((), "teacher trajectories (JSONL as nat collect writes) in round 0's data")
    rounds: int = option(2, "rounds (default: 2); raise it to continue a finished run", min=1)
    temperatures: tuple[float, ...] = as_in_collect("temperatures")
    samples: int = as_in_collect("samples")
    batch_size: int = as_in_collect("batch_size")
    variant: Literal["nat", "nut", "positive", "dpo", "kto"] = option("nat", "nat build --variant (default: nat)")
    include_earlier: bool = option(False, "add every earlier round's trajectories to a round's data")
    include_teacher: bool = option(False, "add the teacher's trajectories to every round's data, not only round 0's")
    fit_from: Literal["current", "base"] = option("current", "fit from the current model or --model (default: current)")
    fit_config: str = option(help="nat fit YAML template; the round sets its model, dataset, root and export folder")
    allow_empty_class: bool = option(False, "go on when a round has no positive (or no negative the variant needs)")
    keep_unfinished: bool = option(False, "train on negatives that never called finish too (nat build drops them)")
    seed: int = option(0, "seed of collection blocks, builds and fits (default: 0)")

    def __post_init__(self) -> None:
        from lightning_nat.core.options import check_numbers

        check_numbers(self)
        if self.held_out and self.held_out_num:
            raise ValueError("--held-out and --held-out-num: give one of them")

    def agent_for(self, model: str, task: str, out: str = "-") -> Any:
        """``nat eval``'s options for ``model`` with this run's agent options (collection and evaluation use them)."""
        from lightning_nat.agent.eval_command import EvalCommandConfig

        shared = {f.name: getattr(self, f.name) for f in fields(AgentKindConfig)}
        served = self.policy == "openai" and Path(model, "nat_prompt.json").is_file()
        return EvalCommandConfig(**{**shared, "model": model, "limit": None}, tasks=task, out=out, seed=self.seed,
                                 batch_size=self.batch_size, prompt_from=model if served else None)


def run_iterate(cfg: IterateConfig) -> int:
    """Every round not done yet, then the table across rounds (written to ``summary.json``)."""
    from lightning_nat.core.outputs import output_lock
    from lightning_nat.core.tasks import get_task

    run = Path(cfg.out) / cfg.name
    with output_lock(run, "nat iterate"):
        check_record(cfg, run)
        rounds = [run / f"round{k}" / "round.json" for k in range(cfg.rounds)]
        if all(p.exists() for p in rounds):
            console.print(f"{run}: all {cfg.rounds} rounds are done; nothing to do")
            print_summary(cfg, [json.loads(p.read_text()) for p in rounds])
            return 0
        task = get_task(cfg.task)
        train, held = questions(cfg, task)
        done: list[dict] = []
        for k, path in enumerate(rounds):
            done.append(json.loads(path.read_text()) if path.exists() else run_round(cfg, task, train, held, run, k))
            atomic_write_text(run / "summary.json", json.dumps({"name": cfg.name, "task": cfg.task, "variant": cfg.variant,
                                                                "rounds": done}, indent=1))
    print_summary(cfg, done)
    console.print(f"wrote {run}/summary.json")
    return 0


def check_record(cfg: IterateConfig, run: Path) -> None:
    """Refuse to continue a run started with other options; record them (``iterate.json``) on the first run."""
    from lightning_nat.core.options import command_line

    path, mine = run / "iterate.json", json.loads(json.dumps(asdict(cfg)))
    if path.exists():
        old = json.loads(path.read_text())["options"]
        changed = [k for k in mine if k not in OPERATIONAL and old.get(k) != mine[k]]
        if changed:
            was = ", ".join(f"--{k.replace('_', '-')} {old.get(k)} (now {mine[k]})" for k in changed)
            raise ValueError(f"{run} was started with {was} ({path}); run it with the same options, or another --name")
    text = json.dumps({"command": command_line("nat iterate", cfg), "options": mine}, indent=1)
    if not path.exists() or path.read_text() != text:  # a finished run's re-run writes nothing
        atomic_write_text(path, text)


def questions(cfg: IterateConfig, task: Any) -> tuple[list[dict], list[dict]]:
    """The training and the held-out questions; a held-out question that is also a training one is an error."""
    from lightning_nat.core.tasks import load_questions_for

    records = load_questions_for(task, path=cfg.data)
    held = load_questions_for(task, path=cfg.held_out) if cfg.held_out else records[len(records) - cfg.held_out_num:]
    train = records[:len(records) - (0 if cfg.held_out else cfg.held_out_num)][:cfg.limit]
    if not train:
        raise ValueError(f"{cfg.data}: no training question left (--held-out-num {cfg.held_out_num})")
    leaked = {r["question"] for r in train} & {r["question"] for r in held}
    if leaked:
        raise ValueError(f"{len(leaked)} held-out questions are also training questions (first: {sorted(leaked)[0]!r})")
    return train, held[:cfg.eval_limit]


def run_round(cfg: IterateConfig, task: Any, train: list[dict], held: list[dict], run: Path, k: int) -> dict:
    """Round ``k``'s steps, each skipped when its output is complete; returns (and writes) ``round.json``."""
    from lightning_nat.core.outputs import manifest
    from lightning_nat.data.build import BuildConfig, run_build

    rd = run / f"round{k}"
    current = cfg.model if k == 0 else str((run / f"round{k - 1}" / "model").resolve())
    start = current if cfg.fit_from == "current" else cfg.model
    trajectories, data, model = rd / "trajectories.jsonl", rd / "data", rd / "model"
    if manifest(data) is None:
        with loading(cfg, current, k):
            collect_round(cfg, task, train, current, trajectories, k, shown(current, run))
        inputs = [trajectories, *(run / f"round{j}" / "trajectories.jsonl" for j in range(k) if cfg.include_earlier),
                  *(cfg.teacher if k == 0 or cfg.include_teacher else ())]
        check_classes(cfg, k, trajectories, inputs)
        run_build(BuildConfig(format="jsonl", trajectories=tuple(map(str, inputs)), task=cfg.task, variant=cfg.variant,
                              seed=cfg.seed, allow_empty_class=cfg.allow_empty_class,
                              drop_unfinished=not cfg.keep_unfinished, out=str(data),
                              cache_dir=str(run / "cache")))
    if not model.is_dir():
        fit_round(cfg, rd, start, k)
    if held and manifest(rd / "eval") is None:
        with loading(cfg, str(model.resolve()), k):
            eval_round(cfg, task, held, str(model.resolve()), rd / "eval", k)
    record = round_record(cfg, task, rd, k, shown(current, run), shown(start, run))
    atomic_write_text(rd / "round.json", json.dumps(record, indent=1))
    return record


def shown(model: str, run: Path) -> str:
    """A model as the summary names it: a round's export relative to the run, else as given.

    >>> shown("/data/runs/x/round0/model", Path("/data/runs/x")), shown("models/start", Path("/data/runs/x"))
    ('round0/model', 'models/start')
    """
    return str(Path(model).relative_to(run.resolve())) if run.resolve() in Path(model).parents else model


def collect_round(cfg: IterateConfig, task: Any, records: list[dict], model: str, out: Path, k: int, label: str) -> None:
    """Every missing (question, temperature, sample) episode with ``model``, pass by pass, block by block."""
    from lightning_nat.agent.collect import append_durably, collect, key_of, recover
    from lightning_nat.agent.eval_command import seed_episodes
    from lightning_nat.core.prompts import resolve_eval_spec

    size = BLOCK_POOLS * cfg.batch_size
    blocks = [(float(t), s, i) for t in cfg.temperatures for s in range(cfg.samples) for i in range(0, len(records), size)]

    def keys(t: float, s: int, i: int) -> set:
        return {(str(r["id"]), t, s) for r in records[i:i + size]}

    done = {key_of(t) for t in recover(out)[0]}
    todo = [b for b in blocks if keys(*b) - done]
    if not todo:
        return
    ecfg = cfg.agent_for(model, task.name)
    _, saved, where, mode = ecfg.resolved()
    policy = ecfg.make_policy(todo[0][0])
    agent = ecfg.make_agent(task, policy, ecfg.task_tools([task])[0], max_turns=cfg.turns(),
                            prompt_spec=resolve_eval_spec(task, saved, None, None, mode, where))
    console.print(f"round {k}: collecting with {label} on {len(records)} questions")
    for t, s, i in todo:
        have = recover(out)[0]
        partial = [x for x in have if key_of(x) in keys(t, s, i)]
        if partial and cfg.policy == "hf":  # a killed block: collected again whole, from its seed, as it first ran
            append_durably(out.with_name(out.name + ".superseded"),
                           "".join(dumps_line(x.to_dict()) for x in partial).encode())
            write_jsonl(out, [x for x in have if key_of(x) not in keys(t, s, i)])
        seed_episodes(zlib.crc32(f"{cfg.seed}|{k}|{t}|{s}|{i}".encode()))
        summary = collect(agent, records[i:i + size], out, [t], s + 1, teacher=label, batch_size=cfg.batch_size)
        attempted = summary.new_episodes + summary.failures
        check_error_rate(summary.failures, attempted, cfg.max_error_rate, f"round {k}: {summary.failures} of "
                         f"{attempted} episodes failed on policy errors", "run again to retry them")


@contextmanager
def loading(cfg: IterateConfig, model: str, k: int) -> Iterator[None]:
    """A step that runs ``model``: an API's refusal of it says what to serve, and its memory is freed after it."""
    import gc

    import torch

    from lightning_nat.agent.policies import PolicyConfigError

    try:
        yield
    except PolicyConfigError as exc:  # --policy openai: the user serves each round's model
        raise PolicyConfigError(f"round {k}: {exc}; serve {model} under that name at {cfg.base_url} (e.g. `vllm serve "
                                f"{model}`) and run nat iterate again") from None
    finally:  # the next step may be a fit, in another process, that needs the accelerator's memory
        gc.collect()
        torch.cuda.empty_cache()  # a no-op where CUDA was never initialised


def check_classes(cfg: IterateConfig, k: int, own: Path, inputs: list) -> None:
    """Stop a round whose data has no positive, or no negative when the variant trains on them."""
    from lightning_nat.core.readers import read_trajectories

    def counts(paths: list) -> tuple[int, int]:
        labels = [t.reward for p in paths for t in read_trajectories(p)]
        return sum(labels), len(labels) - sum(labels)

    (pos, neg), (own_pos, own_neg) = counts(inputs), counts([own])
    needs = "positives" if cfg.variant == "positive" else "positives and negatives"
    if not cfg.allow_empty_class and (not pos or (not neg and cfg.variant != "positive")):
        also = f" ({pos} and {neg} with the earlier rounds' and teacher's)" if len(inputs) > 1 else ""
        raise ValueError(f"round {k}: the collection has {own_pos} positives and {own_neg} negatives{also}; variant "
                         f"{cfg.variant} trains on {needs}: stopping (more --samples or --temperatures, --teacher "
                         "trajectories, or --allow-empty-class)")


def fit_config(cfg: IterateConfig, tpl: Any, rd: Path, start: str) -> dict:
    """The round's ``nat fit`` config: the template with the start model, the build, the run's root and export folder."""
    from lightning_nat.data.build import PREFERENCE

    if not isinstance(tpl, dict) or not all(isinstance(tpl.get(s) or {}, dict) for s in ("model", "data", "trainer")):
        raise ValueError(f"{cfg.fit_config}: not a nat fit config (a YAML mapping with model, data and trainer)")
    objective, wanted = (tpl.get("model") or {}).get("objective"), cfg.variant if cfg.variant in PREFERENCE else "sft"
    if objective not in (None, wanted):
        raise ValueError(f"{cfg.fit_config}: model.objective {objective} does not train a {cfg.variant} build "
                         f"({wanted}); change it or drop it")
    root = (rd / "fit").resolve()
    start = str(Path(start).resolve()) if Path(start).exists() else start  # else a Hub id
    return {**tpl, "model": {**(tpl.get("model") or {}), "model_name_or_path": start,
                             **({"objective": wanted} if wanted != "sft" else {})},
            "data": {**(tpl.get("data") or {}), "dataset_dir": str((rd / "data").resolve())},
            "trainer": {**(tpl.get("trainer") or {}), "default_root_dir": str(root)},
            "export": {**(tpl.get("export") or {}), "dirpath": str(root / "export")},
            "seed_everything": tpl.get("seed_everything", cfg.seed)}


def fit_round(cfg: IterateConfig, rd: Path, start: str, k: int) -> None:
    """``nat fit`` in a child process (resumed from its last checkpoint), its export then moved to ``model/``."""
    import shutil

    import yaml

    from lightning_nat.core.outputs import output_lock

    config = (rd / "fit.yaml").resolve()
    try:
        template = yaml.safe_load(Path(cfg.fit_config).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{cfg.fit_config}: not valid YAML ({' '.join(str(exc).split())})") from None
    fit = fit_config(cfg, template, rd, start)
    atomic_write_text(config, f"# nat iterate {cfg.name}, round {k}: launched as\n#   nat fit --config "
                              f"{shlex.quote(str(config))}\n# (with --ckpt_path last when resuming)\n"
                      + yaml.safe_dump(fit, sort_keys=False))
    root = Path(fit["trainer"]["default_root_dir"])
    last = Path((fit.get("checkpoint") or {}).get("dirpath") or root / "checkpoints") / "last.ckpt"
    with output_lock(root, "nat iterate"):  # refused while a fit still runs there (one a kill -9 left orphaned)
        shutil.rmtree(root / "export", ignore_errors=True)  # a kill during the export leaves a part of it
    resume = ["--ckpt_path", "last"] if last.exists() else []
    console.print(f"round {k}: nat fit --config {config} {' '.join(resume)}")
    rc = subprocess.run([sys.executable, "-m", "lightning_nat.cli", "fit", "--config", str(config), *resume]).returncode
    if rc:
        raise RuntimeError(f"round {k}: nat fit exited with {rc} (its messages are above); nat iterate resumes it")
    os.replace(root / "export", rd / "model")


def eval_round(cfg: IterateConfig, task: Any, held: list[dict], model: str, out: Path, k: int) -> None:
    """The round's model on the held-out questions, written as a ``nat eval`` output."""
    from lightning_nat.agent.eval_command import evaluate
    from lightning_nat.core.outputs import writing

    ecfg = cfg.agent_for(model, task.name, str(out))
    proto, _, _, mode = ecfg.resolved()
    policy = ecfg.make_policy(proto.temperature)
    console.print(f"round {k}: evaluating on {len(held)} held-out questions")
    report = evaluate(policy, ecfg, plan=[(task, held, ecfg.task_tools([task], mode)[0])],
                      meta={"round": k, "policy": cfg.policy, "max_turns": proto.max_turns})
    failed = round(report.results[task.name].failed * len(held))
    check_error_rate(failed, len(held), cfg.max_error_rate, f"round {k}: {failed} of {len(held)} held-out episodes "
                     "ended on policy errors", "run again to evaluate again")
    with writing(out, "nat eval") as staged:
        report.write(staged)


def round_record(cfg: IterateConfig, task: Any, rd: Path, k: int, collected_with: str, trained_from: str) -> dict:
    """What a round collected, trained on and scored: its ``round.json``."""
    import datasets

    from lightning_nat.core.readers import read_trajectories
    from lightning_nat.core.results import EvalReport

    trajs = read_trajectories(rd / "trajectories.jsonl")
    pos, asked = sum(t.reward for t in trajs), {t.question_id for t in trajs}
    labels = datasets.load_from_disk(str(rd / "data"))["train"]["label"]
    record = {"round": k, "collected_with": collected_with, "trained_from": trained_from, "episodes": len(trajs),
              "positives": pos, "negatives": len(trajs) - pos,
              "no_positive_share": round(1 - len({t.question_id for t in trajs if t.reward}) / (len(asked) or 1), 4),
              "train_accuracy": round(pos / (len(trajs) or 1), 4),
              "trained_on": {label: labels.count(label) for label in sorted(set(labels))},
              "held_out_accuracy": None, "held_out_metrics": None}
    if (rd / "eval").is_dir():
        report = EvalReport.read(rd / "eval", episodes=True)
        episodes = report.episodes[task.name]
        record.update(held_out_accuracy=round(sum(t.reward for t in episodes) / len(episodes), 4),
                      held_out_metrics=report.results[task.name].metrics)
    return record


def print_summary(cfg: IterateConfig, rounds: list[dict]) -> None:
    """The table across rounds: what each collection gave, and each new model's held-out accuracy."""
    from lightning_nat.core.console import table

    rows = [[r["round"], r["collected_with"], r["positives"], r["negatives"], f"{r['no_positive_share']:.0%}",
             f"{r['train_accuracy']:.1%}", "-" if r["held_out_accuracy"] is None else f"{r['held_out_accuracy']:.1%}"]
            for r in rounds]
    console.print(table(f"nat iterate {cfg.name} ({cfg.variant})", ["round", "collected with", "positives", "negatives",
                        "no positive", "train acc.", "held-out acc."], rows))
