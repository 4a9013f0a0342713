"""`nat demo`: the whole mission offline on a CPU, on the synthetic arithmetic task.

collect (scripted teacher, real agent loop and calculator) -> build positive / NUT / NAT
with few positives and several times more negatives -> train the same scratch model for
each with the same budget -> evaluate each with the episode engine on held-out problems
-> a table like the paper's Table 2, plus the perplexity and accuracy plots.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("positive", "nut", "nat", "dpo", "kto")
# Preference baselines continue from the demo's own w/o-Neg model (SFT, then DPO/KTO), on the same trajectories.
PREFERENCE = ("dpo", "kto")


@dataclass
class DemoConfig:
    """Every size and rate of the demo (``nat demo --help``)."""

    out: str = "runs/demo"
    seeds: int = 1
    train_problems: int = 500
    test_problems: int = 100
    min_steps: int = 2
    max_steps: int = 3
    temperatures: tuple[float, ...] = (0.2, 0.5, 0.7)
    error_rate: float = 0.5
    pos_num: int = 150
    neg_num: int = 600
    dev_num: int = 40
    vocab_size: int = 600
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    steps: int = 800
    batch_size: int = 8
    learning_rate: float = 5e-3
    preference_learning_rate: float = 5e-5
    beta: float = 0.1
    max_turns: int = 6
    max_new_tokens: int = 40
    strategies: tuple[str, ...] = STRATEGIES
    notes: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoConfig:
        """A one-minute smoke run (what the tests use)."""
        base = dict(train_problems=80, test_problems=12, pos_num=24, neg_num=72, dev_num=8, vocab_size=400,
                    hidden_size=48, layers=2, heads=2, steps=12, batch_size=8, max_turns=4, max_new_tokens=24)
        base.update(overrides)
        return cls(**base)


def _train(cfg: DemoConfig, model_dir: Path, data_dir: Path, run_dir: Path, seed: int, objective: str = "sft") -> Any:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from .callbacks import DevPerplexity
    from .preference_training import PreferenceDataModule, PreferenceModule

    L.seed_everything(seed, verbose=False)
    dm = PreferenceDataModule(dataset_dir=str(data_dir), tokenizer=str(model_dir), micro_batch_size=cfg.batch_size,
                              global_batch_size=cfg.batch_size, max_length=1024, seed=seed, objective=objective,
                              cache_dir=str(run_dir.parent.parent / "cache"))
    lr = cfg.learning_rate if objective == "sft" else cfg.preference_learning_rate
    module = PreferenceModule(str(model_dir), learning_rate=lr, warmup_ratio=0.03, objective=objective, beta=cfg.beta)
    every = max(1, cfg.steps // 8)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=cfg.steps, max_epochs=10_000,
                        use_distributed_sampler=False, logger=CSVLogger(str(run_dir), name="", version=""),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[DevPerplexity(every_n_steps=every)], limit_val_batches=0, num_sanity_val_steps=0,
                        log_every_n_steps=every)
    trainer.fit(module, dm)
    return module, dm


def _save_model(model: Any, tokenizer: Any, out: Path) -> None:
    """Keep a trained model as a from_pretrained folder, with the export's generation config."""
    from .export import serving_generation_config

    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    serving_generation_config(model, tokenizer).save_pretrained(out)


def run_seed(cfg: DemoConfig, seed: int, say: Callable[[str], None]) -> dict[str, Any]:
    """One seed: collect, build, train and evaluate every strategy. Returns metrics per strategy."""
    from .agent import ReActAgent
    from .builders import build_dataset, save_build
    from .collect import collect
    from .policies import HFPolicy
    from .report import task_result
    from .scratch import conversation_texts, make_scratch_model
    from .synthetic import ScriptedTeacher, arith_task, make_problems
    from .tools import make_tools

    root = Path(cfg.out) / f"seed{seed}"
    task = arith_task()
    problems = make_problems(cfg.train_problems + cfg.test_problems, seed, cfg.min_steps, cfg.max_steps)
    train, test = problems[: cfg.train_problems], problems[cfg.train_problems:]
    teacher = ScriptedTeacher({p.question: p for p in train}, error_rate=cfg.error_rate, seed=seed)
    say(f"seed {seed}: collecting with the scripted teacher on {len(train)} problems x {len(cfg.temperatures)} "
        "temperatures")
    summary = collect(task, [p.record() for p in train], teacher, root / "trajectories.jsonl", cfg.temperatures,
                      teacher="scripted", batch_size=256, max_turns=cfg.max_turns, tools=make_tools(task.tools))
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
    vocab_source = "nat" if "nat" in datasets_dirs else strategies[0]
    texts = conversation_texts(datasets_dirs[vocab_source]) + [p.question for p in test]
    model_dir = make_scratch_model(root / "scratch-model", texts, vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                   num_layers=cfg.layers, num_heads=cfg.heads, max_position_embeddings=1024, seed=seed)
    out: dict[str, Any] = {"collected": {"positives": summary.positives, "negatives": summary.negatives}}
    # The w/o-Neg model, kept like every strategy's; DPO and KTO start from it.
    sft_dir = root / "runs" / "positive" / "model"
    for strategy in strategies:
        preference = strategy in PREFERENCE
        start = sft_dir if preference else model_dir
        say(f"seed {seed}: training {strategy} for {cfg.steps} steps" + (" from the w/o-Neg model" if preference else ""))
        module, dm = _train(cfg, start, datasets_dirs[strategy], root / "runs" / strategy, seed,
                            objective=strategy if preference else "sft")
        _save_model(module.model, dm.tokenizer, root / "runs" / strategy / "model")
        record = json.loads((datasets_dirs[strategy] / "build.json").read_text())["report"]
        build = record["stats"]
        policy = HFPolicy(module.model, dm.tokenizer, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
        agent = ReActAgent(task, policy, make_tools(task.tools), max_turns=cfg.max_turns)
        say(f"seed {seed}: evaluating {strategy} on {len(test)} held-out problems")
        trajs = agent.run([p.record() for p in test], batch_size=len(test))
        result = task_result([trajs])
        out[strategy] = {"accuracy": result.metrics["accuracy"], "finished": result.finished,
                         "parse_error_rate": result.parse_error_rate, "failed": result.failed,
                         "positives": build["positives"], "negatives": build["negatives"]}
        if strategy == "dpo":
            out[strategy]["pairs"] = record["dpo"]["pairs"]
        from .report import EvalReport

        EvalReport(results={task.name: result}, episodes={task.name: trajs}, usage=dict(policy.usage),
                   meta={"strategy": strategy, "seed": seed}).write(root / "runs" / strategy / "eval")
    return out


def aggregate(per_seed: list[dict[str, Any]], strategies: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over seeds for each strategy.

    >>> aggregate([{"nat": {"accuracy": 0.2, "finished": 1.0, "positives": 5, "negatives": 9}},
    ...            {"nat": {"accuracy": 0.4, "finished": 1.0, "positives": 5, "negatives": 9}}], ("nat",))["nat"]["accuracy"]
    0.3
    """
    table = {}
    for s in strategies:
        accs = [r[s]["accuracy"] for r in per_seed]
        table[s] = {"accuracy": round(statistics.fmean(accs), 4),
                    "accuracy_sd": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
                    "finished": round(statistics.fmean(r[s]["finished"] for r in per_seed), 4),
                    "positives": per_seed[0][s]["positives"], "negatives": per_seed[0][s]["negatives"]}
    return table


def _quiet() -> None:
    """The demo reports its own progress: silence library progress bars and tips."""
    import logging
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_nat.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")


def run_demo(cfg: DemoConfig, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The full demo over ``cfg.seeds`` seeds; writes results.json and the plots into ``cfg.out``."""
    from .plot import load_perplexity_runs, plot_perplexity, plot_sweep

    _quiet()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    per_seed = [run_seed(cfg, seed, say) for seed in range(cfg.seeds)]
    table = aggregate(per_seed, cfg.strategies)
    result = {"config": asdict(cfg), "table": table, "per_seed": per_seed}
    from .report import EvalReport, task_result

    # results.json is an EvalReport (its one writer): each strategy's figures with the seeds as runs, beside the table.
    seeds = [EvalReport.read(out / f"seed{k}" / "runs" / s / "eval", episodes=True) for k in range(cfg.seeds)
             for s in cfg.strategies]
    runs = {s: [trajs for r in seeds if r.meta["strategy"] == s for trajs in r.episodes.values()] for s in cfg.strategies}
    EvalReport(results={s: task_result(trajs) for s, trajs in runs.items()}, meta=result).write(out)
    runs = load_perplexity_runs([out / "seed0" / "runs" / s for s in cfg.strategies])
    plot_perplexity(runs, out / "perplexity.png", title="Dev perplexity of held-out positives (seed 0)")
    from .synthetic import ARITH_DECLARATION

    points = [{"strategy": s, "negatives": float(v["negatives"]), "task": ARITH_DECLARATION["name"],
               "metric": "accuracy",
               "value": v["accuracy"]} for s, v in table.items()]
    plot_sweep(points, out / "accuracy.png")
    return result
