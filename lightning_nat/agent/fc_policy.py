"""The local Hugging Face policy for function-calling agents: tools in the prompt, calls read back from the text.

:class:`HFToolPolicy` is :class:`~lightning_nat.agent.policies.HFPolicy` with three changes: the
prompt is rendered by the tokenizer's chat template with ``tools=`` (as training rendered
it), a turn ends at the template's end-of-turn token (a token-id stop through
:class:`~lightning_nat.agent.decoding.StopMatcher`), and each generated turn is returned as a
:class:`~lightning_nat.agent.fc_agent.Turn`, read by ``tokenizer.parse_response`` with the tokenizer's own
``response_template``, or with this module's template for the family when it ships none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning_nat.agent.fc_agent import FAMILIES, Turn, from_openai_reply
from lightning_nat.agent.policies import HFPolicy

# The text that closes an assistant turn in each family's template.
END_OF_TURN = {"hermes": "<|im_end|>", "llama31": "<|eot_id|>"}
# transformers response templates (``tokenizer.parse_response``) of the two families, for tokenizers that ship none:
# Hermes writes `<tool_call>{"name", "arguments"}</tool_call>` blocks beside the text; Llama-3.1 writes the whole
# turn as one `{"name", "parameters"}` object, or text.
RESPONSE_TEMPLATES: dict[str, dict[str, Any]] = {
    "hermes": {"version": 1, "start_anchor": "<|im_start|>assistant\n", "defaults": {"role": "assistant"},
               # The text between calls joins the content (a non-repeating field would keep only its last piece).
               "fields": {"content": {"content": "text", "repeats": True, "join": ""},
                          "tool_calls": {"open": "<tool_call>", "close": "</tool_call>", "content": "json",
                                         "repeats": True, "transform": {"type": "function", "function": "{content}"}}}},
    "llama31": {"version": 1, "start_anchor": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                "defaults": {"role": "assistant"},
                "fields": {"content": {"content": "text"},
                           "tool_calls": {"open_pattern": r"^\s*(?=\{)", "close_pattern": r"\Z", "content": "json",
                                          "repeats": True,
                                          "transform": {"type": "function", "function": {
                                              "name": "{content.name}", "arguments": "{content.parameters}"}}}}},
}


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


class HFToolPolicy(HFPolicy):
    """Batched generation for function-calling episodes with a local causal LM.

    Args:
        family: ``hermes`` or ``llama31``; default: detected from the chat template.
        the rest: as :class:`~lightning_nat.agent.policies.HFPolicy`.
    """

    def __init__(self, model: Any, tokenizer: Any = None, family: str | None = None, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        self.family = family or detect_family(self.tokenizer.chat_template)
        if self.family not in FAMILIES:
            raise ValueError(f"unknown template family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        self.end_of_turn = END_OF_TURN[self.family]
        self.tools: list[dict[str, Any]] = []

    def use_tools(self, schemas: list[dict[str, Any]]) -> None:
        """Render these OpenAI-style tool schemas into every prompt (``tools=``)."""
        self.tools = list(schemas)

    def render(self, messages: list[dict[str, Any]]) -> str:
        from lightning_nat.agent.fc_agent import render_prompt

        return render_prompt(self.tokenizer, messages, self.tools)

    def _stops(self) -> Any:
        if self._matcher is None:
            from lightning_nat.agent.decoding import StopMatcher

            self._matcher = StopMatcher(self.tokenizer, self.end_of_turn)
        return self._matcher

    def _stop_ids(self) -> list[int]:
        ids = super()._stop_ids()
        token = self.tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if isinstance(token, int) and token != self.tokenizer.unk_token_id and token not in ids:
            ids.append(token)  # a real model's end-of-turn is one special token: stop on its id
        return ids

    def generate(self, prompts: Sequence[list[dict[str, Any]]]) -> list[Turn]:  # type: ignore[override]
        """Each prompt's next assistant turn, read into content and calls (the end-of-turn text cut off)."""
        texts = super().generate(prompts)
        return [self.read_turn(t.split(self.end_of_turn, 1)[0], self.render(p), turn=len(p))
                for t, p in zip(texts, prompts)]

    def read_turn(self, text: str, prompt: str = "", turn: int = 0) -> Turn:
        """One generated turn as a :class:`Turn`, by ``tokenizer.parse_response``.

        The tokenizer's own ``response_template`` when it ships one, else the family's
        (:data:`RESPONSE_TEMPLATES`); ``prompt`` is the rendered prompt the turn continues. Calls get
        ids ``call_<turn>_<k>``; a turn the parser cannot read (a call that is not JSON, a block never
        closed) is one parse error, its text kept as the turn's content.
        """
        schema = getattr(self.tokenizer, "response_template", None) or RESPONSE_TEMPLATES[self.family]
        try:
            message = self.tokenizer.parse_response(text, schema, prefix=prompt, tools=self.tools or None)
        except Exception as exc:  # model-written text: an unreadable turn is the agent's parse error
            reason = " ".join(str(exc).split())[:200]
            return Turn(text.strip(), [], [f"the turn could not be parsed ({type(exc).__name__}: {reason})"])
        return Turn(*from_openai_reply({"content": (message.get("content") or "").strip(),
                                        "tool_calls": message.get("tool_calls") or []}, turn))
