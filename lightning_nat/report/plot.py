"""`nat plot`: dev perplexity curves (Figure 5) and accuracy against the number of negatives (Figures 3, 4, 6)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lightning_nat.core.artifacts import NEG_NUM, PERPLEXITY_FILE, RESULTS_FILE, read_rows
from lightning_nat.core.console import console
from lightning_nat.core.options import option
from lightning_nat.core.results import EvalReport, TaskResult


def _files(paths: Sequence[str | Path], name: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(name))
            if not found:
                raise FileNotFoundError(f"{p}: no {name} inside (is it a run folder?)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def load_perplexity_runs(paths: Sequence[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """History rows per run, keyed by a readable run name (the run folder's name)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for f in _files(paths, PERPLEXITY_FILE):
        name = f.parent.name if f.parent.name and not f.parent.name.startswith("version_") else \
            f"{f.parent.parent.name}/{f.parent.name}"
        while name in runs:
            name += "'"
        runs[name] = read_rows(f)
    return runs


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.2))


def _save(fig: Any, ax: Any, title: str, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ValueError(f"{out}: choose a .png, .pdf or .svg file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_perplexity(runs: dict[str, list[dict[str, Any]]], out: str | Path, x: str = "step",
                    title: str = "Dev perplexity of held-out positive trajectories") -> Path:
    """One line per run; runs trained on positives only are dashed horizontal references."""
    fig, ax = _figure()
    if x == "negatives":
        # One point per run: its last perplexity against its number of negatives (the paper's Figure 5).
        by_variant: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for name, rows in runs.items():
            last = rows[-1]
            if last.get("variant") == "positive" or not last.get(NEG_NUM):
                ax.axhline(last["perplexity"], linestyle="--", color="gray", label=f"{name} (positives only)")
            else:
                by_variant[str(last.get("variant"))].append((last[NEG_NUM], last["perplexity"]))
        for variant, pts in sorted(by_variant.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=variant)
        ax.set_xlabel("number of negative trajectories")
    else:
        for name, rows in runs.items():
            xs = [r["step"] for r in rows]
            ys = [r["perplexity"] for r in rows]
            if rows and rows[-1].get("variant") == "positive":
                ax.axhline(ys[-1], linestyle="--", color="gray", label=f"{name} (positives only)")
            else:
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_xlabel("training step")
    ax.set_ylabel("perplexity (assistant tokens)")
    return _save(fig, ax, title, out)


def load_sweep(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Points ``{strategy, neg_num, task, metric, value}`` from ``nat eval`` results (their ``--tag variant=..
    --tag neg_num=..``) or ReActEval rows (whose build's count of negatives wins over a tag)."""
    points = []
    for f in _files(paths, RESULTS_FILE) if any(Path(p).is_dir() for p in paths) else [Path(p) for p in paths]:
        if f.suffix == ".jsonl":  # ReActEval rows: one task result per task and step
            rows = [(row.get("tags", {}), row, {task: TaskResult.from_dict(v, f"{f}, task {task}")
                                                for task, v in row["results"].items()}) for row in read_rows(f)]
        else:
            report = EvalReport.read(f)
            rows = [(report.tags, report.meta, report.results)]
        for tags, row, results in rows:
            strategy = row.get("variant") or tags.get("variant")
            negatives = row.get(NEG_NUM) if row.get(NEG_NUM) is not None else tags.get(NEG_NUM)
            if strategy is None or negatives is None:
                raise ValueError(f"{f}: no strategy or number of negatives; run nat eval with "
                                 "--tag variant=NAME --tag neg_num=N")
            for task, result in results.items():
                for metric in ("accuracy", "em", "f1"):
                    if metric in result.metrics:
                        points.append({"strategy": str(strategy), NEG_NUM: float(negatives), "task": task,
                                       "metric": metric, "value": result.metrics[metric]})
    return points


def plot_sweep(points: list[dict[str, Any]], out: str | Path, metric: str | None = None) -> Path:
    """Accuracy (or EM/F1) against the number of negatives, one line per strategy and task."""
    if metric is None:
        metric = "accuracy" if any(p["metric"] == "accuracy" for p in points) else "em"
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    tasks = {p["task"] for p in points}
    for p in points:
        if p["metric"] == metric:
            label = p["strategy"] if len(tasks) == 1 else f"{p['strategy']} ({p['task']})"
            lines[label].append((p[NEG_NUM], p["value"]))
    if not lines:
        raise ValueError(f"no {metric} values to plot")
    fig, ax = _figure()
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([q[0] for q in pts], [100 * q[1] for q in pts], marker="o", label=label)
    ax.set_xlabel("number of negative trajectories")
    ax.set_ylabel(f"{metric} (%)")
    return _save(fig, ax, f"{metric} against the number of negatives" + (f": {next(iter(tasks))}" if len(tasks) == 1
                                                                          else ""), out)


@dataclass(kw_only=True)
class PlotConfig:
    """The options of ``nat plot``."""

    kind: Literal["perplexity", "sweep"] = option(
        help="perplexity: dev perplexity curves of runs (Figure 5); sweep: accuracy against the number of negatives per "
             "strategy (Figures 3, 4, 6)", positional=True)
    inputs: tuple[str, ...] = option(help="run folders / perplexity.jsonl files, or results.json / react_eval.jsonl files "
                                          "(or folders holding results.json)", positional=True)
    x: Literal["step", "negatives"] = option(
        "step", "perplexity x-axis: training step, or number of negatives (last value per run)")
    metric: Literal["accuracy", "em", "f1"] | None = option(None, "sweep metric (default: accuracy, else EM)")
    out: str = option(help="image file: .png, .pdf or .svg")


def run_plot(cfg: PlotConfig) -> int:
    """``nat plot``: draw the chosen figure into ``cfg.out``."""
    if cfg.kind == "perplexity":
        out = plot_perplexity(load_perplexity_runs(cfg.inputs), cfg.out, x=cfg.x)
    else:
        out = plot_sweep(load_sweep(cfg.inputs), cfg.out, metric=cfg.metric)
    console.print(f"wrote {out}")
    return 0
