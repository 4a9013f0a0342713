"""``nat eval`` and ``nat solve``: their options (the agent's, plus what to run on) and their runs."""

from __future__ import annotations

from dataclasses import dataclass

from lightning_nat.agent.config import MAX_ERROR_RATE_HELP, AgentKindConfig, PolicyConfig, check_error_rate, error_rate
from lightning_nat.core.options import option


def _tasks_help() -> str:
    from lightning_nat.core.tasks import TASKS

    return "comma-separated task names or task YAML files (built in: " + ",".join(sorted(TASKS)) + ")"


@dataclass(kw_only=True)
class EvalCommandConfig(PolicyConfig, AgentKindConfig):
    """The options of ``nat eval``."""

    tasks: str = option(help=_tasks_help)
    data_dir: str | None = option(None, "folder laid out like ../shared/data (default: the Hub with --hub)")
    hub: bool = option(False, "load questions from each task's Hub dataset (needs network)")
    limit: int | None = option(None, "first N questions per task")
    batch_size: int = option(
        16, "the engine's pool: episodes live at once, a finished one replaced by the next question at once (default: "
            "16; with --policy openai, at most --concurrency of them are requests in flight)")
    runs: int | None = option(
        None, "independent runs (seeds --seed, --seed+1, ...) reported as mean and sd (default: 1; 5 under --protocol "
              "reference)")
    seed: int = option(0, "seed of the first run (default: 0)")
    tag: list[str] = option([], "recorded in results.json, e.g. --tag variant=nat --tag neg_num=500 for `nat plot sweep`",
                            append=True, metavar="KEY=VALUE")
    out: str = option(help="output folder: results.json and trajectories.jsonl")
    overwrite: bool = option(
        False, "write into --out even if it is a non-empty folder that is not an earlier `nat eval` output")
    max_error_rate: float = option(0.5, MAX_ERROR_RATE_HELP, parse=error_rate, metavar="SHARE")

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


def run_eval(cfg: EvalCommandConfig) -> int:
    """``nat eval``: every task's episodes, written to ``cfg.out``; exit 1 when too many failed on policy errors."""
    from lightning_nat.agent.evaluate import EvalConfig, evaluate, prepare
    from lightning_nat.core.console import console, episode_progress, print_eval_table
    from lightning_nat.core.outputs import check_out_folder
    from lightning_nat.core.tasks import get_task

    check_out_folder(cfg.out, "nat eval", cfg.overwrite)
    data_dir = cfg.data_dir
    own_data = all(get_task(t).data_file for t in cfg.task_names())
    if data_dir is None and not cfg.hub and not own_data:
        from lightning_nat.core.tasks import default_data_dir

        found = default_data_dir()
        if found is None:
            raise ValueError("give --data-dir (a folder like ../shared/data) or --hub")
        data_dir = str(found)
    proto, saved, where, mode = cfg.resolved(cfg.runs)
    run = EvalConfig(tasks=cfg.task_names(), data_dir=data_dir, limit=cfg.limit, batch_size=cfg.batch_size,
                     max_turns=proto.max_turns, mode=mode, search=cfg.search, search_corpus=cfg.search_corpus,
                     search_k=cfg.search_k, hub=cfg.hub, search_rerank=cfg.search_rerank,
                     on_parse_error=proto.on_parse_error, runs=proto.runs, seed=cfg.seed, prompt_spec=saved,
                     prompt_style=cfg.prompt_style, prompt_preset=cfg.prompt_preset, prompt_source=where,
                     agent=cfg.agent, tool_parser=cfg.tool_parser)
    plan = prepare(run)  # every task's tools and questions, before the model loads or any episode runs
    policy = cfg.make_policy(proto.temperature)
    tags = cfg.parsed_tags()
    meta = {"model": cfg.model, "policy": cfg.policy, "mode": mode, "limit": cfg.limit, "tags": tags,
            "protocol": cfg.protocol, "max_turns": proto.max_turns, "temperature": proto.temperature,
            "runs": run.runs, "seed": cfg.seed, "pool_size": cfg.batch_size, "agent": cfg.agent}
    if cfg.agent == "function-calling" and cfg.policy == "hf":
        meta["tool_parser"] = policy.family  # detected from the chat template unless --tool-parser named it
    with episode_progress() as progress:
        report = evaluate(policy, run, progress, plan, meta=meta)
    from lightning_nat.core.outputs import writing

    with writing(cfg.out, "nat eval", cfg.overwrite) as staged:  # a failed write leaves the previous run whole
        report.write(staged)
    out = cfg.out
    print_eval_table({k: v.to_dict() for k, v in report.results.items()})
    console.print(f"wrote {out}/results.json and {out}/trajectories.jsonl")
    for task, r in report.results.items():
        n = r.episodes
        failed = round(r.failed * n)
        check_error_rate(failed, n, cfg.max_error_rate, f"{task}: {failed} of {n} episodes ended on policy errors",
                         f"the {task} figures are not trustworthy ({out}/results.json)")
    return 0


@dataclass(kw_only=True)
class SolveConfig(PolicyConfig):
    """The options of ``nat solve``."""

    task: str = option(help="task name or task YAML whose instruction and tools to use")
    question: str = option(help="the question to solve", positional=True)


def run_solve(cfg: SolveConfig) -> int:
    """``nat solve``: one episode on ``cfg.question``, printed turn by turn."""
    from lightning_nat.agent.react import ReActAgent
    from lightning_nat.core.console import print_episode
    from lightning_nat.core.prompts import resolve_eval_spec
    from lightning_nat.core.tasks import get_task
    from lightning_nat.core.tools import make_tools

    task = get_task(cfg.task)
    proto, saved, where, mode = cfg.resolved()
    spec = resolve_eval_spec(task, saved, cfg.prompt_style, cfg.prompt_preset, mode, where)  # type: ignore[arg-type]
    search = cfg.search_tool()
    tools = make_tools(task.tools, search) if mode == "react" else {}
    if "search" in tools:
        search.prepare()
    agent = ReActAgent(task, cfg.make_policy(proto.temperature), tools, max_turns=proto.max_turns, mode=mode,
                       on_parse_error=proto.on_parse_error, prompt_spec=spec)  # type: ignore[arg-type]
    traj = agent.run([{"id": "cli", "question": cfg.question, "answer": ""}], batch_size=1)[0]
    print_episode(traj)
    return 0
