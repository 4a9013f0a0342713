"""Policies, the LLMs behind the agent: a local Hugging Face model or an OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

from .agent import STOP

log = logging.getLogger(__name__)


class HFPolicy:
    """Batched generation with a local causal LM, left-padded, stopping at ``Observation:``.

    The prompt is rendered with the tokenizer's chat template (the one training used;
    Llama-2-chat when the tokenizer has none), with the generation prompt appended.

    Args:
        model: a model folder / Hub id, or a loaded model (e.g. the one being trained).
        tokenizer: its tokenizer (loaded from ``model`` when that is a path).
        temperature: 0 for greedy decoding, else sampling at this temperature.
        max_new_tokens: per turn.
        device: where to run (default: the model's device, or cuda when available).
        synced_gpus: keep every rank generating until all are done (ZeRO-3 sharded weights).
    """

    def __init__(self, model: Any, tokenizer: Any = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 device: str | None = None, synced_gpus: bool = False, dtype: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from .tokenization import ensure_chat_template

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

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        import torch

        if not prompts:
            return []
        tok = self.tokenizer
        texts = [self.render(p) for p in prompts]
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
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
        return [t.split(STOP, 1)[0] for t in tok.batch_decode(new, skip_special_tokens=True)]


class PolicyConfigError(RuntimeError):
    """The API refuses every request (authentication, permission, unknown model)."""


class OpenAIPolicy:
    """Any OpenAI-compatible chat API (OpenAI, vLLM, llama.cpp, ...), asynchronous and bounded.

    Requests run concurrently up to ``concurrency``; 429, 5xx, timeouts and connection
    errors are retried with exponential backoff and jitter up to ``max_retries`` times.
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
        backoff: first retry delay in seconds (doubles each retry, with jitter).
    """

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 256, concurrency: int = 8, max_retries: int = 5,
                 timeout: float = 60.0, backoff: float = 1.0):
        self.model, self.base_url, self.api_key_env = model, base_url, api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "retries": 0, "failures": 0}

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env)
        if not key:
            if self.base_url is None:
                raise RuntimeError(f"set {self.api_key_env} to call the OpenAI API")
            key = "unused"  # local servers accept any key
        return AsyncOpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[dict[str, str]]) -> str:
        import openai

        transient = (openai.RateLimitError, openai.APITimeoutError, openai.APIConnectionError,
                     openai.InternalServerError)
        async with sem:
            for attempt in range(self.max_retries + 1):
                try:
                    resp = await client.chat.completions.create(
                        model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                        stop=[STOP])
                    self.usage["requests"] += 1
                    if resp.usage is not None:
                        self.usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                        self.usage["completion_tokens"] += resp.usage.completion_tokens or 0
                    choices = getattr(resp, "choices", None) or []
                    content = choices[0].message.content if choices and choices[0].message else None
                    return (content or "").split(STOP, 1)[0]
                except openai.APIStatusError as exc:
                    if exc.status_code in (401, 403, 404):
                        # Wrong key, no access or no such model: retrying cannot help, and every request would fail.
                        raise PolicyConfigError(f"the API refused the request with HTTP {exc.status_code} "
                                                f"(check {self.api_key_env}, --model and --base-url)") from None
                    if not isinstance(exc, transient):
                        raise
                    if attempt == self.max_retries:
                        self.usage["failures"] += 1
                        raise
                    self.usage["retries"] += 1
                    delay = self.backoff * (2 ** attempt) * (0.5 + random.random())
                    log.warning("request failed (HTTP %s); retry %d/%d in %.1fs", exc.status_code, attempt + 1,
                                self.max_retries, delay)
                    await asyncio.sleep(delay)
                except transient as exc:
                    if attempt == self.max_retries:
                        self.usage["failures"] += 1
                        raise
                    self.usage["retries"] += 1
                    delay = self.backoff * (2 ** attempt) * (0.5 + random.random())
                    log.warning("request failed (%s); retry %d/%d in %.1fs", type(exc).__name__, attempt + 1,
                                self.max_retries, delay)
                    await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def agenerate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | BaseException]:
        client = self._client()
        sem = asyncio.Semaphore(self.concurrency)
        try:
            return await asyncio.gather(*[self._one(client, sem, list(p)) for p in prompts], return_exceptions=True)
        finally:
            await client.close()

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]:
        """Completions in order.

        A request that still fails after the retries gives ``None`` (the episode is recorded
        as failed); an answer that is not a valid completion (garbage body, no choices)
        gives ``""``, which the agent handles as a malformed step.
        """
        import openai

        results = asyncio.run(self.agenerate(prompts))
        out: list[str | None] = []
        for r in results:
            if isinstance(r, PolicyConfigError):
                raise r
            if isinstance(r, (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError)):
                log.error("request failed after %d retries: %s", self.max_retries, type(r).__name__)
                out.append(None)
            elif isinstance(r, BaseException):
                self.usage["malformed"] = self.usage.get("malformed", 0) + 1
                log.warning("malformed API answer (%s); treated as a malformed step", type(r).__name__)
                out.append("")
            else:
                out.append(r)
        return out
