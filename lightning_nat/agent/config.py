"""The agent's options, one home for ``nat eval``, ``nat solve``, ``nat collect`` and the ``ReActEval`` callback.

Each option is one dataclass field (its flag, help and default, :mod:`lightning_nat.core.options`);
the commands' configs inherit these classes, and every default the callback shares with them is
one of the constants below (``tests/test_agent_options.py`` compares what each exposes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Literal

from lightning_nat.core.artifacts import read_spec
from lightning_nat.core.options import option
from lightning_nat.core.prompts import STYLES

MAX_TURNS = 6  # model turns per episode; the reference code allows 7 (--protocol reference)
MAX_NEW_TOKENS = 256  # tokens per model turn
POOL_SIZE = 16  # episodes live at once (nat eval, ReActEval)
COLLECT_POOL_SIZE = 32  # nat collect's pool: a teacher API serves more at once
SEARCH_K = 3  # search results per observation
MAX_ERROR_RATE = 0.5


@dataclass(frozen=True)
class Protocol:
    """How episodes are run and reported."""

    max_turns: int
    temperature: float
    runs: int
    on_parse_error: str


PROTOCOLS: dict[str, Protocol] = {
    # This package's default: one greedy run; a malformed step gets an error observation and the episode goes on.
    "native": Protocol(max_turns=MAX_TURNS, temperature=0.0, runs=1, on_parse_error="observe"),
    # The reference code: 7 model turns, temperature 0.2, the paper's Table 5 reports the mean of 5 runs, and a
    # malformed step ends the episode.
    "reference": Protocol(max_turns=7, temperature=0.2, runs=5, on_parse_error="stop"),
}


def apply_protocol(name: str, max_turns: int | None = None, temperature: float | None = None, runs: int | None = None,
                   on_parse_error: str | None = None) -> Protocol:
    """The protocol with the explicit options applied; an option that contradicts ``reference`` is an error.

    >>> apply_protocol("native", max_turns=8).max_turns, apply_protocol("reference").runs
    (8, 5)
    >>> apply_protocol("reference", temperature=0.0)
    Traceback (most recent call last):
    ...
    ValueError: --temperature 0.0 contradicts --protocol reference (temperature 0.2); drop one of them
    """
    base = PROTOCOLS[name]
    given = {"max_turns": max_turns, "temperature": temperature, "runs": runs, "on_parse_error": on_parse_error}
    given = {key: value for key, value in given.items() if value is not None}
    for key, value in given.items():
        if name == "reference" and value != (have := getattr(base, key)):
            raise ValueError(f"--{key.replace('_', '-')} {value} contradicts --protocol reference ({key.replace('_', ' ')}"
                             f" {have}); drop one of them")
    return replace(base, **given)


@dataclass(kw_only=True)
class AgentConfig:
    """The model, how it is reached, and the agent's tools: what every command that runs episodes takes."""

    model: str = option(help="model folder or Hub id (hf, vllm), or the model name on the server (openai)")
    policy: Literal["hf", "openai", "vllm"] = option(
        "hf", "hf: a local model through transformers' generate; openai: an OpenAI-compatible API; vllm: an "
              "in-process vLLM engine (`pip install 'lightning_nat[vllm]'`) (default: hf)")
    base_url: str | None = option(None, "OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", "environment variable holding the API key")
    max_new_tokens: int = option(MAX_NEW_TOKENS, f"tokens per model turn (default: {MAX_NEW_TOKENS})", min=1)
    concurrency: int = option(8, "API requests in flight (openai; default: 8)", min=1)
    max_retries: int = option(5, "retries of a failed API request (default: 5)", min=0)
    timeout: float = option(60.0, "seconds per API request (default: 60)")
    tensor_parallel_size: int = option(1, "vllm: GPUs one model is split over (vLLM's tensor parallelism; default: 1)",
                                       min=1)
    gpu_memory_utilization: float | None = option(
        None, "vllm: share of accelerator memory the engine may take (default: vLLM's; its CPU build needs about "
              "0.25)", min=0, max=1)
    max_turns: int | None = option(
        None, f"model turns per episode (default: {MAX_TURNS}; the reference code allows 7: --protocol reference)",
        min=1)
    search_corpus: str | None = option(
        None, "offline BM25 search: a `nat corpus --out` folder, or a JSONL of {title, text}")
    search: Literal["serper"] | None = option(None, "online search backend (key from SERPER_API_KEY)")
    search_k: int = option(SEARCH_K, f"search results in each observation (default: {SEARCH_K})", min=1)
    search_rerank: bool = option(
        False, "re-rank search results as the paper did: 10 results, the top 5 by the bi-encoder all-mpnet-base-v2, the "
               "top 3 by the DPR reader dpr-reader-multiset-base (needs `pip install lightning_nat[rerank]`; downloads "
               "both models)")

    def make_policy(self, temperature: float, family: str | None = None) -> Any:
        """The policy these options name, sampling at ``temperature`` (``family``: a local policy's tool-call family)."""
        from lightning_nat.agent import policies

        if self.policy == "openai":
            return policies.OpenAIPolicy(self.model, self.base_url, self.api_key_env, temperature, self.max_new_tokens,
                                         self.concurrency, self.max_retries, self.timeout)
        if self.policy == "vllm":
            return policies.VLLMPolicy(self.model, temperature=temperature, max_new_tokens=self.max_new_tokens,
                                       tensor_parallel_size=self.tensor_parallel_size,
                                       gpu_memory_utilization=self.gpu_memory_utilization, family=family)
        return policies.HFPolicy(self.model, temperature=temperature, max_new_tokens=self.max_new_tokens, family=family)

    def turns(self) -> int:
        """Model turns per episode: ``max_turns``, else the default."""
        return self.max_turns or MAX_TURNS

    def task_tools(self, tasks: list[Any], mode: str = "react") -> list[dict[str, Any]]:
        """Each task's callable ReAct tools (none in ``cot`` mode), the search backend (of ``search``,
        ``search_corpus``, ``search_k`` and ``search_rerank``) checked before any episode."""
        from lightning_nat.core.tools import make_search, make_tools

        reranker = None
        search = None
        if self.search_rerank and (self.search_corpus or self.search):
            from lightning_nat.agent.rerank import load_reference_reranker

            reranker = load_reference_reranker()
        if self.search_corpus:
            search = make_search("bm25", self.search_k, reranker=reranker, corpus_path=self.search_corpus)
        elif self.search == "serper":
            search = make_search("serper", self.search_k, reranker=reranker)
        tools = [make_tools(task.tools, search) if mode == "react" else {} for task in tasks]
        if any("search" in t for t in tools):
            search.prepare()  # a bad corpus or a missing key stops here, before any model loads or request is paid
        return tools


@dataclass(kw_only=True)
class AgentKindConfig(AgentConfig):
    """The agent options of the commands that run whole task episodes (``nat eval``, ``nat collect``)."""

    agent: Literal["react", "function-calling"] = option(
        "react", "react: Thought/Action text; function-calling: the chat API's tools and tool_calls, the task's tools "
                 "offered as JSON schemas of its Python functions (default: react)")
    tool_parser: Literal["hermes", "llama31"] | None = option(
        None, "hf and vllm policies, function-calling: how generated calls are written (default: detected from the "
              "chat template)")
    limit: int | None = option(None, "first N questions (of each task)", min=1)
    max_error_rate: float = option(
        MAX_ERROR_RATE, "exit with an error when more than this share of episodes failed on policy (API) errors; "
                        f"everything is still written (default: {MAX_ERROR_RATE:g})", min=0, max=1, metavar="SHARE")

    def make_policy(self, temperature: float, family: str | None = None) -> Any:
        return super().make_policy(temperature, family or self.tool_parser)

    def make_agent(self, task: Any, policy: Any, tools: dict[str, Any], **kwargs: Any) -> Any:
        """The agent ``agent`` names for ``task`` (``kwargs``: ``max_turns``, ``mode``, ``on_parse_error``, ...)."""
        if self.agent == "function-calling":
            from lightning_nat.agent.function_calling import FunctionCallingAgent

            return FunctionCallingAgent(task, policy, tools, family=self.tool_parser, **kwargs)
        from lightning_nat.agent.react import ReActAgent

        return ReActAgent(task, policy, tools, **kwargs)


@dataclass(kw_only=True)
class PolicyConfig(AgentConfig):
    """Agent options of the commands that evaluate a trained model (``nat eval``, ``nat solve``): protocol and prompt."""

    temperature: float | None = option(None, "0 = greedy (default; 0.2 under --protocol reference)", min=0)
    mode: Literal["react", "cot"] | None = option(
        None, "ReAct with tools, or chain-of-thought without tools (paper Table 7) (default: the mode the model's "
              "nat_prompt.json was trained in, else react)")
    protocol: Literal["native", "reference"] = option(
        "native", f"native: one greedy run, {MAX_TURNS} turns, a malformed step is answered with an error observation; "
                  "reference: as the reference code and the paper's Table 5: 7 turns, temperature 0.2, the mean ± sd of "
                  "--runs 5, a malformed step ends the episode (default: native)")
    on_parse_error: Literal["observe", "stop"] | None = option(
        None, "a malformed step: answer it with an error observation and go on, or end the episode (default: the "
              "protocol's, observe; stop under --protocol reference)")
    prompt_style: str | None = option(
        None, "prompt style; read from the model folder's nat_prompt.json when it has one (an option that contradicts "
              "it is an error), else reference for the paper's tasks", choices=list(STYLES))
    prompt_preset: str | None = option(
        None, "the builder preset the model was trained with (nat, nat-2, nat-ab, ...), when the model folder does not say")
    prompt_from: str | None = option(
        None, "read the prompt spec from this folder (a `nat build --out` or an exported model) instead of --model's "
              "folder (for --policy openai)", metavar="FOLDER")

    def resolved(self, runs: int | None = None) -> tuple[Protocol, Any, str, str]:
        """``(protocol, saved prompt spec, where it was found, mode)`` with the protocol applied to these options; the
        spec is the one saved for the model under evaluation."""
        proto = apply_protocol(self.protocol, self.max_turns, self.temperature, runs, self.on_parse_error)
        local = self.policy != "openai" and os.path.isdir(self.model)
        where = self.prompt_from or (self.model if local else "")
        saved = read_spec(where) if where else None
        if self.prompt_from and saved is None:
            raise FileNotFoundError(f"--prompt-from {self.prompt_from}: no nat_prompt.json or build.json there")
        mode = self.mode or (saved.mode if saved is not None else "react")
        return proto, saved, where, mode


class TooManyErrors(RuntimeError):
    """More requests or episodes failed than ``--max-error-rate`` allows."""


def check_error_rate(failed: int, total: int, limit: float, what: str, consequence: str) -> None:
    """Raise :class:`TooManyErrors` when ``failed / total`` is above ``limit``."""
    if total and failed / total > limit:
        raise TooManyErrors(f"{what} ({failed / total:.0%}, more than --max-error-rate {limit:g}); {consequence}")
