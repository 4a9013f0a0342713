"""``nat eval`` and ``nat solve``: their options (the agent's, plus what to run on) and their runs."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning_nat.agent.config import POOL_SIZE, AgentKindConfig, PolicyConfig, check_error_rate
from lightning_nat.core.artifacts import EPISODES_FILE, RESULTS_FILE
from lightning_nat.core.console import console, episode_progress, print_episode, print_eval_table
from lightning_nat.core.options import option
from lightning_nat.core.outputs import check_out_folder, writing
from lightning_nat.core.prompts import resolve_eval_spec
from lightning_nat.core.results import EvalReport, task_result


def _tasks_help() -> str:
    from lightning_nat.core.tasks import TASKS

    return "comma-separated task names or task YAML files (built in: " + ",".join(sorted(TASKS)) + ")"


@dataclass(kw_only=True)
class EvalCommandConfig(PolicyConfig, AgentKindConfig):
    """The options of ``nat eval``."""

    tasks: str = option(help=_tasks_help)
    data_dir: str | None = option(None, "folder laid out like ../shared/data (default: the Hub with --hub)")
    hub: bool = option(False, "load questions from each task's Hub dataset (needs network)")
    batch_size: int = option(
        POOL_SIZE, "the engine's pool: episodes live at once, a finished one replaced by the next question at once "
                   f"(default: {POOL_SIZE}; with --policy openai, at most --concurrency of them are requests in flight)",
        min=1)
    runs: int | None = option(
        None, "independent runs (seeds --seed, --seed+1, ...) reported as mean and sd (default: 1; 5 under --protocol "
              "reference)", min=1)
    seed: int = option(0, "seed of the first run (default: 0)")
    tag: list[str] = option([], f"recorded in {RESULTS_FILE}, e.g. --tag variant=nat --tag neg_num=500 for `nat plot sweep`",
                            append=True, metavar="KEY=VALUE")
    out: str = option(help=f"output folder: {RESULTS_FILE} and {EPISODES_FILE}")
    overwrite: bool = option(
        False, "write into --out even if it is a non-empty folder that is not an earlier `nat eval` output")

    def task_names(self) -> list[str]:
        """``tasks`` split on commas.

        >>> EvalCommandConfig(model="m", tasks="gsm8k, svamp,", out="o").task_names()
        ['gsm8k', 'svamp']
        """
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def parsed_tags(self) -> dict[str, str]:
        """``--tag KEY=VALUE`` as a dict; a tag without ``=`` is an error.

        >>> EvalCommandConfig(model="m", tasks="t", out="o", tag=["neg_num=500"]).parsed_tags()
        {'neg_num': '500'}
        """
        tags = {}
        for tag in self.tag:
            key, sep, value = tag.partition("=")
            if not sep or not key:
                raise ValueError(f"--tag {tag!r}: expected KEY=VALUE")
            tags[key] = value
        return tags


def prepare(cfg: EvalCommandConfig, mode: str = "react") -> list[tuple[Any, list[dict], dict[str, Callable]]]:
    """Every requested task with its questions and tools, checked (tools, schemas, corpus, questions) before the
    model loads or any episode runs."""
    from lightning_nat.core.tasks import default_data_dir, get_task, load_questions_for

    tasks = [get_task(name) for name in cfg.task_names()]
    data_dir = cfg.data_dir
    if data_dir is None and not cfg.hub and not all(task.data_file for task in tasks):
        found = default_data_dir()
        if found is None:
            raise ValueError("give --data-dir (a folder like ../shared/data) or --hub")
        data_dir = str(found)
    if cfg.agent == "function-calling":
        from lightning_nat.agent.function_calling import schemas_of, task_functions

        for task in tasks:
            schemas_of(task_functions(task.tools))
    plan = []
    for task, tools in zip(tasks, cfg.task_tools(tasks, mode)):
        records = load_questions_for(task, data_dir=data_dir, limit=cfg.limit, hub=cfg.hub)
        if not records:
            raise ValueError(f"{task.name}: no questions to evaluate (data folder {data_dir})")
        plan.append((task, records, tools))
    return plan


def seed_episodes(seed: int) -> None:
    """Seed what sampling draws from (Python's and torch's generators) before a run of episodes."""
    import torch  # a dependency of the package, whichever policy runs

    random.seed(seed)
    torch.manual_seed(seed)


def evaluate(policy: Any, cfg: EvalCommandConfig, progress: Callable[[str, int, int, int], None] | None = None,
             plan: list | None = None, meta: dict[str, Any] | None = None) -> Any:
    """Every task's episodes through the scheduler's pool, as one :class:`~lightning_nat.core.results.EvalReport`.

    ``plan``: what :func:`prepare` returned, if called; ``progress(task, done, total, live)`` after every step.
    """
    proto, saved, where, mode = cfg.resolved(cfg.runs)
    report = EvalReport(results={}, meta=dict(meta or {}))
    for task, records, tools in plan if plan is not None else prepare(cfg, mode):
        spec = resolve_eval_spec(task, saved, cfg.prompt_style, cfg.prompt_preset, mode, where)
        agent = cfg.make_agent(task, policy, tools, max_turns=proto.max_turns, mode=mode,
                               on_parse_error=proto.on_parse_error, prompt_spec=spec)
        runs = []
        total = len(records) * proto.runs
        for run in range(proto.runs):
            seed_episodes(cfg.seed + run)
            before = len(records) * run

            def tick(done: int, live: int, name: str = task.name, before: int = before, total: int = total) -> None:
                if progress:
                    progress(name, before + done, total, live)

            trajs = agent.run(records, batch_size=cfg.batch_size, progress=tick)
            for t in trajs:
                t.meta["run"] = run
            runs.append(trajs)
        report.results[task.name] = task_result(runs, prompt=spec.to_dict())  # what the model was asked with
        report.episodes[task.name] = [t for r in runs for t in r]
    report.usage = getattr(policy, "usage", None)
    return report


def run_eval(cfg: EvalCommandConfig) -> int:
    """``nat eval``: every task's episodes, written to ``cfg.out``; exit 1 when too many failed on policy errors."""
    check_out_folder(cfg.out, "nat eval", cfg.overwrite)
    proto, _, _, mode = cfg.resolved(cfg.runs)
    tags = cfg.parsed_tags()
    plan = prepare(cfg, mode)  # every task's tools and questions, before the model loads or any episode runs
    policy = cfg.make_policy(proto.temperature)
    meta = {"model": cfg.model, "policy": cfg.policy, "mode": mode, "limit": cfg.limit, "tags": tags,
            "protocol": cfg.protocol, "max_turns": proto.max_turns, "temperature": proto.temperature,
            "runs": proto.runs, "seed": cfg.seed, "pool_size": cfg.batch_size, "agent": cfg.agent}
    with episode_progress() as progress:
        report = evaluate(policy, cfg, progress, plan, meta=meta)
    if cfg.agent == "function-calling" and cfg.policy != "openai":
        report.meta["tool_parser"] = policy.family  # detected from the chat template unless --tool-parser named it
    with writing(cfg.out, "nat eval", cfg.overwrite) as staged:  # a failed write leaves the previous run whole
        report.write(staged)
    print_eval_table({k: v.to_dict() for k, v in report.results.items()})
    console.print(f"wrote {cfg.out}/{RESULTS_FILE} and {cfg.out}/{EPISODES_FILE}")
    for task, r in report.results.items():
        failed = round(r.failed * r.episodes)
        check_error_rate(failed, r.episodes, cfg.max_error_rate, f"{task}: {failed} of {r.episodes} episodes ended on "
                         f"policy errors", f"the {task} figures are not trustworthy ({cfg.out}/{RESULTS_FILE})")
    return 0


@dataclass(kw_only=True)
class SolveConfig(PolicyConfig):
    """The options of ``nat solve``."""

    task: str = option(help="task name or task YAML whose instruction and tools to use")
    question: str = option(help="the question to solve", positional=True)


def run_solve(cfg: SolveConfig) -> int:
    """``nat solve``: one episode on ``cfg.question``, printed turn by turn."""
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.tasks import get_task

    task = get_task(cfg.task)
    proto, saved, where, mode = cfg.resolved()
    spec = resolve_eval_spec(task, saved, cfg.prompt_style, cfg.prompt_preset, mode, where)
    tools = cfg.task_tools([task], mode)[0]
    agent = ReActAgent(task, cfg.make_policy(proto.temperature), tools, max_turns=proto.max_turns, mode=mode,
                       on_parse_error=proto.on_parse_error, prompt_spec=spec)  # type: ignore[arg-type]
    print_episode(agent.run([{"id": "cli", "question": cfg.question, "answer": ""}], batch_size=1)[0])
    return 0
