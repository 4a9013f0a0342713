"""The local Hugging Face policy for function-calling agents: tools in the prompt, calls read back from the text.

:class:`HFToolPolicy` is :class:`~lightning_nat.policies.HFPolicy` with three changes: the
prompt is rendered by the tokenizer's chat template with ``tools=`` (as training rendered
it), a turn ends at the template's end-of-turn token (a token-id stop through
:class:`~lightning_nat.decoding.StopMatcher`), and each generated turn is returned as a
:class:`~lightning_nat.fc_agent.Turn`: read with ``tokenizer.parse_response`` when the
tokenizer ships a ``response_template``, else with the template family's parser
(:func:`~lightning_nat.fc_agent.parse_turn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .fc_agent import FAMILIES, Turn, from_openai_reply, parse_turn
from .policies import HFPolicy

# The text that closes an assistant turn in each family's template.
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


class HFToolPolicy(HFPolicy):
    """Batched generation for function-calling episodes with a local causal LM.

    Args:
        family: ``hermes`` or ``llama31``; default: detected from the chat template.
        the rest: as :class:`~lightning_nat.policies.HFPolicy`.
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
        from .fc_agent import render_prompt

        return render_prompt(self.tokenizer, messages, self.tools)

    def _stops(self) -> Any:
        if self._matcher is None:
            from .decoding import StopMatcher

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
        return [self.read_turn(t.split(self.end_of_turn, 1)[0], turn=len(p)) for t, p in zip(texts, prompts)]

    def read_turn(self, text: str, turn: int = 0) -> Turn:
        """One generated turn as a :class:`Turn`: the tokenizer's own response parser when it has one."""
        if getattr(self.tokenizer, "response_template", None) is None:
            return Turn(*parse_turn(text, self.family, turn))
        try:
            message = self.tokenizer.parse_response(text)
        except Exception as exc:  # model-written text: an unreadable turn is the agent's parse error
            return Turn(text.strip(), [], [f"the turn could not be parsed ({type(exc).__name__}: {exc})"])
        return Turn(*from_openai_reply({"content": message.get("content") or "",
                                        "tool_calls": message.get("tool_calls") or []}, turn))
