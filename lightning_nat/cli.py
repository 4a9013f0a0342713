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
    p.add_argument("--task", required=True, help="task name, which picks the instruction text (e.g. strategyqa)")
    p.add_argument("--variant", default="nat", choices=[c.name for c in PRESETS],
                   help="which training set to build: " + "; ".join(f"{c.name}: {c.description}" for c in PRESETS))
    p.add_argument("--pos-num", type=int, help="positives to keep: the first N unique by question (default: all)")
    p.add_argument("--neg-num", type=int, help="negatives to sample with --seed (default: all)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42)")
    p.add_argument("--pos-sampling", choices=["first", "random"], default="first",
                   help="first N unique positives in file order, or a seeded random N (default: first)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   help="score bands for fine-grained NAT, overriding the variant's (e.g. 0.4 for NAT-2)")
    p.add_argument("--placement", choices=["suffix", "prefix"], help="marker after (default) or before the question")
    p.add_argument("--keep-unfinished", action="store_true", help="keep negatives that never called finish")
    p.add_argument("--min-score", type=float,
                   help="drop negatives scoring below this (1e-6 drops HotpotQA negatives with F1 = 0)")
    p.add_argument("--no-dedupe", action="store_true", help="keep identical trajectories")
    p.add_argument("--dev-num", type=int, default=0,
                   help="held-out positives (questions with no training positive) in a 'dev' split, for perplexity")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                   help="on a bad record: stop with an error naming it (default), or skip it and report it")
    p.add_argument("--pairs-per-question", type=int, metavar="N",
                   help="--variant dpo: at most N seeded (positive, negative) pairs per question (default: every pair)")
    p.add_argument("--cache-dir", help="builder cache folder (default: the datasets cache)")
    p.add_argument("--out", required=True, help="output folder for datasets.load_from_disk")


def _run_build(args: argparse.Namespace) -> int:
    from .builders import build_dataset, save_build, summarize
    from .console import print_build_summary

    params = dict(format=args.format, questions=args.questions, task=args.task, pos_num=args.pos_num,
                  neg_num=args.neg_num, seed=args.seed, pos_sampling=args.pos_sampling,
                  drop_unfinished=not args.keep_unfinished, min_score=args.min_score, dedupe=not args.no_dedupe,
                  dev_num=args.dev_num, on_error=args.on_error)
    if args.thresholds is not None:
        params["thresholds"] = tuple(args.thresholds)
    if args.placement is not None:
        params["placement"] = args.placement
    if args.pairs_per_question is not None:
        if args.variant != "dpo":
            raise ValueError(f"--pairs-per-question applies to --variant dpo only, not {args.variant}")
        params["pairs_per_question"] = args.pairs_per_question
    result = build_dataset(args.trajectories, args.variant, cache_dir=args.cache_dir, **params)
    save_build(result, args.out)
    print_build_summary(summarize(result.dataset), result.report, args.out, result.from_cache)
    return 0


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
    p.add_argument("--max-turns", type=int, default=6, help="model turns per episode (default: 6, as the reference)")
    p.add_argument("--search-corpus", help="JSONL of {title, text} for the offline BM25 search tool")
    p.add_argument("--search", choices=["serper"], help="online search backend (key from SERPER_API_KEY)")


def _add_policy(p: argparse.ArgumentParser) -> None:
    _add_agent_args(p)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--mode", choices=["react", "cot"], default="react",
                   help="ReAct with tools, or chain-of-thought without tools (paper Table 7)")


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
    p.add_argument("--task", required=True, help="task (instruction, tools, metric)")
    p.add_argument("--data", required=True, help="question file (JSON or JSONL with question and answer)")
    p.add_argument("--limit", type=int, help="first N questions")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.2, 0.5, 0.7],
                   help="sampling temperatures, one pass each (default: 0.2 0.5 0.7, as the paper)")
    p.add_argument("--samples", type=int, default=1, help="episodes per question and temperature (default: 1)")
    p.add_argument("--batch-size", type=int, default=32, help="episodes run together (default: 32)")
    p.add_argument("--price-prompt", type=float, help="USD per million prompt tokens, to report the cost")
    p.add_argument("--price-completion", type=float, help="USD per million completion tokens")
    p.add_argument("--out", required=True, help="output JSONL (appended to; a rerun resumes)")


def _run_collect(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .collect import collect
    from .console import console, print_collect_summary
    from .evaluate import EvalConfig, search_tool
    from .tasks import get_task, load_questions_for
    from .tools import make_tools

    task = get_task(args.task)
    records = load_questions_for(task, path=args.data, limit=args.limit)
    search = search_tool(EvalConfig(tasks=[args.task], search=args.search, search_corpus=args.search_corpus))
    tools = make_tools(task.tools, search)
    policy = _make_policy(args, temperature=args.temperatures[0])
    prices = (args.price_prompt or 0.0, args.price_completion or 0.0) if args.price_prompt or args.price_completion \
        else None
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        bar_id = bar.add_task("collecting", total=None)
        summary = collect(task, records, policy, args.out, args.temperatures, args.samples, teacher=args.model,
                          batch_size=args.batch_size, max_turns=args.max_turns, tools=tools, price_per_million=prices,
                          progress=lambda done, total: bar.update(bar_id, completed=done, total=total))
    print_collect_summary(summary, args.out)
    return 0


def _add_clean(p: argparse.ArgumentParser) -> None:
    p.add_argument("trajectories", help="canonical trajectory JSONL (what nat collect writes)")
    p.add_argument("--task", required=True, help="task, which picks the rules (HotpotQA also drops F1 = 0 negatives)")
    p.add_argument("--keep-unfinished", action="store_true", help="keep trajectories that never called finish")
    p.add_argument("--min-score", type=float, help="drop negatives scoring below this (overrides the task's rule)")
    p.add_argument("--out", required=True, help="cleaned JSONL")


def _run_clean(args: argparse.Namespace) -> int:
    from .collect import clean, default_rules
    from .console import console, table
    from .tasks import get_task
    from .trajectory import read_trajectories_jsonl, write_jsonl

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
    p.add_argument("--tasks", required=True, help="comma-separated: gsm8k,asdiv,svamp,multiarith,hotpotqa,strategyqa")
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data (default: the Hub with --hub)")
    p.add_argument("--hub", action="store_true", help="load questions from each task's Hub dataset (needs network)")
    p.add_argument("--limit", type=int, help="first N questions per task")
    p.add_argument("--batch-size", type=int, default=16, help="episodes generated together (default: 16)")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="recorded in results.json, e.g. --tag variant=nat --tag neg_num=500 for `nat plot sweep`")
    p.add_argument("--out", required=True, help="output folder: results.json and trajectories.jsonl")


def _run_eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .console import console, print_eval_table
    from .evaluate import EvalConfig, evaluate, write_results

    if args.data_dir is None and not args.hub:
        from .shared_data import shared_data_dir

        found = shared_data_dir()
        if found is None:
            raise ValueError("give --data-dir (a folder like ../shared/data) or --hub")
        args.data_dir = str(found)
    cfg = EvalConfig(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], data_dir=args.data_dir,
                     limit=args.limit, batch_size=args.batch_size, max_turns=args.max_turns, mode=args.mode,
                     search=args.search, search_corpus=args.search_corpus, hub=args.hub)
    policy = _make_policy(args)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as bar:
        ids: dict[str, object] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in ids:
                ids[name] = bar.add_task(name, total=total)
            bar.update(ids[name], completed=done)

        results, episodes = evaluate(policy, cfg, progress)
    tags = {}
    for tag in args.tag:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag {tag!r}: expected KEY=VALUE")
        tags[key] = value
    meta = {"model": args.model, "policy": args.policy, "mode": args.mode, "limit": args.limit,
            "usage": getattr(policy, "usage", None), "tags": tags}
    out = write_results(args.out, results, episodes, meta)
    print_eval_table(results)
    console.print(f"wrote {out}/results.json and {out}/trajectories.jsonl")
    return 0


def _add_solve(p: argparse.ArgumentParser) -> None:
    _add_policy(p)
    p.add_argument("--task", required=True, help="task whose instruction and tools to use")
    p.add_argument("question", help="the question to solve")


def _run_solve(args: argparse.Namespace) -> int:
    from .agent import ReActAgent
    from .console import print_episode
    from .evaluate import EvalConfig, search_tool
    from .tasks import get_task
    from .tools import make_tools

    task = get_task(args.task)
    search = search_tool(EvalConfig(tasks=[args.task], search=args.search, search_corpus=args.search_corpus))
    agent = ReActAgent(task, _make_policy(args), make_tools(task.tools, search) if args.mode == "react" else {},
                       max_turns=args.max_turns, mode=args.mode)
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
    p.add_argument("--repo", required=True, help="Hub repository id, e.g. me/strategyqa-nat")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--dry-run", action="store_true", help="print the files and the card, upload nothing")


def _run_push(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from .console import console
    from .hub import push

    plan = push(args.kind, args.folder, args.repo, private=args.private, dry_run=args.dry_run)
    if args.dry_run:
        console.print(f"would upload to {args.repo} ({args.kind}, {'private' if args.private else 'public'}):")
        for f in plan["files"]:
            console.print(f"  {escape(f)}")
        console.print(escape(plan["card"]))
    else:
        console.print(f"uploaded to {plan['url']}")
    return 0


def _add_demo(p: argparse.ArgumentParser) -> None:
    from .demo import DemoConfig

    d = DemoConfig()
    p.add_argument("--out", default=d.out, help=f"output folder (default: {d.out})")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run with tiny sizes")
    p.add_argument("--seeds", type=int, default=d.seeds, help="seeds to average over (mean and spread)")
    sizes = p.add_argument_group("sizes and rates (defaults: the full run; --quick shrinks them)")
    for name, help_text in (("train_problems", "training problems"), ("test_problems", "held-out test problems"),
                            ("min_steps", "fewest operations per problem"), ("max_steps", "most operations per problem"),
                            ("error_rate", "teacher mistake rate at temperature 0.5"),
                            ("pos_num", "positives in every training set"), ("neg_num", "negatives in NUT and NAT"),
                            ("dev_num", "held-out positives for dev perplexity"), ("vocab_size", "tokenizer size"),
                            ("hidden_size", "model width"), ("layers", "model depth"), ("heads", "attention heads"),
                            ("steps", "optimizer steps per strategy (the same budget for each)"),
                            ("batch_size", "conversations per step"), ("learning_rate", "peak learning rate"),
                            ("preference_learning_rate", "peak learning rate of DPO/KTO (from the w/o-Neg model)"),
                            ("beta", "DPO/KTO beta"),
                            ("max_turns", "agent turns per episode"), ("max_new_tokens", "tokens per turn")):
        default = getattr(d, name)
        sizes.add_argument("--" + name.replace("_", "-"), type=type(default), default=None,
                           help=f"{help_text} (default: {default})")
    sizes.add_argument("--temperatures", type=float, nargs="+", help=f"teacher temperatures (default: {d.temperatures})")


def _run_demo(args: argparse.Namespace) -> int:
    import time

    from .console import console, print_demo_table
    from .demo import DemoConfig, run_demo

    overrides = {k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__ and v is not None}
    if args.temperatures:
        overrides["temperatures"] = tuple(args.temperatures)
    cfg = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = time.time()
    stages = cfg.seeds * (1 + 2 * len(cfg.strategies))  # collect, then train + evaluate each strategy
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
    console.print(f"wrote {cfg.out}/results.json, {cfg.out}/perplexity.png and {cfg.out}/accuracy.png")
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
    "push": ("publish a built dataset or an exported model on the Hugging Face Hub, with a card", _add_push, _run_push),
    "demo": ("the whole method offline on a CPU: collect, build, train w/o-neg, NUT, NAT, DPO and KTO, evaluate, compare",
             _add_demo, _run_demo),
}
# Sub-commands that parse their own arguments (LightningCLI and friends).
PASSTHROUGH: dict[str, tuple[str, str]] = {
    "fit": ("fine-tune a model with LightningCLI (nat fit --help; nat fit --config FILE.yaml)", "lightning_nat.train:cli_main"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        module, func = PASSTHROUGH[argv[0]][1].rsplit(":", 1)
        import importlib

        return getattr(importlib.import_module(module), func)(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="nat", description="Negative-Aware Training (NAT) of LLM agents: "
                                     "build training sets from successful and failed trajectories, fine-tune, evaluate.")
    parser.add_argument("--version", action="version", version=f"lightning_nat {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, _module_func) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .trajectory import TrajectoryFormatError

    try:
        return COMMANDS[args.command][2](args)
    except (TrajectoryFormatError, FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        from .console import console

        hint = " (--on-error skip skips and counts such records)" if isinstance(exc, TrajectoryFormatError) else ""
        console.print(f"[red]error:[/red] {exc}{hint}", markup=True, highlight=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
