"""The aggregate-and-synthesize prompt, built as the reference MoA implementation builds it.

An agent that has references (the previous layer's responses) gets them in a system message:
the synthesis instruction followed by the responses numbered ``1.``, ``2.``, …, appended to an
existing first system message after a blank line, otherwise prepended as a new system message.
Later layers see only the previous layer's responses, never earlier ones.
"""

from __future__ import annotations

from typing import Sequence

from .config import AgentSpec
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

TEMPLATES: dict[str, str] = {"moa-aggregate-v1": AGGREGATE_AND_SYNTHESIZE}


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
    """The messages one agent receives: its own system prompt (if any), then the references."""
    base = tuple(prompt)
    if agent.system_prompt:
        if base and base[0].role == "system":
            base = (Message("system", agent.system_prompt + "\n\n" + base[0].content),) + base[1:]
        else:
            base = (Message("system", agent.system_prompt),) + base
    return inject_references(base, references, template_id)


def user_prompt(text: str) -> tuple[Message, ...]:
    return (Message("user", text),)


# ---- judge prompts ------------------------------------------------------------------------
# Defined here (not in scoring) so that the simulated world, which must recognise a judge
# request, and the scorers, which send them, share one text without an upward import.

PAIRWISE_JUDGE_SYSTEM = (
    "You are a careful, impartial judge of AI assistant answers. You compare two outputs for the "
    "same instruction and decide which one a thoughtful expert would prefer. Judge helpfulness, "
    "accuracy and completeness; do not let the order of the outputs or their length sway you."
)

PAIRWISE_JUDGE_USER = (
    "## Instruction\n\n{instruction}\n\n"
    "## Output (a)\n\n{output_a}\n\n"
    "## Output (b)\n\n{output_b}\n\n"
    "## Task\n\nWhich output is better? Reply with exactly one verdict: \"[[a]]\" or \"[[b]]\"."
)

SINGLE_GRADE_JUDGE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Consider helpfulness, relevance, accuracy, "
    "depth, creativity and level of detail. Be as objective as possible. After a short "
    "explanation, rate the response on a scale of 1 to 10 by strictly following this format: "
    "\"[[rating]]\", for example: \"Rating: [[5]]\"."
)

SINGLE_GRADE_JUDGE_USER = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)


def pairwise_judge_messages(instruction: str, output_a: str, output_b: str) -> tuple[Message, ...]:
    return (Message("system", PAIRWISE_JUDGE_SYSTEM),
            Message("user", PAIRWISE_JUDGE_USER.format(instruction=instruction, output_a=output_a,
                                                       output_b=output_b)))


def single_grade_judge_messages(question: str, answer: str) -> tuple[Message, ...]:
    return (Message("system", SINGLE_GRADE_JUDGE_SYSTEM),
            Message("user", SINGLE_GRADE_JUDGE_USER.format(question=question, answer=answer)))
