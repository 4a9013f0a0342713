"""Rich output shared by the commands: one console, tables for summaries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

# Piped output has no terminal width: without one, rich squeezes tables into 80 columns and cuts their headers.
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    """A rich table from plain rows (numbers are right-aligned)."""
    rows = [list(r) for r in rows]
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], (int, float)) for r in rows)
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[f"{v:.4g}" if isinstance(v, float) else str(v) for v in r])
    return t


def print_build_summary(summary: dict[str, dict[str, Any]], report: dict[str, Any], out: str | None,
                        from_cache: bool) -> None:
    """What ``nat build`` made: rows per split and label, sizes, what was skipped or filtered."""
    rows = [[split, label, n] for split, s in summary.items() for label, n in s["labels"].items()]
    console.print(table("Conversations", ["split", "label", "count"], rows))
    size_rows = [[split, s["rows"], s["turns"].get("min", 0), s["turns"].get("mean", 0.0), s["turns"].get("max", 0),
                  s["chars"].get("mean", 0.0)] for split, s in summary.items()]
    console.print(table("Sizes per conversation", ["split", "rows", "min turns", "mean turns", "max turns",
                                                   "mean chars"], size_rows))
    stats = report.get("stats", {})
    console.print(f"read: {sum(report.get('read', {}).values())} trajectories "
                  f"({stats.get('positives_available', 0)} positive, {stats.get('negatives_available', 0)} negative "
                  "after filters)")
    for reason, n in report.get("skipped_by_reason", {}).items():
        console.print(f"[yellow]skipped {n} bad record(s): {reason}[/yellow]")
    for reason, n in stats.get("filtered", {}).items():
        console.print(f"filtered {n}: {reason}")
    for note in stats.get("notes", []):
        console.print(f"[yellow]note: {note}[/yellow]")
    # The pairing of a DPO build, or the class balance of a KTO build.
    dpo, kto = report.get("dpo"), report.get("kto")
    if dpo:
        rows = [[k.replace("_", " "), dpo[k]] for k in ("pairs", "pairs_identical", "questions_paired",
                                                          "questions_capped", "questions_positive_only",
                                                          "questions_negative_only", "positives_unpaired",
                                                          "negatives_unpaired") if k in dpo]
        cap = dpo.get("pairs_per_question")
        console.print(table(f"DPO pairs (at most {cap if cap is not None else 'all'} per question, seed {dpo['seed']})",
                            ["", "count"], rows))
    if kto:
        weights = kto.get("desirable_weight_range")
        console.print(table("KTO labels", ["", "count"], [["desirable", kto["desirable"]],
                                                           ["undesirable", kto["undesirable"]]]))
        if weights:
            console.print(f"desirable share {100 * kto['desirable_share']:.1f} %; the KTO paper's balance rule "
                          f"(undesirable_weight 1) suggests model.desirable_weight between {weights[0]:g} and "
                          f"{weights[1]:g}")
    if from_cache:
        console.print("(served from the builder cache)")
    if out:
        console.print(f"wrote {out} (datasets.load_from_disk) and {out}/preview.jsonl")


def print_eval_table(results: dict[str, dict[str, float]]) -> None:
    """One row per task: its metrics and how episodes ended."""
    # "score": the graded score of a task whose own metric returns (reward, score).
    metric_names = sorted({k for r in results.values() for k in r} & {"accuracy", "em", "f1", "exact_string", "score"})

    def cell(r: dict, m: str) -> str:
        # Shares as percentages (as the demo and the paper report them); over several runs, mean ± sample sd.
        if m not in r:
            return "-"
        return f"{100 * r[m]:.1f}" + (f" ± {100 * r[m + '_sd']:.1f}" if f"{m}_sd" in r else "")

    rows = [[task, int(r.get("episodes", 0)), *[cell(r, m) for m in metric_names],
             *[cell(r, k) for k in ("finished", "turn_limit", "parse_error_rate", "failed")]] for task, r in results.items()]
    console.print(table("Evaluation (%)", ["task", "episodes", *metric_names, "finished", "turn limit",
                                           "with parse errors", "failed (API errors)"], rows))


def print_episode(traj: Any) -> None:
    """An episode turn by turn: the model's thoughts and actions, the environment's observations."""
    console.print(f"[bold]{escape(traj.question)}[/bold]")
    for m in traj.messages:
        style = "cyan" if m["role"] == "assistant" else "yellow"
        console.print(f"[{style}]{escape(m['content'])}[/{style}]")
    console.print(f"prediction: {escape(str(traj.prediction))} (ended: {traj.meta.get('end')})")


def print_collect_summary(summary: Any, out: str) -> None:
    """The end-of-collection table: labels, questions solved, failures, tokens and cost."""
    rows = [["positives", summary.positives], ["negatives", summary.negatives], ["questions", summary.questions],
            ["questions solved (>= 1 positive)", summary.questions_solved],
            ["failed episodes (retried next run)", summary.failures], ["new episodes this run", summary.new_episodes],
            ["resumed from earlier runs", summary.resumed]]
    rows += [[f"episodes ended: {end}", n] for end, n in sorted(summary.ends.items(), key=lambda kv: str(kv[0]))]
    rows += [[k.replace("_", " "), summary.usage[k]] for k in ("prompt_tokens", "completion_tokens", "requests", "retries")
             if k in summary.usage]
    if summary.cost_usd is not None:
        rows.append(["cost (USD)", round(summary.cost_usd, 4)])
    console.print(table("Collection", ["", "count"], rows))
    if summary.torn_bytes:
        console.print(f"[yellow]set aside {summary.torn_bytes} bytes of a torn last line left by a crash "
                      f"(in {out}.torn)[/yellow]")
    console.print(f"wrote {out}" + (f" and {out}.failed.jsonl" if summary.failures else ""))


def rate_line(done: int, live: int, seconds: float) -> str:
    """The engine's state for the progress bar: episodes live and episodes per second so far.

    >>> rate_line(30, 8, 12.0)
    '8 live, 2.50 episodes/s'
    """
    return f"{live} live, {done / seconds if seconds > 0 else 0.0:.2f} episodes/s"


@contextmanager
def episode_progress() -> Iterator[Callable[[str, int, int, int], None]]:
    """A progress bar per task showing episodes done of all, episodes live, and episodes per second."""
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[engine]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        ids: dict[str, Any] = {}
        started: dict[str, float] = {}

        def progress(name: str, done: int, total: int, live: int) -> None:
            if name not in ids:
                ids[name] = bar.add_task(name, total=total, engine="")
                started[name] = time.perf_counter()
            bar.update(ids[name], completed=done,
                       engine=rate_line(done, live, time.perf_counter() - started[name]))

        yield progress
