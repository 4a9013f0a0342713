"""The ``nat`` command: a table of sub-commands, each one config dataclass (its fields are the flags, see
:mod:`lightning_nat.core.options`) and the library function that runs it; ``fit`` is ``LightningCLI``'s."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from lightning_nat import __version__
from lightning_nat.core.imports import trust_task_imports
from lightning_nat.core.jsonl import RecordError
from lightning_nat.core.options import add_options, config_argv, from_namespace

# name: (help, the config dataclass, the function that runs it), as "module:attribute" so that a command loads
# only its own modules.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "build": ("build a NAT/NUT/NAT-k training set from trajectory files",
              "data.build:BuildConfig", "data.build:run_build"),
    "scratch": ("make an offline tiny random-init Llama and BPE tokenizer for CPU runs and tests",
                "train.scratch:ScratchConfig", "train.scratch:run_scratch"),
    "eval": ("evaluate a model as a ReAct agent on tasks (accuracy, EM/F1, episode ends)",
             "agent.eval_command:EvalCommandConfig", "agent.eval_command:run_eval"),
    "solve": ("run one episode on a question and print it turn by turn", "agent.eval_command:SolveConfig",
              "agent.eval_command:run_solve"),
    "collect": ("run a teacher LLM on training questions and keep every labelled trajectory (resumable)",
                "agent.collect:CollectConfig", "agent.collect:run_collect"),
    "clean": ("apply the paper's cleaning rules to collected trajectories", "data.select:CleanConfig",
              "data.select:run_clean"),
    "plot": ("draw dev perplexity curves or accuracy against the number of negatives", "report.plot:PlotConfig",
             "report.plot:run_plot"),
    "corpus": ("index text files or a JSONL of passages with BM25 for the offline search tool",
               "core.corpus:CorpusConfig", "core.corpus:run_corpus"),
    "inspect": ("show one built row rendered by a tokenizer, its trained tokens marked, with label, marker and "
                "token counts", "report.inspect_row:InspectConfig", "report.inspect_row:run_inspect"),
    "export": ("write a built dataset as openai / sharegpt / alpaca JSONL for TRL, LLaMA-Factory and axolotl",
               "data.trainer_formats:ExportConfig", "data.trainer_formats:run_export"),
    "push": ("publish a built dataset or an exported model on the Hugging Face Hub, with a card",
             "report.hub:PushConfig", "report.hub:run_push"),
    "iterate": ("NAT on the model's own failures: collect -> build -> fit -> eval in resumable rounds",
                "agent.iterate:IterateConfig", "agent.iterate:run_iterate"),
    "demo": ("the whole method offline on a CPU: pretrain a small base, collect, build, fine-tune w/o-neg, NUT and NAT "
             "(DPO and KTO on request), evaluate, compare",
             "demo.run:DemoConfig", "demo.run:run_demo_command"),
}


def load(ref: str) -> Any:
    """The attribute a ``"module:attribute"`` entry of :data:`COMMANDS` names, in this package."""
    module, attr = ref.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


def config_class(command: str) -> type:
    return load(COMMANDS[command][1])


def command_parser(command: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of one sub-command: its config's flags and --debug."""
    help_text = COMMANDS[command][0]
    parser = parser or argparse.ArgumentParser(prog=f"nat {command}", description=help_text, allow_abbrev=False)
    cls = config_class(command)
    add_options(parser, cls)
    parser.add_argument("--config", metavar="FILE.yaml", help="a YAML of these options (name: value); flags given on "
                                                              "the command line win")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    if {"task", "tasks"} & set(getattr(cls, "__dataclass_fields__", {})):
        parser.add_argument("--trust-task-imports", action="store_true",
                            help="let task files name installed modules (the standard library, site-packages) as "
                                 "tools, metrics or extractors: a task file is code, only pass this for one you trust")
    return parser


def error_line(exc: BaseException, command: str | None = None) -> str:
    """One located line for an error: the message as raised (which names file and record), on one line.

    >>> error_line(FileNotFoundError(2, "No such file or directory", "q.jsonl"))
    "[Errno 2] No such file or directory: 'q.jsonl'"
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing key {exc}"
    elif not isinstance(exc, (OSError, ValueError, RuntimeError)):
        text = f"{type(exc).__name__}: {text}"
    if isinstance(exc, RecordError) and command == "build" and "--on-error" not in text:  # the one with the option
        text += " (--on-error skip skips and counts such records)"
    return text


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] == "fit":
        from lightning_nat.train.fit import cli_main

        return cli_main(argv[1:])
    # allow_abbrev=False: `nat demo --seed 0` must not be read as `--seeds 0`.
    parser = argparse.ArgumentParser(prog="nat", allow_abbrev=False,
                                     description="Negative-Aware Training (NAT) of LLM agents: build training sets "
                                     "from successful and failed trajectories, fine-tune, evaluate.")
    parser.add_argument("--version", action="version", version=f"lightning_nat {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # `nat fit` parses its own arguments (LightningCLI, whose YAML configs are the record of a run).
    sub.add_parser("fit", help="fine-tune a model with LightningCLI (nat fit --help; nat fit --config FILE.yaml)",
                   add_help=False, allow_abbrev=False)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in COMMANDS and "--config" in argv[:-1]:  # the YAML's options go first, so the flags given win
        at = argv.index("--config")
        path = argv[at + 1]
        argv = argv[:at] + argv[at + 2:]
        after = argv.index(chosen) + 1
        argv[after:after] = config_argv(config_class(chosen), path, f"nat {chosen}")
    for name, (help_text, _, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if name == chosen:  # only the chosen command's options (and modules) are loaded
            command_parser(name, p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "trust_task_imports", False):
        trust_task_imports()
    cfg = from_namespace(config_class(args.command), args)
    return load(COMMANDS[args.command][2])(cfg)


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error ends as one located line and exit code 1 (the traceback with --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if argv and argv[0] in ("--debug", "fit"):
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
        from lightning_nat.core.secrets import mask

        print(f"error: {mask(error_line(exc, command))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
