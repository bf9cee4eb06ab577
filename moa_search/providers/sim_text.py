"""Words for the simulated world: readable pseudo-prose of a given length, and plausible wrong
answers.

The prose carries no meaning; it exists so that lengths, token counts, truncation and the
judge's length bias behave as with real text, and so a person looking at a trace sees answers,
not placeholders. It never contains the characters a footer or a numbered reference list is
made of (``[``, ``|``, a line starting with a digit), so parsing the world back cannot trip on it.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Sequence

import numpy as np

_VOCAB = tuple("""
the a of and to in that is for it as with this on be by can are an or which from these more
when each also most often will should may their such one other approach answer question
point key important example case result reason step detail idea context option practice
clear useful simple common careful general specific main first second next final better best
consider note explain describe compare suggest provide ensure avoid balance improve support
help include require depend affect show mean keep make take use find give follow check
people time work way part number level problem value system process information method
quality benefit cost risk effect change goal plan choice factor aspect feature source
evidence view summary structure outcome pattern principle standard tradeoff constraint
usually typically generally clearly especially directly carefully roughly closely together
""".split())
_VOCAB_ARR = np.array(_VOCAB, dtype=object)
_KEYWORD_RE = re.compile(r"[A-Za-z][a-z]{3,}")

OPENERS = (
    "Here is a careful answer.",
    "Good question, and the answer depends on a few points.",
    "Let me explain this step by step.",
    "In short, there are several things to consider.",
    "This is a common question with a clear answer.",
)


_CACHED_PROMPT_CHARS = 8192
"""Prompts up to this long are cached. The cache holds its keys, so without the bound its 4096
entries could pin 4 GB of 1 MB prompts (measured: the sim-server's RSS grew by ~1 MB a request)."""


def keywords(prompt: str, limit: int = 10) -> tuple[str, ...]:
    """Some of the prompt's own words, so an answer reads as if about the prompt (cached: every
    agent of every config answers the same few prompts)."""
    if len(prompt) <= _CACHED_PROMPT_CHARS:
        return _cached_keywords(prompt, limit)
    return _keywords(prompt, limit)


def _keywords(prompt: str, limit: int) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for match in _KEYWORD_RE.finditer(prompt):  # stops at ``limit`` words, not at the end
        seen.setdefault(match.group().lower(), None)
        if len(seen) >= limit:
            break
    return tuple(seen)


_cached_keywords = lru_cache(maxsize=4096)(_keywords)


def _paragraph_bank(n: int = 1024) -> tuple[tuple[str, ...], np.ndarray]:
    """A fixed bank of pseudo-paragraphs (3-5 sentences), built once from a fixed seed: an
    answer is a few draws from it, ~30x cheaper than drawing word by word, which matters at tens
    of thousands of calls per search."""
    rng = np.random.default_rng(20240601)
    paragraphs = []
    for n_sentences in rng.integers(3, 6, size=n).tolist():
        sentences = []
        for length in rng.integers(7, 18, size=n_sentences).tolist():
            sentence = " ".join(_VOCAB_ARR[rng.integers(0, len(_VOCAB), size=length)].tolist())
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
        paragraphs.append(" ".join(sentences))
    return tuple(paragraphs), np.array([len(p) + 2 for p in paragraphs])


_BANK, _BANK_LEN = _paragraph_bank()
_MEAN_LEN = float(_BANK_LEN.mean())


def prose(rng: np.random.Generator, n_chars: int, *, opener: str, topic: Sequence[str]) -> str:
    """Whole paragraphs, as many as come nearest to ``n_chars`` characters, the opener first;
    each paragraph after the first turns to a word of the prompt. A length limit is applied
    later (``cut``)."""
    need = max(1, n_chars - len(opener))
    count = int(need / _MEAN_LEN * 1.5) + 2
    draws = rng.random((count, 2))  # one call: which paragraph, which topic word
    index = (draws[:, 0] * len(_BANK)).astype(np.int64).tolist()
    words = [topic[int(x * len(topic))] for x in draws[:, 1].tolist()] if topic else [""] * count
    prefixes = ["" if k == 0 or not w else f"As for {w}, " for k, w in enumerate(words)]
    ends = np.cumsum(_BANK_LEN[index] + np.array([len(x) for x in prefixes]))
    j = min(count - 1, int(np.searchsorted(ends, need)))
    used = j if j > 0 and need - ends[j - 1] < ends[j] - need else j + 1  # the nearer end
    out = [opener + " " + _BANK[index[0]]]
    for i, prefix in zip(index[1:used], prefixes[1:used]):
        paragraph = _BANK[i]
        out.append(f"{prefix}{paragraph[0].lower()}{paragraph[1:]}" if prefix else paragraph)
    return "\n\n".join(out)


def cut(text: str, n_chars: int) -> str:
    """At most ``n_chars``, cut at a word boundary: how a length limit ends an answer."""
    if len(text) <= n_chars:
        return text
    head = text[:n_chars]
    space = head.rfind(" ")
    return (head[:space] if space > 0 else head).rstrip()


# ---- answers to keyed items ------------------------------------------------------------------

LETTERS = "ABCDE"
_NUMBER_RE = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def answer_line(value: str) -> str:
    """How the answer is stated, in the forms the scorers extract: options as ``Answer: (C)``,
    anything else as ``Final answer: <value>``."""
    if len(value) == 1 and value.upper() in LETTERS:
        return f"Answer: ({value.upper()})"
    return f"Final answer: {value}"


def distractors(reference: str, rng: np.random.Generator, n: int = 3) -> list[str]:
    """Wrong answers a model could plausibly give, most common first.

    Numbers are off by a little or have a slipped digit; an option letter becomes another
    letter; anything else becomes an unrelated phrase. Drawn per item, so different models
    sometimes make the *same* mistake, as real models do.
    """
    ref = reference.strip()
    if len(ref) == 1 and ref.upper() in LETTERS:
        others = [c for c in LETTERS if c != ref.upper()]
        return [others[i] for i in rng.permutation(len(others))[:n]]
    if _NUMBER_RE.match(ref):
        return _numeric_distractors(ref, rng, n)
    out: list[str] = []
    while len(out) < n:
        phrase = " ".join(_VOCAB_ARR[rng.integers(0, len(_VOCAB), size=2)].tolist())
        if phrase.casefold() != ref.casefold() and phrase not in out:
            out.append(phrase)
    return out


def _numeric_distractors(ref: str, rng: np.random.Generator, n: int) -> list[str]:
    decimals = len(ref.split(".")[1]) if "." in ref else 0
    value = float(ref)
    step = 10.0 ** -decimals
    candidates = [value + step, value - step, value * 1.1, value * 0.9, value + 10 * step,
                  _digit_slip(ref, rng), value * 2, value / 2]
    out: list[str] = []
    for c in candidates:
        text = c if isinstance(c, str) else f"{c:.{decimals}f}"
        if text not in out and text != ref and not (_NUMBER_RE.match(text) and float(text) == value):
            out.append(text)
    order = rng.permutation(len(out))
    picked = [out[i] for i in order[:n]]
    while len(picked) < n:  # tiny references like "0" can run short; grow outwards
        picked.append(f"{value + (len(picked) + 2) * step:.{decimals}f}")
    return picked


def _digit_slip(ref: str, rng: np.random.Generator) -> str:
    """One digit changed: the typo kind of mistake."""
    positions = [i for i, ch in enumerate(ref) if ch.isdigit()]
    i = positions[int(rng.integers(0, len(positions)))]
    new = str((int(ref[i]) + int(rng.integers(1, 10))) % 10)
    slipped = ref[:i] + new + ref[i + 1:]
    if slipped.lstrip("+-").startswith("0") and len(slipped.lstrip("+-").split(".")[0]) > 1:
        slipped = ref[:i] + str(max(1, int(new))) + ref[i + 1:]
    return slipped


def n_tokens(rng: np.random.Generator, verbosity: int, sigma: float) -> int:
    """An answer's natural length: log-normally spread around the model's verbosity (its mean)."""
    return max(16, int(round(verbosity * math.exp(float(rng.normal(-sigma * sigma / 2, sigma))))))
