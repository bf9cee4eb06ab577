"""Model prices from the maintained ``genai-prices`` database, read offline from its bundled data.

Why: a price typed by hand into a catalog can be wrong or stale, and a wrong price silently skews
every cost objective and the "cheapest config" answer. ``genai-prices`` (MIT, pydantic team)
ships dated prices for many providers inside the wheel. Only the bundled snapshot is read here:
``genai_prices.UpdatePrices`` (which fetches prices over the network) is never started, so a
lookup never touches the network and the same installed version always gives the same numbers.

Every quote carries its source (``genai-prices <version>``) and the date its price took effect,
so costs computed from it can say which price table they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from importlib.metadata import version
from typing import Any, Iterable, Mapping

from .errors import ConfigError, UnknownModelError

DATABASE = "genai-prices"
"""The catalog value ``price = "genai-prices"`` and the name recorded as a price source."""
DEFAULT_THRESHOLD = 0.05
"""``catalog check`` reports a price as changed when it differs by more than this fraction."""


@dataclass(frozen=True)
class KnownProvider:
    """A provider ``catalog add`` can write a complete ``[providers.X]`` table for."""

    name: str  # the catalog's provider name and the database's provider id
    base_url: str  # its OpenAI-compatible API root
    api_key_env: str


KNOWN_PROVIDERS: dict[str, KnownProvider] = {p.name: p for p in (
    KnownProvider("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    KnownProvider("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
    KnownProvider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    KnownProvider("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    KnownProvider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    KnownProvider("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    KnownProvider("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
)}


@dataclass(frozen=True)
class PriceQuote:
    """One model's price today, USD per 1M tokens, and where it came from."""

    provider: str  # the database's provider id
    model: str  # the database's model id (the catalog may spell it differently, e.g. case)
    input_price: float
    output_price: float
    cached_input_price: float | None  # price of a cache-read input token, when the provider has one
    context_window: int | None
    source: str  # "genai-prices 0.2.3"
    effective: str  # ISO date the price took effect, or "" when the database gives none

    @property
    def label(self) -> str:
        """``genai-prices 0.2.3, effective 2025-06-10``: how reports name this price."""
        return f"{self.source}, effective {self.effective}" if self.effective else self.source


def source() -> str:
    return f"{DATABASE} {version('genai-prices')}"


def _providers() -> list[Any]:
    from genai_prices.data import providers  # the bundled snapshot: no network
    return providers


def _provider(name: str) -> Any:
    for p in _providers():
        if p.id == name.lower():
            return p
    raise ConfigError(f"unknown provider {name!r} in {source()}; known: {', '.join(sorted(KNOWN_PROVIDERS))} "
                      f"(and {len(_providers()) - len(KNOWN_PROVIDERS)} more: see 'moa-search catalog list')")


def quote_time(when: datetime | None = None) -> datetime:
    """Noon UTC of ``when``'s day (default today). Prices change by date, but some also by hour
    (DeepSeek's off-peak half price, 16:30-00:30 UTC): a config's cost objective must not depend on
    the hour a catalog was loaded, so the hour is fixed, and noon UTC is inside every provider's
    standard hours in the database. Time-of-day discounts are therefore not modelled."""
    return (when or datetime.now(tz=UTC)).astimezone(UTC).replace(hour=12, minute=0, second=0,
                                                                   microsecond=0)


def _usd(value: Any) -> float | None:
    if value is None:
        return None
    base = getattr(value, "base", value)  # tiered prices: the first tier
    return float(base) if isinstance(base, Decimal | int | float) else None


def _quote(provider: Any, model: Any, when: datetime) -> PriceQuote | None:
    """None for a model without per-token text prices (image, audio or search-only models)."""
    prices = model.get_prices(when)
    inp, out = _usd(getattr(prices, "input_mtok", None)), _usd(getattr(prices, "output_mtok", None))
    if inp is None or out is None:
        return None
    effective = ""
    if isinstance(model.prices, list):
        for conditional in reversed(model.prices):
            constraint = conditional.constraint
            if constraint is None or constraint.active(when):
                start = getattr(constraint, "start_date", None)
                effective = start.isoformat() if isinstance(start, date) else ""
                break
    return PriceQuote(provider.id, model.id, inp, out, _usd(getattr(prices, "cache_read_mtok", None)),
                      model.context_window, source(), effective)


def lookup(provider: str, model: str, *, base_url: str | None = None, when: datetime | None = None) -> PriceQuote:
    """The database's price for ``model`` at ``provider`` (a catalog provider name; when the
    database does not know that name, the provider whose API pattern matches ``base_url``)."""
    when = quote_time(when)
    p = _find_provider(provider, base_url)
    found = p.find_model(model.lower(), all_providers=_providers())
    quote = _quote(p, found, when) if found is not None else None
    if quote is None:
        raise UnknownModelError(f"model {model!r} has no token prices at provider {p.id!r} in {source()}; "
                                f"see 'moa-search catalog list --provider {p.id}'")
    return quote


@cache
def _find_provider(provider: str, base_url: str | None) -> Any:
    for p in _providers():
        if p.id == provider.lower():
            return p
    if base_url:
        for p in _providers():
            if re.match(p.api_pattern, base_url):
                return p
    return _provider(provider)  # raises, naming the known providers


def models(provider: str | None = None, search: str | None = None) -> list[PriceQuote]:
    """The models with token prices the database knows, optionally for one provider and whose
    id contains ``search`` (case-insensitive), sorted by provider then model id."""
    when = quote_time()
    chosen = [_provider(provider)] if provider else _providers()
    needle = (search or "").lower()
    quotes = (_quote(p, m, when) for p in chosen for m in p.models if needle in m.id.lower())
    return sorted((q for q in quotes if q is not None), key=lambda q: (q.provider, q.model.lower()))


def count_by_provider(names: Iterable[str] = KNOWN_PROVIDERS) -> dict[str, int]:
    return {name: len(models(name)) for name in names}


@dataclass(frozen=True)
class PriceDiff:
    """One catalog price against the database's price today."""

    model: str
    field: str  # "input_price" or "output_price"
    catalog: float
    database: float | None  # None: the database does not know the model
    note: str = ""

    @property
    def change(self) -> float | None:
        """Relative change from the catalog's price to the database's (0.1 = 10% dearer now)."""
        if self.database is None:
            return None
        if self.catalog == 0:
            return 0.0 if self.database == 0 else float("inf")
        return (self.database - self.catalog) / self.catalog


def check(catalog: Any, threshold: float = DEFAULT_THRESHOLD,
          models: Iterable[str] | None = None) -> list[PriceDiff]:
    """Each priced catalog entry (or only ``models``) against the database: the prices that
    differ by more than ``threshold``, and the models the database lacks (``database`` None).
    Local models and entries already priced from the database are skipped (there is nothing to
    compare)."""
    diffs: list[PriceDiff] = []
    chosen = catalog.models.values() if models is None else [catalog.models[m] for m in sorted(set(models))]
    for info in chosen:
        if info.local is not None or info.price_source.startswith(DATABASE):
            continue
        try:
            quote = lookup(info.endpoint.name, info.id, base_url=info.endpoint.base_url)
        except ConfigError as exc:
            diffs.append(PriceDiff(info.id, "input_price", info.input_price, None, str(exc)))
            continue
        for field, mine, theirs in (("input_price", info.input_price, quote.input_price),
                                    ("output_price", info.output_price, quote.output_price)):
            diff = PriceDiff(info.id, field, mine, theirs, quote.label)
            if abs(diff.change or 0.0) > threshold:
                diffs.append(diff)
    return diffs


def entry_table(catalog: Any, model: str, *, dated: bool = False) -> str:
    """The price table a catalog entry's prices come from: the database (``dated``: with the date
    its price took effect) or the catalog file they were typed in. One spelling for the results
    footer (``price_tables``) and the ``price_table`` every trial records (``search.records``)."""
    info = catalog.models[model]
    if not info.price_source.startswith(DATABASE):
        return f"typed in catalog {catalog.source}"
    return f"{info.price_source}, effective {info.price_date}" if dated and info.price_date else info.price_source


def price_tables(catalog: Any, models: Iterable[str]) -> str:
    """Which price tables the costs of ``models`` come from, for a results footer:
    ``prices: genai-prices 0.2.3 for 2 models, typed in catalog studies/my.toml for 1``."""
    counts: dict[str, int] = {}
    for model in sorted(set(models)):
        table = entry_table(catalog, model)
        counts[table] = counts.get(table, 0) + 1
    if len(counts) == 1:
        [table] = counts
        return f"prices: {table}" + ("" if table.startswith("typed") else f" (catalog {catalog.source})")
    parts = [f"{table} for {n} model{'s' if n > 1 else ''}" for table, n in sorted(counts.items())]
    return "prices: " + ", ".join(parts)


def stale_warning(catalog: Any, models: Iterable[str], threshold: float = DEFAULT_THRESHOLD,
                  catalog_path: str | None = None) -> str | None:
    """One line when a typed price of ``models`` differs from the database by more than
    ``threshold`` (``check``'s verdict, so ``catalog check`` and this agree), naming how many and
    the command that lists them; None when none does. Models the database lacks are counted in
    the line but do not raise it alone: a model no longer sold has no price to be stale against."""
    models = set(models)
    diffs = check(catalog, threshold, models)
    changed = len({d.model for d in diffs if d.database is not None})
    if not changed:
        return None
    unknown = len({d.model for d in diffs if d.database is None})
    where = f" --catalog {catalog_path}" if catalog_path else ""
    return (f"the typed prices of {changed} of the study's {len(models)} models differ by more than "
            f"{threshold * 100:g}% from {source()}" + (f" ({unknown} not in it)" if unknown else "")
            + f"; costs use the typed prices: moa-search catalog check{where}")


# ---- catalog files and tables (`moa-search catalog ...`) ------------------------------------


class NotInDatabaseError(UnknownModelError):
    """A model the price database lacks: ``catalog add`` exits 1 on it ("not found")."""


def parse_ref(ref: str) -> tuple[str, str]:
    """``PROVIDER:MODEL`` -> (provider, model); the model may itself hold ``/`` and ``:``."""
    provider, sep, model = ref.partition(":")
    if not sep or not provider or not model:
        raise ValueError(f"expected PROVIDER:MODEL (e.g. together:meta-llama/Llama-3.3-70B-Instruct-Turbo), got {ref!r}")
    return provider.lower(), model


def known_provider(name: str) -> KnownProvider:
    try:
        return KNOWN_PROVIDERS[name]
    except KeyError:
        raise ConfigError(f"unknown provider {name!r}; catalog add knows: {', '.join(KNOWN_PROVIDERS)}") from None


@dataclass(frozen=True)
class NewEntry:
    provider: KnownProvider
    model: str
    quote: PriceQuote
    context_window: int


def plan_entry(ref: str, context_window: int | None) -> NewEntry:
    """Everything ``catalog add`` writes for ``ref``. Raises ``ConfigError`` (unknown provider),
    ``NotInDatabaseError`` (unknown model), ``ValueError`` (no context window known or given)."""
    name, model = parse_ref(ref)
    provider = known_provider(name)
    try:
        quote = lookup(provider.name, model)
    except UnknownModelError as exc:
        raise NotInDatabaseError(str(exc)) from None
    window = quote.context_window or context_window  # the database's, when it knows one
    if not window:
        raise ValueError(f"{source()} gives no context window for {ref!r}: pass --context-window N "
                         "(the model's input limit in tokens, from the provider's model page)")
    return NewEntry(provider, model, quote, window)


def entry_toml(entry: NewEntry) -> str:
    q = entry.quote
    cached = f", cached input ${q.cached_input_price:g}" if q.cached_input_price is not None else ""
    return (f'\n[models."{entry.model}"]\nprovider = "{entry.provider.name}"\n'
            f'price = "{DATABASE}"  # ${q.input_price:g} / ${q.output_price:g} per 1M tokens{cached} '
            f'({q.label or q.source}, looked up {date.today().isoformat()})\n'
            f"context_window = {entry.context_window}\n")


def provider_toml(provider: KnownProvider) -> str:
    return (f'\n[providers.{provider.name}]\nbase_url = "{provider.base_url}"\n'
            f'api_key_env = "{provider.api_key_env}"\n')


def add_to_catalog(text: str, entries: list[NewEntry], parsed: dict[str, Any]) -> tuple[str, list[str]]:
    """``text`` (a catalog file's content, ``parsed`` its TOML) with the entries appended, each
    provider table added once; returns the new text and the models skipped as already present."""
    providers = set(parsed.get("providers", {}))
    present = set(parsed.get("models", {}))
    skipped: list[str] = []
    for entry in entries:
        if entry.model in present:
            skipped.append(entry.model)
            continue
        if entry.provider.name not in providers:
            text += provider_toml(entry.provider)
            providers.add(entry.provider.name)
        text += entry_toml(entry)
        present.add(entry.model)
    return text, skipped


def fit(text: str, width: int) -> str:
    """``text`` cut to ``width`` columns with a trailing ``~`` when cut (tables fit 80 columns)."""
    return text if len(text) <= width else text[:width - 1] + "~"


def catalog_entries_in_db(models: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(database provider, database model id) of each catalog entry the database knows, found
    as ``lookup`` finds them (so ``gpt-4-turbo-2024-04-09`` marks ``gpt-4-turbo``)."""
    found = set()
    for model_id, info in models.items():
        endpoint = info.endpoint
        try:
            quote = lookup(endpoint.name, model_id, base_url=endpoint.base_url)
        except (UnknownModelError, ConfigError):
            continue
        found.add((quote.provider, quote.model.lower()))
    return found


def list_lines(quotes: list[PriceQuote], in_catalog: set[tuple[str, str]]) -> list[str]:
    """``catalog list`` rows: ``*`` marks a model already in the catalog; 78 columns at most."""
    head = f"  {'provider':<10} {'model':<41} {'$in/1M':>7} {'$out/1M':>7} {'context':>9}"
    rows = [head]
    for q in quotes:
        mark = "*" if (q.provider, q.model.lower()) in in_catalog else " "
        window = f"{q.context_window:,}" if q.context_window else "-"
        rows.append(f"{mark} {fit(q.provider, 10):<10} {fit(q.model, 41):<41} {q.input_price:>7.3g} "
                    f"{q.output_price:>7.3g} {window:>9}")
    return rows


def check_lines(diffs: list[PriceDiff]) -> list[str]:
    """``catalog check`` rows; 78 columns at most."""
    rows = [f"{'model':<44} {'price':<6} {'catalog':>8} {'today':>8} {'change':>8}"]
    for d in diffs:
        kind = d.field.removesuffix("_price")
        if d.database is None:
            rows.append(f"{fit(d.model, 44):<44} {'':<6} {d.catalog:>8.3g} {'-':>8} {'unknown':>8}")
        else:
            change = f"{d.change:+.0%}" if d.change != float("inf") else "new"
            rows.append(f"{fit(d.model, 44):<44} {kind:<6} {d.catalog:>8.3g} {d.database:>8.3g} {change:>8}")
    return rows
