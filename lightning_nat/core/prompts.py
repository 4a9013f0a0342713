"""Prompt styles rendered from data: how a task's question is put to the model under one training preset.

Every string lives in ``prompts.yaml``; this module renders a :class:`~lightning_nat.core.tasks.Task` it
is given and names no task. Two styles: ``reference``, the paper's reference code (Reason-Wang/NAT) verbatim
per task family (its acknowledgement turn, NAT-2's four F1 classes, the Table 4 ablations), the default for
tasks that name a family; ``native``, this package's wording (a system instruction, a marker beside the
bare question).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from lightning_nat.core.tasks import Task

STYLES = ("reference", "native")
# Where a ReAct model's turn ends: the environment writes the observation. The agent prefixes observations
# with it and every policy stops generating at it.
STOP = "Observation:"
PROMPTS: dict[str, Any] = yaml.safe_load((Path(__file__).with_name("prompts.yaml")).read_text(encoding="utf-8"))
FAMILIES = tuple(PROMPTS["reference"]["families"])
PRESETS: dict[str, dict[str, Any]] = PROMPTS["presets"]
MARKERS: dict[str, list[str]] = PROMPTS["native"]["markers"]
# Where the native marker goes: after or before the question (first user turn), or at the end of the system turn.
PLACEMENTS = ("suffix", "prefix", "system")
# The presets whose reference instruction is the target-aware one; the others take the plain one.
_AWARE_PRESETS = ("positive", "nut", "nat")

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


@dataclass(frozen=True)
class PromptSpec:
    """How one task's questions are put to the model under one training preset.

    ``templates`` hold ``{question}``, one per class, lowest first; the last (positive) one prompts at inference.
    The instruction is a system turn, or (``instruction_role="user"``) a user turn and an acknowledgement.
    A negative's class comes from its ``score`` (:func:`negative_class`).
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
    """The 0-based class (index into ``spec.templates``) of a trajectory: positives the last; a negative binned
    by ``score`` (``zero_class``: 0 is class 0, ``thresholds`` split the rest; ``top_at_one``: 1 is positive).

    >>> s = PromptSpec("reference", "t", "nat-2", ("a", "b", "c", "d"), thresholds=(0.4,), zero_class=True,
    ...                top_at_one=True)
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
    if spec.zero_class and score <= 0.0:
        return 0
    return min(spec.zero_class + bisect.bisect_right(spec.thresholds, score), top - 1)


def preset(name: str) -> dict[str, Any]:
    """A preset of ``prompts.yaml`` (``keeps``, ``markers``, ``placement``, ``thresholds``), defaults filled in.

    >>> preset("nat-2")["thresholds"], preset("nat-ab")["markers"]
    ((0.4,), 'ab')
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    p = PRESETS[name]
    return {"keeps": p["keeps"], "markers": p.get("markers", "correct"), "placement": p.get("placement", "suffix"),
            "thresholds": tuple(float(t) for t in p.get("thresholds", ())), "description": p["description"]}


def reference_spec(task: Task, preset_name: str = "nat", mode: str = "react") -> PromptSpec:
    """The reference code's prompt for ``task`` (its ``reference_prompts`` family) under a builder preset."""
    fam = task.reference_prompts
    if fam is None:
        raise ValueError(f"the reference style has no prompts for task {task.name!r} (its declaration names no "
                         "reference_prompts); use --prompt-style native")
    ref = PROMPTS["reference"]
    if mode == "cot":
        return PromptSpec("reference", task.name, preset_name, tuple(ref["cot"]), mode="cot", instruction_role="none")
    family = ref["families"][fam]
    common: dict[str, Any] = dict(instruction_role="user", acknowledgement=ref["acknowledgement"])
    if preset_name in _AWARE_PRESETS:
        return PromptSpec("reference", task.name, preset_name, (family["negative"], family["positive"]),
                          instruction=family.get("aware", family["plain"]), **common)
    if preset_name not in ref["templates"]:
        raise KeyError(f"no reference prompt for preset {preset_name!r}")
    if preset_name in ref["bands"]:
        common.update(zero_class=True, top_at_one=True, thresholds=tuple(float(t) for t in ref["bands"][preset_name]))
    return PromptSpec("reference", task.name, preset_name, tuple(ref["templates"][preset_name]),
                      instruction=family["plain"], **common)


def native_spec(task: Task | None, preset_name: str = "nat", mode: str = "react", markers: str = "correct",
                placement: str = "suffix", thresholds: Sequence[float] = (), instruction: str | None = None
                ) -> PromptSpec:
    """This package's own wording: a system instruction and a marker sentence beside the bare question.

    The instruction is ``instruction``, else the task's (its chain-of-thought one in ``cot`` mode).

    >>> native_spec(None, instruction="Use tools.").positive
    '{question}\\nPlease solve it correctly.'
    >>> native_spec(None, "nat-2", thresholds=(0.4,), instruction="").templates[1]
    '{question}\\nPlease solve it incorrectly. (answer quality 2 of 2: score 0.4 to 1)'
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if markers not in MARKERS:
        raise ValueError(f"unknown markers {markers!r}; expected one of {', '.join(MARKERS)}")
    pos, neg = MARKERS[markers]

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
    if instruction is None:
        if task is None:
            raise ValueError("a task-less prompt needs its instruction (the trajectories' own system turn)")
        instruction = task.cot_instruction if mode == "cot" else task.instruction
    return PromptSpec("native", task.name if task is not None else "", preset_name, (*negs, put(pos)),
                      instruction=instruction, thresholds=tuple(thresholds), mode=mode, placement=placement,
                      markers=markers)


def default_style(task: Task | None) -> str:
    """The task's declared ``prompt_style``; else ``reference`` where it names reference prompts (the paper's
    tasks), ``native`` otherwise (the demo's task, user tasks, task-less builds)."""
    if task is None:
        return "native"
    return task.prompt_style or ("reference" if task.reference_prompts else "native")


def make_spec(task: Task | None, preset_name: str = "nat", style: str | None = None, mode: str = "react",
              markers: str = "correct", placement: str = "suffix", thresholds: Sequence[float] = (),
              instruction: str | None = None) -> PromptSpec:
    """The prompt spec of a build: ``style`` (default: :func:`default_style`) and a builder preset.

    Markers, placement and thresholds shape the native style only; the reference style takes the preset's.
    """
    style = style or default_style(task)
    if style == "reference":
        if task is None:
            raise ValueError("the reference style needs a task (--task) naming its reference_prompts")
        spec = reference_spec(task, preset_name, mode)
        return replace(spec, instruction=instruction) if instruction is not None else spec
    if style == "native":
        return native_spec(task, preset_name, mode, markers, placement, thresholds, instruction)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {', '.join(STYLES)}")


def head_messages(spec: PromptSpec, question: str, cls: int | None = None) -> list[dict[str, str]]:
    """The turns before the trajectory: instruction (and acknowledgement), then the question of class ``cls``.

    ``None`` means the positive class, the inference prompt.

    >>> [m["role"] for m in head_messages(PromptSpec("reference", "t", "nat", ("n {question}", "p {question}"),
    ...     instruction="Solve.", instruction_role="user", acknowledgement="OK."), "Is ice cold?")]
    ['user', 'assistant', 'user']
    >>> head_messages(native_spec(None, instruction="Use tools."), " 2+2? ")[1]["content"]
    '2+2?\\nPlease solve it correctly.'
    >>> [m["content"] for m in head_messages(native_spec(None, placement="system", instruction="Use tools."), "2+2?", 0)]
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
    if spec.instruction_role in ("system", "user") and spec.instruction is not None:
        out.append({"role": spec.instruction_role, "content": spec.instruction})
        if spec.instruction_role == "user" and spec.acknowledgement is not None:
            out.append({"role": "assistant", "content": spec.acknowledgement})
    out.append({"role": "user", "content": fill(template, question)})
    return out


def split_prompt(spec: PromptSpec, messages: Sequence[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    """The question and the episode's turns of a prompt that :func:`head_messages` began (a teacher reads it).

    >>> spec = native_spec(None, instruction="Solve.")
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


def resolve_eval_spec(task: Task, saved: PromptSpec | None, style: str | None = None, preset_name: str | None = None,
                      mode: str = "react", where: str = "the model folder") -> PromptSpec:
    """The prompt to evaluate ``task`` with: the saved one (trained), else built from the options.

    An explicit option that contradicts the saved spec is an error, never silently preferred. The saved spec
    itself serves its own task (and every task in the reference chain-of-thought style, which names none); another
    task (a math model on SVAMP) or mode gets the same style and preset rendered for it.
    """
    if saved is None:
        return make_spec(task, preset_name or "nat", style, mode)
    for opt, given, have in (("--prompt-style", style, saved.style), ("--prompt-preset", preset_name, saved.preset)):
        if given is not None and given != have:
            raise ValueError(f"{opt} {given} contradicts the prompt the model was trained with ({saved.style}, "
                             f"preset {saved.preset}, saved in {where}); drop the option")
    if mode == saved.mode and (task.name == saved.task or mode != "react" and saved.style == "reference"):
        return saved
    return make_spec(task, saved.preset, saved.style, mode, saved.markers, saved.placement, saved.thresholds)
