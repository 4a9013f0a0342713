"""The ``nat`` command: a thin dispatcher over the library.

Each sub-command is one ``(add_arguments, run)`` pair in :data:`COMMANDS`; ``fit``
hands its arguments to ``LightningCLI`` so that the YAML configs stay the record
of a run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__


def _add_build(p: argparse.ArgumentParser) -> None:
    from .builders import PRESETS

    p.add_argument("--trajectories", nargs="+", required=True, metavar="FILE",
                   help="trajectory files (positives and negatives may share a file or not)")
    p.add_argument("--format", default="nat", choices=["nat", "openai", "sharegpt", "jsonl"],
                   help="input format: the NAT reference JSON (joined with --questions), OpenAI messages JSONL, "
                        "ShareGPT JSONL, or our canonical trajectory JSONL (default: nat)")
    p.add_argument("--questions", metavar="FILE", help="question file (JSON or JSONL with id, question, answer); "
                                                        "needed by --format nat")
    p.add_argument("--task", default="", help="task name or task YAML, which picks the instruction text; without it, "
                   "each trajectory keeps its own leading system turn(s) as the instruction (task-less build)")
    p.add_argument("--variant", default="nat", choices=[c.name for c in PRESETS],
                   help="which training set to build: " + "; ".join(f"{c.name}: {c.description}" for c in PRESETS))
    p.add_argument("--pos-num", type=int, help="positives to keep: the first N unique by question (default: all)")
    p.add_argument("--neg-num", type=int, help="negatives to sample with --seed (default: all)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42)")
    p.add_argument("--pos-sampling", choices=["first", "random", "reference"], default="first",
                   help="first N unique positives in file order, a seeded random N, or the first N records with "
                        "repeated questions kept, as the reference code took them (default: first)")
    p.add_argument("--neg-sampling", choices=["paper", "reference"], default="paper",
                   help="paper: a seeded sample of the negatives left after filtering; reference: random.seed(SEED) "
                        "sample over every record of the negatives file(s) in file order, then filter, which "
                        "reproduces the reference code's choice (default: paper)")
    p.add_argument("--prompt-style", choices=_prompt_styles(),
                   help="reference: the paper's reference strings verbatim (instruction turn, acknowledgement, "
                        "'Question: ... **correctly**.', NAT-2's four F1 prefixes, Table 4 ablations); native: this "
                        "package's system instruction and marker sentence (default: reference for the tasks whose "
                        "declaration names reference_prompts, the paper's six; native otherwise)")
    p.add_argument("--prompt-mode", choices=["react", "cot"], default="react",
                   help="react (tools) or cot: chain-of-thought solutions, prompted as the reference's "
                        "cot-zero-shot-target-aware (paper Table 7) (default: react)")
    p.add_argument("--allow-empty-class", action="store_true",
                   help="build even when a filter removed every positive or every negative (an error otherwise)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="native style: score bands for fine-grained NAT, overriding the variant's (e.g. 0.4 for "
                        "NAT-2); the reference style's NAT-2 bands are F1 = 0, < 0.4, < 1, = 1")
    p.add_argument("--placement", choices=["suffix", "prefix", "system"],
                   help="native style: marker after (default) or before the question in the first user turn, or "
                        "(system) at the end of the system turn, the question left bare")
    p.add_argument("--keep-unfinished", action="store_true", help="keep negatives that never called finish")
    p.add_argument("--min-score", type=float,
                   help="drop negatives scoring below this (1e-6 drops negatives with F1 = 0, as the paper does)")
    p.add_argument("--no-dedupe", action="store_true", help="keep identical trajectories")
    p.add_argument("--dev-num", type=int, default=0,
                   help="held-out positives (questions with no training positive) in a 'dev' split, for perplexity")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="on a bad record: stop with an error naming it (default), or skip it and report it")
    p.add_argument("--pairs-per-question", type=int, metavar="N",
                   help="--variant dpo: at most N seeded (positive, negative) pairs per question (default: every pair)")
    p.add_argument("--cache-dir", help="builder cache folder (default: the datasets cache)")
    p.add_argument("--out", required=True, help="output folder for datasets.load_from_disk (written whole at the "
                   "end: a failed build leaves the previous one as it was)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out even if it is a non-empty folder that is not an earlier `nat build` output")


def _run_build(args: argparse.Namespace) -> int:
    from .builders import build_dataset, save_build, summarize
    from .console import print_build_summary

    params = dict(format=args.format, questions=args.questions, task=args.task, pos_num=args.pos_num,
                  neg_num=args.neg_num, seed=args.seed, pos_sampling=args.pos_sampling,
                  drop_unfinished=not args.keep_unfinished, min_score=args.min_score, dedupe=not args.no_dedupe,
                  dev_num=args.dev_num, on_error=args.on_error, prompt_style=args.prompt_style,
                  mode=args.prompt_mode, neg_sampling=args.neg_sampling, allow_empty_class=args.allow_empty_class)
    if args.thresholds is not None:
        params["thresholds"] = tuple(args.thresholds)
    if args.placement is not None:
        params["placement"] = args.placement
    if args.pairs_per_question is not None:
        if args.variant != "dpo":
            raise ValueError(f"--pairs-per-question applies to --variant dpo only, not {args.variant}")
        params["pairs_per_question"] = args.pairs_per_question
    from .outputs import output_lock, staged_folder

    _check_out_folder(args.out, "build.json", "nat build", args.overwrite,
                      inputs=[*args.trajectories, *([args.questions] if args.questions else [])])
    with output_lock(args.out, "nat build"):
        # Checked again under the lock: another build may have finished into it meanwhile.
        _check_out_folder(args.out, "build.json", "nat build", args.overwrite)
        result = build_dataset(args.trajectories, args.variant, cache_dir=args.cache_dir, **params)
        with staged_folder(args.out) as staged:
            save_build(result, staged)
    print_build_summary(summarize(result.dataset), result.report, args.out, result.from_cache)
    return 0


def _check_out_folder(out: str, marker: str, command: str, overwrite: bool, inputs: list[str] = ()) -> None:
    """Refuse an --out that would destroy something (see :func:`lightning_nat.outputs.check_out_folder`)."""
    from pathlib import Path

    from .outputs import OutputError, check_out_folder

    target = Path(out).resolve()
    for f in inputs:
        path = Path(f).resolve()
        if path == target or target in path.parents:
            raise OutputError(f"--out {out}: holds the input {f}, which writing the output would destroy; "
                              "choose another --out")
    check_out_folder(out, marker, command, overwrite)


def _add_scratch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="a `nat build --out` folder whose texts train the tokenizer")
    p.add_argument("--out", required=True, help="output folder (a normal Hugging Face model folder)")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (default: 512)")
    p.add_argument("--hidden-size", type=int, default=64, help="model width (default: 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer layers (default: 2)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default: 4)")
    p.add_argument("--template", choices=["chatml", "llama2"], default="chatml",
                   help="chat template: ChatML, or none so training falls back to Llama-2-chat [INST] (default: chatml)")
    p.add_argument("--seed", type=int, default=0, help="weight init seed (default: 0)")


def _run_scratch(args: argparse.Namespace) -> int:
    from .console import console
    from .scratch import CHATML_TEMPLATE, conversation_texts, make_scratch_model

    texts = conversation_texts(args.dataset)
    out = make_scratch_model(args.out, texts, vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                             num_layers=args.layers, num_heads=args.heads, seed=args.seed,
                             chat_template=CHATML_TEMPLATE if args.template == "chatml" else None)
    console.print(f"wrote a random-init scratch model and its tokenizer ({len(texts)} texts) to {out}")
    return 0


def _add_agent_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder or Hub id (hf), or the model name on the server (openai)")
    p.add_argument("--policy", choices=["hf", "openai"], default="hf", help="local Hugging Face model or an "
                   "OpenAI-compatible API (default: hf)")
    p.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per model turn (default: 256)")
    p.add_argument("--concurrency", type=int, default=8, help="API requests in flight (openai; default: 8)")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a failed API request (default: 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per API request (default: 60)")
    p.add_argument("--max-turns", type=int, default=None,
                   help="model turns per episode (default: 6; the reference code allows 7: --protocol reference)")
    p.add_argument("--search-corpus", help="offline BM25 search: a `nat corpus --out` folder, or a JSONL of "
                                           "{title, text}")
    p.add_argument("--search", choices=["serper"], help="online search backend (key from SERPER_API_KEY)")
    p.add_argument("--search-rerank", action="store_true",
                   help="re-rank search results as the paper did: 10 results, the top 5 by the bi-encoder "
                        "all-mpnet-base-v2, the top 3 by the DPR reader dpr-reader-multiset-base (needs "
                        "`pip install lightning_nat[rerank]`; downloads both models)")


def _prompt_styles() -> list[str]:
    from .prompts import STYLES

    return list(STYLES)


def _add_max_error_rate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-error-rate", type=_error_rate, default=0.5, metavar="SHARE",
                   help="exit with an error when more than this share of episodes failed on policy (API) errors; "
                        "everything is still written (default: 0.5)")


def _add_policy(p: argparse.ArgumentParser) -> None:
    _add_agent_args(p)
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default; 0.2 under --protocol reference)")
    p.add_argument("--mode", choices=["react", "cot"], default=None,
                   help="ReAct with tools, or chain-of-thought without tools (paper Table 7) (default: the mode the "
                        "model's nat_prompt.json was trained in, else react)")
    p.add_argument("--protocol", choices=["native", "reference"], default="native",
                   help="native: one greedy run, 6 turns, a malformed step is answered with an error observation; "
                        "reference: as the reference code and the paper's Table 5: 7 turns, temperature 0.2, the mean "
                        "± sd of --runs 5, a malformed step ends the episode (default: native)")
    p.add_argument("--prompt-style", choices=_prompt_styles(),
                   help="prompt style; read from the model folder's nat_prompt.json when it has one (an option "
                        "that contradicts it is an error), else reference for the paper's tasks")
    p.add_argument("--prompt-preset", help="the builder preset the model was trained with (nat, nat-2, nat-ab, ...), "
                                           "when the model folder does not say")
    p.add_argument("--prompt-from", metavar="FOLDER",
                   help="read the prompt spec from this folder (a `nat build --out` or an exported model) instead of "
                        "--model's folder (for --policy openai)")


def _eval_prompt(args: argparse.Namespace) -> tuple[object, str]:
    """The saved prompt spec for the model under evaluation and where it was found."""
    import os

    from .prompts import read_spec

    folder = args.prompt_from or (args.model if args.policy == "hf" and os.path.isdir(args.model) else None)
    if args.prompt_from and read_spec(args.prompt_from) is None:
        raise FileNotFoundError(f"--prompt-from {args.prompt_from}: no nat_prompt.json or build.json there")
    saved = read_spec(folder)
    if args.mode is None:
        args.mode = saved.mode if saved is not None else "react"
    return saved, (folder or "")


def _apply_protocol(args: argparse.Namespace) -> object:
    from .evaluate import apply_protocol

    proto = apply_protocol(args.protocol, args.max_turns, args.temperature, getattr(args, "runs", None))
    args.max_turns, args.temperature = proto.max_turns, proto.temperature
    return proto


def _make_policy(args: argparse.Namespace, temperature: float | None = None) -> object:
    temperature = args.temperature if temperature is None else temperature
    if args.policy == "openai":
        from .policies import OpenAIPolicy

        return OpenAIPolicy(args.model, args.base_url, args.api_key_env, temperature, args.max_new_tokens,
                            args.concurrency, args.max_retries, args.timeout)
    from .policies import HFPolicy

    return HFPolicy(args.model, temperature=temperature, max_new_tokens=args.max_new_tokens)


def _add_collect(p: argparse.ArgumentParser) -> None:
    _add_agent_args(p)
    p.add_argument("--task", required=True, help="task name or task YAML (instruction, tools, metric)")
    p.add_argument("--data", required=True, help="question file (JSON or JSONL with question and answer)")
    p.add_argument("--limit", type=int, help="first N questions")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.5, 0.7],
                   help="sampling temperatures, one pass each (default: 0.2 0.5 0.7, as the paper)")
    p.add_argument("--samples", type=int, default=1, help="episodes per question and temperature (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes run together (default: 32)")
    p.add_argument("--price-prompt", type=float, help="USD per million prompt tokens, to report the cost")
    p.add_argument("--price-completion", type=float, help="USD per million completion tokens")
    p.add_argument("--out", required=True, help="output JSONL (appended to; a rerun resumes)")
    _add_max_error_rate(p)


def _run_collect(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .collect import collect
    from .console import console, print_collect_summary
    from .evaluate import EvalConfig, search_tool
    from .tasks import get_task, load_questions_for
    from .tools import make_tools

    task = get_task(args.task)
    records = load_questions_for(task, path=args.data, limit=args.limit)
    search = search_tool(EvalConfig(tasks=[args.task], search=args.search, search_corpus=args.search_corpus,
                                    search_rerank=args.search_rerank))
    tools = make_tools(task.tools, search)
    if "search" in tools:
        search.prepare()  # a bad corpus or a missing key stops here, before the teacher is paid for anything
    policy = _make_policy(args, temperature=args.temperatures[0])
    args.max_turns = 6 if args.max_turns is None else args.max_turns
    prices = (args.price_prompt or 0.0, args.price_completion or 0.0) if args.price_prompt or args.price_completion \
        else None
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        bar_id = bar.add_task("collecting", total=None)
        summary = collect(task, records, policy, args.out, args.temperatures, args.samples, teacher=args.model,
                          batch_size=args.batch_size, max_turns=args.max_turns, tools=tools, price_per_million=prices,
                          progress=lambda done, total: bar.update(bar_id, completed=done, total=total))
    print_collect_summary(summary, args.out)
    attempted = summary.new_episodes + summary.failures
    _check_error_rate(summary.failures, attempted, args.max_error_rate,
                      f"{args.out}: {summary.failures} of {attempted} episodes failed on API errors",
                      f"they are listed in {args.out}.failed.jsonl and a rerun retries them")
    return 0


def _add_clean(p: argparse.ArgumentParser) -> None:
    p.add_argument("trajectories", help="canonical trajectory JSONL (what nat collect writes)")
    p.add_argument("--task", required=True, help="task name or task YAML, which picks the rules (tasks graded by F1 also drop "
                   "F1 = 0 negatives)")
    p.add_argument("--keep-unfinished", action="store_true", help="keep trajectories that never called finish")
    p.add_argument("--min-score", type=float, help="drop negatives scoring below this (overrides the task's rule)")
    p.add_argument("--out", required=True, help="cleaned JSONL")


def _run_clean(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .collect import clean, default_rules
    from .console import console, table
    from .tasks import get_task
    from .trajectory import read_trajectories_jsonl, write_jsonl

    if Path(args.out).resolve() == Path(args.trajectories).resolve():
        raise ValueError(f"--out {args.out}: is the input file; write the cleaned trajectories elsewhere")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out}: is a folder; give a file name")
    rules = default_rules(get_task(args.task))
    rules.drop_unfinished = not args.keep_unfinished
    if args.min_score is not None:
        rules.min_score = args.min_score
    trajs = read_trajectories_jsonl(args.trajectories)
    kept, removed = clean(trajs, rules)
    write_jsonl(args.out, kept)
    rows = [["read", len(trajs)], *[[f"removed: {rule}", n] for rule, n in removed.items()], ["kept", len(kept)]]
    console.print(table("Cleaning", ["", "trajectories"], rows))
    console.print(f"wrote {args.out}")
    return 0


def _add_eval(p: argparse.ArgumentParser) -> None:
    _add_policy(p)
    p.add_argument("--tasks", required=True, help="comma-separated task names or task YAML files (built in: "
                   + ",".join(_task_names()) + ")")
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data (default: the Hub with --hub)")
    p.add_argument("--hub", action="store_true", help="load questions from each task's Hub dataset (needs network)")
    p.add_argument("--limit", type=int, help="first N questions per task")
    p.add_argument("--batch-size", type=int, default=16,
                   help="the engine's pool: episodes live at once, a finished one replaced by the next question at "
                        "once (default: 16; with --policy openai, at most --concurrency of them are requests in "
                        "flight)")
    p.add_argument("--runs", type=int, default=None,
                   help="independent runs (seeds --seed, --seed+1, ...) reported as mean and sd (default: 1; 5 under "
                        "--protocol reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first run (default: 0)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="recorded in results.json, e.g. --tag variant=nat --tag neg_num=500 for `nat plot sweep`")
    p.add_argument("--out", required=True, help="output folder: results.json and trajectories.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="write into --out even if it is a non-empty folder that is not an earlier `nat eval` output")
    _add_max_error_rate(p)


def _task_names() -> list[str]:
    from .tasks import TASKS

    return sorted(TASKS)


def _run_eval(args: argparse.Namespace) -> int:
    from .console import console, episode_progress, print_eval_table
    from .evaluate import EvalConfig, evaluate, prepare
    from .tasks import get_task

    _check_out_folder(args.out, "results.json", "nat eval", args.overwrite)
    own_data = all(get_task(t.strip()).data_file for t in args.tasks.split(",") if t.strip())
    if args.data_dir is None and not args.hub and not own_data:
        from .shared_data import shared_data_dir

        found = shared_data_dir()
        if found is None:
            raise ValueError("give --data-dir (a folder like ../shared/data) or --hub")
        args.data_dir = str(found)
    proto = _apply_protocol(args)
    saved, where = _eval_prompt(args)
    cfg = EvalConfig(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], data_dir=args.data_dir,
                     limit=args.limit, batch_size=args.batch_size, max_turns=args.max_turns, mode=args.mode,
                     search=args.search, search_corpus=args.search_corpus, hub=args.hub,
                     search_rerank=args.search_rerank,
                     on_parse_error=proto.on_parse_error, runs=proto.runs, seed=args.seed,  # type: ignore[attr-defined]
                     prompt_spec=saved, prompt_style=args.prompt_style,  # type: ignore[arg-type]
                     prompt_preset=args.prompt_preset, prompt_source=where)
    plan = prepare(cfg)  # every task's tools and questions, before the model loads or any episode runs
    policy = _make_policy(args)
    tags = {}
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {tag!r}: expected KEY=VALUE")
        tags[key] = value
    meta = {"model": args.model, "policy": args.policy, "mode": args.mode, "limit": args.limit,
            "tags": tags, "protocol": args.protocol, "max_turns": args.max_turns, "temperature": args.temperature,
            "runs": cfg.runs, "seed": args.seed, "pool_size": args.batch_size}
    with episode_progress() as progress:
        report = evaluate(policy, cfg, progress, plan, meta=meta)
    out = report.write(args.out)
    print_eval_table({k: v.to_dict() for k, v in report.results.items()})
    console.print(f"wrote {out}/results.json and {out}/trajectories.jsonl")
    for task, r in report.results.items():
        n = r.episodes
        failed = round(r.failed * n)
        _check_error_rate(failed, n, args.max_error_rate, f"{task}: {failed} of {n} episodes ended on policy errors",
                          f"the {task} figures are not trustworthy ({out}/results.json)")
    return 0


def _error_rate(text: str) -> float:
    """argparse type: a share in [0, 1].

    >>> _error_rate("0.25")
    0.25
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


class TooManyErrors(RuntimeError):
    """More requests or episodes failed than ``--max-error-rate`` allows."""


def _check_error_rate(failed: int, total: int, limit: float, what: str, consequence: str) -> None:
    if total and failed / total > limit:
        raise TooManyErrors(f"{what} ({failed / total:.0%}, more than --max-error-rate {limit:g}); {consequence}")


def _add_solve(p: argparse.ArgumentParser) -> None:
    _add_policy(p)
    p.add_argument("--task", required=True, help="task name or task YAML whose instruction and tools to use")
    p.add_argument("question", help="the question to solve")


def _run_solve(args: argparse.Namespace) -> int:
    from .agent import ReActAgent
    from .console import print_episode
    from .evaluate import EvalConfig, search_tool
    from .prompts import resolve_eval_spec
    from .tasks import get_task
    from .tools import make_tools

    task = get_task(args.task)
    proto = _apply_protocol(args)
    saved, where = _eval_prompt(args)
    spec = resolve_eval_spec(args.task, saved, args.prompt_style, args.prompt_preset, args.mode, where)  # type: ignore[arg-type]
    search = search_tool(EvalConfig(tasks=[args.task], search=args.search, search_corpus=args.search_corpus,
                                    search_rerank=args.search_rerank))
    tools = make_tools(task.tools, search) if args.mode == "react" else {}
    if "search" in tools:
        search.prepare()
    agent = ReActAgent(task, _make_policy(args), tools, max_turns=args.max_turns, mode=args.mode,
                       on_parse_error=proto.on_parse_error, prompt_spec=spec)  # type: ignore[attr-defined]
    traj = agent.run([{"id": "cli", "question": args.question, "answer": ""}], batch_size=1)[0]
    print_episode(traj)
    return 0


def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["perplexity", "sweep"],
                   help="perplexity: dev perplexity curves of runs (Figure 5); sweep: accuracy against the number of "
                        "negatives per strategy (Figures 3, 4, 6)")
    p.add_argument("inputs", nargs="+", help="run folders / perplexity.jsonl files, or results.json / "
                                             "react_eval.jsonl files (or folders holding results.json)")
    p.add_argument("--x", choices=["step", "negatives"], default="step",
                   help="perplexity x-axis: training step, or number of negatives (last value per run)")
    p.add_argument("--metric", choices=["accuracy", "em", "f1"], help="sweep metric (default: accuracy, else EM)")
    p.add_argument("--out", required=True, help="image file: .png, .pdf or .svg")


def _run_plot(args: argparse.Namespace) -> int:
    from .console import console
    from .plot import load_perplexity_runs, load_sweep, plot_perplexity, plot_sweep

    if args.kind == "perplexity":
        out = plot_perplexity(load_perplexity_runs(args.inputs), args.out, x=args.x)
    else:
        out = plot_sweep(load_sweep(args.inputs), args.out, metric=args.metric)
    console.print(f"wrote {out}")
    return 0


def _add_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["dataset", "model"], help="a `nat build --out` folder or an exported `hf/` folder")
    p.add_argument("folder", help="the folder to publish")
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. me/my-nat-data")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card, upload nothing")
    p.add_argument("--stage-dir", metavar="DIR", help="dataset: write the exact upload (data/*.parquet and README.md) "
                                                     "into this new folder and keep it (e.g. with --dry-run, to check "
                                                     "it with datasets.load_dataset(DIR))")


def _run_push(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .console import console
    from .hub import push

    plan = push(args.kind, args.folder, args.repo, private=args.private, dry_run=args.dry_run,
                stage_dir=args.stage_dir)
    if args.dry_run:
        console.print(f"would upload to {args.repo} ({args.kind}, {'private' if args.private else 'public'}):")
        for f in plan["files"]:
            console.print(f"  {escape(f)}")
        console.print(escape(plan["card"]))
    else:
        console.print(f"uploaded to {plan['url']}")
    return 0


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a `nat build --out` folder")
    p.add_argument("--to", required=True, choices=["openai", "sharegpt", "alpaca"],
                   help="openai: messages with per-turn weights (TRL, OpenAI fine-tuning, axolotl, LLaMA-Factory); "
                        "sharegpt: from/value conversations (LLaMA-Factory, axolotl); alpaca: instruction/output with "
                        "history (LLaMA-Factory)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for <split>.jsonl and dataset_info.json")
    p.add_argument("--name", help="dataset name in dataset_info.json (default: the input folder's name)")


def _run_export(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .console import console
    from .trainer_formats import export_dataset

    res = export_dataset(args.folder, args.to, args.out, name=args.name)
    counts = ", ".join(f"{split}: {n}" for split, n in res["counts"].items())
    console.print(f"wrote {args.to} conversations ({counts}) to {escape(args.out)}: {', '.join(res['files'])}")
    console.print(f"LLaMA-Factory: dataset_dir: {escape(args.out)}, dataset: {', '.join(res['llamafactory'])}")
    if res["axolotl"]:
        console.print("axolotl config snippet:")
        console.print(escape(res["axolotl"]), highlight=False)
    return 0


def _add_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="a `nat build --out` folder")
    p.add_argument("--row", type=int, default=0, help="row index in the split (default: 0)")
    p.add_argument("--split", default="train", help="split (default: train)")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (the model's) whose chat template renders the row")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template replacing the tokenizer's (as "
                   "nat fit's --data.chat_template)")
    p.add_argument("--plain", action="store_true", help="mark trained tokens with ⟦ ⟧ instead of colour "
                   "(the default when the output is not a terminal)")


def _run_inspect(args: argparse.Namespace) -> int:
    import datasets
    from transformers import AutoTokenizer

    from .console import console
    from .inspect_row import inspect_row, print_inspected
    from .prompts import read_spec
    from .tokenization import ensure_chat_template, load_chat_template

    ds = datasets.load_from_disk(args.dataset)
    if args.split not in ds:
        raise ValueError(f"{args.dataset}: no split {args.split!r} (it has {', '.join(ds)})")
    part = ds[args.split]
    if not 0 <= args.row < len(part):
        raise ValueError(f"{args.dataset}: split {args.split} has {len(part)} rows; --row {args.row} is out of range")
    tok = ensure_chat_template(load_chat_template(AutoTokenizer.from_pretrained(args.tokenizer), args.chat_template))
    res = inspect_row(part[args.row], tok, read_spec(args.dataset))
    print_inspected(res, args.plain or not console.is_terminal)
    return 0


def _add_corpus(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", help="JSONL files of passages and/or folders (or files) of .txt/.md text")
    p.add_argument("--fields", nargs="+", default=["text"],
                   help="JSONL fields holding passage text, a string or a list of strings (default: text; "
                        "e.g. facts decomposition for the shared data's train.jsonl)")
    p.add_argument("--title-field", default="title", help="JSONL field used as each passage's title (default: title; "
                                                         "e.g. term)")
    p.add_argument("--max-words", type=int, default=200, help="text files: longest passage in words (default: 200)")
    p.add_argument("--out", required=True, help="a new folder: passages.jsonl, index/ and corpus.json")


def _run_corpus(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .console import console
    from .corpus import build_corpus

    manifest = build_corpus(args.sources, args.out, fields=args.fields, title_field=args.title_field or None,
                            max_words=args.max_words)
    console.print(f"indexed {manifest['passages']} passages ({manifest['duplicates_dropped']} duplicates dropped) "
                  f"into {escape(args.out)}; search it with --search-corpus {escape(args.out)}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    from .demo import STRATEGIES, DemoConfig

    d = DemoConfig()
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run with tiny sizes")
    p.add_argument("--profile", choices=("cpu", "gpu"), default=None,
                   help="cpu (default) or gpu: a bigger model, pretraining and budget on a CUDA device")
    p.add_argument("--seeds", type=_positive_int, default=None, help=f"seeds to average over (default: {d.seeds})")
    p.add_argument("--first-seed", type=int, default=None,
                   help="first seed (default: 0; the report uses 0-4, 100-104 were kept for design)")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=None,
                   help=f"what to compare (default: {' '.join(d.strategies)}; dpo and kto continue from w/o Neg)")
    p.add_argument("--cache-dir", default=None,
                   help="where pretrained bases are cached by a hash of their inputs "
                        "(default: demo-base-cache beside --out)")
    sizes = p.add_argument_group("sizes and rates (defaults: the full run; --quick shrinks them)")
    for name, help_text in (("train_problems", "training problems"), ("test_problems", "held-out test problems"),
                            ("min_steps", "fewest operations per problem"), ("max_steps", "most operations per problem"),
                            ("error_rate", "teacher mistake rate at temperature 0.5"),
                            ("pos_num", "positives in every training set"), ("neg_num", "negatives in NUT and NAT"),
                            ("dev_num", "held-out positives for dev perplexity"), ("vocab_size", "tokenizer size"),
                            ("hidden_size", "model width"), ("layers", "model depth"), ("heads", "attention heads"),
                            ("pretrain_texts", "unlabelled passages the base is pretrained on"),
                            ("pretrain_steps", "pretraining steps of the base"), ("base_seed", "seed of the base"),
                            ("steps", "optimizer steps per strategy (the same budget for each)"),
                            ("batch_size", "conversations per step"), ("learning_rate", "peak learning rate"),
                            ("preference_learning_rate", "peak learning rate of DPO/KTO (from the w/o-Neg model)"),
                            ("beta", "DPO/KTO beta"), ("max_turns", "agent turns per episode"),
                            ("max_new_tokens", "tokens per turn (0: the longest teacher turn plus a margin)"),
                            ("threads", "torch threads (fixed, for identical results)")):
        default = getattr(d, name)
        sizes.add_argument("--" + name.replace("_", "-"), type=type(default), default=None,
                           help=f"{help_text} (default: {default})")
    sizes.add_argument("--temperatures", type=float, nargs="+", help=f"teacher temperatures (default: {d.temperatures})")


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from .console import console, print_demo_table
    from .demo import DemoConfig, run_demo

    overrides = {k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__ and v is not None}
    for name in ("temperatures", "strategies"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    if args.quick and args.profile == "gpu":
        raise ValueError("--quick and --profile gpu: choose one")
    cfg = (DemoConfig.quick(**overrides) if args.quick else
           DemoConfig.gpu(**overrides) if args.profile == "gpu" else DemoConfig(**overrides))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.time()
    stages = 1 + cfg.seeds * (1 + 2 * len(cfg.strategies))  # the base, then per seed: collect, train + evaluate each
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        bar_id = bar.add_task("NAT demo", total=stages)

        def say(msg: str) -> None:
            if bar.tasks[0].description != "NAT demo":
                bar.advance(bar_id)
            bar.update(bar_id, description=msg)
            console.log(msg)

        result = run_demo(cfg, say=say)
        bar.update(bar_id, completed=stages, description="NAT demo: done")
    print_demo_table(result, time.time() - start)
    console.print(f"wrote {cfg.out}/results.json, {cfg.out}/timings.json, {cfg.out}/perplexity.png and "
                  f"{cfg.out}/accuracy.png")
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "build": ("build a NAT/NUT/NAT-k training set from trajectory files", _add_build, _run_build),
    "scratch": ("make an offline tiny random-init Llama and BPE tokenizer for CPU runs and tests", _add_scratch,
                _run_scratch),
    "eval": ("evaluate a model as a ReAct agent on tasks (accuracy, EM/F1, episode ends)", _add_eval, _run_eval),
    "solve": ("run one episode on a question and print it turn by turn", _add_solve, _run_solve),
    "collect": ("run a teacher LLM on training questions and keep every labelled trajectory (resumable)",
                _add_collect, _run_collect),
    "clean": ("apply the paper's cleaning rules to collected trajectories", _add_clean, _run_clean),
    "plot": ("draw dev perplexity curves or accuracy against the number of negatives", _add_plot, _run_plot),
    "corpus": ("index text files or a JSONL of passages with BM25 for the offline search tool", _add_corpus,
               _run_corpus),
    "inspect": ("show one built row rendered by a tokenizer, its trained tokens marked, with label, marker and "
                "token counts", _add_inspect, _run_inspect),
    "export": ("write a built dataset as openai / sharegpt / alpaca JSONL for TRL, LLaMA-Factory and axolotl",
               _add_export, _run_export),
    "push": ("publish a built dataset or an exported model on the Hugging Face Hub, with a card", _add_push, _run_push),
    "demo": ("the whole method offline on a CPU: pretrain a small base, collect, build, fine-tune w/o-neg, NUT and NAT "
             "(DPO and KTO on request), evaluate, compare",
             _add_demo, _run_demo),
}
# Sub-commands that parse their own arguments (LightningCLI and friends).
PASSTHROUGH: dict[str, tuple[str, str]] = {
    "fit": ("fine-tune a model with LightningCLI (nat fit --help; nat fit --config FILE.yaml)", "lightning_nat.train:cli_main"),
}


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1.

    >>> _positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def error_line(exc: BaseException, command: str | None = None) -> str:
    """One located line for an error: the message as raised (which names file and record), on one line.

    >>> error_line(FileNotFoundError(2, "No such file or directory", "q.jsonl"))
    "[Errno 2] No such file or directory: 'q.jsonl'"
    """
    from .jsonl import RecordError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {exc}"
    elif not isinstance(exc, (OSError, ValueError, RuntimeError)):
        text = f"{type(exc).__name__}: {text}"
    # Only commands that have the option get the hint (nat collect has no --on-error).
    if isinstance(exc, RecordError) and command in ON_ERROR_COMMANDS and "--on-error" not in text:
        text += " (--on-error skip skips and counts such records)"
    return text


ON_ERROR_COMMANDS = {"build"}


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in PASSTHROUGH:
        module, func = PASSTHROUGH[argv[0]][1].rsplit(":", 1)
        import importlib

        return getattr(importlib.import_module(module), func)(argv[1:]) or 0
    # allow_abbrev=False: `nat demo --seed 0` must not be read as `--seeds 0`.
    parser = argparse.ArgumentParser(prog="nat", allow_abbrev=False,
                                     description="Negative-Aware Training (NAT) of LLM agents: build training sets "
                                     "from successful and failed trajectories, fine-tune, evaluate.")
    parser.add_argument("--version", action="version", version=f"lightning_nat {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _module_func) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False, allow_abbrev=False)
    for name, (help_text, add, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        add(p)
        p.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error ends as one located line and exit code 1 (the traceback with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv and argv[0] == "--debug" or (argv and argv[0] in PASSTHROUGH):
        argv = [a for a in argv if a != "--debug"]  # LightningCLI does not know the flag
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        return _dispatch(argv)
    except KeyboardInterrupt:
        print("nat: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place that turns any failure into a located line
        if debug:
            raise
        print(f"error: {error_line(exc, command)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
