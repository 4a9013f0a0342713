"""Prompt styles as data: the one home of instructions, markers, placement and the chat fallback.

A :class:`PromptSpec` says how a question is put to the model for one task and one
training preset: where the instruction goes (a system turn, or the first user turn
followed by an assistant acknowledgement), and one question template per class of
trajectory, lowest class first, the positive (highest) class last. Training renders
each trajectory under its class's template; inference always uses the last one.

Two styles:

- ``reference``: every string verbatim from the paper's reference code
  (Reason-Wang/NAT, ``prompts/*/…_conversation.json``), per task, with the
  acknowledgement turn, NAT-2's four F1 classes and the Table 4 ablations;
- ``native``: this package's own wording (a system instruction, a marker sentence
  after the bare question).

``reference`` is the default for the paper's tasks, so that published checkpoints
and the paper's numbers are comparable; ``native`` stays selectable.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lightning_nat.core.artifacts import maybe_read_build, read_prompt_record, write_prompt_record

STYLES = ("reference", "native")
# Where a ReAct model's turn ends: the environment writes the observation. The agent prefixes observations
# with it and every policy stops generating at it.
STOP = "Observation:"
# The reference code's prompt files: a task declaration names its family (``reference_prompts:``).
FAMILIES = ("math", "multihop_qa", "yesno_qa")

# ---------------------------------------------------------------- reference strings (verbatim)
ACKNOWLEDGEMENT = "I've understood your instruction, start please."

_QA_TOOLS = ("Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can "
             "reason about the current situation, and Action can be two types: \n(1) search[query], which searches "
             "a query on google and returns a short snippet containing the answer. Note that sometimes the snippet "
             "does not contain the answer, and some alternative search might be needed.\n(2) finish[answer], which "
             "returns the answer and finishes the task.")
_AWARE = (" You need to generate a sequence of Thought and Action steps to solve the question. Note that the steps "
          "could be correct or incorrect. You need to follow the instruction strictly.")
_YES_NO = " Remember you should answer Yes or No."
_MATH_TOOLS = ("Solve a math problem with interleaving Thought, Action, Observation steps. Thought can reason about "
               "the current situation, and Action can be two types:\n(1) calculate[expression], which calculates the "
               "expression and returns the answer.\n(2) finish[answer], which returns the answer and finishes the task.")

# The first user turn of the reference's templates: (plain, target-aware) per task family.
REFERENCE_INSTRUCTIONS: dict[str, tuple[str, str]] = {
    "math": (_MATH_TOOLS, _MATH_TOOLS),
    "multihop_qa": (_QA_TOOLS, _QA_TOOLS + _AWARE),
    "yesno_qa": (_QA_TOOLS + _YES_NO, _QA_TOOLS + _AWARE + _YES_NO),
}
# ``zero-shot-target-aware``: (positive, negative) question templates per task family.
REFERENCE_NAT: dict[str, tuple[str, str]] = {
    "math": ("Question: {question}. Generate a sequence of Thought and Action steps to solve the problem correctly.",
             "Question: {question}. Generate a sequence of Thought and Action steps. But incorrectly solve the "
             "problem."),
    "qa": ("Question: {question}. Generate a sequence of Thought and Action steps to solve the question "
           "**correctly**.",
           "Question: {question}. Generate a sequence of Thought and Action steps. But **incorrectly** solve the "
           "question."),
}
# NAT-2 (``zero-shot-target-aware-four-class``) and the three-class variant, lowest class first.
REFERENCE_FOUR_CLASS = ("[Totally Incorrect] Question: {question}.", "[Mostly Incorrect] Question: {question}.",
                        "[Mostly Correct] Question: {question}.", "[Correct] Question: {question}.")
REFERENCE_THREE_CLASS = ("[Incorrect] Question: {question}.", "[Partially Correct] Question: {question}.",
                         "[Correct] Question: {question}.")
# The Table 4 ablations (gsm8k's ``zero-shot-target-aware-*``): (positive, negative).
REFERENCE_ABLATIONS: dict[str, tuple[str, str]] = {
    "prefix": ("[Correct] Question: {question}.", "[Incorrect] Question: {question}."),
    "good": ("[Good] Question: {question}.", "[Bad] Question: {question}."),
    "ab": ("[A] Question: {question}.", "[B] Question: {question}."),
    "inverse": ("[Incorrect] Question: {question}.", "[Correct] Question: {question}."),
    "random": ("Question: {question}. 15th-century Italy saw the formation of the two main variants that are known "
               "today.",
               "Question: {question}. An apple is a round, edible fruit produced by an apple tree."),
}
# ``cot-zero-shot-target-aware`` (paper Table 7): no instruction turn at all. (positive, negative)
REFERENCE_COT = ("Question: {question}. Please solve the problem correctly.",
                 "Question: {question}. Generate steps that incorrectly solve the problem.")

# ---------------------------------------------------------------- native markers
NATIVE_MARKERS: dict[str, tuple[str, str]] = {
    "correct": ("Please solve it correctly.", "Please solve it incorrectly."),
    "good": ("Please give a good solution.", "Please give a bad solution."),
    "ab": ("Solution type: A.", "Solution type: B."),
    # Two fixed strings with no meaning, to test whether the words matter at all.
    "random": ("[k7Qx2mVr]", "[Wp9dL4sz]"),
    # Positives marked "incorrectly": does the model follow the label or the word?
    "inverse": ("Please solve it incorrectly.", "Please solve it correctly."),
}

# Llama-2-chat layout for tokenizers that ship no chat template. The system prompt
# goes inside the first [INST] block; every assistant turn closes with eos.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set sys = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set sys = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.first and sys -%}{%- set text = '<<SYS>>\\n' + sys + '\\n<</SYS>>\\n\\n' + m['content'] | trim -%}"
    "{%- else -%}{%- set text = m['content'] | trim -%}{%- endif -%}"
    "{{- bos_token + '[INST] ' + text + ' [/INST]' -}}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{{- ' ' + m['content'] | trim + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# Where the native marker goes: after or before the question (first user turn), or at the end of the system turn.
PLACEMENTS = ("suffix", "prefix", "system")


@dataclass(frozen=True)
class PromptSpec:
    """How one task's questions are put to the model under one training preset.

    ``templates`` hold ``{question}``, lowest class first; the last is the positive
    (inference) one. A trajectory's class: positives (``reward``) are the last class;
    a negative is binned by ``score``: with ``zero_class`` a score of 0 is class 0 and
    ``thresholds`` split the rest, and with ``top_at_one`` a score of 1 counts as
    positive (the reference's NAT-2 gives ``[Correct]`` for F1 = 1 without exact match).
    """

    style: str
    task: str
    preset: str
    templates: tuple[str, ...]
    instruction: str | None = None
    instruction_role: str = "system"  # "system", or "user" followed by ``acknowledgement``
    acknowledgement: str | None = None
    thresholds: tuple[float, ...] = ()
    zero_class: bool = False
    top_at_one: bool = False
    mode: str = "react"
    placement: str = "suffix"
    markers: str = "correct"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def positive(self) -> str:
        """The question template of the positive (highest) class: the one to prompt with."""
        return self.templates[-1]

    def n_negative_classes(self) -> int:
        return len(self.templates) - 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["templates"] = list(self.templates)
        d["thresholds"] = list(self.thresholds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["templates"] = tuple(known["templates"])
        known["thresholds"] = tuple(known.get("thresholds", ()))
        return cls(**known)


def fill(template: str, question: str) -> str:
    """A question template with the (stripped) question in it; braces in the question stay as they are.

    >>> fill("Question: {question}.", "  Is ice cold? ")
    'Question: Is ice cold?.'
    """
    return template.replace("{question}", question.strip())


def negative_class(spec: PromptSpec, score: float | None, reward: bool) -> int:
    """The 0-based class (index into ``spec.templates``) of a trajectory.

    >>> s = reference_spec("hotpotqa", "nat-2")
    >>> [negative_class(s, f, False) for f in (0.0, 0.2, 0.4, 0.99, 1.0)], negative_class(s, 0.5, True)
    ([0, 1, 2, 2, 3], 3)
    """
    top = len(spec.templates) - 1
    if reward:
        return top
    if top == 1:
        return 0
    if score is None:
        raise ValueError(f"a trajectory without a score cannot be placed in one of {top} negative classes")
    if spec.top_at_one and score >= 1.0:
        return top
    if spec.zero_class:
        if score <= 0.0:
            return 0
        return min(1 + bisect.bisect_right(list(spec.thresholds), score), top - 1)
    return min(bisect.bisect_right(list(spec.thresholds), score), top - 1)


def family(task: str) -> str:
    """The reference prompt family a task declares (``reference_prompts:``): ``math``, ``multihop_qa`` or ``yesno_qa``.

    >>> family("svamp"), family("strategyqa")
    ('math', 'yesno_qa')
    """
    from lightning_nat.core.registry import find_task

    found = find_task(task)
    fam = getattr(found, "reference_prompts", None)
    if fam is None:
        raise KeyError(f"the reference style has no prompts for task {task!r} (its declaration names no "
                       "reference_prompts); use --prompt-style native")
    return fam


# preset -> which reference template set it maps to
_ABLATION_PRESETS = {"nat-prefix": "prefix", "nat-good": "good", "nat-ab": "ab", "nat-inverse": "inverse",
                     "nat-random": "random"}


def reference_spec(task: str, preset: str = "nat", mode: str = "react") -> PromptSpec:
    """The reference code's prompt for ``task`` under a builder preset.

    >>> s = reference_spec("gsm8k")
    >>> s.instruction_role, s.acknowledgement, s.positive.endswith("solve the problem correctly.")
    ('user', "I've understood your instruction, start please.", True)
    """
    fam = family(task)
    if mode == "cot":
        pos, neg = REFERENCE_COT
        return PromptSpec("reference", task, preset, (neg, pos), mode="cot", instruction_role="none")
    plain, aware = REFERENCE_INSTRUCTIONS[fam]
    common = dict(instruction_role="user", acknowledgement=ACKNOWLEDGEMENT)
    if preset in ("positive", "nut", "nat"):
        pos, neg = REFERENCE_NAT["math" if fam == "math" else "qa"]
        return PromptSpec("reference", task, preset, (neg, pos), instruction=aware, **common)
    if preset == "nat-2":
        return PromptSpec("reference", task, preset, REFERENCE_FOUR_CLASS, instruction=plain, thresholds=(0.4,),
                          zero_class=True, top_at_one=True, **common)
    if preset == "nat-3":
        return PromptSpec("reference", task, preset, REFERENCE_THREE_CLASS, instruction=plain, zero_class=True,
                          top_at_one=True, **common)
    if preset in _ABLATION_PRESETS:
        pos, neg = REFERENCE_ABLATIONS[_ABLATION_PRESETS[preset]]
        return PromptSpec("reference", task, preset, (neg, pos), instruction=plain, **common)
    raise KeyError(f"no reference prompt for preset {preset!r}")


def native_spec(task: str, preset: str = "nat", mode: str = "react", markers: str = "correct",
                placement: str = "suffix", thresholds: Sequence[float] = (), instruction: str | None = None
                ) -> PromptSpec:
    """This package's own wording: a system instruction and a marker sentence beside the bare question.

    >>> native_spec("gsm8k").positive
    '{question}\\nPlease solve it correctly.'
    >>> native_spec("hotpotqa", "nat-2", thresholds=(0.4,)).templates[1]
    '{question}\\nPlease solve it incorrectly. (answer quality 2 of 2: score 0.4 to 1)'
    """
    from lightning_nat.core.tasks import get_task

    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if markers not in NATIVE_MARKERS:
        raise ValueError(f"unknown markers {markers!r}; expected one of {', '.join(NATIVE_MARKERS)}")
    pos, neg = NATIVE_MARKERS[markers]

    def put(marker: str) -> str:
        # "system": the template keeps the marker before the question; head_messages moves it to the system turn.
        return f"{{question}}\n{marker}" if placement == "suffix" else f"{marker}\n{{question}}"

    if thresholds:
        bounds = [0.0, *thresholds, 1.0]
        k = len(thresholds) + 1
        negs = [put(f"{neg} (answer quality {c} of {k}: score {bounds[c - 1]:g} to {bounds[c]:g})")
                for c in range(1, k + 1)]
    else:
        negs = [put(neg)]
    if instruction is not None:
        text = instruction
    else:
        task_obj = get_task(task)
        text = task_obj.cot_instruction if mode == "cot" else task_obj.instruction
    return PromptSpec("native", task, preset, (*negs, put(pos)), instruction=text, thresholds=tuple(thresholds),
                      mode=mode, placement=placement, markers=markers)


def default_style(task: str) -> str:
    """The task's declared ``prompt_style``; else ``reference`` where it names reference prompts (the paper's
    tasks), ``native`` otherwise (the demo's task, user tasks, task-less builds)."""
    from lightning_nat.core.registry import find_task

    found = find_task(task) if task else None
    if found is None:
        return "native"
    if found.prompt_style:
        return found.prompt_style
    return "reference" if getattr(found, "reference_prompts", None) else "native"


def make_spec(task: str, preset: str = "nat", style: str | None = None, mode: str = "react", markers: str = "correct",
              placement: str = "suffix", thresholds: Sequence[float] = (), instruction: str | None = None
              ) -> PromptSpec:
    """The prompt spec of a build: ``style`` (default: :func:`default_style`) and a builder preset.

    Marker vocabulary, placement and thresholds only shape the native style; the
    reference style takes them from the preset, as the reference code did.
    """
    style = style or default_style(task)
    if style == "reference":
        spec = reference_spec(task, preset, mode)
        return replace(spec, instruction=instruction) if instruction is not None else spec
    if style == "native":
        return native_spec(task, preset, mode, markers, placement, thresholds, instruction)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {', '.join(STYLES)}")


def for_task(spec: PromptSpec, task: str) -> PromptSpec:
    """The same style and preset for another task (a math model on SVAMP); the spec itself for its own task."""
    if task == spec.task or spec.mode != "react" and spec.style == "reference":
        return spec
    if spec.style == "reference":
        return reference_spec(task, spec.preset, spec.mode)
    return native_spec(task, spec.preset, spec.mode, spec.markers, spec.placement, spec.thresholds)


def head_messages(spec: PromptSpec, question: str, cls: int | None = None) -> list[dict[str, str]]:
    """The turns before the trajectory: instruction (and acknowledgement), then the question of class ``cls``.

    ``None`` means the positive class, the inference prompt.

    >>> [m["role"] for m in head_messages(reference_spec("strategyqa"), "Is ice cold?")]
    ['user', 'assistant', 'user']
    >>> head_messages(native_spec("gsm8k"), " 2+2? ")[1]["content"]
    '2+2?\\nPlease solve it correctly.'
    >>> [m["content"] for m in head_messages(native_spec("gsm8k", placement="system", instruction="Use tools."), "2+2?", 0)]
    ['Use tools.\\n\\nPlease solve it incorrectly.', '2+2?']
    """
    template = spec.templates[-1 if cls is None else cls]
    out: list[dict[str, str]] = []
    if spec.placement == "system":
        # The class marker closes the system turn; the user turn is the bare question.
        marker = template.replace("{question}", "").strip()
        out.append({"role": "system", "content": f"{(spec.instruction or '').rstrip()}\n\n{marker}".lstrip()})
        out.append({"role": "user", "content": question.strip()})
        return out
    if spec.instruction_role == "system" and spec.instruction is not None:
        out.append({"role": "system", "content": spec.instruction})
    elif spec.instruction_role == "user" and spec.instruction is not None:
        out.append({"role": "user", "content": spec.instruction})
        if spec.acknowledgement is not None:
            out.append({"role": "assistant", "content": spec.acknowledgement})
    out.append({"role": "user", "content": fill(template, question)})
    return out


def split_prompt(spec: PromptSpec, messages: Sequence[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """The question and the episode's turns of a prompt that :func:`head_messages` began (a teacher reads it).

    >>> spec = reference_spec("gsm8k")
    >>> q, turns = split_prompt(spec, head_messages(spec, "What is 2+3?") + [{"role": "assistant", "content": "x"}])
    >>> q, len(turns)
    ('What is 2+3?', 1)
    """
    n = len(head_messages(spec, "?"))
    if spec.placement == "system":
        return messages[n - 1]["content"], list(messages[n:])
    before, _, after = spec.positive.partition("{question}")
    text = messages[n - 1]["content"]
    if not (text.startswith(before) and text.endswith(after)):
        raise ValueError("the prompt does not follow the spec's positive question template")
    return text[len(before):len(text) - len(after)], list(messages[n:])


def read_spec(folder: str | None) -> PromptSpec | None:
    """The prompt spec saved beside a model (``nat_prompt.json``) or a built dataset (``build.json``)."""
    if folder is None:
        return None
    saved = read_prompt_record(folder)
    if saved is not None:
        return PromptSpec.from_dict(saved)
    rec = maybe_read_build(folder)
    if rec is not None:
        if rec.prompt is not None:
            return PromptSpec.from_dict(rec.prompt)
        # Built before prompt specs were recorded: those builds were all in the native style.
        cfg = rec.config
        if cfg.get("task"):
            return native_spec(cfg["task"], cfg.get("name", "nat"), markers=cfg.get("markers", "correct"),
                               placement=cfg.get("placement", "suffix"), thresholds=tuple(cfg.get("thresholds", ())))
    return None


def write_spec(spec: PromptSpec, folder: str) -> None:
    """Save a prompt spec beside a model, where :func:`read_spec` finds it."""
    write_prompt_record(folder, spec.to_dict())


def resolve_eval_spec(task: str, saved: PromptSpec | None, style: str | None = None, preset: str | None = None,
                      mode: str = "react", where: str = "the model folder") -> PromptSpec:
    """The prompt to evaluate ``task`` with: the saved one (trained), else built from the options.

    An explicit option that contradicts the saved spec is an error, never silently preferred.

    >>> s = make_spec("strategyqa", "nat-ab")
    >>> resolve_eval_spec("strategyqa", s).positive
    '[A] Question: {question}.'
    >>> resolve_eval_spec("strategyqa", s, style="native")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: --prompt-style native contradicts the prompt the model was trained with (reference, preset nat-ab, ...
    """
    if saved is not None:
        for opt, given, have in (("--prompt-style", style, saved.style), ("--prompt-preset", preset, saved.preset)):
            if given is not None and given != have:
                raise ValueError(f"{opt} {given} contradicts the prompt the model was trained with ({saved.style}, "
                                 f"preset {saved.preset}, saved in {where}); drop the option")
        if mode != saved.mode:
            return make_spec(task, saved.preset, saved.style, mode, saved.markers, saved.placement, saved.thresholds)
        return for_task(saved, task)
    return make_spec(task, preset or "nat", style, mode)
