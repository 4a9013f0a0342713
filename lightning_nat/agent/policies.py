"""Policies, the LLMs behind the agent: a local Hugging Face model or an OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from lightning_nat.core.prompts import STOP

log = logging.getLogger(__name__)


class HFPolicy:
    """Batched generation with a local causal LM, left-padded, stopping at ``Observation:``.

    Each row stops on token ids (``Observation:`` in any of the tokenizer's ways of writing
    it, or EOS) and leaves the batch at once; ``usage`` counts prompt and generated tokens.

    The prompt is rendered with the tokenizer's chat template (the one training used;
    Llama-2-chat when the tokenizer has none), with the generation prompt appended.

    Args:
        model: a model folder / Hub id, or a loaded model (e.g. the one being trained).
        tokenizer: its tokenizer (loaded from ``model`` when that is a path).
        temperature: 0 for greedy decoding, else sampling at this temperature.
        max_new_tokens: per turn.
        device: where to run (default: the model's device, or cuda when available).
        synced_gpus: keep every rank generating until all are done (ZeRO-3 sharded weights).
        loop: ``engine`` (:mod:`lightning_nat.agent.decoding`) or ``generate`` (``model.generate`` with
            ``stop_strings``, the former loop; kept for comparison).
        prefix_cache: reuse the KV cache of the prompt head all episodes share (``loop="engine"``).
        episode_cache: keep each row's KV cache until the next call, where an episode's next turn
            prefills only its new tokens (``loop="engine"``; holds one pool's caches in memory).
        shared_head_attention: keep the shared prompt head's keys and values once and attend them
            beside each row's own cache (:mod:`lightning_nat.agent.shared_head`) instead of copying
            them into every row (``loop="engine"``; sdpa/eager models, else off by itself).
        packed_linear: on CPU, run the linear layers through oneDNN's packed-weight kernel while decoding
            (:mod:`lightning_nat.agent.cpu_linear`; ``loop="engine"``; a packed copy of the weights is held).
    """

    def __init__(self, model: Any, tokenizer: Any = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 device: str | None = None, synced_gpus: bool = False, dtype: str = "auto",
                 loop: str = "engine", prefix_cache: bool = True, episode_cache: bool = True,
                 shared_head_attention: bool = True, packed_linear: bool = True):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lightning_nat.train.tokenization import ensure_chat_template

        if isinstance(model, (str, os.PathLike)):
            path = str(model)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        self.model = model
        self.tokenizer = ensure_chat_template(tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.synced_gpus = synced_gpus
        if loop not in ("engine", "generate"):
            raise ValueError(f"loop must be 'engine' or 'generate', got {loop!r}")
        self.loop = loop
        self.shared_head_attention = shared_head_attention
        from lightning_nat.agent.cpu_linear import PackedLinears

        self._linears = PackedLinears() if packed_linear else None
        self._matcher: Any = None
        # The shared prompt head's KV cache: valid while the weights stay as they are, which holds for a
        # policy's life (ReActEval makes a new policy for each evaluation of the model being trained).
        from lightning_nat.agent.kv_cache import EpisodeCache, PrefixCache

        self._prefix = PrefixCache() if prefix_cache else None
        self._episodes = EpisodeCache() if episode_cache else None
        # cached_prompt_tokens: prompt tokens whose keys and values came from a cache, not prefilled again.
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "calls": 0,
                      "cached_prompt_tokens": 0}

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _encode(self, prompts: Sequence[list[dict[str, str]]]) -> dict[str, Any]:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok([self.render(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        return {k: v.to(device) for k, v in enc.items()}

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        """Each prompt's continuation up to ``Observation:`` (cut there), EOS or ``max_new_tokens``.

        The decoding loop is :func:`lightning_nat.agent.decoding.decode` (rows leave the batch as soon as
        they stop); under ``synced_gpus`` (sharded weights) it is ``model.generate``, whose lock-step
        the ranks need. Greedy outputs are the same either way.
        """
        if not prompts:
            return []
        if self.synced_gpus or self.loop == "generate":
            return self.generate_hf(prompts)
        from lightning_nat.agent.decoding import decode

        ids = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
        was_training = self.model.training
        self.model.eval()
        reused: list[int] = []
        linears = self._linears.active(self.model) if self._linears is not None else contextlib.nullcontext()
        try:
            with linears:
                rows = decode(self.model, ids, self._stops(), self.max_new_tokens, self.temperature, self._stop_ids(),
                              pad_id=self.tokenizer.pad_token_id or 0, prefix=self._prefix, episodes=self._episodes,
                              reused=reused, shared=self.shared_head_attention)
        finally:
            self.model.train(was_training)
        self.usage["cached_prompt_tokens"] += sum(reused)
        self.usage["calls"] += 1
        self.usage["requests"] += len(prompts)
        self.usage["prompt_tokens"] += sum(len(i) for i in ids)
        self.usage["completion_tokens"] += sum(len(r) for r in rows)
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [t.split(STOP, 1)[0] for t in texts]

    def _stops(self) -> Any:
        if self._matcher is None:
            from lightning_nat.agent.decoding import StopMatcher

            self._matcher = StopMatcher(self.tokenizer, STOP)
        return self._matcher

    def _stop_ids(self) -> list[int]:
        # The tokenizer's eos only, as the former generate call passed (the export's generation config lists more).
        return [] if self.tokenizer.eos_token_id is None else [int(self.tokenizer.eos_token_id)]

    def generate_hf(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        """The same continuations with ``model.generate`` and its ``stop_strings`` (one call per batch)."""
        import torch

        if not prompts:
            return []
        tok = self.tokenizer
        enc = self._encode(prompts)
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id, stop_strings=[STOP], tokenizer=tok)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if self.synced_gpus:
            kwargs["synced_gpus"] = True
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(**enc, **kwargs)
        finally:
            self.model.train(was_training)
        new = out[:, enc["input_ids"].shape[1]:]
        self.usage["calls"] += 1
        self.usage["requests"] += len(prompts)
        self.usage["prompt_tokens"] += int(enc["attention_mask"].sum())
        self.usage["completion_tokens"] += int((new != tok.pad_token_id).sum()) if tok.pad_token_id is not None \
            else new.numel()
        return [t.split(STOP, 1)[0] for t in tok.batch_decode(new, skip_special_tokens=True)]


def _tool_reply(message: Any) -> dict[str, Any]:
    """An API reply of a request with tools, as a plain message dict (the agent reads its calls; none is dropped here)."""
    if message is None:
        return {"role": "assistant", "content": "", "tool_calls": []}
    calls = [c.model_dump() if hasattr(c, "model_dump") else c for c in (getattr(message, "tool_calls", None) or [])]
    return {"role": "assistant", "content": message.content or "", "tool_calls": calls}


class PolicyConfigError(RuntimeError):
    """The API refuses every request (authentication, permission, unknown model, bad parameters)."""


class RequestRejected(RuntimeError):
    """The server refused one request with a 4xx that retrying cannot fix; carries its message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


# What the openai client retries itself (408, 409, 429, 5xx; timeouts and connection errors too).
RETRIED_STATUSES = (408, 409, 429)
FATAL_STATUSES = (401, 403, 404)  # wrong key, no access, no such model: every request would fail


def clean_server_message(text: str, limit: int = 300) -> str:
    r"""A server's error text made safe for one console line: printable, single-spaced, bounded.

    >>> clean_server_message("Server is pinned to 'tiny';\n  requested 'my-model'\x1b[31m")
    "Server is pinned to 'tiny'; requested 'my-model'[31m"
    >>> len(clean_server_message("x" * 1000))
    301
    """
    text = " ".join("".join(c if c.isprintable() or c.isspace() else "" for c in text).split())
    return text if len(text) <= limit else text[:limit] + "\u2026"


def server_message(exc: Any) -> str:
    """The human-readable part of an API error body (OpenAI ``error.message``, FastAPI ``detail``, or raw text)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else inner
        text = msg if isinstance(msg, str) else json.dumps(msg if msg is not None else body)
    elif isinstance(body, str) and body:
        text = body
    else:
        response = getattr(exc, "response", None)
        text = getattr(response, "text", "") or type(exc).__name__
    return clean_server_message(text)


class OpenAIPolicy:
    """Any OpenAI-compatible chat API (OpenAI, vLLM, llama.cpp, ``transformers serve``), asynchronous and bounded.

    Requests run concurrently up to ``concurrency``. Retries are the ``openai`` client's own:
    408, 409, 429, 5xx, timeouts and connection errors, exponential backoff with jitter, and a
    server's ``Retry-After`` (or ``retry-after-ms``) honoured. Any other 4xx is not retried: the
    request fails at once with the server's message; 401/403/404, or a refusal before any request
    ever succeeded (a wrong ``--model`` is a 400 on many servers), stop the run with that message.
    The key is read from the environment variable ``api_key_env`` and never logged.

    Args:
        model: model name on the server.
        base_url: API root, e.g. http://127.0.0.1:8000/v1 (default: OpenAI's).
        api_key_env: environment variable that holds the key.
        temperature: sampling temperature.
        max_tokens: per turn.
        concurrency: requests in flight at once.
        max_retries: retries per request on transient errors.
        timeout: seconds per request.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, concurrency: int = 8, max_retries: int = 5,
                 timeout: float = 60.0):
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "retries": 0, "failures": 0}
        # Set by a function-calling agent (use_tools): requests then send `tools` and replies are messages.
        self.tools: list[dict[str, Any]] | None = None

    def use_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Send these OpenAI-style tool schemas with every request; replies become ``{"content", "tool_calls"}``."""
        self.tools = list(schemas)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"

    def _key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            if self.base_url is None:
                raise RuntimeError(f"set {self.api_key_env} to call the OpenAI API")
            key = "unused"  # local servers accept any key
        return key

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(api_key=self._key(), base_url=self.base_url, timeout=self.timeout,
                           max_retries=self.max_retries)

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[dict[str, str]]) -> str:
        import openai

        messages, extra = self._request_fields(messages)
        async with sem:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                    **extra)
            except openai.APIStatusError as exc:
                if exc.status_code in RETRIED_STATUSES or exc.status_code >= 500:
                    # The client has spent its retries (or the server asked for a wait beyond its cap).
                    self.usage["retries"] += self.max_retries
                    self.usage["failures"] += 1
                    raise
                raise RequestRejected(exc.status_code, self._redact(server_message(exc))) from None
            except openai.APIConnectionError:  # timeouts included
                self.usage["retries"] += self.max_retries
                self.usage["failures"] += 1
                raise
            self.usage["retries"] += int(getattr(raw, "retries_taken", 0) or 0)
            resp = raw.parse()
            self.usage["requests"] += 1
            if resp.usage is not None:
                self.usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += resp.usage.completion_tokens or 0
            choices = getattr(resp, "choices", None) or []
            if self.tools is not None:
                return _tool_reply(choices[0].message if choices else None)
            content = choices[0].message.content if choices and choices[0].message else None
            return (content or "").split(STOP, 1)[0]

    def _request_fields(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The messages to send and the extra fields: with tools, the wire form and ``tools``; else the ReAct stop."""
        if self.tools is None:
            return messages, {"stop": [STOP]}
        from lightning_nat.agent.fc_agent import api_messages

        return api_messages(messages), {"tools": self.tools}

    async def agenerate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | BaseException]:
        client = self._client()
        sem = asyncio.Semaphore(self.concurrency)
        try:
            return await asyncio.gather(*[self._one(client, sem, list(p)) for p in prompts], return_exceptions=True)
        finally:
            await client.close()

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]:
        """Completions in order.

        A request that still fails after the retries, or that the server rejected, gives
        ``None`` (the episode is recorded as failed); an answer that is not a valid
        completion (garbage body, no choices) gives ``""``, which the agent handles as a
        malformed step. Raises :class:`PolicyConfigError` with the server's message when
        the server refuses in a way no request can get past.
        """
        results = asyncio.run(self.agenerate(prompts))
        rejected = [r for r in results if isinstance(r, RequestRejected)]
        for r in rejected:
            if r.status in FATAL_STATUSES or (self.usage["requests"] == 0 and len(rejected) == len(results)):
                raise self._config_error(r)
        shown: set[str] = set()
        return [self._settle(r, shown) for r in results]

    def _config_error(self, r: RequestRejected) -> PolicyConfigError:
        return PolicyConfigError(f"the API refused the request with HTTP {r.status}: {r.message} "
                                 f"(check --model, --base-url and {self.api_key_env})")

    def _settle(self, r: Any, shown: set[str]) -> str | None:
        """One request's outcome as a completion: the text, ``None`` for a failed request, ``""`` for garbage."""
        import openai

        if isinstance(r, RequestRejected):
            self.usage["rejected"] = self.usage.get("rejected", 0) + 1
            if str(r) not in shown:  # one line per distinct refusal, not one per episode
                shown.add(str(r))
                log.error("the server rejected a request with %s", r)
            return None
        if isinstance(r, (openai.APIStatusError, openai.APIConnectionError)):
            detail = f"HTTP {r.status_code}: {self._redact(server_message(r))}" \
                if isinstance(r, openai.APIStatusError) else type(r).__name__
            log.error("request failed after %d retries: %s", self.max_retries, detail)
            return None
        if isinstance(r, BaseException):
            self.usage["malformed"] = self.usage.get("malformed", 0) + 1
            log.warning("malformed API answer (%s); treated as a malformed step", type(r).__name__)
            return ""
        return r

    @contextlib.asynccontextmanager
    async def session(self, first_wave: int = 1) -> AsyncIterator[Callable[[list[dict[str, str]]], Awaitable[str | None]]]:
        """``complete(messages)`` for the engine's pool: one request, at most ``concurrency`` in flight.

        Outcomes are those of :meth:`generate`; the run stops (:class:`PolicyConfigError`) on
        401/403/404, or when the first ``first_wave`` requests were all refused with none answered.
        """
        client = self._client()
        sem = asyncio.Semaphore(self.concurrency)
        shown: set[str] = set()
        refused: list[RequestRejected] = []

        async def complete(messages: list[dict[str, str]]) -> str | None:
            try:
                result: Any = await self._one(client, sem, list(messages))
            except Exception as exc:  # settled below, as generate() settles a batch's results
                result = exc
            if isinstance(result, RequestRejected):
                refused.append(result)
                if result.status in FATAL_STATUSES or (self.usage["requests"] == 0 and len(refused) >= first_wave):
                    raise self._config_error(result)
            return self._settle(result, shown)

        try:
            yield complete
        finally:
            await client.close()
