"""The agent's options, shared by ``nat eval``, ``nat solve`` and ``nat collect``, and what they make."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Literal

from lightning_nat.core.options import option


def error_rate(text: str) -> float:
    """argparse type: a share in [0, 1].

    >>> error_rate("0.25")
    0.25
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1.

    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _prompt_styles() -> list[str]:
    from lightning_nat.core.prompts import STYLES

    return list(STYLES)


MAX_ERROR_RATE_HELP = ("exit with an error when more than this share of episodes failed on policy (API) errors; "
                       "everything is still written (default: 0.5)")


@dataclass(kw_only=True)
class AgentConfig:
    """The model, how it is reached, and the agent's tools: what every command that runs episodes takes."""

    model: str = option(help="model folder or Hub id (hf), or the model name on the server (openai)")
    policy: Literal["hf", "openai"] = option(
        "hf", "local Hugging Face model or an OpenAI-compatible API (default: hf)")
    base_url: str | None = option(None, "OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key")
    max_new_tokens: int = option(256, "tokens per model turn (default: 256)")
    concurrency: int = option(8, "API requests in flight (openai; default: 8)")
    max_retries: int = option(5, "retries of a failed API request (default: 5)")
    timeout: float = option(60.0, "seconds per API request (default: 60)")
    max_turns: int | None = option(
        None, "model turns per episode (default: 6; the reference code allows 7: --protocol reference)")
    search_corpus: str | None = option(
        None, "offline BM25 search: a `nat corpus --out` folder, or a JSONL of {title, text}")
    search: Literal["serper"] | None = option(None, "online search backend (key from SERPER_API_KEY)")
    search_k: int = option(3, "search results in each observation (default: 3)")
    search_rerank: bool = option(
        False, "re-rank search results as the paper did: 10 results, the top 5 by the bi-encoder all-mpnet-base-v2, the "
               "top 3 by the DPR reader dpr-reader-multiset-base (needs `pip install lightning_nat[rerank]`; downloads "
               "both models)")

    def make_policy(self, temperature: float) -> Any:
        """The policy these options name, sampling at ``temperature``."""
        if self.policy == "openai":
            from lightning_nat.agent.policies import OpenAIPolicy

            return OpenAIPolicy(self.model, self.base_url, self.api_key_env, temperature, self.max_new_tokens,
                                self.concurrency, self.max_retries, self.timeout)
        from lightning_nat.agent.policies import HFPolicy

        return HFPolicy(self.model, temperature=temperature, max_new_tokens=self.max_new_tokens)

    def search_tool(self) -> Any:
        """The search backend these options name, or None."""
        from lightning_nat.agent.evaluate import search_tool

        return search_tool(self)


@dataclass(kw_only=True)
class AgentKindConfig(AgentConfig):
    """The agent options of the commands that run whole task episodes (``nat eval``, ``nat collect``)."""

    agent: Literal["react", "function-calling"] = option(
        "react", "react: Thought/Action text; function-calling: the chat API's tools and tool_calls, the task's tools "
                 "offered as JSON schemas of its Python functions (default: react)")
    tool_parser: Literal["hermes", "llama31"] | None = option(
        None, "hf policy, function-calling: how generated calls are written (default: detected from the chat template)")

    def make_policy(self, temperature: float) -> Any:
        """The ReAct policy, or for function calling the OpenAI one (it sends tools) or the local ``HFToolPolicy``."""
        if self.agent == "react" or self.policy == "openai":
            return super().make_policy(temperature)
        from lightning_nat.agent.fc_policy import HFToolPolicy

        return HFToolPolicy(self.model, family=self.tool_parser, temperature=temperature,
                            max_new_tokens=self.max_new_tokens)


@dataclass(kw_only=True)
class PolicyConfig(AgentConfig):
    """Agent options of the commands that evaluate a trained model (``nat eval``, ``nat solve``): protocol and prompt."""

    temperature: float | None = option(None, "0 = greedy (default; 0.2 under --protocol reference)")
    mode: Literal["react", "cot"] | None = option(
        None, "ReAct with tools, or chain-of-thought without tools (paper Table 7) (default: the mode the model's "
              "nat_prompt.json was trained in, else react)")
    protocol: Literal["native", "reference"] = option(
        "native", "native: one greedy run, 6 turns, a malformed step is answered with an error observation; reference: "
                  "as the reference code and the paper's Table 5: 7 turns, temperature 0.2, the mean ± sd of --runs 5, a "
                  "malformed step ends the episode (default: native)")
    on_parse_error: Literal["observe", "stop"] | None = option(
        None, "a malformed step: answer it with an error observation and go on, or end the episode (default: the "
              "protocol's, observe; stop under --protocol reference)")
    prompt_style: str | None = option(
        None, "prompt style; read from the model folder's nat_prompt.json when it has one (an option that contradicts "
              "it is an error), else reference for the paper's tasks", choices=_prompt_styles)
    prompt_preset: str | None = option(
        None, "the builder preset the model was trained with (nat, nat-2, nat-ab, ...), when the model folder does not say")
    prompt_from: str | None = option(
        None, "read the prompt spec from this folder (a `nat build --out` or an exported model) instead of --model's "
              "folder (for --policy openai)", metavar="FOLDER")

    def saved_prompt(self) -> tuple[Any, str]:
        """The saved prompt spec for the model under evaluation and the folder it was found in."""
        from lightning_nat.core.artifacts import read_spec

        folder = self.prompt_from or (self.model if self.policy == "hf" and os.path.isdir(self.model) else None)
        if self.prompt_from and read_spec(self.prompt_from) is None:
            raise FileNotFoundError(f"--prompt-from {self.prompt_from}: no nat_prompt.json or build.json there")
        return read_spec(folder), (folder or "")

    def resolved(self, runs: int | None = None) -> tuple[Any, Any, str, str]:
        """``(protocol, saved prompt spec, where it was found, mode)`` with the protocol applied to these options."""
        from lightning_nat.agent.evaluate import apply_protocol

        proto = apply_protocol(self.protocol, self.max_turns, self.temperature, runs, self.on_parse_error)
        saved, where = self.saved_prompt()
        mode = self.mode or (saved.mode if saved is not None else "react")
        return proto, saved, where, mode


class TooManyErrors(RuntimeError):
    """More requests or episodes failed than ``--max-error-rate`` allows."""


def check_error_rate(failed: int, total: int, limit: float, what: str, consequence: str) -> None:
    """Raise :class:`TooManyErrors` when ``failed / total`` is above ``limit``."""
    if total and failed / total > limit:
        raise TooManyErrors(f"{what} ({failed / total:.0%}, more than --max-error-rate {limit:g}); {consequence}")
