"""The messages each agent receives, in two prompt styles (``MoAConfig.prompt_style``).

``moa``: the aggregate-and-synthesize prompt, built as the reference MoA implementation builds
it. An agent that has references (the previous layer's responses) gets them in a system
message: the synthesis instruction followed by the responses numbered ``1.``, ``2.``, …,
appended to an existing first system message after a blank line, otherwise prepended as a new
system message. Later layers see only the previous layer's responses, never earlier ones.

``archon``: what Archon (ScalingIntelligence/Archon) sends. Its ``Archon.generate`` puts the
system message ``"You are a helpful assistant"`` in front of a conversation that has none, and
a generator sends that conversation as it is. A fuser sends its own system message, the
conversation's earlier non-system turns, and one user message: Archon's fusion text (the query
written in twice) with the candidates numbered in component order, each stripped of outer
whitespace as Archon's generators return them. Facts recorded from Archon's code, and pinned by
``tests/fixtures/archon/request_shapes.json``.

The template id selects the builder (``BUILDERS``), so the runner needs no branch per style.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any, Callable, Sequence

from .config import ARCHON_PROMPT_TEMPLATE, AgentSpec
from .errors import ConfigError
from .providers.base import Message

AGGREGATE_AND_SYNTHESIZE = (
    "You have been provided with a set of responses from various open-source models to the latest "
    "user query. Your task is to synthesize these responses into a single, high-quality response. "
    "It is crucial to critically evaluate the information provided in these responses, recognizing "
    "that some of it may be biased or incorrect. Your response should not simply replicate the given "
    "answers but should offer a refined, accurate, and comprehensive reply to the instruction. Ensure "
    "your response is well-structured, coherent, and adheres to the highest standards of accuracy and "
    "reliability.\n\nResponses from models:"
)

ARCHON_GENERATOR_SYSTEM = "You are a helpful assistant"
ARCHON_FUSER_SYSTEM = "You are a helpful assistant who fuses multiple answers"
_ARCHON_GAP = " " * 12  # Archon's source continues the string over indented lines
ARCHON_FUSER_USER = (
    "You have been provided with a set of responses from various open-source models to the latest "
    "user query, which is {query}." + _ARCHON_GAP
    + "Your task is to synthesize these responses into a single, high-quality response. " + _ARCHON_GAP
    + "It is crucial to critically evaluate the information provided in these responses, recognizing "
    "that some of it may be biased or incorrect. " + _ARCHON_GAP
    + "Your response should not simply replicate the given answers but should offer a refined, "
    "accurate, and comprehensive reply to the instruction. " + _ARCHON_GAP
    + "Ensure your response is well-structured, coherent, and adheres to the highest standards of "
    "accuracy and reliability.\nOnce again, the query is: {query}\nResponses from models:"
)
"""Archon's fuser prompt without critiques; ``{query}`` is the last message's text. Candidates
follow as ``\n1. …``, ``\n2. …``."""

TEMPLATES: dict[str, str] = {"moa-aggregate-v1": AGGREGATE_AND_SYNTHESIZE,
                             ARCHON_PROMPT_TEMPLATE: ARCHON_FUSER_USER}


def template_text(template_id: str) -> str:
    try:
        return TEMPLATES[template_id]
    except KeyError:
        raise ConfigError(f"unknown prompt template {template_id!r}; known: {sorted(TEMPLATES)}",
                          field="prompt_template") from None


def inject_references(messages: Sequence[Message], references: Sequence[str],
                      template_id: str = "moa-aggregate-v1") -> tuple[Message, ...]:
    """The reference implementation's ``inject_references_to_messages``; no references, no change."""
    messages = tuple(messages)
    if not references:
        return messages
    system = template_text(template_id)
    for i, reference in enumerate(references, start=1):
        system += f"\n{i}. {reference}"
    if messages and messages[0].role == "system":
        return (Message("system", messages[0].content + "\n\n" + system),) + messages[1:]
    return (Message("system", system),) + messages


def agent_messages(agent: AgentSpec, prompt: Sequence[Message], references: Sequence[str],
                   template_id: str = "moa-aggregate-v1") -> tuple[Message, ...]:
    """The messages one agent receives, in the layout of the template's prompt style."""
    return BUILDERS.get(template_id, _moa_messages)(agent, prompt, references, template_id)


def _moa_messages(agent: AgentSpec, prompt: Sequence[Message], references: Sequence[str],
                  template_id: str) -> tuple[Message, ...]:
    """Its own system prompt (if any), then the references."""
    base = tuple(prompt)
    if agent.system_prompt:
        if base and base[0].role == "system":
            base = (Message("system", agent.system_prompt + "\n\n" + base[0].content),) + base[1:]
        else:
            base = (Message("system", agent.system_prompt),) + base
    return inject_references(base, references, template_id)


def _archon_messages(agent: AgentSpec, prompt: Sequence[Message], references: Sequence[str],
                     template_id: str) -> tuple[Message, ...]:
    """A generator (no references) or a fuser, as Archon builds them (module docstring)."""
    conv = tuple(prompt)
    if not conv or conv[0].role != "system":
        conv = (Message("system", ARCHON_GENERATOR_SYSTEM),) + conv
    if not references:
        return conv
    return ((Message("system", ARCHON_FUSER_SYSTEM),)
            + tuple(m for m in conv[:-1] if m.role != "system")
            + (Message("user", archon_fuser_prompt(conv[-1].content, references)),))


def archon_fuser_prompt(query: str, references: Sequence[str]) -> str:
    text = ARCHON_FUSER_USER.replace("{query}", query)
    return text + "".join(f"\n{i}. {ref.strip()}" for i, ref in enumerate(references, start=1))


def split_archon_fusion(text: str) -> tuple[str, list[str]] | None:
    """(query, candidates) of an Archon fuser prompt, or None when ``text`` is not one.

    The query appears twice, so it is the prefix that the text repeats at the second place."""
    head, middle, tail = ARCHON_FUSER_USER.split("{query}")
    if not text.startswith(head):
        return None
    cursor = len(head)
    while (pos := text.find(middle, cursor)) >= 0:
        query = text[len(head):pos]
        rest = text[pos + len(middle):]
        if rest.startswith(query + tail):
            refs = split_numbered(rest[len(query) + len(tail):])
            return (query, refs) if refs else None
        cursor = pos + 1
    return None


def split_numbered(section: str) -> list[str] | None:
    """The items of ``\n1. a\n2. b``, split on the markers in sequence; None when there are none.

    Only an item that itself holds a line starting ``3. `` (the next number) is split wrongly."""
    starts: list[tuple[int, int]] = []
    cursor, i = 0, 1
    while (found := section.find(f"\n{i}. ", cursor)) >= 0:
        starts.append((found, found + len(f"\n{i}. ")))
        cursor, i = found + 1, i + 1
    if not starts:
        return None
    ends = [s for s, _ in starts[1:]] + [len(section)]
    return [section[body:end] for (_, body), end in zip(starts, ends)]


BUILDERS: dict[str, Callable[[AgentSpec, Sequence[Message], Sequence[str], str], tuple[Message, ...]]] = {
    ARCHON_PROMPT_TEMPLATE: _archon_messages,
}
"""Template id -> message layout; any other template is an aggregate-and-synthesize text."""


def user_prompt(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


# ---- judge prompts ------------------------------------------------------------------------
# Defined here (not in scoring) so that the simulated world, which must recognise a judge
# request, and the scorers, which send them, share one text without an upward import. The
# texts are data (``data/judge_prompts.toml``): the MT-Bench ones follow FastChat's templates.

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth")


def _load_judge_prompts() -> dict[str, Any]:
    text = resources.files("moa_search").joinpath("data/judge_prompts.toml").read_text("utf-8")
    return tomllib.loads(text)


JUDGE_PROMPTS: dict[str, Any] = _load_judge_prompts()
#: Categories whose items are graded against their reference (FastChat's reference-guided set).
REFERENCE_CATEGORIES: frozenset[str] = frozenset(JUDGE_PROMPTS["mtbench"]["reference_categories"])

PAIRWISE_JUDGE_SYSTEM: str = JUDGE_PROMPTS["pairwise-v1"]["system"]
PAIRWISE_JUDGE_USER: str = JUDGE_PROMPTS["pairwise-v1"]["user"]
SINGLE_GRADE_JUDGE_SYSTEM: str = JUDGE_PROMPTS["single-v1"]["system"]
SINGLE_GRADE_JUDGE_USER: str = JUDGE_PROMPTS["single-v1"]["user"]


def pairwise_judge_messages(instruction: str, output_a: str, output_b: str) -> tuple[Message, ...]:
    return (Message("system", PAIRWISE_JUDGE_SYSTEM),
            Message("user", PAIRWISE_JUDGE_USER.format(instruction=instruction, output_a=output_a,
                                                       output_b=output_b)))


def single_grade_template(turn: int, with_reference: bool) -> str:
    """FastChat's template name for grading ``turn`` (1-based), with or without a reference."""
    return f"single-{'math-' if with_reference else ''}v1{'-multi-turn' if turn > 1 else ''}"


def single_grade_judge_messages(questions: str | Sequence[str], answers: str | Sequence[str],
                                references: Sequence[str] | None = None) -> tuple[Message, ...]:
    """MT-Bench single-answer grading of the last turn of a conversation.

    One turn: ``single-v1`` (or ``single-math-v1`` with the turn's reference answer). A later
    turn: the multi-turn template showing the whole conversation so far (and, reference-guided,
    every turn's reference answer), focused on the last answer, as FastChat grades turn 2.
    ``references`` is one reference answer per turn, or ``None`` for no reference.
    """
    qs = [questions] if isinstance(questions, str) else list(questions)
    ans = [answers] if isinstance(answers, str) else list(answers)
    if not qs or len(qs) != len(ans) or (references is not None and len(references) != len(qs)):
        raise ValueError(f"got {len(qs)} questions, {len(ans)} answers and "
                         f"{'no' if references is None else len(references)} references")
    if len(qs) > len(ORDINALS):
        raise ValueError(f"at most {len(ORDINALS)} turns can be graded, got {len(qs)}")
    template = JUDGE_PROMPTS[single_grade_template(len(qs), references is not None)]
    if len(qs) == 1:
        fields = {"question": qs[0], "answer": ans[0]}
        if references is not None:
            fields["ref_answer_1"] = references[0]
        return (Message("system", template["system"]), Message("user", template["user"].format(**fields)))
    blocks = JUDGE_PROMPTS["mtbench"]
    conversation = "".join(blocks["turn"].format(question=q, answer=a) for q, a in zip(qs, ans))
    reference_conversation = "" if references is None else "".join(
        blocks["reference_turn"].format(question=q, answer=r) for q, r in zip(qs, references))
    return (Message("system", template["system"].format(ordinal=ORDINALS[len(qs) - 1])),
            Message("user", template["user"].format(conversation=conversation,
                                                    reference_conversation=reference_conversation)))
