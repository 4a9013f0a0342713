"""`nat demo`: the whole mission offline on a CPU, on the synthetic arithmetic task.

collect (scripted teacher, real agent loop and calculator) -> build positive / NUT / NAT
with few positives and several times more negatives -> train the same scratch model for
each with the same budget -> evaluate each with the episode engine on held-out problems
-> a table like the paper's Table 2, plus the perplexity and accuracy plots.
"""

from __future__ import annotations

import json
import statistics
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core.options import check_numbers, option
from lightning_nat.demo.base import BaseSpec, make_base

STRATEGIES = ("positive", "nut", "nat", "dpo", "kto")
# The default comparison: the paper's three SFT strategies. DPO/KTO rows are opt-in (--strategies), as they
# lengthen the run past its 10-minute budget.
DEFAULT_STRATEGIES = ("positive", "nut", "nat")
# Preference baselines continue from the demo's own w/o-Neg model (SFT, then DPO/KTO), on the same trajectories.
PREFERENCE = ("dpo", "kto")
# Extra tokens allowed per generated turn beyond the longest teacher turn (at least BUDGET_MIN_MARGIN).
BUDGET_MARGIN = 0.25
BUDGET_MIN_MARGIN = 8

SIZES = "sizes and rates (defaults: the full run; --quick shrinks them)"


def _size(default: Any, help: str, **meta: Any) -> Any:
    """A size or rate of the demo: a flag whose default is the full run's, or ``--quick``'s under it."""
    return option(default, help, group=SIZES, unset=True, **meta)


@dataclass
class DemoConfig:
    """Every size and rate of the demo (``nat demo --help``)."""

    out: str = option("runs/demo", "output folder (default: runs/demo)")
    quick_sizes: bool = option(False, "a one-minute smoke run with tiny sizes", flag="--quick")
    overwrite: bool = option(False, "replace --out even if it is a non-empty folder that is not an earlier `nat demo` "
                                    "output (its files are deleted)")
    profile: Literal["cpu", "gpu"] = option(
        "cpu", "cpu, or gpu: a bigger model, pretraining and budget on a CUDA device (default: cpu)")
    seeds: int = option(1, "seeds to average over (mean, sd and a 95 % interval)", min=1)
    first_seed: int = option(0, "first seed (default: 0; the report uses 0-4, 100-104 were kept for design)")
    strategies: tuple[Literal["positive", "nut", "nat", "dpo", "kto"], ...] = option(
        DEFAULT_STRATEGIES, "what to compare (default: positive nut nat; dpo and kto continue from w/o Neg)")
    cache_dir: str = option(
        "", "where pretrained bases are cached by a hash of their inputs (default: demo-base-cache beside --out)")
    train_problems: int = _size(400, "training problems")
    test_problems: int = _size(100, "held-out test problems")
    min_steps: int = _size(2, "fewest operations per problem")
    max_steps: int = _size(3, "most operations per problem")
    temperatures: tuple[float, ...] = _size((0.2, 0.5, 0.7), "teacher temperatures")
    error_rate: float = _size(0.5, "teacher mistake rate at temperature 0.5")
    pos_num: int = _size(100, "positives in every training set")
    neg_num: int = _size(400, "negatives in NUT and NAT")
    dev_num: int = _size(40, "held-out positives for dev perplexity")
    # The base (shared by every seed and strategy, cached by a hash of these): tokenizer, model, pretraining.
    vocab_size: int = _size(600, "tokenizer size")
    hidden_size: int = _size(128, "model width")
    layers: int = _size(4, "model depth")
    heads: int = _size(4, "attention heads")
    pretrain_texts: int = _size(20000, "unlabelled passages the base is pretrained on")
    pretrain_steps: int = _size(1000, "pretraining steps of the base")
    base_seed: int = _size(1234, "seed of the base")
    epochs: int = _size(16, "fine-tuning epochs of every strategy over its own training set, as the paper (steps "
                            "follow from each set's size)", min=1)
    steps: int = _size(0, "optimizer steps per strategy, overriding --epochs (0: from --epochs)", min=0)
    batch_size: int = _size(8, "conversations per step")
    learning_rate: float = _size(2e-3, "peak learning rate")
    preference_learning_rate: float = _size(5e-5, "peak learning rate of DPO/KTO (from the w/o-Neg model)")
    beta: float = _size(0.1, "DPO/KTO beta")
    max_turns: int = _size(6, "agent turns per episode")
    max_new_tokens: int = _size(0, "tokens per turn (0: the longest teacher turn plus a margin)")
    threads: int = _size(2, "torch threads: the same count gives the same results (the report used 2)")
    # `--iterate K`: the loop of `nat iterate` on each seed's own w/o-Neg model (its section at the end of this module).
    iterate: int = option(0, "then K rounds of collect -> build -> fit -> eval on the model's own trajectories, from "
                             "each seed's w/o-Neg model, for NAT and for rejection sampling (0: none)", min=0,
                          metavar="K")
    iterate_epochs: int = _size(2, "fine-tuning epochs of every --iterate round over that round's training set (the "
                                   "paper's 2)", min=1)
    iterate_learning_rate: float = _size(0.0, "peak learning rate of every --iterate round, which fine-tunes a "
                                              "trained model (0: the strategies' --learning-rate)", min=0)
    iterate_problems: int = _size(0, "training problems each --iterate round collects on: the first N of the seed's "
                                     "(0: all of them)", min=0)
    iterate_temperatures: tuple[float, ...] | None = _size(
        None, "sampling temperatures of each --iterate round's collection (None: the teacher's --temperatures; 0 is "
              "greedy)", min=0)
    notes: list[str] = option([], internal=True)

    def __post_init__(self) -> None:
        check_numbers(self)
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown:
            raise ValueError(f"--strategies: unknown {unknown}; choose from {list(STRATEGIES)}")
        if self.profile not in ("cpu", "gpu"):
            raise ValueError(f"--profile must be cpu or gpu, got {self.profile!r}")
        if self.iterate and "positive" not in self.strategies:
            raise ValueError("--iterate starts from each seed's w/o-Neg model: keep 'positive' in --strategies")

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A one-minute smoke run (what the tests use)."""
        return cls(**{**QUICK_PROFILE, **overrides, "quick_sizes": True})

    @classmethod
    def from_options(cls, quick_sizes: bool = False, profile: str = "cpu", **given: Any) -> DemoConfig:
        """The config of ``nat demo``'s flags: the sizes given, the rest the full run's, ``--quick``'s or the GPU's."""
        if quick_sizes and profile == "gpu":
            raise ValueError("--quick and --profile gpu: choose one")
        if quick_sizes:
            return cls.quick(**given)
        return cls(**{**GPU_PROFILE, **given}, profile="gpu") if profile == "gpu" else cls(**given)


QUICK_PROFILE: dict[str, Any] = dict(train_problems=80, test_problems=12, pos_num=24, neg_num=72, dev_num=8, vocab_size=400,
                                     hidden_size=48, layers=2, heads=2, pretrain_texts=600, pretrain_steps=20, epochs=1,
                                     batch_size=8, max_turns=4, iterate_epochs=1, iterate_problems=4,
                                     iterate_temperatures=(0.7,))
# A bigger model, pretraining and budget for a CUDA device (not run on this project's CPU machines).
GPU_PROFILE: dict[str, Any] = dict(train_problems=1000, test_problems=300, pos_num=200, neg_num=800, hidden_size=384,
                                   layers=8, heads=6, vocab_size=1000, pretrain_texts=40000, pretrain_steps=4000,
                                   epochs=24, batch_size=16)


def generation_budget(turn_lengths: list[int]) -> int:
    """Tokens per generated turn: the longest teacher turn plus a margin.

    >>> generation_budget([10, 40, 31])
    50
    >>> generation_budget([4])
    12
    """
    longest = max(turn_lengths)
    return longest + max(BUDGET_MIN_MARGIN, round(BUDGET_MARGIN * longest))


def teacher_turn_lengths(dataset_dir: str | Path, tokenizer: Any) -> list[int]:
    """Token count of every assistant turn (and its end-of-turn token) of a built dataset, train and dev."""
    import datasets

    ds = datasets.load_from_disk(str(dataset_dir))
    splits = ds.values() if isinstance(ds, datasets.DatasetDict) else [ds]
    return [len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) + 1
            for split in splits for row in split for m in row["messages"] if m["role"] == "assistant"]


def seed_everything(seed: int, threads: int) -> None:
    """Python, numpy and torch seeds, and a fixed torch thread count (float sums depend on it)."""
    import lightning as L
    import torch

    L.seed_everything(seed, verbose=False)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def strategy_steps(cfg: DemoConfig, rows: int, epochs: int | None = None) -> int:
    """Optimizer steps of a strategy with ``rows`` training conversations: ``--steps``, else ``--epochs`` over them;
    given ``epochs`` (an ``--iterate`` round's), that many epochs over them.

    >>> strategy_steps(DemoConfig(epochs=16, batch_size=8), 100), strategy_steps(DemoConfig(steps=7), 100)
    (200, 7)
    >>> strategy_steps(DemoConfig(steps=7, batch_size=8), 100, epochs=2)
    25
    """
    if epochs is None and cfg.steps:
        return cfg.steps
    return -(-(cfg.epochs if epochs is None else epochs) * rows // cfg.batch_size)


def _train(cfg: DemoConfig, model_dir: Path, data_dir: Path, run_dir: Path, seed: int, steps: int,
           objective: str = "sft", lr: float = 0.0) -> tuple[Any, Any]:
    """Fine-tune ``model_dir`` on ``data_dir`` for ``steps`` from ``seed``; the model is kept as a from_pretrained
    folder ``run_dir/model``, with the export's generation config and its prompt. Returns (model, tokenizer)."""
    from lightning.pytorch.loggers import CSVLogger

    from lightning_nat.core.artifacts import write_spec
    from lightning_nat.train.datamodule import NATDataModule
    from lightning_nat.train.export import serving_generation_config
    from lightning_nat.train.model import NATModule
    from lightning_nat.train.perplexity import DevPerplexity
    from lightning_nat.train.trainer import make_trainer

    seed_everything(seed, cfg.threads)
    dm = NATDataModule(dataset_dir=str(data_dir), tokenizer=str(model_dir), micro_batch_size=cfg.batch_size,
                       global_batch_size=cfg.batch_size, max_length=1024, seed=seed, objective=objective,
                       cache_dir=str(run_dir.parent.parent / "cache"))
    lr = lr or (cfg.learning_rate if objective == "sft" else cfg.preference_learning_rate)
    module = NATModule(str(model_dir), learning_rate=lr, warmup_ratio=0.03, objective=objective, beta=cfg.beta)
    every = max(1, steps // 8)
    trainer = make_trainer(dm, accelerator="gpu" if cfg.profile == "gpu" else "cpu", deterministic=True,
                           max_steps=steps, max_epochs=10_000, logger=CSVLogger(str(run_dir), name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[DevPerplexity(every_n_steps=every)], limit_val_batches=0, num_sanity_val_steps=0,
                        log_every_n_steps=every)
    trainer.fit(module, dm)
    model = module.model
    tokenizer = dm.tokenizer
    out = run_dir / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    serving_generation_config(model, tokenizer).save_pretrained(out)
    if dm.prompt_spec is not None:
        write_spec(dm.prompt_spec, out)  # where `nat solve --model` finds the prompt the model was trained with
    return model, tokenizer


def run_seed(cfg: DemoConfig, seed: int, say: Callable[[str], None], base_dir: Path, out: Path) -> dict[str, Any]:
    """One seed: collect, build, fine-tune copies of the base for every strategy, evaluate. Metrics per strategy."""
    from transformers import AutoTokenizer

    from lightning_nat.agent.collect import collect
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.artifacts import PERPLEXITY_FILE, read_build, read_rows
    from lightning_nat.core.readers import read_trajectories
    from lightning_nat.core.tools import make_tools
    from lightning_nat.data.build import build_dataset, save_build
    from lightning_nat.demo.errors import classify_episode, error_mix
    from lightning_nat.demo.synthetic import ScriptedTeacher, arith_task, make_problems

    seed_everything(seed, cfg.threads)
    root = out / f"seed{seed}"
    task = arith_task()
    problems = make_problems(cfg.train_problems + cfg.test_problems, seed, cfg.min_steps, cfg.max_steps)
    train, test = problems[: cfg.train_problems], problems[cfg.train_problems:]
    teacher = ScriptedTeacher({p.question: p for p in train}, error_rate=cfg.error_rate, seed=seed)
    say(f"seed {seed}: collecting with the scripted teacher on {len(train)} problems x {len(cfg.temperatures)} "
        "temperatures")
    summary = collect(ReActAgent(task, teacher, make_tools(task.tools), max_turns=cfg.max_turns),
                      [p.record() for p in train], root / "trajectories.jsonl", cfg.temperatures, teacher="scripted",
                      batch_size=256)
    (root / "test.jsonl").write_text("".join(json.dumps(p.record()) + "\n" for p in test))
    if any(s in PREFERENCE for s in cfg.strategies) and "positive" not in cfg.strategies:
        raise ValueError("the dpo and kto strategies start from the demo's w/o-Neg model: keep 'positive' in strategies")
    # The SFT strategies first: DPO/KTO continue from the w/o-Neg model.
    strategies = [s for s in cfg.strategies if s not in PREFERENCE] + [s for s in cfg.strategies if s in PREFERENCE]
    datasets_dirs = {}
    for strategy in strategies:
        res = build_dataset([str(root / "trajectories.jsonl")], strategy, cache_dir=str(root / "cache"),
                            format="jsonl", task=task.name, pos_num=cfg.pos_num, neg_num=cfg.neg_num, seed=seed,
                            dev_num=cfg.dev_num)
        datasets_dirs[strategy] = save_build(res, root / "data" / strategy)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    # The budget follows the data under this tokenizer, never a constant a smaller vocabulary could undercut.
    longest = max(max(teacher_turn_lengths(d, tokenizer)) for d in datasets_dirs.values())
    budget = cfg.max_new_tokens or generation_budget([longest])
    if budget < longest:
        raise ValueError(f"--max-new-tokens {budget} is below the longest teacher turn ({longest} tokens under the "
                         "demo's tokenizer): generated actions would be cut")
    by_id = {p.id: p for p in train + test}
    # The teacher's negatives that NUT/NAT train on, typed by their first mistake: the mix is recorded.
    source = next((s for s in ("nat", "nut", "kto") if s in datasets_dirs), None)
    if source:
        import datasets

        rows = [r for r in datasets.load_from_disk(str(datasets_dirs[source]))["train"] if r["label"] == "negative"]
        negatives = [(r["question_id"], r["messages"]) for r in rows]
    else:
        negatives = [(t.question_id, t.messages) for t in read_trajectories(root / "trajectories.jsonl")
                     if not t.reward]
    out: dict[str, Any] = {"collected": {"positives": summary.positives, "negatives": summary.negatives},
                           "teacher_error_mix": error_mix([classify_episode(by_id[q].start, by_id[q].steps, m)
                                                           for q, m in negatives]),
                           "longest_teacher_turn": longest, "max_new_tokens": budget}
    for strategy in strategies:
        preference = strategy in PREFERENCE
        start = root / "runs" / "positive" / "model" if preference else base_dir
        record = read_build(datasets_dirs[strategy]).report
        steps = strategy_steps(cfg, sum(record["stats"][k] for k in ("positives", "negatives")) if strategy != "dpo"
                               else record["dpo"]["pairs"])
        say(f"seed {seed}: training {strategy} for {steps} steps" + (" from the w/o-Neg model" if preference else
                                                                      " from the pretrained base"))
        trained = _train(cfg, start, datasets_dirs[strategy], root / "runs" / strategy, seed, steps,
                         objective=strategy if preference else "sft")
        say(f"seed {seed}: evaluating {strategy} on {len(test)} held-out problems")
        figures = evaluate_model(cfg, trained, test, budget, root / "runs" / strategy / "eval",
                                 {"strategy": strategy, "seed": seed})
        cut, errors = figures.pop("cut_turns"), figures.pop("errors")
        stats = record["stats"]
        history = read_rows(root / "runs" / strategy / PERPLEXITY_FILE)
        out[strategy] = {**figures, "positives": stats["positives"], "negatives": stats["negatives"], "steps": steps,
                         "cut_turns": cut, "errors": errors,
                         "dev_perplexity": round(history[-1]["perplexity"], 4) if history else None}
        if strategy == "dpo":
            out[strategy]["pairs"] = record["dpo"]["pairs"]
    if cfg.iterate:
        out["iterate"] = iterate_seed(cfg, seed, say, train, test, budget, root, out["positive"])
    return out


def evaluate_model(cfg: DemoConfig, model: str | Path | tuple[Any, Any], test: list[Any], budget: int, folder: Path,
                   meta: dict[str, Any]) -> dict[str, Any]:
    """A model's greedy episodes on the held-out ``test`` problems, written to ``folder`` as an ``EvalReport``.

    ``model``: a saved folder, or a loaded (model, tokenizer). Returns accuracy, finished, parse-error and failure
    rates, the turns that reached the ``budget`` and the first-mistake mix.
    """
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.results import EvalReport, task_result
    from lightning_nat.core.tools import make_tools
    from lightning_nat.demo.errors import classify_episode, error_mix
    from lightning_nat.demo.synthetic import arith_task

    task = arith_task()
    weights, tokenizer = (model, None) if isinstance(model, (str, Path)) else model
    policy = HFPolicy(weights, tokenizer, temperature=0.0, max_new_tokens=budget,
                      device="cuda" if cfg.profile == "gpu" else "cpu")
    agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=cfg.max_turns)
    trajs = agent.run([p.record() for p in test], batch_size=len(test))
    result = task_result([trajs])
    # A generated turn that used the whole budget may have been cut: counted, so a cut cannot hide.
    cut = sum(len(policy.tokenizer(m["content"], add_special_tokens=False)["input_ids"]) >= budget
              for t in trajs for m in t.messages if m["role"] == "assistant")
    errors = error_mix([classify_episode(p.start, p.steps, t.messages) for p, t in zip(test, trajs)])
    EvalReport(results={task.name: result}, episodes={task.name: trajs}, usage=dict(policy.usage),
               meta=meta).write(folder)
    return {"accuracy": result.metrics["accuracy"], "finished": result.finished,
            "parse_error_rate": result.parse_error_rate, "failed": result.failed, "cut_turns": cut, "errors": errors}


# Two-sided 95 % Student t quantiles by degrees of freedom (1-30); beyond 30 the normal 1.96 is used.
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def interval95(values: list[float]) -> tuple[float, float]:
    """A 95 % t interval for the mean of ``values`` over seeds (the mean twice for one value).

    >>> interval95([0.2, 0.4])
    (-0.9706, 1.5706)
    >>> interval95([0.5])
    (0.5, 0.5)
    """
    mean = statistics.fmean(values)
    if len(values) < 2:
        return round(mean, 4), round(mean, 4)
    df = len(values) - 1
    half = (T95[df - 1] if df <= len(T95) else 1.96) * statistics.stdev(values) / len(values) ** 0.5
    return round(mean - half, 4), round(mean + half, 4)


def spread(accs: list[float]) -> dict[str, Any]:
    """The mean accuracy over seeds, its sd (none of one value) and 95 % interval, and the per-seed values.

    >>> spread([0.2, 0.4])
    {'accuracy': 0.3, 'accuracy_sd': 0.1414, 'accuracy_ci95': (-0.9706, 1.5706), 'per_seed': [0.2, 0.4]}
    """
    return {"accuracy": round(statistics.fmean(accs), 4),
            "accuracy_sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else None,
            "accuracy_ci95": interval95(accs), "per_seed": accs}


def aggregate(per_seed: list[dict[str, Any]], strategies: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Mean, standard deviation and 95 % interval over seeds for each strategy.

    >>> aggregate([{"nat": {"accuracy": 0.2, "finished": 1.0, "positives": 5, "negatives": 9}},
    ...            {"nat": {"accuracy": 0.4, "finished": 1.0, "positives": 5, "negatives": 9}}], ("nat",))["nat"]["accuracy"]
    0.3
    """
    table = {}
    for s in strategies:
        rows = [r[s] for r in per_seed]
        table[s] = {**spread([r["accuracy"] for r in rows]),
                    "finished": round(statistics.fmean(r["finished"] for r in rows), 4),
                    "positives": rows[0]["positives"], "negatives": rows[0]["negatives"],
                    "steps": [r.get("steps") for r in rows]}
        if all("errors" in r for r in rows):
            table[s]["errors"] = mean_mix([r["errors"] for r in rows])
            table[s]["cut_turns"] = sum(r["cut_turns"] for r in rows)
        ppl = [r.get("dev_perplexity") for r in rows]
        if all(p is not None for p in ppl):
            table[s]["dev_perplexity"] = round(statistics.fmean(ppl), 4)
    return table


# The paired comparisons of the report: (later, earlier) strategy, the difference taken seed by seed.
PAIRS = (("nut", "positive"), ("nat", "nut"), ("nat", "positive"))


def paired(table: dict[str, dict[str, Any]], pairs: tuple[tuple[str, str], ...] = PAIRS) -> dict[str, dict[str, Any]]:
    """Per-seed accuracy differences of ``pairs`` (the report's), with their mean and paired 95 % t interval.

    >>> paired({"nut": {"per_seed": [0.3, 0.5]}, "positive": {"per_seed": [0.1, 0.2]}})["nut-positive"]["per_seed"]
    [0.2, 0.3]
    """
    out = {}
    for a, b in pairs:
        if a in table and b in table:
            d = [round(x - y, 4) for x, y in zip(table[a]["per_seed"], table[b]["per_seed"])]
            out[f"{a}-{b}"] = {"per_seed": d, "mean": round(statistics.fmean(d), 4), "ci95": interval95(d)}
    return out


def mean_mix(mixes: list[dict[str, float]]) -> dict[str, float]:
    """Each error type's share averaged over seeds (of the training negatives, or of a strategy's test episodes).

    >>> mean_mix([{"skip_step": 0.2}, {"skip_step": 0.4}])
    {'skip_step': 0.3}
    """
    return {t: round(statistics.fmean(m[t] for m in mixes), 4) for t in mixes[0]}


def _quiet() -> None:
    """The demo reports its own progress: silence library progress bars and tips."""
    import logging
    import warnings

    import datasets
    import lightning.pytorch  # noqa: F401 - its import resets its loggers' levels: import it before setting them
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_nat.train.datamodule"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


# The report's names and colours, the same in the tables and in the plots.
NAMES = {"positive": "w/o Neg", "nut": "NUT", "nat": "NAT", "dpo": "DPO", "kto": "KTO"}
COLOURS = {"positive": "#7f7f7f", "nut": "#1f77b4", "nat": "#d62728", "dpo": "#2ca02c", "kto": "#9467bd"}


def plot_report(result: dict[str, Any], out: Path) -> None:
    """``accuracy.png`` (bars with 95 % intervals over seeds) and ``perplexity.png`` (dev perplexity by epoch, the
    first seed), in the paper's names and one colour per strategy; with ``--iterate``, ``iterate.png`` (held-out
    accuracy per round of both arms, with 95 % intervals over seeds). Every axis from 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_nat.core.artifacts import PERPLEXITY_FILE, read_rows

    cfg, table = result["config"], result["table"]
    seeds = cfg["seeds"]
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (s, v) in enumerate(table.items()):
        lo, hi = v["accuracy_ci95"]
        err = [[100 * (v["accuracy"] - lo)], [100 * (hi - v["accuracy"])]] if seeds > 1 else None
        bars = ax.bar(i, 100 * v["accuracy"], yerr=err, capsize=5, color=COLOURS.get(s), label=NAMES.get(s, s))
        ax.bar_label(bars, [f"{100 * v['accuracy']:.1f}"], padding=3, fontsize=8)
    ax.set_xticks(range(len(table)), [NAMES.get(s, s) for s in table])
    ax.set_ylim(0, 100)
    ax.set_ylabel("held-out accuracy (%)")
    what = f"mean and 95 % interval over seeds {cfg['first_seed']}-{cfg['first_seed'] + seeds - 1}" if seeds > 1 \
        else f"seed {cfg['first_seed']}"
    ax.set_title(f"Synthetic arithmetic agent, {cfg['test_problems']} held-out problems ({what})", fontsize=9)
    fig.savefig(out / "accuracy.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    first = out / f"seed{cfg['first_seed']}" / "runs"
    for s, v in table.items():
        rows, steps = read_rows(first / s / PERPLEXITY_FILE), v["steps"][0]
        if rows and steps:
            epochs = [r["step"] / steps * (cfg["epochs"] if not cfg["steps"] else steps * cfg["batch_size"] /
                                           (v["positives"] + v["negatives"])) for r in rows]
            ax.plot(epochs, [r["perplexity"] for r in rows], marker="o", markersize=3, color=COLOURS.get(s),
                    label=f"{NAMES.get(s, s)} ({v['negatives']} negatives)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training epoch")
    ax.set_ylabel("dev perplexity (held-out positives)")
    ax.set_title(f"Dev perplexity of held-out positive trajectories (seed {cfg['first_seed']})", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out / "perplexity.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    if "iterate" not in result:
        return
    rounds = range(cfg["iterate"] + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (arm, v) in enumerate(result["iterate"]["arms"].items()):
        acc = [100 * r["accuracy"] for r in v["rounds"]]
        err = [[100 * (r["accuracy"] - r["accuracy_ci95"][0]) for r in v["rounds"]],
               [100 * (r["accuracy_ci95"][1] - r["accuracy"]) for r in v["rounds"]]] if seeds > 1 else None
        # the arms side by side (0.06 of a round apart), so that equal figures do not hide one another
        ax.errorbar([k + 0.06 * (i - 0.5) for k in rounds], acc, yerr=err, capsize=4, marker="o",
                    color=ARM_COLOURS[arm], label=v["name"], clip_on=False)
    ax.set_xticks(list(rounds))
    ax.set_xlim(0, cfg["iterate"] + 0.2)
    ax.set_ylim(0, 100)
    ax.set_xlabel("round (0: the w/o-Neg model)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"Rounds on the model's own trajectories, {cfg['test_problems']} held-out problems ({what})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out / "iterate.png", dpi=150, bbox_inches="tight")
    plt.close(fig)


# --- `nat demo --iterate K`: the loop of `nat iterate` on the synthetic task, from each seed's w/o-Neg model ---
# Two arms of K rounds, `nat` (NAT sets) and `rs` (rejection sampling: positives only), under
# seed<N>/iterate/<arm>/round<k>/; the protocol is docs/demo.md's "Rounds on the model's own trajectories".

# arm -> the build variant of its rounds
ARMS = {"nat": "nat", "rs": "positive"}
ARM_NAMES = {"nat": "NAT rounds", "rs": "rejection sampling"}
ARM_COLOURS = {"nat": COLOURS["nat"], "rs": COLOURS["positive"]}


def iterate_seed(cfg: DemoConfig, seed: int, say: Callable[[str], None], train: list[Any], test: list[Any],
                 budget: int, root: Path, start: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rounds 0..K of each arm for one seed; round 0 is the w/o-Neg model's own figures (``start``)."""
    first = {"round": 0, "model": "runs/positive/model", "collected": None, "no_positive_share": None,
             "trained_on": {"positives": start["positives"], "negatives": start["negatives"]}, "steps": start["steps"],
             "skipped": None, **{k: start[k] for k in ("accuracy", "finished", "parse_error_rate", "failed",
                                                       "cut_turns", "errors")}}
    records = [p.record() for p in train[:cfg.iterate_problems or None]]
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        out[arm] = [first]  # each round starts from the model the previous one ended with
        for k in range(1, cfg.iterate + 1):
            out[arm].append(run_round(cfg, seed, arm, k, out[arm][-1]["model"], say, records, test, budget, root))
    return out


def run_round(cfg: DemoConfig, seed: int, arm: str, k: int, model: str, say: Callable[[str], None],
              records: list[dict], test: list[Any], budget: int, root: Path) -> dict[str, Any]:
    """Round ``k`` of ``arm`` with ``model`` (relative to ``root``): three stages, collect, fit (or not), evaluate."""
    from lightning_nat.agent.collect import collect
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tools import make_tools
    from lightning_nat.demo.synthetic import arith_task

    task, name = arith_task(), f"seed {seed}: {ARM_NAMES[arm]} round {k}/{cfg.iterate}"
    # the round's seed (collection, build and fit), from the demo's seed, the round and the arm: a rerun is identical
    rd, rs = root / "iterate" / arm / f"round{k}", zlib.crc32(f"{seed}|{k}|{arm}".encode())
    temperatures = cfg.iterate_temperatures or cfg.temperatures
    seed_everything(rs, cfg.threads)
    say(f"{name}: collecting with {model} on {len(records)} problems x {len(temperatures)} temperatures")
    policy = HFPolicy(str(root / model), max_new_tokens=budget, device="cuda" if cfg.profile == "gpu" else "cpu")
    agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=cfg.max_turns)
    got = collect(agent, records, rd / "trajectories.jsonl", temperatures, teacher=model, batch_size=len(records))
    record: dict[str, Any] = {"round": k, "model": model, "collected": {"positives": got.positives,
                              "negatives": got.negatives, "failed": got.failures},
                              "no_positive_share": round(1 - got.questions_solved / (got.questions or 1), 4)}
    record.update(fit_round(cfg, ARMS[arm], root / model, rd, rs,
                            lambda steps: say(f"{name}: training for {steps} steps from {model}")))
    if record["skipped"]:
        say(f"{name}: {record['skipped']}: no training, {model} kept")
    else:
        record["model"] = str((rd / "model").relative_to(root))
    say(f"{name}: evaluating {record['model']} on {len(test)} held-out problems")
    return {**record, **evaluate_model(cfg, str(root / record["model"]), test, budget, rd / "eval",
                                       {"arm": arm, "round": k, "seed": seed})}


def fit_round(cfg: DemoConfig, variant: str, start: Path, rd: Path, seed: int,
              training: Callable[[int], None] = lambda steps: None) -> dict[str, Any]:
    """Build ``variant`` from ``rd/trajectories.jsonl`` with the demo's caps and fine-tune ``start`` on it into
    ``rd/model`` (``training`` is told the steps first); or, when the build's own selection and filters leave no
    class the variant trains on, train nothing and say why (``skipped``)."""
    from lightning_nat.core.readers import read_trajectories
    from lightning_nat.data.build import build_dataset, save_build
    from lightning_nat.data.select import select
    from lightning_nat.demo.synthetic import arith_task

    trajectories = rd / "trajectories.jsonl"
    trajs = read_trajectories(trajectories)
    pos, neg, _ = select(trajs, variant, allow_empty_class=True)
    if not pos or (variant == "nat" and not neg):
        n = sum(t.reward for t in trajs)
        needs = "positives and negatives" if variant == "nat" else "positives"
        return {"trained_on": None, "steps": 0, "skipped": f"{n} positives and {len(trajs) - n} negatives collected "
                f"({len(pos)} and {len(neg)} after the build's filters); variant {variant} trains on {needs}"}
    res = build_dataset([str(trajectories)], variant, cache_dir=str(rd.parent.parent / "cache"), format="jsonl",
                        task=arith_task().name, pos_num=cfg.pos_num, neg_num=cfg.neg_num, seed=seed)
    data, stats = save_build(res, rd / "data"), res.report["stats"]
    steps = strategy_steps(cfg, stats["positives"] + stats["negatives"], epochs=cfg.iterate_epochs)
    training(steps)
    _train(cfg, start, data, rd, seed, steps, lr=cfg.iterate_learning_rate)
    return {"trained_on": {"positives": stats["positives"], "negatives": stats["negatives"]}, "steps": steps,
            "skipped": None}


def iterate_table(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``iterate`` block of ``results.json``: per arm and round the accuracy over seeds (mean, sd, 95 %
    interval, per seed) and each seed's collection; per round the paired difference NAT - RS."""
    arms: dict[str, Any] = {}
    for arm in ARMS:
        rounds = []
        for k, rows in enumerate(zip(*(r["iterate"][arm] for r in per_seed))):
            collected = rows[0]["collected"] is not None
            rounds.append({"round": k, **spread([r["accuracy"] for r in rows]),
                           "positives": [r["collected"]["positives"] for r in rows] if collected else None,
                           "negatives": [r["collected"]["negatives"] for r in rows] if collected else None,
                           "no_positive_share": [r["no_positive_share"] for r in rows] if collected else None,
                           "trained": [r["skipped"] is None for r in rows],
                           "steps": [r["steps"] for r in rows]})
        arms[arm] = {"name": ARM_NAMES[arm], "variant": ARMS[arm], "rounds": rounds}
    diffs = [{"round": a["round"], **paired({"nat": a, "rs": b}, (("nat", "rs"),))["nat-rs"]}
             for a, b in zip(arms["nat"]["rounds"], arms["rs"]["rounds"])]
    return {"arms": arms, "paired": {"nat-rs": diffs}}


def accuracy(v: dict[str, Any], seeds: int) -> str:
    """An accuracy over seeds as the demo's tables show it (its sd and 95 % interval with more than one seed).

    >>> accuracy({"accuracy": 0.3, "accuracy_sd": 0.1, "accuracy_ci95": (0.1, 0.5)}, 2)
    '30.0 ± 10.0 [10.0, 50.0]'
    """
    text = f"{100 * v['accuracy']:.1f}"
    if seeds > 1:
        lo, hi = v["accuracy_ci95"]
        text += f" ± {100 * v['accuracy_sd']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def difference(d: dict[str, Any], seeds: int) -> str:
    """A paired difference in points, with its 95 % interval over more than one seed.

    >>> difference({"mean": 0.05, "ci95": (-0.01, 0.11)}, 2), difference({"mean": 0.05}, 1)
    ('+5.0 [-1.0, +11.0]', '+5.0')
    """
    return f"{100 * d['mean']:+.1f}" + (f" [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]" if seeds > 1 else "")


# Column heads of the error-type table, short enough for an 80-column terminal.
ERROR_NAMES = {"wrong_operand": "operand", "wrong_operator": "operator", "skip_step": "skip", "finish_early": "early",
               "stale_number": "stale", "made_up_number": "made-up", "unfinished": "unfin.", "other": "other"}
LONG_NAMES = {"positive": "w/o Neg (positives only)", "nut": "NUT (negative-unaware)", "nat": "NAT (negative-aware)",
              "dpo": "DPO (pairs, from w/o Neg)", "kto": "KTO (labels, from w/o Neg)"}


def print_table(result: dict[str, Any], seconds: float) -> None:
    """The demo's comparison, laid out like the paper's Table 2, the paired differences, then the error types of §5.3."""
    from lightning_nat.core.console import console, table

    cfg, n = result["config"], result["config"]["seeds"]
    rows = []
    for strategy, v in result["table"].items():
        ppl = v.get("dev_perplexity")
        rows.append([LONG_NAMES.get(strategy, strategy), v["positives"], v["negatives"],
                     "/".join(map(str, set(v["steps"]))), accuracy(v, n), f"{100 * v['finished']:.0f}%",
                     f"{ppl:.2f}" if ppl is not None else "-", str(v.get("cut_turns", "-"))])
    seeds = f"seeds {cfg['first_seed']}-{cfg['first_seed'] + n - 1}" if n > 1 else f"seed {cfg['first_seed']}"
    budget = f"{cfg['steps']} steps" if cfg.get("steps") else f"{cfg['epochs']} epochs"
    how = "accuracy % as mean ± sd [95% CI] over seeds" if n > 1 else "accuracy % of one seed (--seeds 5 for intervals)"
    main = table(f"Synthetic arithmetic, {cfg['test_problems']} held-out problems, {seeds}, {budget} of each "
                 f"strategy's own data from one pretrained base; {how}",
                 ["strategy", "pos.", "neg.", "steps", "accuracy %", "finished", "dev ppl", "cut turns"], rows)
    main.columns[0].no_wrap = True  # the strategy names are what users (and tests) look for
    console.print(main)
    if result.get("paired"):
        prows = [[" - ".join(NAMES[x] for x in key.split("-")), *(f"{100 * d:+.0f}" for d in p["per_seed"]),
                  difference(p, n)] for key, p in result["paired"].items()]
        per = [f"seed {cfg['first_seed'] + i}" for i in range(n)]
        console.print(table("Paired differences, accuracy points",
                            ["", *per, "mean" + (" [95% CI]" if n > 1 else "")], prows))
    mix = result.get("teacher_error_mix")
    if mix:
        err_rows = [["train negatives", *(f"{100 * mix[t]:.0f}" for t in mix)]]
        err_rows += [[NAMES.get(s, s), *(f"{100 * v['errors'][t]:.0f}" for t in mix)]
                     for s, v in result["table"].items() if "errors" in v]
        errors = table("First mistake of each episode, % of episodes (test) or of negatives (training set)",
                       ["", *(ERROR_NAMES.get(t, t) for t in mix)], err_rows)
        errors.columns[0].no_wrap = True
        console.print(errors)
    console.print(f"done in {seconds / 60:.1f} minutes")


def print_iterate(result: dict[str, Any]) -> None:
    """The table of ``--iterate``: held-out accuracy per round of each arm, and NAT - RS per round."""
    from lightning_nat.core.console import console, table

    seeds, block = result["config"]["seeds"], result["iterate"]
    nat, rs, diffs = block["arms"]["nat"]["rounds"], block["arms"]["rs"]["rounds"], block["paired"]["nat-rs"]
    trained = lambda v: f"{accuracy(v, seeds)}, {sum(v['trained'])}/{len(v['trained'])} trained"
    rows = [[str(a["round"]), trained(a), trained(b), difference(d, seeds)] for a, b, d in zip(nat, rs, diffs)]
    how = "mean ± sd [95% CI] over seeds" if seeds > 1 else "one seed"
    console.print(table(f"--iterate: held-out accuracy % per round from the w/o-Neg model ({how}); a round with no "
                        "class to train on keeps its model", ["round", ARM_NAMES["nat"], ARM_NAMES["rs"],
                                                               "NAT - RS, points"], rows))


def stages(cfg: DemoConfig) -> int:
    """The steps the progress bar counts: the base, then per seed the collection, each strategy's training and
    evaluation, and each ``--iterate`` round's collection, training and evaluation for each arm (:func:`run_demo`
    calls ``stage`` exactly this many times).

    >>> stages(DemoConfig(seeds=2)), stages(DemoConfig(seeds=2, iterate=3))
    (15, 51)
    """
    return 1 + cfg.seeds * (1 + 2 * len(cfg.strategies) + 3 * len(ARMS) * cfg.iterate)


def run_demo(cfg: DemoConfig, stage: Callable[[str], None] = print, note: Callable[[str], None] = print,
             folder: str | Path | None = None) -> dict[str, Any]:
    """The full demo over ``cfg.seeds`` seeds; writes results.json, timings.json and the plots into ``cfg.out``.

    ``stage`` is told each step of :func:`stages`, ``note`` every other progress line. ``results.json`` holds
    only what the seeds determine (two runs give the same file); wall times go to ``timings.json``. ``folder``:
    where to write instead of ``cfg.out`` (the command's staging folder, swapped into place at the end).
    """
    import time

    import torch

    _quiet()
    if cfg.profile == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("--profile gpu needs a CUDA device, and torch sees none")
    out = Path(folder or cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seed_everything(cfg.base_seed, cfg.threads)
    spec = BaseSpec(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, layers=cfg.layers, heads=cfg.heads,
                    texts=cfg.pretrain_texts, steps=cfg.pretrain_steps, seed=cfg.base_seed, threads=cfg.threads)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out).resolve().parent / "demo-base-cache"
    cached = (cache / f"base-{spec.key()}" / "base.json").is_file()
    stage(f"the base: {cfg.pretrain_steps} pretraining steps on {cfg.pretrain_texts} unlabelled passages"
          + (" (from the cache)" if cached else f" (cached in {cache} for the next runs)"))
    base_dir, base = make_base(spec, cache, say=note, device="cuda" if cfg.profile == "gpu" else "cpu")
    timings = {"base_seconds": round(time.time() - started, 1), "base_from_cache": base.pop("from_cache"),
               "base_pretraining_seconds": base.pop("seconds")}
    per_seed = []
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        t0 = time.time()
        per_seed.append({"seed": seed, **run_seed(cfg, seed, stage, base_dir, out)})
        timings[f"seed{seed}_seconds"] = round(time.time() - t0, 1)
    table = aggregate(per_seed, cfg.strategies)
    # without --iterate, results.json stays as it was before the option existed
    config = {k: v for k, v in asdict(cfg).items() if cfg.iterate or not k.startswith("iterate")}
    result = {"config": config, "base": base, "table": table, "paired": paired(table),
              "teacher_error_mix": mean_mix([r["teacher_error_mix"] for r in per_seed]), "per_seed": per_seed}
    if cfg.iterate:
        result["iterate"] = iterate_table(per_seed)
    from lightning_nat.core.results import EvalReport, task_result

    # results.json is an EvalReport (its one writer): each strategy's figures with the seeds as runs, beside the table.
    runs = {s: [trajs for r in per_seed
                for trajs in EvalReport.read(out / f"seed{r['seed']}" / "runs" / s / "eval", episodes=True).episodes.values()]
            for s in cfg.strategies}
    EvalReport(results={s: task_result(trajs) for s, trajs in runs.items()}, meta=result).write(out)
    plot_report(result, out)
    timings["total_seconds"] = round(time.time() - started, 1)
    (out / "timings.json").write_text(json.dumps(timings, indent=1))
    result["timings"] = timings
    return result


def run_demo_command(cfg: DemoConfig) -> int:
    """``nat demo``: :func:`run_demo` with a progress bar, then the comparison table and what to try next."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from lightning_nat.core.console import console
    from lightning_nat.core.outputs import writing

    start = time.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        bar_id = bar.add_task("NAT demo", total=stages(cfg))

        def stage(msg: str) -> None:
            if bar.tasks[0].description != "NAT demo":  # the previous stage is done
                bar.advance(bar_id)
            bar.update(bar_id, description=msg)
            console.log(msg)

        with writing(cfg.out, "nat demo", cfg.overwrite) as staged:  # a killed run leaves the previous one whole
            result = run_demo(cfg, stage=stage, note=console.log, folder=staged)
        bar.update(bar_id, completed=stages(cfg), description="NAT demo: done")
    print_table(result, time.time() - start)
    plots = f"{cfg.out}/perplexity.png and {cfg.out}/accuracy.png"
    if cfg.iterate:
        print_iterate(result)
        plots = f"{cfg.out}/perplexity.png, {cfg.out}/accuracy.png and {cfg.out}/iterate.png"
    console.print(f"wrote {cfg.out}/results.json, {cfg.out}/timings.json, {plots}")
    best = max(result["table"], key=lambda s: result["table"][s]["accuracy"])
    model = f"{cfg.out}/seed{cfg.first_seed}/runs/{best}/model"
    from lightning_nat.demo.synthetic import arith_task

    console.print(f"next, watch the {NAMES.get(best, best)} model solve one problem:\n  nat solve --model {model} "
                  f"--task {arith_task().name} 'Mia has 12 apples. Mia buys 5 more apples. How many apples does Mia have now?'",
                  highlight=False, soft_wrap=True)
    return 0
