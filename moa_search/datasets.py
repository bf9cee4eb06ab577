"""Validation sets: the JSONL schema, its loader, and the sets shipped with the project.

A search is only as trustworthy as the items it scores on, so the loader is strict: every bad line
is reported with the file, the line number and the field, and nothing is guessed (an unknown key
is a typo until proven otherwise). One JSON object per line::

    {"id": "m-001", "prompt": "What is 2+2?", "reference": 4, "category": "arithmetic",
     "metadata": {"difficulty": 0.1}}
    {"id": "c-1", "messages": [{"role": "user", "content": "Hi"}], "baseline_output": "Hello!"}

``prompt`` (one user turn) and ``messages`` (a chat) are alternatives: exactly one is required.
``reference`` (a string or a number, kept as a string so ``"007"`` stays ``"007"``) is what the
exact / numeric / choice scorers compare against; ``baseline_output`` is what a pairwise judge
compares against (AlpacaEval's reference outputs). ``follow_ups`` (a list of ``{"prompt",
"reference"}``) makes a multi-turn item, such as MT-Bench's second turn: each follow-up is asked
after the MoA's own answer to the turns before it. ``metadata.instruction_difficulty`` (any
finite number, alpaca_eval's per-instruction difficulty) adds the difficulty term to the
length-controlled win rate. Items may differ in which optional fields they carry;
``Dataset.schema_summary()`` says how many have each, so a scorer that needs a field can report
how many items lack it instead of scoring them 0.

Subsets are chosen by ranking items on a hash of ``(seed, id)``: the same seed gives the same
items whatever the file order, and ``subsample(50)`` is contained in ``subsample(100)``, so a
multi-fidelity search that grows its item budget re-uses (and re-hits the cache for) the items it
already ran.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from .errors import ConfigError
from .inputs import write_text_atomic
from .providers.base import Message

ALLOWED_KEYS = frozenset({"id", "prompt", "messages", "reference", "baseline_output", "category",
                          "metadata", "follow_ups"})
MESSAGE_ROLES = frozenset({"system", "user", "assistant"})
UNCATEGORIZED = "uncategorized"
DEFAULT_DIFFICULTY = 0.5
BUILTIN_DATASETS: tuple[str, ...] = ("math", "choice", "instruct")
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "studies" / "data"


@dataclass(frozen=True)
class FollowUp:
    """A later user turn of a multi-turn item (MT-Bench's second turn) and its reference answer.

    It is asked after the MoA's answer to the turns before it, in the same conversation."""

    prompt: str
    reference: str | None = None


@dataclass(frozen=True)
class Item:
    """One validation item.

    Exactly one of ``prompt`` / ``messages`` is set. ``follow_ups`` (empty for a single-turn
    item) are the later user turns of a multi-turn item: each is run with the conversation so
    far, the MoA's own earlier answers included. ``metadata`` is free-form except
    ``difficulty`` (a number in [0, 1]), which the simulated world reads, and
    ``instruction_difficulty`` (a number); it is excluded from equality and hashing because
    dicts are not hashable.
    """

    id: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    reference: str | None = None
    baseline_output: str | None = None
    category: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    follow_ups: tuple[FollowUp, ...] = ()

    def __post_init__(self) -> None:
        # Items built in code (tests, generators) get the same guarantees as loaded ones.
        if (self.prompt is None) == (self.messages is None):
            raise ConfigError("an item needs exactly one of 'prompt' and 'messages'",
                              field=f"item {self.id!r}")
        object.__setattr__(self, "follow_ups", tuple(self.follow_ups))
        if self.messages is not None:
            object.__setattr__(self, "messages", tuple(self.messages))
            if not any(m.role == "user" for m in self.messages):
                raise ConfigError("the messages need a user message", field=f"item {self.id!r}")

    def messages_tuple(self) -> tuple[Message, ...]:
        """What is sent to the MoA: the chat as given, or the prompt as one user message."""
        if self.messages is not None:
            return self.messages
        return (Message("user", self.prompt or ""),)

    @property
    def n_turns(self) -> int:
        """How many user turns are answered: 1, plus one per follow-up."""
        return 1 + len(self.follow_ups)

    def turn_messages(self, answers: Sequence[str]) -> tuple[Message, ...]:
        """What is sent for turn ``len(answers) + 1``: the item's messages, then each earlier
        answer as an assistant message followed by the next follow-up question."""
        if len(answers) >= self.n_turns:
            raise ValueError(f"item {self.id!r} has {self.n_turns} turn(s), not {len(answers) + 1}")
        messages = list(self.messages_tuple())
        for answer, follow_up in zip(answers, self.follow_ups):
            messages += [Message("assistant", answer), Message("user", follow_up.prompt)]
        return tuple(messages)

    @property
    def turn_questions(self) -> tuple[str, ...]:
        """The user question of each turn (the first is ``prompt_text``)."""
        return (self.prompt_text,) + tuple(f.prompt for f in self.follow_ups)

    @property
    def turn_references(self) -> tuple[str | None, ...]:
        """The reference answer of each turn (``None`` where the turn has none)."""
        return (self.reference,) + tuple(f.reference for f in self.follow_ups)

    @property
    def prompt_text(self) -> str:
        """The last user message: the instruction a judge is shown and the answer key is keyed by."""
        for message in reversed(self.messages_tuple()):
            if message.role == "user":
                return message.content
        raise AssertionError("unreachable: validated items always have a user message")

    @property
    def difficulty(self) -> float:
        """``metadata.difficulty`` or 0.5 (a middling item) when the set does not say."""
        value = self.metadata.get("difficulty", DEFAULT_DIFFICULTY)
        return float(value)

    @property
    def instruction_difficulty(self) -> float | None:
        """alpaca_eval's per-instruction difficulty (``metadata.instruction_difficulty``, any
        finite number) when the set has it: the LC win rate's difficulty term."""
        value = self.metadata.get("instruction_difficulty")
        return None if value is None else float(value)

    @property
    def category_or_default(self) -> str:
        return self.category if self.category is not None else UNCATEGORIZED


@dataclass(frozen=True)
class Dataset:
    """A named, ordered collection of items with unique ids, and where it came from."""

    name: str
    items: tuple[Item, ...]
    source: str = "<memory>"
    _index: Mapping[str, Item] = field(default_factory=dict, init=False, repr=False,
                                       compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        index: dict[str, Item] = {}
        for item in self.items:
            if item.id in index:
                raise ConfigError(f"duplicate item id {item.id!r}", source=self.source, field="id")
            index[item.id] = item
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def get(self, item_id: str) -> Item:
        """The item with this id; ``KeyError`` if the set has none."""
        return self._index[item_id]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def schema_summary(self) -> dict[str, int]:
        """How many items carry each optional field: which scorers this set can feed, and how fully."""
        return {
            "items": len(self.items),
            "prompt": sum(i.prompt is not None for i in self.items),
            "messages": sum(i.messages is not None for i in self.items),
            "reference": sum(i.reference is not None for i in self.items),
            "baseline_output": sum(i.baseline_output is not None for i in self.items),
            "category": sum(i.category is not None for i in self.items),
            "difficulty": sum("difficulty" in i.metadata for i in self.items),
        }

    def _ranked(self, seed: int) -> list[int]:
        """Item indices ordered by a seeded hash of the id: independent of file order."""
        def key(index: int) -> str:
            return hashlib.sha256(f"{seed}\x00{self.items[index].id}".encode()).hexdigest()
        return sorted(range(len(self.items)), key=key)

    def _subset(self, indices: list[int], name: str) -> "Dataset":
        return Dataset(name, tuple(self.items[i] for i in sorted(indices)), self.source)

    def subsample(self, n: int, seed: int = 0) -> "Dataset":
        """``n`` items chosen by seed, in file order; nested: a smaller n gives a subset."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"expected a positive item count, got {n!r}", source=self.source,
                              field="subsample.n")
        if n >= len(self.items):
            return self
        return self._subset(self._ranked(seed)[:n], f"{self.name}[{n}@{seed}]")

    def split(self, dev_fraction: float, seed: int = 0) -> tuple["Dataset", "Dataset"]:
        """A disjoint (dev, held-out) split: search on dev, report the winner on held-out."""
        if isinstance(dev_fraction, bool) or not isinstance(dev_fraction, (int, float)) \
                or not 0.0 < dev_fraction < 1.0:
            raise ConfigError(f"expected 0 < dev_fraction < 1, got {dev_fraction!r}",
                              source=self.source, field="split.dev_fraction")
        if len(self.items) < 2:
            raise ConfigError("a split needs at least 2 items", source=self.source,
                              field="split")
        n_dev = min(max(round(dev_fraction * len(self.items)), 1), len(self.items) - 1)
        ranked = self._ranked(seed)
        return (self._subset(ranked[:n_dev], f"{self.name}/dev"),
                self._subset(ranked[n_dev:], f"{self.name}/heldout"))

    def by_category(self) -> dict[str, "Dataset"]:
        """One sub-dataset per category (items without one go to ``uncategorized``), sorted."""
        groups: dict[str, list[Item]] = {}
        for item in self.items:
            groups.setdefault(item.category_or_default, []).append(item)
        return {cat: Dataset(f"{self.name}/{cat}", tuple(groups[cat]), self.source)
                for cat in sorted(groups)}


# ---- loading -------------------------------------------------------------------------------

def load_dataset(path: str | Path, *, name: str | None = None) -> Dataset:
    """Read and validate a JSONL validation set; the name defaults to the file stem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("dataset file not found", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})",
                          source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read dataset file: {exc.strerror}", source=source) from None
    return parse_dataset(text, source=source, name=name or path.stem)


def parse_dataset(text: str, *, source: str, name: str) -> Dataset:
    """Validate JSONL text; every error names ``source``, the 1-based line and the field."""
    items: list[Item] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        item = _parse_line(line, source, lineno)
        if item.id in first_line:
            raise ConfigError(f"duplicate id {item.id!r} (first on line {first_line[item.id]})",
                              source=source, field=f"line {lineno}: id")
        first_line[item.id] = lineno
        items.append(item)
    if not items:
        raise ConfigError("the dataset has no items", source=source)
    return Dataset(name, tuple(items), source)


def _parse_line(line: str, source: str, lineno: int) -> Item:
    def fail(message: str, fld: str | None = None) -> ConfigError:
        where = f"line {lineno}: {fld}" if fld else f"line {lineno}"
        return ConfigError(message, source=source, field=where)

    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {json_type(raw)}")
    unknown = set(raw) - ALLOWED_KEYS
    if unknown:
        raise fail(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}")

    if "id" not in raw:
        raise fail("missing required key", "id")
    item_id = raw["id"]
    if not isinstance(item_id, str) or not item_id.strip():
        raise fail(f"expected a non-empty string, got {json_type(item_id)}", "id")

    has_prompt, has_messages = "prompt" in raw, "messages" in raw
    if has_prompt == has_messages:
        raise fail("expected exactly one of 'prompt' and 'messages'",
                   "prompt" if has_prompt else "prompt/messages")
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    if has_prompt:
        prompt = raw["prompt"]
        if not isinstance(prompt, str):
            raise fail(f"expected a string, got {json_type(prompt)}", "prompt")
        if not prompt.strip():
            raise fail("empty prompt", "prompt")
    else:
        messages = _parse_messages(raw["messages"], fail)

    reference = _parse_reference(raw.get("reference"), fail, "reference")

    baseline = raw.get("baseline_output")
    if baseline is not None and not isinstance(baseline, str):
        raise fail(f"expected a string, got {json_type(baseline)}", "baseline_output")

    category = raw.get("category")
    if category is not None and (not isinstance(category, str) or not category.strip()):
        raise fail(f"expected a non-empty string, got {json_type(category)}", "category")

    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise fail(f"expected an object, got {json_type(metadata)}", "metadata")
    if "difficulty" in metadata:
        d = metadata["difficulty"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise fail(f"expected a number in [0, 1], got {d!r}", "metadata.difficulty")
    if "instruction_difficulty" in metadata:
        d = metadata["instruction_difficulty"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
            raise fail(f"expected a finite number, got {d!r}", "metadata.instruction_difficulty")

    follow_ups = _parse_follow_ups(raw["follow_ups"], fail) if "follow_ups" in raw else ()
    return Item(id=item_id, prompt=prompt, messages=messages, reference=reference,
                baseline_output=baseline, category=category, metadata=metadata,
                follow_ups=follow_ups)


def _parse_reference(value: Any, fail: Any, fld: str) -> str | None:
    """A reference is a string or a finite number, kept as text (``"007"`` stays ``"007"``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise fail(f"expected a string or a number, got {json_type(value)}", fld)
    if isinstance(value, float) and not math.isfinite(value):
        raise fail("expected a finite number", fld)
    return value if isinstance(value, str) else repr(value)


def _objects(value: Any, fail: Any, name: str, keys: tuple[str, str]) -> Iterator[tuple[str, dict]]:
    """``(field name, object)`` for each element of a non-empty list of objects with only
    ``keys``: the shape ``messages`` and ``follow_ups`` share."""
    if not isinstance(value, list) or not value:
        raise fail(f"expected a non-empty list of {{{', '.join(keys)}}} objects", name)
    for k, raw in enumerate(value):
        fld = f"{name}[{k}]"
        if not isinstance(raw, dict):
            raise fail(f"expected an object, got {json_type(raw)}", fld)
        extra = set(raw) - set(keys)
        if extra:
            raise fail(f"unknown key(s) {sorted(extra)}; expected {' and '.join(keys)}", fld)
        yield fld, raw


def _parse_follow_ups(value: Any, fail: Any) -> tuple[FollowUp, ...]:
    out: list[FollowUp] = []
    for fld, raw in _objects(value, fail, "follow_ups", ("prompt", "reference")):
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise fail(f"expected a non-empty string, got {json_type(prompt)}", f"{fld}.prompt")
        out.append(FollowUp(prompt, _parse_reference(raw.get("reference"), fail, f"{fld}.reference")))
    return tuple(out)


def _parse_messages(value: Any, fail: Any) -> tuple[Message, ...]:
    out: list[Message] = []
    for fld, m in _objects(value, fail, "messages", ("role", "content")):
        role, content = m.get("role"), m.get("content")
        if role not in MESSAGE_ROLES:
            raise fail(f"expected role in {sorted(MESSAGE_ROLES)}, got {role!r}", f"{fld}.role")
        if not isinstance(content, str):
            raise fail(f"expected a string, got {json_type(content)}", f"{fld}.content")
        out.append(Message(role, content))
    # The model answers the last user turn; a chat ending elsewhere has nothing to answer.
    if out[-1].role != "user":
        raise fail(f"the last message must be a user message, got {out[-1].role!r}", "messages")
    if not out[-1].content.strip():
        raise fail("empty prompt: the last user message is blank", f"messages[{len(out) - 1}].content")
    return tuple(out)


def item_to_dict(item: Item) -> dict[str, Any]:
    """The item as one JSONL object of this schema (fields that are unset are left out)."""
    out: dict[str, Any] = {"id": item.id}
    if item.messages is not None:
        out["messages"] = [{"role": m.role, "content": m.content} for m in item.messages]
    else:
        out["prompt"] = item.prompt
    for key in ("reference", "baseline_output", "category"):
        if getattr(item, key) is not None:
            out[key] = getattr(item, key)
    if item.metadata:
        out["metadata"] = dict(item.metadata)
    if item.follow_ups:  # left out when empty, so single-turn files read and write as before
        out["follow_ups"] = [{"prompt": f.prompt} | ({} if f.reference is None else
                                                      {"reference": f.reference})
                             for f in item.follow_ups]
    return out


def write_dataset(dataset: Dataset, path: str | Path) -> Path:
    """Write the set as JSONL that ``load_dataset`` reads back to the same items; the file is
    written whole to a temporary name first, so a failure never leaves half a set behind."""
    text = "".join(json.dumps(item_to_dict(i), ensure_ascii=False) + "\n" for i in dataset)
    return write_text_atomic(path, text, "validation set")


def json_type(value: Any) -> str:
    """How an error names what it got instead: "a number", "an array", "null"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


# ---- built-in sets -------------------------------------------------------------------------

def builtin_dataset(name: str) -> Dataset:
    """A set shipped in ``studies/data`` (written by ``studies/data/make_builtin_sets.py``)."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(f"unknown built-in dataset {name!r}; available: {', '.join(BUILTIN_DATASETS)}",
                          field="dataset")
    path = BUILTIN_DIR / f"{name}.jsonl"
    if not path.exists():
        raise ConfigError("built-in dataset file missing; regenerate it with "
                          "`python studies/data/make_builtin_sets.py`", source=str(path))
    return load_dataset(path, name=name)


def answer_key_pairs(dataset: Dataset) -> list[tuple[str, str | None, float]]:
    """``(prompt text, reference, difficulty)`` per item, for the simulated world's answer key.

    The prompt text is the last user message, which is what the simulated world sees last in any
    request built from the item. Items without a reference (open-ended instructions) keep
    ``None``: their difficulty still matters to the world.
    """
    pairs = [(item.prompt_text, item.reference, item.difficulty) for item in dataset.items]
    # A follow-up ("And with side 4?") is keyed too when it has a reference, so the world can
    # answer it right; a follow-up text that is already a key (a generic "Explain why.") is not.
    seen = {prompt for prompt, _, _ in pairs}
    for item in dataset.items:
        for follow_up in item.follow_ups:
            if follow_up.reference is not None and follow_up.prompt not in seen:
                seen.add(follow_up.prompt)
                pairs.append((follow_up.prompt, follow_up.reference, item.difficulty))
    return pairs


def resolve_dataset(ref: str | Path) -> Dataset:
    """A path to a JSONL file, or the name of a built-in set ("math", "choice", "instruct")."""
    path = Path(ref)
    if path.exists() or path.suffix == ".jsonl" or "/" in str(ref):
        return load_dataset(path)
    return builtin_dataset(str(ref))
