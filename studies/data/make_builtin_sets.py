#!/usr/bin/env python3
"""Write the built-in validation sets: math.jsonl, choice.jsonl and instruct.jsonl.

Provenance: every item is generated here, from templates and a seeded ``random.Random``; no
external data set is read or copied. Running the script twice writes byte-identical files, and a
test checks that the shipped files equal this script's output. Licence: the project's own.

- ``math``: arithmetic, percent and word problems whose numeric answers the script computes
  exactly (``fractions.Fraction``) and writes as terminating decimals.
- ``choice``: multiple-choice questions (options A-E) whose correct option the script computes
  (arithmetic, unit conversion, ordering, calendar, primes); ``reference`` is the letter.
- ``instruct``: open-ended instructions (writing, coding, advice, reasoning) with a
  ``baseline_output`` that plays the role of AlpacaEval's GPT-4 Turbo reference output. These
  outputs are SHORT SYNTHETIC TEXTS WRITTEN BY THIS SCRIPT, not real GPT-4 Turbo outputs; each
  item's metadata says so.

``metadata.difficulty`` in [0, 1] is the generator's own rough rating (more steps, bigger
numbers, more open-ended -> harder); the simulated model world uses it.

Usage: ``python studies/data/make_builtin_sets.py [--out DIR]`` (default: this script's folder).
The script is standalone (standard library only) so it runs without the package installed.
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

SEED = 20240607
N_MATH = 120
N_CHOICE = 120
N_INSTRUCT = 150
LETTERS = "ABCDE"
NAMES = ["Maya", "Leo", "Aisha", "Tom", "Priya", "Kenji", "Sofia", "Omar", "Lena", "Diego",
         "Chloe", "Ravi", "Nina", "Felix", "Zara", "Ivan"]
SYNTHETIC_NOTE = ("baseline_output is a synthetic text written by make_builtin_sets.py as a "
                  "stand-in for a GPT-4 Turbo reference output; it is not a real model output")

Record = dict[str, Any]


def fmt(value: Fraction | int) -> str:
    """A Fraction with a terminating decimal expansion as its shortest exact decimal string."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    value = abs(value)
    for places in range(1, 12):
        scaled = value * 10 ** places
        if scaled.denominator == 1:
            whole, frac = divmod(scaled.numerator, 10 ** places)
            return f"{sign}{whole}.{str(frac).zfill(places).rstrip('0')}"
    raise ValueError(f"{value} has no short terminating decimal")


def money(value: Fraction) -> str:
    return f"{Fraction(value).numerator / Fraction(value).denominator:.2f}"


def diff(rng: random.Random, base: float, spread: float = 0.08) -> float:
    return round(min(0.95, max(0.05, base + rng.uniform(-spread, spread))), 2)


# ---- math -----------------------------------------------------------------------------------

def _math_arithmetic(rng: random.Random) -> tuple[str, Fraction, float]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b, c = rng.randint(10, 99), rng.randint(2, 19), rng.randint(2, 19)
        return f"What is {a} + {b} × {c}?", Fraction(a + b * c), diff(rng, 0.2)
    if kind == 1:
        a, b = rng.randint(12, 999), rng.randint(12, 99)
        return f"Compute {a} × {b}.", Fraction(a * b), diff(rng, 0.25 + 0.1 * (a > 99))
    if kind == 2:
        a, b, c = rng.randint(5, 60), rng.randint(20, 90), rng.randint(2, 12)
        return f"What is ({a} − {b}) × {c}?", Fraction((a - b) * c), diff(rng, 0.3)
    if kind == 3:
        b, q = rng.randint(3, 25), rng.randint(11, 99)
        return f"What is {b * q} ÷ {b}?", Fraction(q), diff(rng, 0.25)
    dens = [2, 4, 5, 8, 10]
    q, s = rng.choice(dens), rng.choice(dens)
    p, r = rng.randint(1, 2 * q - 1), rng.randint(1, 2 * s - 1)
    return f"What is {p}/{q} + {r}/{s}?", Fraction(p, q) + Fraction(r, s), diff(rng, 0.4)


def _math_percent(rng: random.Random) -> tuple[str, Fraction, float]:
    kind = rng.randrange(4)
    if kind == 0:
        p, x = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 60, 75]), 20 * rng.randint(2, 60)
        return f"What is {p}% of {x}?", Fraction(p * x, 100), diff(rng, 0.25)
    if kind == 1:
        x, p = 5 * rng.randint(6, 80), rng.choice([10, 15, 20, 25, 30, 40])
        return (f"A jacket costs ${x}. It is discounted by {p}%. What is the sale price in dollars?",
                Fraction(x * (100 - p), 100), diff(rng, 0.35))
    if kind == 2:
        b, p = rng.choice([40, 50, 80, 120, 160, 200, 250, 400]), rng.choice([5, 10, 15, 20, 25, 35, 60, 75])
        return f"{b * p // 100} is what percent of {b}?", Fraction(p), diff(rng, 0.4)
    x, p = 1000 * rng.randint(2, 40), rng.choice([5, 10, 20])
    return (f"A town has {x} residents and its population grows by {p}% each year. "
            f"How many residents will it have after 2 years?",
            Fraction(x) * Fraction(100 + p, 100) ** 2, diff(rng, 0.55))


def _math_word(rng: random.Random) -> tuple[str, Fraction, float]:
    kind, name = rng.randrange(6), rng.choice(NAMES)
    if kind == 0:
        n, p, q = rng.randint(2, 9), Fraction(rng.randint(5, 40) * 25, 100), Fraction(rng.randint(2, 12) * 25, 100)
        return (f"{name} buys {n} notebooks at ${money(p)} each and a pen for ${money(q)}. "
                f"How much does {name} spend in total, in dollars?", n * p + q, diff(rng, 0.35))
    if kind == 1:
        v, t = 10 * rng.randint(4, 12), Fraction(rng.randint(2, 9), 2)
        return (f"A train travels at {v} km/h for {fmt(t)} hours. How many kilometres does it travel?",
                v * t, diff(rng, 0.3))
    if kind == 2:
        e, c, k = rng.randint(2, 4), rng.choice([12, 18, 24]), rng.randint(2, 6)
        return (f"A recipe uses {e} eggs to make {c} cookies. How many eggs are needed for "
                f"{c * k} cookies?", Fraction(e * k), diff(rng, 0.35))
    if kind == 3:
        a, b = rng.choice([(3, 6), (4, 12), (2, 3), (6, 12), (10, 15), (5, 20), (12, 24), (2, 8),
                           (6, 3), (20, 5), (4, 6)])
        return (f"One pipe fills a tank in {a} hours and another fills it in {b} hours. Working "
                f"together, how many hours do they take to fill the tank?",
                Fraction(a * b, a + b), diff(rng, 0.7))
    if kind == 4:
        b, k, y = rng.randint(3, 12), rng.randint(2, 4), rng.randint(2, 10)
        s = k * b + b + 2 * y
        return (f"{name} is {k} times as old as her brother. In {y} years the sum of their ages "
                f"will be {s}. How old is {name} now?", Fraction(k * b), diff(rng, 0.65))
    a, g, k, m = rng.randint(20, 80), rng.randint(3, 19), rng.randint(2, 5), rng.randint(6, 15)
    return (f"{name} has {a} marbles, gives {g} to a friend, then buys {k} bags of {m} marbles "
            f"each. How many marbles does {name} have now?", Fraction(a - g + k * m), diff(rng, 0.45))


def make_math(rng: random.Random) -> list[Record]:
    makers: list[tuple[str, Callable[[random.Random], tuple[str, Fraction, float]]]] = [
        ("arithmetic", _math_arithmetic), ("percent", _math_percent), ("word", _math_word)]
    records: list[Record] = []
    seen: set[str] = set()
    per = N_MATH // len(makers)
    for category, maker in makers:
        count = 0
        while count < per:
            question, answer, difficulty = maker(rng)
            prompt = f"{question} Give the final answer as a number."
            if prompt in seen:
                continue
            seen.add(prompt)
            count += 1
            records.append({"id": f"math-{len(records) + 1:03d}", "prompt": prompt,
                            "reference": fmt(answer), "category": category,
                            "metadata": {"difficulty": difficulty}})
    return records


# ---- choice ---------------------------------------------------------------------------------

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
UNITS = [("centimetres", "metres", 100), ("grams", "kilograms", 1000), ("seconds", "minutes", 60),
         ("minutes", "hours", 60), ("millilitres", "litres", 1000), ("metres", "kilometres", 1000)]


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


def _distinct(correct: str, pool: list[str], rng: random.Random) -> list[str]:
    """Four distractors different from the answer and from each other."""
    out: list[str] = []
    for option in pool:
        if option != correct and option not in out:
            out.append(option)
    if len(out) < 4:
        raise ValueError(f"not enough distractors for {correct!r}: {out}")
    rng.shuffle(out)
    return out[:4]


def _choice_question(rng: random.Random, category: str) -> tuple[str, str, list[str], float]:
    if category == "arithmetic":
        a, b = rng.randint(12, 89), rng.randint(3, 19)
        c = a * b
        pool = [str(v) for v in (c + b, c - b, c + 10, c - 10, a * (b + 1) + 1, c + 1, c - 2)]
        return f"What is {a} × {b}?", str(c), _distinct(str(c), pool, rng), diff(rng, 0.3)
    if category == "units":
        small, big, factor = rng.choice(UNITS)
        x = Fraction(rng.randint(2, 40), rng.choice([1, 2, 4]))
        c = x * factor
        alt = [factor // 10 or 1, factor * 10, 100 if factor != 100 else 60, 1000 if factor != 1000 else 60]
        pool = [fmt(x * f) for f in alt] + [fmt(c + factor), fmt(c - 1)]
        return (f"How many {small} are in {fmt(x)} {big}?", fmt(c), _distinct(fmt(c), pool, rng),
                diff(rng, 0.35))
    if category == "ordering":
        values: list[Fraction] = []
        while len(values) < 5:
            v = Fraction(rng.randint(1, 9999), rng.choice([10, 100, 1000]))
            if v not in values:
                values.append(v)
        largest = rng.random() < 0.5
        c = max(values) if largest else min(values)
        word = "largest" if largest else "smallest"
        return (f"Which of these numbers is the {word}?", fmt(c),
                _distinct(fmt(c), [fmt(v) for v in values], rng), diff(rng, 0.3))
    if category == "calendar":
        d, n = rng.randrange(7), rng.randint(3, 100)
        c = DAYS[(d + n) % 7]
        return (f"If today is {DAYS[d]}, what day of the week will it be in {n} days?", c,
                _distinct(c, list(DAYS), rng), diff(rng, 0.45))
    # primes: one prime among odd composites of similar size
    p = rng.choice([n for n in range(23, 200) if _is_prime(n)])
    composites = [n for n in range(p - 30, p + 31) if n % 2 and n > 9 and not _is_prime(n)]
    pool = [str(n) for n in composites]
    return ("Which of these numbers is prime?", str(p), _distinct(str(p), pool, rng), diff(rng, 0.55))


def make_choice(rng: random.Random) -> list[Record]:
    categories = ["arithmetic", "units", "ordering", "calendar", "primes"]
    records: list[Record] = []
    seen: set[str] = set()
    per = N_CHOICE // len(categories)
    for category in categories:
        count = 0
        while count < per:
            question, correct, distractors, difficulty = _choice_question(rng, category)
            options = distractors + [correct]
            rng.shuffle(options)
            letter = LETTERS[options.index(correct)]
            lines = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(options))
            prompt = f"{question}\n\n{lines}\n\nAnswer with the letter of the correct option."
            if prompt in seen:
                continue
            seen.add(prompt)
            count += 1
            records.append({"id": f"choice-{len(records) + 1:03d}", "prompt": prompt,
                            "reference": letter, "category": category,
                            "metadata": {"difficulty": difficulty}})
    return records


# ---- instruct -------------------------------------------------------------------------------

POEM_TOPICS = ["the sea at dawn", "a city in the rain", "autumn leaves", "an old lighthouse",
               "the first snow", "a quiet library", "a mountain trail", "a cup of coffee",
               "the night sky", "a garden in spring", "a long train journey", "a lost key"]
PRODUCTS = ["a reusable water bottle", "a foldable desk lamp", "noise-cancelling headphones",
            "a cast-iron skillet", "a solar phone charger", "a standing desk", "a hiking backpack",
            "a smart thermostat", "a mechanical keyboard", "a bamboo cutting board"]
EMAILS = [("a colleague", "rescheduling a meeting to Thursday"),
          ("a landlord", "a leaking kitchen tap"),
          ("a teacher", "a missed homework deadline"),
          ("a new team member", "a welcome and first-week plan"),
          ("a client", "a delayed delivery"),
          ("a neighbour", "a weekend garden party"),
          ("a manager", "a request for a day off"),
          ("a friend", "thanks for a birthday gift")]
BENEFITS = ["regular exercise", "learning a second language", "version control", "reading fiction",
            "public libraries", "cycling to work", "unit testing", "a daily walk", "meal planning",
            "open-source software"]
CODE_TASKS = [
    ("reverses a string", "def reverse(s: str) -> str:\n    return s[::-1]"),
    ("checks whether a number is prime",
     "def is_prime(n: int) -> bool:\n    if n < 2:\n        return False\n"
     "    return all(n % d for d in range(2, int(n ** 0.5) + 1))"),
    ("counts the vowels in a string",
     "def count_vowels(s: str) -> int:\n    return sum(ch in 'aeiouAEIOU' for ch in s)"),
    ("returns the n-th Fibonacci number",
     "def fib(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("removes duplicates from a list while keeping the order",
     "def dedupe(items: list) -> list:\n    return list(dict.fromkeys(items))"),
    ("computes the factorial of n",
     "def factorial(n: int) -> int:\n    result = 1\n    for k in range(2, n + 1):\n"
     "        result *= k\n    return result"),
    ("checks whether a string is a palindrome",
     "def is_palindrome(s: str) -> bool:\n    t = ''.join(ch.lower() for ch in s if ch.isalnum())\n"
     "    return t == t[::-1]"),
    ("returns the largest element of a non-empty list",
     "def largest(xs: list[float]) -> float:\n    best = xs[0]\n    for x in xs[1:]:\n"
     "        if x > best:\n            best = x\n    return best"),
    ("counts how often each word occurs in a text",
     "def word_counts(text: str) -> dict[str, int]:\n    counts: dict[str, int] = {}\n"
     "    for word in text.lower().split():\n        counts[word] = counts.get(word, 0) + 1\n"
     "    return counts"),
    ("sums the digits of a non-negative integer",
     "def digit_sum(n: int) -> int:\n    return sum(int(d) for d in str(n))"),
    ("splits a list into chunks of size k",
     "def chunks(xs: list, k: int) -> list[list]:\n    return [xs[i:i + k] for i in range(0, len(xs), k)]"),
    ("converts a temperature from Celsius to Fahrenheit",
     "def c_to_f(c: float) -> float:\n    return c * 9 / 5 + 32"),
]
CONCEPTS = [("recursion", "a function that calls itself on a smaller input until a base case"),
            ("a hash map", "a structure that maps keys to values with near constant-time lookups"),
            ("immutability", "values that cannot change after they are created"),
            ("a race condition", "a bug where the result depends on the timing of concurrent work"),
            ("dependency injection", "passing a component the objects it needs instead of building them"),
            ("memoisation", "caching a function's results so repeated calls are free"),
            ("a closure", "a function that remembers variables from the scope where it was defined"),
            ("big-O notation", "a way to describe how running time grows with the input size")]
LANGS = ["Python", "JavaScript", "Go", "Rust"]
GOALS = ["sleep better", "stay focused while working from home", "prepare for a job interview",
         "save money on groceries", "start running as a beginner", "learn to cook simple meals",
         "keep a houseplant alive", "make new friends in a new city", "reduce screen time",
         "study more effectively for exams", "negotiate a salary offer", "organise a small move"]
CHOICES = ["a laptop for programming", "a first car", "a university course", "a running shoe",
           "a note-taking app", "a bank account", "a family pet", "a holiday destination"]
TIPS = ["Start small and build a routine you can keep.", "Write down a clear, concrete goal.",
        "Track your progress once a week.", "Remove the easiest distractions first.",
        "Ask someone experienced for feedback.", "Plan the next step the evening before.",
        "Reward yourself for consistency rather than intensity.",
        "Expect setbacks and decide in advance how you will restart.",
        "Compare at least three options before committing.", "Set a budget and stick to it."]
PHENOMENA = [("the sky looks blue", "air molecules scatter short blue wavelengths of sunlight more "
              "than longer red ones"),
             ("ice floats on water", "water expands when it freezes, so ice is less dense than liquid water"),
             ("we have seasons", "the Earth's axis is tilted, so each hemisphere gets more direct "
              "sunlight for part of the year"),
             ("bread rises", "yeast ferments sugars and releases carbon dioxide that the dough traps"),
             ("metal feels colder than wood at room temperature", "metal conducts heat away from "
              "the skin much faster"),
             ("the Moon shows phases", "we see different portions of its sunlit half as it orbits"),
             ("a spoon looks bent in a glass of water", "light refracts as it passes from water to air"),
             ("sweating cools you down", "evaporating sweat takes heat from the skin")]
SETS = ["cats", "mammals", "animals", "poets", "writers", "artists", "squares", "rectangles",
        "polygons", "roses", "flowers", "plants", "violins", "string instruments", "instruments"]
PAIRS = [("trains", "planes"), ("paper books", "e-readers"), ("SQL databases", "document databases"),
         ("renting", "buying a home"), ("tabs", "spaces"), ("remote work", "office work"),
         ("electric cars", "petrol cars"), ("static typing", "dynamic typing")]

OPENERS = ["Here is a clear answer.", "Sure.", "Good question.", "Certainly."]
CLOSERS = ["I hope this helps.", "Let me know if you would like more detail.",
           "Feel free to ask a follow-up question.", ""]


def _wrap(rng: random.Random, body: str) -> str:
    parts = [rng.choice(OPENERS), body, rng.choice(CLOSERS)]
    return "\n\n".join(p for p in parts if p)


def _instruct_writing(rng: random.Random) -> tuple[str, str, float]:
    kind = rng.randrange(4)
    if kind == 0:
        topic = rng.choice(POEM_TOPICS)
        lines = [f"Soft light returns to {topic},", "and every quiet thing takes shape;",
                 "the hours lean in, unhurried, close,", "and leave a little room to wait."]
        n = rng.choice([2, 4])
        return f"Write a short poem about {topic}.", "\n".join(lines[:n]), diff(rng, 0.45)
    if kind == 1:
        product = rng.choice(PRODUCTS)
        body = (f"Meet {product}: built to last, simple to use and designed for everyday life. "
                f"It solves a real problem without adding clutter, and it is backed by a two-year "
                f"warranty.")
        return f"Write a product description for {product}.", _wrap(rng, body), diff(rng, 0.35)
    if kind == 2:
        who, subject = rng.choice(EMAILS)
        body = (f"Subject: {subject[0].upper() + subject[1:]}\n\nHi,\n\nI am writing about "
                f"{subject}. Could we find a time this week to sort it out? Thank you for your "
                f"understanding.\n\nBest regards")
        return f"Write a friendly email to {who} about {subject}.", body, diff(rng, 0.3)
    thing = rng.choice(BENEFITS)
    body = (f"{thing[0].upper() + thing[1:]} saves effort over time. It builds skills that carry "
            f"over to other areas. It also tends to make the people involved happier.")
    return (f"Summarise the main benefits of {thing} in three sentences.", _wrap(rng, body),
            diff(rng, 0.35))


def _instruct_coding(rng: random.Random) -> tuple[str, str, float]:
    if rng.random() < 0.6:
        task, code = rng.choice(CODE_TASKS)
        style = rng.choice(["", " Include type hints.", " Keep it short."])
        return (f"Write a Python function that {task}.{style}",
                _wrap(rng, f"```python\n{code}\n```"), diff(rng, 0.5))
    concept, gist = rng.choice(CONCEPTS)
    lang = rng.choice(LANGS)
    body = f"In short, {concept} is {gist}. In {lang}, you would see it whenever code relies on it."
    return (f"Explain what {concept} means in programming, with a short example in {lang}.",
            _wrap(rng, body), diff(rng, 0.55))


def _instruct_advice(rng: random.Random) -> tuple[str, str, float]:
    if rng.random() < 0.6:
        goal = rng.choice(GOALS)
        k = rng.randint(3, 5)
        tips = rng.sample(TIPS, k)
        body = "\n".join(f"{i}. {t}" for i, t in enumerate(tips, start=1))
        return (f"How can I {goal}? Give {k} practical tips.", _wrap(rng, body), diff(rng, 0.4))
    thing = rng.choice(CHOICES)
    tips = rng.sample(TIPS, 3)
    body = f"When choosing {thing}, think about cost, fit and how long it will last. " + " ".join(tips)
    return f"What should I consider when choosing {thing}?", _wrap(rng, body), diff(rng, 0.45)


def _instruct_reasoning(rng: random.Random) -> tuple[str, str, float]:
    kind = rng.randrange(3)
    if kind == 0:
        what, why = rng.choice(PHENOMENA)
        audience = rng.choice(["a ten-year-old", "a curious adult", "a physics student"])
        return f"Explain to {audience} why {what}.", _wrap(rng, f"Because {why}."), diff(rng, 0.5)
    if kind == 1:
        a, b, c = rng.sample(SETS, 3)
        valid = rng.random() < 0.5
        if valid:
            premise = f"All {a} are {b}, and all {b} are {c}."
            answer = (f"Yes. Every one of the {a} is among the {b}, and every one of the {b} is "
                      f"among the {c}, so all {a} are {c}.")
        else:
            premise = f"All {a} are {b}, and some {b} are {c}."
            answer = (f"No, not necessarily. The {b} that are {c} might not include any of the "
                      f"{a}, so we cannot conclude that all {a} are {c}.")
        return (f"{premise} Does it follow that all {a} are {c}? Explain your reasoning.", answer,
                diff(rng, 0.6))
    x, y = rng.choice(PAIRS)
    body = (f"One advantage of {x} is that they suit some situations better; one advantage of {y} "
            f"is flexibility in others. The right choice depends on your priorities.")
    return f"Compare {x} and {y}: give one advantage of each.", _wrap(rng, body), diff(rng, 0.5)


ELABORATIONS = [
    "To put this in context, it helps to look at the situation from a few angles. The first is "
    "what you are trying to achieve and by when; the second is what you already have to work "
    "with; the third is what could go wrong along the way and how you would notice early.",
    "A concrete example makes the idea easier to hold on to. Imagine doing it once by hand, "
    "slowly, writing down each step as you go; the second time you will see which steps matter "
    "and which ones you can drop, and the third time it will already feel routine.",
    "There are a few common mistakes worth avoiding. People often try to do everything at once, "
    "skip the simple checks because they seem obvious, or stop as soon as the first result looks "
    "right instead of confirming it with a second, independent check.",
    "If you want to go further, keep a short record of what you tried and what happened. Over a "
    "few weeks that record shows patterns you would not notice from memory alone, and it makes "
    "it much easier to explain your choices to someone else.",
    "Finally, remember that the best approach depends on your circumstances. What works well for "
    "one person, team or project may need adjusting for another, so treat these points as a "
    "starting framework rather than a fixed set of rules.",
    "It is also worth weighing the trade-offs explicitly. Faster options usually cost more or "
    "leave less room for error, while careful options take longer; writing the trade-off down "
    "makes the decision easier to revisit when circumstances change.",
]

#: AlpacaEval 2.0's GPT-4 Turbo baseline outputs run to roughly 2,000 characters; baselines far
#: shorter than the candidates would let a judge's length bias decide every comparison.
BASELINE_TARGET_CHARS = (1400, 2400)


def _elaborate(baseline: str, record_id: str) -> str:
    """Pad a baseline to a realistic length with generic elaboration. A per-record RNG keeps the
    prompts (drawn from the main RNG) unchanged when this step changes."""
    rng = random.Random(f"baseline-length:{record_id}")
    target = rng.randint(*BASELINE_TARGET_CHARS)
    extra = rng.sample(ELABORATIONS, len(ELABORATIONS))
    parts = [baseline]
    while len("\n\n".join(parts)) < target and extra:
        parts.append(extra.pop())
    return "\n\n".join(parts)


def make_instruct(rng: random.Random) -> list[Record]:
    makers = [("writing", _instruct_writing), ("coding", _instruct_coding),
              ("advice", _instruct_advice), ("reasoning", _instruct_reasoning)]
    records: list[Record] = []
    seen: set[str] = set()
    quotas = [N_INSTRUCT // len(makers) + (i < N_INSTRUCT % len(makers)) for i in range(len(makers))]
    for (category, maker), quota in zip(makers, quotas):
        count, attempts = 0, 0
        while count < quota:
            attempts += 1
            if attempts > 100 * quota:
                raise RuntimeError(f"cannot make {quota} distinct {category} prompts")
            prompt, baseline, difficulty = maker(rng)
            if prompt in seen:
                continue
            seen.add(prompt)
            count += 1
            record_id = f"instruct-{len(records) + 1:03d}"
            records.append({"id": record_id, "prompt": prompt,
                            "baseline_output": _elaborate(baseline, record_id), "category": category,
                            "metadata": {"difficulty": difficulty, "baseline_synthetic": True,
                                         "baseline_note": SYNTHETIC_NOTE}})
    return records


# ---- main -----------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[random.Random], list[Record]]] = {
    "math": make_math, "choice": make_choice, "instruct": make_instruct}


def render(name: str) -> str:
    """The JSONL text of one set; each set has its own seeded generator so they are independent."""
    rng = random.Random(f"{SEED}:{name}")
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in BUILDERS[name](rng))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in BUILDERS:
        path = args.out / f"{name}.jsonl"
        path.write_text(render(name), encoding="utf-8")
        print(f"wrote {path} ({render(name).count(chr(10))} items)")


if __name__ == "__main__":
    main()
