"""The numbers behind the simulated world: latent quality, aggregation, judging, correctness.

Kept apart from ``simulated`` (which turns requests into completions) so the quality model can
be read, and tuned, as plain functions of numbers. Every constant is documented, with the
calibration it serves, in the ``simulated`` module docstring; this module only states the
formulas.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np

from ..catalog import ModelInfo, SimProfile

# ---- tuned constants (see the table in ``simulated``'s docstring) ----------------------------

WORLD_VERSION = 2
"""Bumped whenever a change below alters any output, so call-store keys stop matching."""

REFERENCE_TEMPERATURE = 0.7
SIGMA_ITEM = 0.5
SIGMA_SAMPLE = 0.35
TEMPERATURE_PENALTY = 0.5
DIFFICULTY_SCALE = 2.0
BASELINE_QUALITY = 0.0
BASELINE_SIGMA = math.sqrt(SIGMA_ITEM ** 2 + SIGMA_SAMPLE ** 2)
TRUNCATION_PENALTY = 2.0

AGG_KEEP_BETTER_TAU = 0.05
AGG_CROSS_CHECK_BONUS = 0.22
AGG_DIVERSITY_GAIN = 0.30
AGG_REPEAT_WEIGHT = 0.35
AGG_DEPTH_DECAY = 0.20

KEY_SLOPE = 1.2
KEY_BIAS = 1.5
MAJORITY_FOLLOW = 0.9
RECOGNISE_CORRECT = 0.5

JUDGE_LENGTH_BIAS = 0.5
JUDGE_POSITION_BIAS = 0.1
JUDGE_UNPARSEABLE_RATE = 0.01
RATING_MID = 6.0
RATING_SLOPE = 1.5
RATING_NOISE = 0.5

CHARS_PER_TOKEN = 4
VERBOSITY_SIGMA = 0.25

# ---- seeding ---------------------------------------------------------------------------------


def rng_for(*parts: object) -> np.random.Generator:
    """A generator seeded from sha256 of the parts: stable across processes and Python versions,
    unlike ``hash()``, which is salted per process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


_UNIT = 2.0 ** -64
_NORMAL = NormalDist()


def hash_uniform(*parts: object) -> float:
    """One uniform number in (0, 1) from sha256 of the parts: the cheap path for single draws
    (a numpy generator costs ~20 us to create; the world makes tens of thousands of draws)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) * _UNIT


def hash_normal(*parts: object) -> float:
    """One standard normal number from sha256 of the parts (inverse CDF of ``hash_uniform``)."""
    return _NORMAL.inv_cdf(hash_uniform(*parts))


def messages_digest(messages: Sequence[tuple[str, str]]) -> str:
    """A stable digest of (role, content) pairs; cheaper than hashing their JSON, and the
    separators (ASCII record/unit separators) cannot be confused with message text boundaries
    because every content is length-prefixed."""
    h = hashlib.sha256()
    for role, content in messages:
        data = content.encode("utf-8")
        h.update(f"{role}\x1f{len(data)}\x1e".encode("ascii", "replace"))
        h.update(data)
    return h.hexdigest()


def normalize_prompt(text: str) -> str:
    """Whitespace and case do not make a different item: the key the answer key and seeds use."""
    return " ".join(text.split()).casefold()


# ---- model profiles and skill -> latent mean -------------------------------------------------


def default_profile(model: ModelInfo) -> SimProfile:
    """A profile for a catalog model without one, guessed from its price alone: dearer models
    are assumed stronger (skill = 15 + 12 * log2(1 + mean price per 1M tokens), capped to
    5..60); speed and verbosity take the ``SimProfile`` defaults. A guess, labelled as such."""
    price = (model.input_price + model.output_price) / 2
    skill = min(60.0, max(5.0, 15.0 + 12.0 * math.log2(1.0 + price)))
    return SimProfile(skill=round(skill, 1))


def profile_of(model: ModelInfo) -> SimProfile:
    return model.sim if model.sim is not None else default_profile(model)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
_GH_WEIGHTS = _GH_WEIGHTS / _GH_WEIGHTS.sum()


def sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def _expected_win(mean: float, sd: float) -> float:
    """E[sigmoid(mean + sd * Z)], Z standard normal (Gauss-Hermite, exact to ~1e-9 here)."""
    x = mean + sd * _GH_NODES
    return float(np.dot(_GH_WEIGHTS, 0.5 * (1.0 + np.tanh(0.5 * x))))


@lru_cache(maxsize=4096)
def latent_mean(skill: float) -> float:
    """The mean latent quality (baseline = 0) whose answers, judged pairwise against baseline
    answers with both noises, win ``skill`` % of the time: the catalog's skill is reproduced
    exactly in expectation at the reference temperature, not approximately."""
    target = min(max(skill, 0.05), 99.95) / 100.0
    sd = math.sqrt(2.0) * BASELINE_SIGMA
    lo, hi = -12.0, 12.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _expected_win(mid, sd) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def expected_win_rate(quality_rel: float) -> float:
    """% chance an answer of relative quality ``quality_rel`` beats a baseline answer on the same
    item, lengths equal: the length-controlled win rate of one answer, without judge sampling."""
    return 100.0 * _expected_win(quality_rel, BASELINE_SIGMA)


def difficulty_offset(difficulty: float) -> float:
    """Harder items lower every answer's quality alike (0.5 is neutral)."""
    return DIFFICULTY_SCALE * (0.5 - difficulty)


def sample_sigma(temperature: float) -> float:
    """Greedy decoding (T = 0) has no per-sample spread; hotter sampling spreads more."""
    return SIGMA_SAMPLE * temperature / REFERENCE_TEMPERATURE


def temperature_penalty(temperature: float) -> float:
    """Sampling hotter than T = 1 derails answers a little on average."""
    return TEMPERATURE_PENALTY * max(0.0, temperature - 1.0)


# ---- the footer: what the world writes under every answer and reads back ---------------------

FOOTER_PREFIX = "[simulated answer"
_FOOTER_RE = re.compile(
    r"\[simulated answer \| model=(?P<model>[^|\]\n]*) \| depth=(?P<depth>\d+) "
    r"\| ans=(?P<ans>[^|\]\n]*) \| q=(?P<q>-?\d+(?:\.\d+)?)\]")
_ESCAPES = {"%": "%25", "|": "%7C", "]": "%5D", "\n": "%0A", "\r": "%0D"}
_UNESCAPE_RE = re.compile(r"%(25|7C|5D|0A|0D)")
_UNESCAPES = {v[1:]: k for k, v in _ESCAPES.items()}


@dataclass(frozen=True)
class Footer:
    """What one simulated answer declares about itself.

    ``depth`` counts the syntheses behind the answer (0 for a plain answer); ``answer`` is the
    final answer on keyed items, ``None`` otherwise. The footer is bookkeeping of the simulation:
    it is not counted in tokens, in latency or in the judge's view of length.
    """

    model: str
    quality: float
    depth: int = 0
    answer: str | None = None

    def render(self) -> str:
        ans = "-" if self.answer is None else _escape(self.answer)
        return (f"{FOOTER_PREFIX} | model={_escape(self.model)} | depth={self.depth} | ans={ans} "
                f"| q={self.quality:.3f}]")


def _escape(value: str) -> str:
    """Footer values must not contain the characters that delimit the footer."""
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


def _unescape(value: str) -> str:
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPES[m.group(1)], value)


def parse_footers(text: str) -> list[Footer]:
    """Every footer in ``text``, in order (an aggregate prompt holds one per reference)."""
    return [Footer(_unescape(m.group("model")), float(m.group("q")), int(m.group("depth")),
                   None if m.group("ans") == "-" else _unescape(m.group("ans")))
            for m in _FOOTER_RE.finditer(text)]


def parse_footer(text: str) -> Footer | None:
    """The footer of one answer (its last), or ``None`` for text the world did not write."""
    found = parse_footers(text)
    return found[-1] if found else None


def strip_footers(text: str) -> str:
    """The visible answer: what a reader (and the judge's eye for length) sees."""
    if FOOTER_PREFIX not in text:
        return text.strip()
    return _FOOTER_RE.sub("", text).strip()


def count_tokens(text: str) -> int:
    """The world's tokenizer: 4 characters a token, footers excluded."""
    return -(-len(strip_footers(text)) // CHARS_PER_TOKEN)


def baseline_quality(text: str, item_offset: float, seed: int) -> float:
    """A text without a footer (a real or a dataset's baseline output) is taken to be of the
    GPT-4 Turbo baseline's level (LC 50 by definition), with seeded per-text spread like any
    answer, so the baseline is not a constant."""
    noise = hash_normal("baseline", seed, " ".join(text.split()))
    return BASELINE_QUALITY + item_offset + BASELINE_SIGMA * noise


# ---- aggregation -----------------------------------------------------------------------------


def effective_count(models: Iterable[str]) -> float:
    """Distinct models count fully; further samples of a model count AGG_REPEAT_WEIGHT each,
    because they share that model's view of the item."""
    return sum(1.0 + AGG_REPEAT_WEIGHT * (k - 1) for k in Counter(models).values())


def judgement(skill: float) -> float:
    """A model's judgement in 0..1 (its skill as a fraction): how well it tells right from wrong."""
    return min(max(skill / 100.0, 0.0), 1.0)


def synthesis_bonus(refs: Sequence[Footer]) -> float:
    """What synthesising adds beyond the best of own answer and references.

    Two or more references can be cross-checked (a fixed bonus, even for repeated samples);
    diversity adds ``AGG_DIVERSITY_GAIN * ln(n_eff)`` (diminishing); both shrink by
    ``AGG_DEPTH_DECAY`` per synthesis already behind the references.
    """
    cross = AGG_CROSS_CHECK_BONUS if len(refs) >= 2 else 0.0
    gain = AGG_DIVERSITY_GAIN * math.log(effective_count(f.model for f in refs))
    return (cross + gain) * AGG_DEPTH_DECAY ** max(f.depth for f in refs)


def aggregate_quality(own_rel: float, refs: Sequence[Footer], ref_rel: Sequence[float]) -> float:
    """The relative quality of a synthesis: softly the better of the aggregator's own answer
    and the references' consensus (their mean quality), plus the synthesis bonus. A strong
    aggregator is never dragged below itself by weak references; weak aggregators rise to the
    consensus of strong ones."""
    consensus = sum(ref_rel) / len(ref_rel)
    tau = AGG_KEEP_BETTER_TAU
    top = max(own_rel, consensus)
    kept = top + tau * math.log1p(math.exp(-abs(own_rel - consensus) / tau))
    return kept + synthesis_bonus(refs)


# ---- keyed items -----------------------------------------------------------------------------


def p_correct(quality_abs: float) -> float:
    """Chance that an answer of this quality (item difficulty included) gets the key right."""
    return sigmoid(KEY_SLOPE * quality_abs + KEY_BIAS)
