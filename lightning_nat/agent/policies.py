"""Policies, the LLMs behind the agent: a local model (transformers or in-process vLLM) or an OpenAI-compatible API.

A policy continues a batch of chat prompts (``generate(prompts) -> completions``); a ReAct turn ends at
``Observation:``. After ``use_tools(schemas)`` (a function-calling agent) the tools go with every prompt and
a turn ends at the chat template's end of turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from lightning_nat.core.artifacts import check_model_folder
from lightning_nat.core.prompts import STOP
from lightning_nat.core.secrets import mask, watch
from lightning_nat.core.trajectory import as_openai
from lightning_nat.train.tokenization import _render, ensure_chat_template, eos_ids

log = logging.getLogger(__name__)

# The text that closes an assistant turn in each tool-call family's chat template.
END_OF_TURN = {"hermes": "<|im_end|>", "llama31": "<|eot_id|>"}


def detect_family(template: str | None) -> str:
    """The tool-call family of a chat template, from the markers it writes.

    >>> detect_family("... '<tool_call>\\\\n' ..."), detect_family("... '<|eot_id|>' ... 'parameters' ...")
    ('hermes', 'llama31')
    >>> detect_family("{{ messages }}")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: cannot tell how this chat template writes tool calls (...); give --tool-parser hermes|llama31
    """
    text = template or ""
    if "<tool_call>" in text:
        return "hermes"
    if "<|eot_id|>" in text and "parameters" in text:
        return "llama31"
    raise ValueError("cannot tell how this chat template writes tool calls (no <tool_call> block, no Llama-3.1 "
                     "<|eot_id|> JSON call); give --tool-parser hermes|llama31")


class LocalPolicy:
    """What the local policies share: the prompt rendered as training rendered it, the stops, the token counts.

    Subclasses implement :meth:`complete`: the new token ids of each rendered prompt.

    Args:
        tokenizer: the model's tokenizer (its chat template; Llama-2-chat when it has none).
        temperature: 0 for greedy decoding, else sampling at this temperature (no top-k, no top-p).
        max_new_tokens: per turn.
        family: the tool-call family (``hermes`` or ``llama31``) of a function-calling agent; default: detected
            from the chat template when the agent offers tools.
    """

    def __init__(self, tokenizer: Any, temperature: float = 0.0, max_new_tokens: int = 256,
                 family: str | None = None):
        self.tokenizer = ensure_chat_template(tokenizer)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.temperature, self.max_new_tokens, self.family = temperature, max_new_tokens, family
        self.tools: list[dict[str, Any]] | None = None
        self.model_eos: list[int] = []  # the ids the model's generation config ends generation with
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "calls": 0}

    def use_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Offer these OpenAI-style tool schemas with every prompt (``tools=``); turns then end at the end of turn."""
        self.family = self.family or detect_family(self.tokenizer.chat_template)
        if self.family not in END_OF_TURN:
            raise ValueError(f"unknown template family {self.family!r}; expected one of {', '.join(END_OF_TURN)}")
        self.tools = list(schemas)

    @property
    def stop(self) -> str:
        """The text that ends a turn: ``Observation:`` (ReAct), or the template's end of turn (function calling)."""
        return STOP if self.tools is None else END_OF_TURN[self.family or ""]

    def stop_ids(self) -> list[int]:
        """Token ids that end a turn: the tokenizer's and the model's EOS, and the end of turn when it is one token."""
        tok = self.tokenizer
        ids = [tok.eos_token_id, *self.model_eos]
        if self.tools is not None:
            ids.append(tok.convert_tokens_to_ids(self.stop))
        return sorted({int(i) for i in ids if isinstance(i, int) and i != tok.unk_token_id})

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The generation prompt of a conversation, rendered as training rendered it."""
        return _render(self.tokenizer, messages, generation_prompt=True, tools=self.tools)

    def complete(self, prompts: list[list[int]]) -> list[list[int]]:
        """The new token ids of each prompt (token ids), stopping at :attr:`stop`, a stop id or ``max_new_tokens``."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[list[dict[str, Any]]]) -> list[str]:
        """Each prompt's next turn, the stop text and what follows it cut off."""
        if not prompts:
            return []
        ids = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=False)["input_ids"]
        rows = self.complete(ids)
        self.usage["calls"] += 1
        self.usage["requests"] += len(prompts)
        self.usage["prompt_tokens"] += sum(map(len, ids))
        self.usage["completion_tokens"] += sum(map(len, rows))
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        return [t.split(self.stop, 1)[0] for t in texts]


class HFPolicy(LocalPolicy):
    """A local causal LM through ``model.generate``: one left-padded batch per engine step, ``stop_strings``.

    Args:
        model: a model folder / Hub id, or a loaded model (e.g. the one being trained).
        tokenizer: its tokenizer (loaded from ``model`` when that is a path).
        device: where to run a model loaded from a path (default: cuda when available).
        synced_gpus: keep every rank generating until all are done (ZeRO-3 / FSDP sharded weights).
        dtype: of a model loaded from a path.
        the rest: as :class:`LocalPolicy`.
    """

    def __init__(self, model: Any, tokenizer: Any = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 device: str | None = None, synced_gpus: bool = False, dtype: str = "auto",
                 family: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if isinstance(model, (str, os.PathLike)):
            check_model_folder(str(model))
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(model))
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).to(device)
        super().__init__(tokenizer, temperature, max_new_tokens, family)
        self.model, self.synced_gpus = model, synced_gpus
        self.model_eos = eos_ids(getattr(getattr(model, "generation_config", None), "eos_token_id", None))

    def complete(self, prompts: list[list[int]]) -> list[list[int]]:
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        enc = tok.pad({"input_ids": prompts}, padding=True, padding_side="left", return_tensors="pt")
        enc = enc.to(next(self.model.parameters()).device)
        sampling = dict(do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0) if self.temperature > 0 \
            else dict(do_sample=False)
        # Only these settings: what the model's own generation config says (top-k, penalties) does not apply.
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
                                  eos_token_id=self.stop_ids(),
                                  stop_strings=[self.stop], **sampling)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model.generate(**enc, generation_config=config, tokenizer=tok,
                                          synced_gpus=self.synced_gpus)
        finally:
            self.model.train(was_training)
        # A row that stopped early is padded to the batch's length: the pad ids are not part of its turn.
        return [[i for i in row if i != tok.pad_token_id] for row in out[:, enc["input_ids"].shape[1]:].tolist()]


class VLLMPolicy(LocalPolicy):
    """The same turns from an in-process vLLM engine (``pip install 'lightning_nat[vllm]'``), prefix caching on.

    Prompts are rendered and tokenized here and handed to vLLM as ids, so both policies see the same ids.

    Args:
        model: a model folder or Hub id.
        tensor_parallel_size: GPUs one model is split over (vLLM's tensor parallelism).
        gpu_memory_utilization: the share of accelerator memory vLLM may take (default: vLLM's; its CPU
            build needs about 0.25 on a small machine).
        seed: the engine's sampling seed.
        dtype: the weights' dtype (default: the checkpoint's, as :class:`HFPolicy`).
        engine_args: passed to ``vllm.LLM`` as they are.
        the rest: as :class:`LocalPolicy`.
    """

    def __init__(self, model: str, tokenizer: Any = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float | None = None, seed: int = 0,
                 dtype: str = "auto", family: str | None = None, **engine_args: Any):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise RuntimeError("--policy vllm needs vLLM: pip install 'lightning_nat[vllm]' (from a clone: "
                               "pip install -e '.[vllm]')") from exc
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        check_model_folder(str(model))
        super().__init__(tokenizer or AutoTokenizer.from_pretrained(str(model)), temperature, max_new_tokens, family)
        with contextlib.suppress(OSError):  # a model folder without generation_config.json
            self.model_eos = eos_ids(GenerationConfig.from_pretrained(str(model)).eos_token_id)
        if gpu_memory_utilization is not None:
            engine_args["gpu_memory_utilization"] = gpu_memory_utilization
        if dtype == "auto":  # the checkpoint's own, as HFPolicy loads it (vLLM's "auto" runs a float32 one in 16 bits)
            dtype = str(getattr(AutoConfig.from_pretrained(str(model)), "dtype", None) or "auto").removeprefix("torch.")
        # generation_config="vllm": sampling is only what is asked here, as for HFPolicy.
        self.llm = LLM(model=str(model), tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=True,
                       seed=seed, dtype=dtype, generation_config="vllm", **engine_args)

    def complete(self, prompts: list[list[int]]) -> list[list[int]]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=self.temperature, max_tokens=self.max_new_tokens, stop=[self.stop],
                                stop_token_ids=self.stop_ids())
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]


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

    Retries are the ``openai`` client's own (408, 409, 429, 5xx, timeouts, with backoff and ``Retry-After``).
    Another 4xx fails the request at once with the server's message; 401/403/404, or refusals before any
    request succeeded (a wrong ``--model`` is a 400 on many servers), stop the run. The key is never logged.

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
        watch(api_key_env)  # the key is masked in everything written, however the server echoes it
        self.temperature, self.max_tokens = temperature, max_tokens
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "retries": 0, "failures": 0}
        # Set by a function-calling agent (use_tools): requests then send `tools` and replies are messages.
        self.tools: list[dict[str, Any]] | None = None

    def use_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Send these OpenAI-style tool schemas with every request; replies become ``{"content", "tool_calls"}``."""
        self.tools = list(schemas)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIPolicy(model={self.model!r}, base_url={self.base_url!r})"

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env)
        if not key and self.base_url is None:
            raise RuntimeError(f"set {self.api_key_env} to call the OpenAI API")
        # A local server accepts any key.
        return AsyncOpenAI(api_key=key or "unused", base_url=self.base_url, timeout=self.timeout,
                           max_retries=self.max_retries)

    async def _one(self, client: Any, sem: asyncio.Semaphore, messages: list[dict[str, str]]) -> Any:
        """One request's completion (with tools, the whole message), or ``None`` when it failed after the client's
        retries; a 4xx that retrying cannot fix raises :class:`RequestRejected`."""
        import openai

        # With tools, the wire form and `tools`; else the ReAct stop.
        extra: dict[str, Any] = {"stop": [STOP]} if self.tools is None else {"tools": self.tools}
        messages = messages if self.tools is None else [as_openai(m) for m in messages]
        async with sem:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens,
                    **extra)
            except (openai.APIStatusError, openai.APIConnectionError) as exc:  # timeouts included
                status = getattr(exc, "status_code", None)
                if status is not None and status not in RETRIED_STATUSES and status < 500:
                    raise RequestRejected(status, mask(server_message(exc))) from None
                # The client has spent its retries (or the server asked for a wait beyond its cap).
                self.usage["retries"] += self.max_retries
                self.usage["failures"] += 1
                detail = type(exc).__name__ if status is None else f"HTTP {status}: {mask(server_message(exc))}"
                log.error("request failed after %d retries: %s", self.max_retries, detail)
                return None
            self.usage["retries"] += int(getattr(raw, "retries_taken", 0) or 0)
            resp = raw.parse()
            self.usage["requests"] += 1
            if resp.usage is not None:
                self.usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += resp.usage.completion_tokens or 0
            choices = getattr(resp, "choices", None) or []
            message = choices[0].message if choices else None
            if self.tools is not None:  # the whole message: the agent reads its calls, none is dropped here
                return message.model_dump() if message is not None else {}
            return ((message.content if message is not None else None) or "").split(STOP, 1)[0]

    def generate(self, prompts: Sequence[list[dict[str, str]]]) -> list[str | None]:
        """Completions in order: ``None`` for a request that failed (the episode fails), ``""`` for an answer that
        is no completion (a malformed step); :class:`PolicyConfigError` when no request can get past the server."""
        async def run() -> list[str | None]:
            async with self.session(first_wave=len(prompts)) as complete:
                return await asyncio.gather(*[complete(p) for p in prompts])

        return asyncio.run(run())

    @contextlib.asynccontextmanager
    async def session(self, first_wave: int = 1) -> AsyncIterator[Callable[[list[dict[str, str]]], Awaitable[str | None]]]:
        """``complete(messages)`` for the engine's pool: one request, at most ``concurrency`` in flight, outcomes as
        :meth:`generate`'s (401/403/404, or the first ``first_wave`` requests all refused: a config error)."""
        client = self._client()
        sem = asyncio.Semaphore(self.concurrency)
        shown: set[str] = set()
        refused: list[RequestRejected] = []

        async def complete(messages: list[dict[str, str]]) -> str | None:
            try:
                return await self._one(client, sem, list(messages))
            except RequestRejected as r:
                refused.append(r)
                if r.status in FATAL_STATUSES or (self.usage["requests"] == 0 and len(refused) >= first_wave):
                    raise PolicyConfigError(f"the API refused the request with HTTP {r.status}: {r.message} "
                                            f"(check --model, --base-url and {self.api_key_env})") from None
                self.usage["rejected"] = self.usage.get("rejected", 0) + 1
                if str(r) not in shown:  # one line per distinct refusal, not one per episode
                    shown.add(str(r))
                    log.error("the server rejected a request with %s", r)
                return None
            except Exception as exc:  # an answer that is no completion: a malformed step
                self.usage["malformed"] = self.usage.get("malformed", 0) + 1
                log.warning("malformed API answer (%s); treated as a malformed step", type(exc).__name__)
                return ""

        try:
            yield complete
        finally:
            await client.close()
