"""The options nat eval, nat solve, nat collect and the ReActEval callback share: one name, one default, one help."""

import dataclasses
import inspect

from lightning_nat.agent.collect import CollectConfig
from lightning_nat.agent.eval_command import EvalCommandConfig, SolveConfig
from lightning_nat.agent.react_eval import ReActEval
from lightning_nat.core.options import cli_fields

COMMANDS = {"nat eval": EvalCommandConfig(model="m", tasks="gsm8k", out="o"),
            "nat solve": SolveConfig(model="m", task="gsm8k", question="q"),
            "nat collect": CollectConfig(model="m", task="gsm8k", data="d", out="o")}
# Deliberate differences, each with its reason; anything else that differs is drift.
DIFFERENT = {("limit", "ReActEval"): "a sample of questions at each evaluation during training; the commands: all",
             ("batch_size", "nat collect"): "a teacher API serves more requests at once"}


def _effective(who: str, name: str, cfg) -> object:
    """What a command runs with when the option is not given (``None`` often means "the protocol's")."""
    if name == "max_turns":
        return cfg.resolved()[0].max_turns if hasattr(cfg, "resolved") else cfg.turns()
    return getattr(cfg, name)


def test_shared_options_have_one_default_and_one_help():
    seen: dict[str, dict[str, object]] = {}
    helps: dict[str, set[str]] = {}
    for who, cfg in COMMANDS.items():
        for f in cli_fields(type(cfg)):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                seen.setdefault(f.name, {})[who] = _effective(who, f.name, cfg)
            helps.setdefault(f.name, set()).add(str(f.metadata["help"]))
    params = inspect.signature(ReActEval.__init__).parameters
    # ReActEval's YAML init args (existing configs name them) are kept.
    assert list(params)[1:] == ["tasks", "data_dir", "limit", "every_n_steps", "batch_size", "max_turns",
                                "max_new_tokens", "search_corpus"]
    for name, p in params.items():
        if name in seen and p.default is not inspect.Parameter.empty:
            seen[name]["ReActEval"] = p.default
    shared = {name: by for name, by in seen.items() if len(by) > 1}
    assert {"max_turns", "max_new_tokens", "batch_size", "limit", "search_corpus", "policy"} <= set(shared)
    for name, by in shared.items():
        kept = {who: value for who, value in by.items() if (name, who) not in DIFFERENT}
        assert len({repr(v) for v in kept.values()}) == 1, f"{name}: {by}"
    for name in shared:  # a command's option is the shared field itself, help and all
        assert len(helps[name]) == 1 or any(n == name for n, _ in DIFFERENT), (name, helps[name])
    assert seen["max_turns"]["ReActEval"] == 6 and all(v == 6 for v in seen["max_turns"].values())
