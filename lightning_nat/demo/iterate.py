"""``nat demo --iterate K``: the loop of ``nat iterate`` on the synthetic task, from each seed's w/o-Neg model.

Two arms, each K rounds of collect -> build -> fit -> eval on its own model's trajectories: ``nat`` builds a NAT
set (positives and negatives), ``rs`` (rejection sampling, the standard self-improvement baseline) keeps the
positives only. Round ``k`` collects with round ``k-1``'s model (round 0: ``runs/positive/model``) on the seed's
training problems at the sampling temperatures, labels each episode by the task's metric, builds with the demo's
caps, fine-tunes from that model for ``--iterate-epochs`` and evaluates greedily on the seed's held-out problems,
as :func:`~lightning_nat.demo.run.run_seed` evaluates. A round whose collection leaves no class the arm trains on
trains nothing and keeps its model, and says so. Everything is under ``seed<N>/iterate/<arm>/round<k>/``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_nat.demo.run import COLOURS, DemoConfig

# arm -> the build variant of its rounds
ARMS = {"nat": "nat", "rs": "positive"}
ARM_NAMES = {"nat": "NAT rounds", "rs": "rejection sampling"}
ARM_COLOURS = {"nat": COLOURS["nat"], "rs": COLOURS["positive"]}


def round_seed(seed: int, k: int, arm: str) -> int:
    """The seed of round ``k`` of ``arm`` (collection, build and fit), from the demo's seed: a rerun is identical.

    >>> round_seed(0, 1, "nat") == round_seed(0, 1, "nat") != round_seed(0, 1, "rs")
    True
    """
    return zlib.crc32(f"{seed}|{k}|{arm}".encode())


def iterate_seed(cfg: DemoConfig, seed: int, say: Callable[[str], None], train: list[Any], test: list[Any],
                 budget: int, root: Path, start: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Rounds 0..K of each arm for one seed; round 0 is the w/o-Neg model's own figures (``start``)."""
    first = {"round": 0, "model": "runs/positive/model", "collected": None, "no_positive_share": None,
             "trained_on": {"positives": start["positives"], "negatives": start["negatives"]}, "steps": start["steps"],
             "skipped": None, **{k: start[k] for k in ("accuracy", "finished", "parse_error_rate", "failed",
                                                       "cut_turns", "errors")}}
    records = [p.record() for p in train[:cfg.iterate_problems or None]]
    out = {}
    for arm in ARMS:
        rounds, model = [first], "runs/positive/model"
        for k in range(1, cfg.iterate + 1):
            rounds.append(run_round(cfg, seed, arm, k, model, say, records, test, budget, root))
            model = rounds[-1]["model"]
        out[arm] = rounds
    return out


def run_round(cfg: DemoConfig, seed: int, arm: str, k: int, model: str, say: Callable[[str], None],
              records: list[dict], test: list[Any], budget: int, root: Path) -> dict[str, Any]:
    """Round ``k`` of ``arm`` with ``model`` (relative to ``root``): three stages, collect, fit (or not), evaluate."""
    from lightning_nat.agent.collect import collect
    from lightning_nat.agent.policies import HFPolicy
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tools import make_tools
    from lightning_nat.demo.run import evaluate_model, seed_everything
    from lightning_nat.demo.synthetic import arith_task

    task, name = arith_task(), f"seed {seed}: {ARM_NAMES[arm]} round {k}/{cfg.iterate}"
    rd, rs = root / "iterate" / arm / f"round{k}", round_seed(seed, k, arm)
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
    from lightning_nat.core.readers import read_trajectories_jsonl
    from lightning_nat.data.build import build_dataset, save_build
    from lightning_nat.data.select import select
    from lightning_nat.demo.run import _save_model, _train, seed_everything, strategy_steps
    from lightning_nat.demo.synthetic import arith_task

    trajectories = rd / "trajectories.jsonl"
    trajs = read_trajectories_jsonl(trajectories)
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
    seed_everything(seed, cfg.threads)
    module, dm = _train(cfg, start, data, rd, seed, steps)
    _save_model(module.model, dm.tokenizer, dm.prompt_spec, rd / "model")
    return {"trained_on": {"positives": stats["positives"], "negatives": stats["negatives"]}, "steps": steps,
            "skipped": None}


def iterate_table(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``iterate`` block of ``results.json``: per arm and round the accuracy over seeds (mean, sd, 95 %
    interval, per seed) and each seed's collection; per round the paired difference NAT - RS."""
    from lightning_nat.demo.run import paired, spread

    arms: dict[str, Any] = {}
    for arm in ARMS:
        rounds = []
        for k in range(len(per_seed[0]["iterate"][arm])):
            rows = [r["iterate"][arm][k] for r in per_seed]
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


def plot_iterate(result: dict[str, Any], out: Path) -> None:
    """``iterate.png``: held-out accuracy per round of both arms, with 95 % intervals over seeds; axes from 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, arms = result["config"], result["iterate"]["arms"]
    seeds, rounds = cfg["seeds"], range(cfg["iterate"] + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (arm, v) in enumerate(arms.items()):
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
    what = f"mean and 95 % interval over seeds {cfg['first_seed']}-{cfg['first_seed'] + seeds - 1}" if seeds > 1 \
        else f"seed {cfg['first_seed']}"
    ax.set_title(f"Rounds on the model's own trajectories, {cfg['test_problems']} held-out problems ({what})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out / "iterate.png", dpi=150, bbox_inches="tight")
    plt.close(fig)


def cell(v: dict[str, Any], seeds: int) -> str:
    """An accuracy over seeds as the demo's tables show it, and how many seeds trained in the round.

    >>> cell({"accuracy": 0.3, "accuracy_sd": 0.1, "accuracy_ci95": (0.1, 0.5), "trained": [True, False]}, 2)
    '30.0 ± 10.0 [10.0, 50.0], 1/2 trained'
    """
    text = f"{100 * v['accuracy']:.1f}"
    if seeds > 1:
        lo, hi = v["accuracy_ci95"]
        text += f" ± {100 * v['accuracy_sd']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text + f", {sum(v['trained'])}/{len(v['trained'])} trained"


def print_iterate(result: dict[str, Any]) -> None:
    """The table of ``--iterate``: held-out accuracy per round of each arm, and NAT - RS per round."""
    from lightning_nat.core.console import console, table

    seeds, block = result["config"]["seeds"], result["iterate"]
    nat, rs, diffs = block["arms"]["nat"]["rounds"], block["arms"]["rs"]["rounds"], block["paired"]["nat-rs"]
    rows = [[str(a["round"]), cell(a, seeds), cell(b, seeds),
             f"{100 * d['mean']:+.1f}" + (f" [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]" if seeds > 1
                                          else "")] for a, b, d in zip(nat, rs, diffs)]
    how = "mean ± sd [95% CI] over seeds" if seeds > 1 else "one seed"
    console.print(table(f"--iterate: held-out accuracy % per round from the w/o-Neg model ({how}); a round with no "
                        "class to train on keeps its model", ["round", ARM_NAMES["nat"], ARM_NAMES["rs"],
                                                               "NAT - RS, points"], rows))
