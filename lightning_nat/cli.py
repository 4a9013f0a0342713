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


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder or Hub id (hf), or the model name on the server (openai)")
    p.add_argument("--policy", choices=["hf", "openai"], default="hf", help="local Hugging Face model or an "
                   "OpenAI-compatible API (default: hf)")
    p.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per model turn (default: 256)")
    p.add_argument("--concurrency", type=int, default=8, help="API requests in flight (openai; default: 8)")
    p.add_argument("--max-turns", type=int, default=6, help="model turns per episode (default: 6, as the reference)")
    p.add_argument("--mode", choices=["react", "cot"], default="react",
                   help="ReAct with tools, or chain-of-thought without tools (paper Table 7)")
    p.add_argument("--search-corpus", help="JSONL of {title, text} for the offline BM25 search tool")
    p.add_argument("--search", choices=["serper"], help="online search backend (key from SERPER_API_KEY)")


def _make_policy(args: argparse.Namespace) -> object:
    if args.policy == "openai":
        from .policies import OpenAIPolicy

        return OpenAIPolicy(args.model, args.base_url, args.api_key_env, args.temperature, args.max_new_tokens,
                            args.concurrency)
    from .policies import HFPolicy

    return HFPolicy(args.model, temperature=args.temperature, max_new_tokens=args.max_new_tokens)


def _add_eval(p: argparse.ArgumentParser) -> None:
    _add_policy(p)
    p.add_argument("--tasks", required=True, help="comma-separated: gsm8k,asdiv,svamp,multiarith,hotpotqa,strategyqa")
    p.add_argument("--data-dir", default=None, help="folder laid out like ../shared/data (default: the Hub with --hub)")
    p.add_argument("--hub", action="store_true", help="load questions from each task's Hub dataset (needs network)")
    p.add_argument("--limit", type=int, help="first N questions per task")
    p.add_argument("--batch-size", type=int, default=16, help="episodes generated together (default: 16)")
    p.add_argument("--out", required=True, help="output folder: results.json and trajectories.jsonl")


def _run_eval(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .console import console, print_eval_table
    from .evaluate import EvalConfig, evaluate, write_results

    if args.data_dir is None and not args.hub:
        from .shared_data import shared_data_dir

        args.data_dir = str(shared_data_dir() or "") or None
        if args.data_dir is None:
            raise ValueError("give --data-dir (a folder like ../shared/data) or --hub")
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
    meta = {"model": args.model, "policy": args.policy, "mode": args.mode, "limit": args.limit,
            "usage": getattr(policy, "usage", None)}
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


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "build": ("build a NAT/NUT/NAT-k training set from trajectory files", _add_build, _run_build),
    "scratch": ("make an offline tiny random-init Llama and BPE tokenizer for CPU runs and tests", _add_scratch,
                _run_scratch),
    "eval": ("evaluate a model as a ReAct agent on tasks (accuracy, EM/F1, episode ends)", _add_eval, _run_eval),
    "solve": ("run one episode on a question and print it turn by turn", _add_solve, _run_solve),
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
