"""The simulated model world: seeded, deterministic, in-process stand-ins for the catalog's LLMs.

Everything here is a *model* of LLM behaviour, used for offline runs, tests and benchmarks of
search strategies. Its numbers are simulated and must be labelled so wherever they appear.

How an answer comes about
-------------------------
Every answer has a latent quality ``q`` on a logit scale on which the AlpacaEval 2.0 baseline
(GPT-4 Turbo, LC win rate 50 by definition) sits at 0::

    q = mu(skill) + u(model, item) + e(sample) - temperature penalty + d(item)

* ``mu(skill)``: the catalog's ``sim.skill`` is the model's LC win rate (%) against that
  baseline; ``mu`` is solved (Gauss-Hermite quadrature, bisection) so that the model alone, at
  T = 0.7, wins exactly ``skill`` % of length-matched pairwise comparisons in expectation. A
  model without a ``sim`` profile gets one guessed from its price (``sim_model.default_profile``).
* ``u ~ N(0, SIGMA_ITEM)``: how this model happens to suit this item, seeded by (model, item),
  so repeated samples of one model share it and different models do not. This is what makes
  diverse proposers worth more than one model sampled n times.
* ``e ~ N(0, SIGMA_SAMPLE * T / 0.7)``: per-sample spread; none at T = 0 (greedy, and then the
  sample index does not change the answer). Above T = 1 the mean drops by 0.5 per unit of T.
* ``d = DIFFICULTY_SCALE * (0.5 - difficulty)``: difficulty in 0..1 from the answer key, else
  from a hash of the prompt. It shifts every answer to the item alike, so it cancels in
  pairwise judging but moves single grades and the chance of a correct final answer.

The *item* is the normalised (whitespace-collapsed, casefolded) last user message. A sample is
seeded by sha256 of (world seed, model, messages, temperature, sample index), not
``max_tokens``: a lower limit truncates the same answer (``finish_reason="length"``, quality
lowered by ``TRUNCATION_PENALTY`` x the fraction cut, final answer lost).

Text, usage, cost, latency
--------------------------
The text is pseudo-prose of ``verbosity * lognormal(0, 0.25)`` tokens (4 characters a token),
then, on keyed items, the line ``Final answer: <value>`` or ``Answer: (C)``, then one footer
line the world reads back (aggregators, judges)::

    [simulated answer | model=<id> | depth=<syntheses behind it> | ans=<answer or -> | q=<q>]

The footer is bookkeeping: it is left out of token counts, latency and the judge's length.
``prompt_tokens = ceil(chars of all messages / 4)``, ``completion_tokens = ceil(chars / 4)``,
cost from the catalog's prices, and simulated latency (seconds; slept only with
``sleep=True``, scaled by ``time_scale``)::

    latency = ttft_s + prompt_tokens / (20 * tokens_per_s) + completion_tokens / tokens_per_s

Aggregation (mechanistic)
-------------------------
A request whose system message holds the aggregate-and-synthesize prompt is a synthesis. The
world parses the numbered references' footers (a reference without one counts as a
baseline-level text) and, with qualities taken relative to the item (``d`` removed)::

    own       = the aggregator's own answer quality (as above, its own skill, u and e)
    consensus = mean quality of the references
    keep      = smooth max (tau = AGG_KEEP_BETTER_TAU) of own and consensus
    q         = keep + (AGG_CROSS_CHECK_BONUS [if >= 2 references]
                        + AGG_DIVERSITY_GAIN * ln(n_eff)) * AGG_DEPTH_DECAY ** depth
    n_eff     = distinct models + AGG_REPEAT_WEIGHT per further sample of a model

So a strong aggregator is never dragged below itself by weak references and a weak one rises to
the consensus of strong ones; more references help with diminishing (log) returns, different
models more than repeated samples (which share the model's ``u``); syntheses of syntheses add
less (``depth`` = most syntheses behind a reference; the output's is one more).

Keyed items (answer key)
------------------------
A plain answer is right with probability ``sigmoid(KEY_SLOPE * q + KEY_BIAS)`` (``q`` includes
the difficulty); wrong answers come from three per-item distractors (a near number or slipped
digit, another option letter, an unrelated phrase), weighted 0.5/0.3/0.2, so models sometimes
share a mistake. An aggregator follows a strict majority of two or more references with
probability ``MAJORITY_FOLLOW``; otherwise it is right with its own (synthesis) chance, raised
by ``RECOGNISE_CORRECT * skill/100`` of the remainder when some reference has the right answer,
and when wrong it repeats the commonest wrong reference.

Judges
------
Pairwise requests (``prompts.pairwise_judge_messages``) answer ``[[b]]`` with probability
``sigmoid(q_b - q_a + JUDGE_LENGTH_BIAS * tanh(ln(len_b / len_a)) - JUDGE_POSITION_BIAS)``
(lengths in visible characters), a seeded Bernoulli draw: the length bias is real, so raw and
length-controlled win rates differ. Single-grade requests answer ``Rating: [[k]]``,
``k = clip(round(6 + 1.5 * (q + N(0, 0.5))), 1, 10)``. With probability
``judge_unparseable_rate`` (default 1 %) a judge gives no verdict; the draw depends on the
sample index, so a retry with another index can succeed.

Parameters (module constants in ``providers.sim_model``)
--------------------------------------------------------
=========================  =====  ===========================================  ========
constant                   value  role                                         source
=========================  =====  ===========================================  ========
SIGMA_ITEM                 0.50   model x item spread of quality               chosen
SIGMA_SAMPLE               0.35   per-sample spread at T = 0.7                 chosen
TEMPERATURE_PENALTY        0.50   mean loss per unit of T above 1              chosen
DIFFICULTY_SCALE           2.0    quality offset from difficulty 0 to 1        chosen
BASELINE_QUALITY           0.0    quality of a footer-less text (LC 50)        defined
TRUNCATION_PENALTY         2.0    quality lost for a fully cut answer          chosen
AGG_KEEP_BETTER_TAU        0.05   softness of max(own, consensus)              fitted
AGG_CROSS_CHECK_BONUS      0.22   bonus for >= 2 references                    fitted
AGG_DIVERSITY_GAIN         0.30   bonus per ln(effective reference count)      fitted
AGG_REPEAT_WEIGHT          0.35   a repeated sample's share of a new model     fitted
AGG_DEPTH_DECAY            0.20   bonus factor per synthesis behind references fitted
KEY_SLOPE, KEY_BIAS        1.2,   P(correct) = sigmoid(1.2 q + 1.5)            chosen
                           1.5
MAJORITY_FOLLOW            0.9    P(follow a strict majority of >= 2)          chosen
RECOGNISE_CORRECT          0.5    x skill/100: spotting a right reference      chosen
JUDGE_LENGTH_BIAS          0.5    x tanh(ln(len_b / len_a)) in the judge       chosen
JUDGE_POSITION_BIAS        0.1    judge's lean toward output (a)               chosen
JUDGE_UNPARSEABLE_RATE     0.01   default P(no verdict)                        chosen
RATING_MID/SLOPE/NOISE     6, 1.5, 0.5  single grade = 6 + 1.5 (q + noise)      chosen
VERBOSITY_SIGMA            0.25   log-normal spread of answer length           chosen
=========================  =====  ===========================================  ========

Calibration (AlpacaEval 2.0 LC win rate vs the GPT-4 Turbo baseline, %)
-------------------------------------------------------------------------
Targets are the MoA paper's (Tables 2-3). "Simulated" is the world's expected
length-controlled win rate of the final answers (quadrature over the baseline's spread, no
judge draws), run through ``Runner`` on 3 000 synthetic open-ended prompts for world seeds 0
and 1 (shown: seed 0; seed 1 within 0.4). Configs have 2 layers with Qwen1.5-110B-Chat
aggregating unless named; every agent at T = 0.7.

======================================  ======  =========
config                                  target  simulated
======================================  ======  =========
Qwen1.5-110B alone (catalog skill)       43.9     43.9
gpt-4o alone                             57.5     57.8
gpt-4-turbo alone                        55.0     55.3
1 proposer (Qwen1.5-110B)                47.8     48.2
2 different proposers                    58.8     56.3
3 different proposers                    58.0     60.8
6 different proposers                    61.3     62.4
Qwen1.5-110B sampled 2x                  54.5     54.4
Qwen1.5-110B sampled 3x                  56.1     55.7
Qwen1.5-110B sampled 6x                  56.7     58.5
preset moa (3 layers)                    65.1     63.3
preset moa-gpt4o                         65.7     67.4
preset moa-lite (Qwen1.5-72B aggr.)      59.3     58.0
======================================  ======  =========

The constants were fitted to these targets (least squares, with the qualitative findings as
constraints) and rounded. The paper's own series are not monotone (3 different proposers score
below 2); the world is, so it gives up a few points there to keep, strictly, the findings:
MoA beats its best proposer; more proposers help, with diminishing returns; n different
proposers beat one model sampled n times; a stronger aggregator matters more than a stronger
proposer (gpt-4o aggregating three mid models: 69.1; gpt-4o proposing with them, Qwen1.5-72B
aggregating: 56.8). ``tests/test_sim_calibration.py`` checks all of it through the runner and
the world's judge. Keyed-item and judge constants (``KEY_*``, ``JUDGE_*``, ``RATING_*``) are
plausible choices, not fitted to data.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Iterator, Mapping, Sequence

from ..catalog import Catalog, SimProfile
from ..config import canonical_json
from ..errors import ConfigError
from ..prompts import TEMPLATES, split_archon_fusion, split_numbered
from .base import ChatRequest, Completion, Message, Usage
from .sim_model import (CHARS_PER_TOKEN, JUDGE_LENGTH_BIAS, JUDGE_POSITION_BIAS,
                        JUDGE_UNPARSEABLE_RATE, MAJORITY_FOLLOW, RATING_MID, RATING_NOISE,
                        RATING_SLOPE, RECOGNISE_CORRECT, SIGMA_ITEM, TRUNCATION_PENALTY,
                        VERBOSITY_SIGMA, WORLD_VERSION, Footer, aggregate_quality,
                        baseline_quality, count_tokens, difficulty_offset, hash_normal,
                        hash_uniform, judgement, latent_mean, messages_digest, normalize_prompt,
                        p_correct, parse_footer, profile_of, rng_for, sample_sigma, sigmoid,
                        strip_footers, temperature_penalty)
from .sim_text import OPENERS, answer_line, cut, distractors, keywords, n_tokens, prose

__all__ = ["AnswerKey", "AnswerKeyEntry", "Footer", "SimulatedProvider", "normalize_prompt",
           "parse_footer"]


# ---- the answer key --------------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerKeyEntry:
    """What the world knows about one item: the right final answer (``None`` for open-ended
    items, which may still carry a difficulty) and a difficulty in 0..1."""

    reference: str | None
    difficulty: float | None = None

    def __post_init__(self) -> None:
        if self.reference is not None and (not isinstance(self.reference, str)
                                           or not self.reference.strip()):
            raise ConfigError(f"expected a non-empty string or nothing, got {self.reference!r}",
                              field="reference")
        if self.difficulty is not None:
            d = self.difficulty
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
                raise ConfigError(f"expected a number in 0 .. 1, got {d!r}", field="difficulty")
            object.__setattr__(self, "difficulty", float(d))


class AnswerKey:
    """Normalised prompt text (the item's last user message) -> ``AnswerKeyEntry``.

    Keys are normalised like the world normalises requests, so whitespace or case differences
    between a dataset file and what the runner sends do not lose the key.
    """

    def __init__(self, entries: Mapping[str, AnswerKeyEntry] | None = None, *,
                 source: str = "answer_key"):
        self._entries: dict[str, AnswerKeyEntry] = {}
        for prompt, entry in (entries or {}).items():
            self._add(prompt, entry, source=source, field=repr(prompt[:40]))

    def _add(self, prompt: str, entry: AnswerKeyEntry, *, source: str, field: str) -> None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError("expected a non-empty prompt text", source=source, field=field)
        if not isinstance(entry, AnswerKeyEntry):
            raise ConfigError("expected an AnswerKeyEntry", source=source, field=field)
        key = normalize_prompt(prompt)
        old = self._entries.get(key)
        if old is not None and old != entry:
            raise ConfigError(f"the same prompt has two different entries ({old} and {entry})",
                              source=source, field=field)
        self._entries[key] = entry

    @classmethod
    def from_pairs(cls, pairs: Iterable[Sequence[object]], *, source: str = "answer_key") -> "AnswerKey":
        """From ``(prompt, reference)`` or ``(prompt, reference, difficulty)`` tuples, as
        ``datasets.answer_key_pairs`` gives them."""
        key = cls(source=source)
        for i, pair in enumerate(pairs):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) not in (2, 3):
                raise ConfigError("expected (prompt, reference[, difficulty])", source=source,
                                  field=f"[{i}]")
            prompt, reference = pair[0], pair[1]
            difficulty = pair[2] if len(pair) == 3 else None
            if not isinstance(prompt, str):
                raise ConfigError("expected the prompt text", source=source, field=f"[{i}]")
            try:
                entry = AnswerKeyEntry(reference, difficulty)  # type: ignore[arg-type]
            except ConfigError as exc:
                raise ConfigError(str(exc).split(": ", 1)[-1], source=source,
                                  field=f"[{i}].{exc.field}") from None
            key._add(prompt, entry, source=source, field=f"[{i}]")
        return key

    def merge(self, other: "AnswerKey") -> "AnswerKey":
        """Both keys' items; a prompt the two disagree on is an error, not a silent choice."""
        out = AnswerKey()
        for source, key in (("answer_key", self), ("merged answer_key", other)):
            for prompt, entry in key._entries.items():
                out._add(prompt, entry, source=source, field=repr(prompt[:40]))
        return out

    def get(self, prompt: str) -> AnswerKeyEntry | None:
        return self._entries.get(normalize_prompt(prompt))

    def __contains__(self, prompt: object) -> bool:
        return isinstance(prompt, str) and normalize_prompt(prompt) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def digest(self) -> str:
        """Changes whenever any entry does: part of the endpoint identity (cache keys)."""
        body = canonical_json(sorted([k, e.reference, e.difficulty] for k, e in self._entries.items()))
        return hashlib.sha256(body.encode("utf-8")).hexdigest()[:12]


# ---- request parsing -------------------------------------------------------------------------

_PAIRWISE_RE = re.compile(r"## Instruction\n\n(?P<instruction>.*?)\n\n## Output \(a\)\n\n(?P<a>.*?)"
                          r"\n\n## Output \(b\)\n\n(?P<b>.*)\n\n## Task\n\n", re.DOTALL)
# MT-Bench grading (FastChat's layouts, prompts.single_grade_judge_messages): one turn, with an
# optional reference block, or a conversation whose last turn is graded.
_GRADE_RE = re.compile(r"\[Question\]\n(?P<question>.*?)\n\n"
                       r"(?:\[The Start of Reference Answer\]\n.*?\n\[The End of Reference Answer\]\n\n)?"
                       r"\[The Start of Assistant's Answer\]\n"
                       r"(?P<answer>.*)\n\[The End of Assistant's Answer\]", re.DOTALL)
_GRADE_TURNS_RE = re.compile(r".*### User:\n(?P<question>.*?)\n\n### Assistant A:\n(?P<answer>.*)"
                             r"\n\n<\|The End of Assistant A's Conversation with User\|>", re.DOTALL)
_STANDARD_NORMAL = NormalDist()
_EXTERNAL_ANSWER_RE = re.compile(r"(?:Final answer:\s*(?P<value>[^\s\]]+)|Answer:\s*\((?P<letter>[A-E])\))")


def _last_user(messages: Sequence[Message]) -> str:
    return next(m.content for m in reversed(messages) if m.role == "user")


def _reference_texts(messages: Sequence[Message]) -> list[str] | None:
    """The numbered references of an aggregate-and-synthesize system message, or ``None``.

    Split on the markers ``\\n1. ``, ``\\n2. ``, … in sequence; the world's own answers never
    start a line with a number, so only a foreign reference holding a numbered list can be
    split wrongly (its pieces then count as extra references).
    """
    for message in messages:
        if message.role != "system":
            continue
        for template in TEMPLATES.values():
            pos = message.content.find(template)
            if pos >= 0:
                return split_numbered(message.content[pos + len(template):])
    return None


def _external_answer(text: str) -> str | None:
    found = list(_EXTERNAL_ANSWER_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    return m.group("letter") or m.group("value")


def _same_answer(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


# ---- the provider ----------------------------------------------------------------------------


class SimulatedProvider:
    """A ``Provider`` whose models are the catalog's, played by the simulated world.

    Stateless between calls: the same request always gets the same ``Completion`` (marked
    ``simulated=True``), whatever was asked before and in whatever order, so the world can be
    shared by concurrent runs, served over HTTP and cached.
    """

    def __init__(self, catalog: Catalog, *, answer_key: AnswerKey | None = None, seed: int = 0,
                 sleep: bool = False, time_scale: float = 1.0,
                 judge_unparseable_rate: float = JUDGE_UNPARSEABLE_RATE):
        if not isinstance(catalog, Catalog):
            raise ConfigError(f"expected a Catalog, got {type(catalog).__name__}", field="catalog")
        if answer_key is not None and not isinstance(answer_key, AnswerKey):
            raise ConfigError(f"expected an AnswerKey, got {type(answer_key).__name__}",
                              field="answer_key")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"expected an integer, got {seed!r}", field="seed")
        if (isinstance(time_scale, bool) or not isinstance(time_scale, (int, float))
                or not math.isfinite(time_scale) or time_scale < 0):
            raise ConfigError(f"expected a number >= 0, got {time_scale!r}", field="time_scale")
        rate = judge_unparseable_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ConfigError(f"expected a probability in 0 .. 1, got {rate!r}",
                              field="judge_unparseable_rate")
        self.catalog = catalog
        self.answer_key = answer_key if answer_key is not None else AnswerKey()
        self.seed = seed
        self.sleep = bool(sleep)
        self.time_scale = float(time_scale)
        self.judge_unparseable_rate = float(rate)

    def endpoint_identity(self, model: str) -> str:
        """``sim:v<world version>:seed=<seed>``, plus digests of whatever else changes answers
        (the model's sim profile, a non-empty answer key, a non-default judge knob). No secrets."""
        profile = profile_of(self.catalog.get(model))
        fingerprint = hashlib.sha256(canonical_json(
            [profile.skill, profile.ttft_s, profile.tokens_per_s, profile.verbosity]).encode()).hexdigest()[:8]
        out = f"sim:v{WORLD_VERSION}:seed={self.seed}:profile={fingerprint}"
        if len(self.answer_key):
            out += f":key={self.answer_key.digest()}"
        if self.judge_unparseable_rate != JUDGE_UNPARSEABLE_RATE:
            out += f":unparseable={self.judge_unparseable_rate!r}"
        return out

    async def complete(self, request: ChatRequest) -> Completion:
        completion = self.respond(request)
        if self.sleep and completion.latency_s * self.time_scale > 0:
            await asyncio.sleep(completion.latency_s * self.time_scale)
        return completion

    async def aclose(self) -> None:
        """Nothing to release; the world may keep answering after this."""

    # ---- synchronous core (tests and the sim server may call it directly) -----------------

    def respond(self, request: ChatRequest) -> Completion:
        """The completion for ``request``, without any waiting."""
        info = self.catalog.get(request.model)
        _check_sampling(request)
        profile = profile_of(info)
        prompt = _last_user(request.messages)
        pairwise = _PAIRWISE_RE.search(prompt) if "## Output (b)" in prompt else None
        grade = (_GRADE_RE.search(prompt) or _GRADE_TURNS_RE.match(prompt)) \
            if pairwise is None and "The Start of" in prompt else None
        if pairwise is not None:
            text, quality, kind = self._pairwise(request, pairwise), None, "pairwise_judge"
            finish = "stop"
        elif grade is not None:
            text, quality, kind = self._grade(request, grade), None, "single_grade_judge"
            finish = "stop"
        else:
            # both fusion layouts are aggregation: Archon's puts the query and the candidates
            # in the last user message, the MoA one puts the candidates in a system message
            fusion = split_archon_fusion(prompt)
            prompt, refs = fusion if fusion is not None else (prompt, _reference_texts(request.messages))
            text, quality, finish = self._answer(request, profile, prompt, refs)
            kind = "aggregate" if refs else "answer"
        text, finish = cut_at_stop(text, request.stop, finish)
        visible_chars = sum(len(strip_footers(m.content)) for m in request.messages)
        prompt_tokens = max(1, -(-visible_chars // CHARS_PER_TOKEN))
        completion_tokens = count_tokens(text)
        ttft = profile.ttft_s + prompt_tokens / (20.0 * profile.tokens_per_s)
        latency = ttft + completion_tokens / profile.tokens_per_s
        extra: dict[str, object] = {"sim_kind": kind}
        if quality is not None:
            extra["sim_quality"] = quality
        return Completion(text=text, model=request.model,
                          usage=Usage(prompt_tokens, completion_tokens),
                          cost_usd=info.cost(prompt_tokens, completion_tokens), latency_s=latency,
                          ttft_s=ttft, finish_reason=finish, simulated=True, extra=extra)

    # ---- items -----------------------------------------------------------------------------

    def _item(self, prompt: str) -> tuple[str, str | None, float]:
        """(item key, reference or None, difficulty offset) for a prompt text."""
        item = normalize_prompt(prompt)
        entry = self.answer_key.get(prompt)
        difficulty = entry.difficulty if entry is not None else None
        if difficulty is None:
            difficulty = hash_uniform("difficulty", self.seed, item)
        return item, entry.reference if entry is not None else None, difficulty_offset(difficulty)

    def _quality_of_text(self, text: str, offset: float) -> float:
        footer = parse_footer(text)
        return footer.quality if footer is not None else baseline_quality(text, offset, self.seed)

    # ---- answers and syntheses -------------------------------------------------------------

    def _answer(self, request: ChatRequest, profile: SimProfile, prompt: str,
                ref_texts: list[str] | None) -> tuple[str, float, str]:
        item, reference, offset = self._item(prompt)
        t = request.temperature
        sample = "greedy" if t == 0 else request.sample_index
        rng = rng_for("sample", self.seed, request.model, _digest(request), repr(t), sample)
        u = SIGMA_ITEM * hash_normal("u", self.seed, request.model, item)
        own = latent_mean(profile.skill) + u + float(rng.normal(0.0, 1.0)) * sample_sigma(t) \
            - temperature_penalty(t)
        refs: list[Footer] = []
        if ref_texts:
            for i, ref in enumerate(ref_texts, start=1):
                footer = parse_footer(ref)
                refs.append(footer if footer is not None else Footer(
                    f"(external reference {i})", baseline_quality(ref, offset, self.seed), 0,
                    _external_answer(ref)))
            rel = aggregate_quality(own, refs, [f.quality - offset for f in refs])
            depth = max(f.depth for f in refs) + 1
        else:
            rel, depth = own, 0
        draws = rng.random(3)
        answer = None
        if reference is not None:
            answer = self._final_answer(reference, rel + offset, refs, profile.skill, draws, item)
        natural = n_tokens(rng, profile.verbosity, VERBOSITY_SIGMA) * CHARS_PER_TOKEN
        opener = (f"Drawing on the {len(refs)} responses, here is a synthesis." if refs
                  else OPENERS[int(rng.integers(0, len(OPENERS)))])
        tail = "" if answer is None else "\n\n" + answer_line(answer)
        body = prose(rng, max(len(opener), natural - len(tail)), opener=opener,
                     topic=keywords(prompt)) + tail
        limit = request.max_tokens * CHARS_PER_TOKEN
        finish = "stop"
        if len(body) > limit:
            kept = cut(body, limit)
            rel -= TRUNCATION_PENALTY * (1.0 - len(kept) / len(body))
            body, finish = kept, "length"
            if answer is not None and not body.endswith(answer_line(answer)):
                answer = None
        quality = rel + offset
        footer = Footer(request.model, quality, depth, answer)
        return f"{body}\n\n{footer.render()}", round(quality, 3), finish

    def _final_answer(self, reference: str, quality: float, refs: list[Footer], skill: float,
                      draws: Sequence[float], item: str) -> str:
        """Right or wrong, as described in the module docstring."""
        wrong = distractors(reference, rng_for("distractors", self.seed, item))
        fresh_wrong = wrong[0 if draws[2] < 0.5 else 1 if draws[2] < 0.8 else 2]
        votes = Counter(f.answer.strip() for f in refs if f.answer is not None)
        if not refs:
            return reference if draws[0] < p_correct(quality) else fresh_wrong
        if votes:
            top, count = max(votes.items(), key=lambda kv: (kv[1], kv[0]))
            if count >= 2 and count / len(refs) > 0.5 and draws[0] < MAJORITY_FOLLOW:
                return top
        p = p_correct(quality)
        if any(_same_answer(a, reference) for a in votes):
            p += (1.0 - p) * RECOGNISE_CORRECT * judgement(skill)
        if draws[1] < p:
            return reference
        wrong_votes = [(c, a) for a, c in votes.items() if not _same_answer(a, reference)]
        return max(wrong_votes)[1] if wrong_votes else fresh_wrong

    # ---- judges ----------------------------------------------------------------------------

    def _judge_draws(self, request: ChatRequest) -> tuple[float, float]:
        """Two uniforms: (unparseable?, verdict). Judges redraw with the sample index even at
        T = 0, so a scorer's retry can differ."""
        parts = ("judge", self.seed, request.model, _digest(request), repr(request.temperature),
                 request.sample_index)
        return hash_uniform(*parts, 1), hash_uniform(*parts, 2)

    def _pairwise(self, request: ChatRequest, match: re.Match[str]) -> str:
        _, _, offset = self._item(match.group("instruction"))
        a, b = match.group("a"), match.group("b")
        qa, qb = self._quality_of_text(a, offset), self._quality_of_text(b, offset)
        la, lb = max(1, len(strip_footers(a))), max(1, len(strip_footers(b)))
        x = qb - qa + JUDGE_LENGTH_BIAS * math.tanh(math.log(lb / la)) - JUDGE_POSITION_BIAS
        fail, verdict = self._judge_draws(request)
        if fail < self.judge_unparseable_rate:
            return "Both outputs have strengths and weaknesses; I cannot pick one with confidence."
        if verdict < sigmoid(x):
            return "Output (b) is more helpful, accurate and complete.\n\n[[b]]"
        return "Output (a) is more helpful, accurate and complete.\n\n[[a]]"

    def _grade(self, request: ChatRequest, match: re.Match[str]) -> str:
        _, _, offset = self._item(match.group("question"))
        q = self._quality_of_text(match.group("answer"), offset)
        fail, noise = self._judge_draws(request)
        if fail < self.judge_unparseable_rate:
            return "The response addresses the question, but I cannot settle on a rating."
        perceived = q + RATING_NOISE * _STANDARD_NORMAL.inv_cdf(noise)
        k = int(min(10, max(1, round(RATING_MID + RATING_SLOPE * perceived))))
        verdict = ("excellent" if k >= 9 else "good" if k >= 7 else "adequate" if k >= 5
                   else "weak" if k >= 3 else "poor")
        return f"The response is {verdict} in helpfulness, accuracy and detail.\n\nRating: [[{k}]]"


def cut_at_stop(text: str, stop: Sequence[str], finish: str) -> tuple[str, str]:
    """The text up to the first of the ``stop`` strings (left out, as OpenAI does) and the
    finish reason: ``stop`` when one was found, else ``finish`` unchanged."""
    found = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[:min(found)], "stop") if found else (text, finish)


def _digest(request: ChatRequest) -> str:
    return messages_digest([(m.role, m.content) for m in request.messages])


def _check_sampling(request: ChatRequest) -> None:
    t = request.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 <= t <= 2.0:
        raise ConfigError(f"expected 0 <= temperature <= 2, got {t!r}", field="temperature")
    n = request.max_tokens
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"expected an integer >= 1, got {n!r}", field="max_tokens")
    s = request.sample_index
    if isinstance(s, bool) or not isinstance(s, int) or s < 0:
        raise ConfigError(f"expected an integer >= 0, got {s!r}", field="sample_index")
