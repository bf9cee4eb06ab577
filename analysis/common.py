"""Shared plumbing for the analyses: options, measuring configs, and writing HTML + markdown.

Each analysis asks one of the MoA paper's questions (how do proposer count and diversity, depth,
aggregator choice and budget move quality and cost?) by measuring a handful of fixed configs on
one validation set. Everything that is the same across the four lives here, so the four scripts
only say *which* configs to measure and how to show them:

* ``build_parser`` / ``options_from_args``: the command-line options every analysis takes
  (catalog, backend, data, scorer, item count, call store, output directory).
* ``Bench``: opens the provider and the call store once and measures configs through the
  library's ``DatasetEvaluator`` (so runs, scoring, judge calls, CIs and costs are exactly what
  ``moa-search eval`` reports). All analyses share one call store, so a config that two analyses
  measure (e.g. the paper's MoA in ``depth`` and ``budget``) is paid for once.
* ``write_outputs``: one HTML page per analysis that loads plotly.js from the shared local
  ``analysis/plotly.min.js`` (so pages open offline and the repository holds plotly.js once), a ``summary.md`` with
  the numbers and their CIs, and a ``results.json`` for programs.
* ``rounded`` / ``stable``: the one rule for how many digits a written number keeps, so the
  committed outputs are the same bytes on any machine (``run_all.py --check`` relies on it).

Numbers from the simulated model world are labelled "simulated" in every title, axis and
summary: they describe the simulation's calibration, not real models.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence, TypeVar

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from moa_search.backends import make_provider
from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.datasets import Dataset, answer_key_pairs, resolve_dataset
from moa_search.errors import ConfigError, MoASearchError
from moa_search.evaluate import ConfigEvaluation, DatasetEvaluator
from moa_search.providers.base import Provider
from moa_search.providers.sim_model import parse_footer
from moa_search.stats import PairedResult, paired_comparison
from moa_search.store import CallStore

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS_DIR = ROOT / "analysis"
DEFAULT_STORE = ROOT / "runs" / "analysis-calls.db"
DEFAULT_DATA = "instruct"
DEFAULT_JUDGE = "gpt-4-turbo-2024-04-09"  # AlpacaEval 2.0's annotator family, as in the CLI
QWEN110 = "Qwen/Qwen1.5-110B-Chat"

#: The scorer each built-in set is meant for. ``instruct`` is judged like AlpacaEval 2.0: the
#: pairwise judge against the items' baseline outputs, headline = length-controlled win rate.
DEFAULT_SCORERS: dict[str, str] = {"instruct": "length_controlled", "math": "numeric",
                                   "choice": "choice"}
JUDGE_SCORERS = frozenset({"pairwise_judge", "length_controlled", "single_grade_judge",
                           "single_grade"})
QUALITY_NAMES: dict[str, str] = {
    "length_controlled": "LC win rate vs baseline (%)",
    "pairwise_judge": "win rate vs baseline (%)",
    "single_grade_judge": "judge grade x 10 (%)",
    "single_grade": "judge grade x 10 (%)",
}
SIMULATED_BANNER = ("Simulated model world: every number here describes the seeded simulation "
                    "in moa_search.providers.simulated, not the real models.")


# ---- options -------------------------------------------------------------------------------

@dataclass(frozen=True)
class AnalysisOptions:
    """What every analysis needs to know to measure and to write. ``store`` None = no cache."""

    name: str
    data: str = DEFAULT_DATA
    scorer: str = "length_controlled"
    judge_model: str = DEFAULT_JUDGE
    n_items: int | None = None
    seed: int = 0
    catalog: Path | None = None
    backend: str = "sim"
    base_url: str | None = None
    sim_endpoint: bool = False
    store: Path | None = DEFAULT_STORE
    out_dir: Path = ANALYSIS_DIR
    quiet: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_judged(self) -> bool:
        return self.scorer in JUDGE_SCORERS

    @property
    def quality_name(self) -> str:
        return QUALITY_NAMES.get(self.scorer, "accuracy (%)")

    def scorer_options(self) -> dict[str, Any]:
        return {"judge_model": self.judge_model} if self.is_judged else {}


def default_scorer(data: str) -> str:
    """The scorer a set is meant for; a user's JSONL file must say which (``--scorer``)."""
    if data in DEFAULT_SCORERS:
        return DEFAULT_SCORERS[data]
    raise ConfigError(f"no default scorer for {data!r}; pass --scorer (e.g. length_controlled for "
                      f"items with baseline_output, numeric/choice/exact for items with a reference)",
                      field="--scorer")


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options every analysis takes; a script adds its own before parsing."""
    p = argparse.ArgumentParser(prog=f"python analysis/{name}.py", description=description)
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="validation set: a built-in name (instruct, math, choice) or a JSONL path "
                        "(default: instruct, judged pairwise against its baseline outputs)")
    p.add_argument("--scorer", default=None,
                   help="scorer (default: length_controlled for instruct, numeric for math, "
                        "choice for choice)")
    p.add_argument("--judge-model", default=DEFAULT_JUDGE,
                   help=f"judge model for judge scorers (default {DEFAULT_JUDGE})")
    p.add_argument("--n-items", type=int, default=None,
                   help="deterministic subsample of this many items (default: every item)")
    p.add_argument("--seed", type=int, default=0,
                   help="subsample seed and simulated-world seed (default 0)")
    p.add_argument("--catalog", type=Path, default=None, help="model catalog TOML (default: built-in)")
    p.add_argument("--backend", choices=("sim", "http"), default="sim",
                   help="'sim' (offline simulated world, default) or 'http' (OpenAI-compatible)")
    p.add_argument("--base-url", default=None, help="with --backend http: send every model here")
    p.add_argument("--sim-endpoint", action="store_true",
                   help="the --base-url is `moa-search sim-server` (send sample indices)")
    p.add_argument("--store", type=Path, default=DEFAULT_STORE,
                   help="SQLite call store shared by the analyses "
                        f"(default {DEFAULT_STORE.relative_to(ROOT)})")
    p.add_argument("--no-store", action="store_true", help="do not cache or log calls")
    p.add_argument("--out-dir", type=Path, default=None,
                   help=f"where to write the HTML, summary.md and results.json (default analysis/{name}/)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def options_from_args(name: str, args: argparse.Namespace, **extra: Any) -> AnalysisOptions:
    if args.n_items is not None and args.n_items < 1:
        raise ConfigError(f"expected --n-items >= 1, got {args.n_items}", field="--n-items")
    if args.base_url and args.backend != "http":
        raise ConfigError("--base-url goes with --backend http", field="--base-url")
    scorer = args.scorer or default_scorer(args.data)
    return AnalysisOptions(
        name=name, data=args.data, scorer=scorer, judge_model=args.judge_model,
        n_items=args.n_items, seed=args.seed, catalog=args.catalog, backend=args.backend,
        base_url=args.base_url, sim_endpoint=args.sim_endpoint,
        store=None if args.no_store else args.store,
        out_dir=args.out_dir or ANALYSIS_DIR / name, quiet=args.quiet, extra=extra)


def cli_main(run: Callable[[AnalysisOptions], "AnalysisOutput"], name: str, description: str,
             argv: Sequence[str] | None = None,
             add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
             extra: Callable[[argparse.Namespace], dict[str, Any]] | None = None) -> int:
    """Parse, run, print where the outputs went; an input error is one line and exit status 2
    (as in ``moa-search``), anything else is a bug and keeps its traceback."""
    parser = build_parser(name, description)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        opts = options_from_args(name, args, **(extra(args) if extra else {}))
        output = run(opts)
    except MoASearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{name}: wrote {output.html_path}, {output.summary_path} ({output.elapsed_s:.1f} s)")
    return 0


# ---- measuring -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """One config measured on the analysis's items. Qualities are in percent (0-100)."""

    label: str
    config: MoAConfig
    quality: float
    low: float
    high: float
    n_items: int
    n_scored: int
    cost_usd_per_item: float
    latency_p50_s: float
    latency_p95_s: float
    calls: int  # LLM calls per measurement, judge calls included
    simulated: bool
    values: Mapping[str, float]
    raw_win_rate: float | None = None
    paid_usd: float = 0.0  # spent by this measurement now (0 when all came from the store)
    #: Simulated world only: each item's final answer's latent quality (logits, baseline = 0),
    #: read from the footer the world writes under it: the world's own truth, without the
    #: judge's noise, to set beside what was measured. Empty for real models.
    latent: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_evaluation(cls, label: str, ev: ConfigEvaluation) -> "Measurement":
        q = ev.result.quality
        d = ev.to_dict()
        return cls(label=label, config=ev.config, quality=100 * q.mean, low=100 * q.low,
                   high=100 * q.high, n_items=ev.n_items, n_scored=ev.result.n_scored,
                   cost_usd_per_item=ev.cost_usd_per_item,
                   latency_p50_s=ev.latency_percentile(50), latency_p95_s=ev.latency_percentile(95),
                   calls=int(d["calls"]), simulated=ev.simulated,
                   values={k: v for k, v in ev.result.values.items() if v is not None},
                   raw_win_rate=ev.result.win_rate, paid_usd=ev.paid_usd,
                   latent={t.item_id: f.quality for t in ev.traces
                           if ev.simulated and t.answer and (f := parse_footer(t.answer))})

    @property
    def ci_text(self) -> str:
        return fmt_ci(self.quality, self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, per-item values left out (they are in the call store's run log)."""
        return {"label": self.label, "config": self.config.summary(),
                "config_hash": self.config.config_hash, "quality": _clean(self.quality),
                "quality_low": _clean(self.low), "quality_high": _clean(self.high),
                "raw_win_rate": _clean(self.raw_win_rate), "n_items": self.n_items,
                "n_scored": self.n_scored, "cost_usd_per_item": self.cost_usd_per_item,
                "latency_p50_s": _clean(self.latency_p50_s),
                "latency_p95_s": _clean(self.latency_p95_s), "simulated": self.simulated}


class Bench:
    """The provider, the call store and the evaluator an analysis measures configs with.

    Use as ``async with Bench(opts) as bench``. The simulated world is told the *whole* set's
    answer key, not just the subsample's, so its endpoint identity (part of every cache key) is
    the same whatever ``--n-items`` is, and a smaller run re-uses a larger run's calls.
    """

    def __init__(self, opts: AnalysisOptions):
        self.opts = opts
        self.catalog = Catalog.load(opts.catalog) if opts.catalog else Catalog.default()
        self.full: Dataset = resolve_dataset(opts.data)
        self.dataset: Dataset = (self.full.subsample(opts.n_items, opts.seed) if opts.n_items
                                 else self.full)
        if opts.is_judged:
            self.catalog.get(opts.judge_model)  # fail before any call if the judge is unknown
        self._memo: dict[str, Measurement] = {}
        self.provider: Provider | None = None
        self.store: CallStore | None = None
        self.evaluator: DatasetEvaluator | None = None

    async def __aenter__(self) -> "Bench":
        key = None
        if self.opts.backend == "sim":
            from moa_search.providers.simulated import AnswerKey
            key = AnswerKey.from_pairs(answer_key_pairs(self.full))
        self.provider = make_provider(self.opts.backend, self.catalog, base_url=self.opts.base_url,
                                      answer_key=key, seed=self.opts.seed,
                                      sim_endpoint=self.opts.sim_endpoint)
        if self.opts.store is not None:
            self.opts.store.parent.mkdir(parents=True, exist_ok=True)
            self.store = CallStore(self.opts.store)
        self.evaluator = DatasetEvaluator(self.provider, self.store, self.dataset, self.opts.scorer,
                                          self.opts.scorer_options(),
                                          run_prefix=f"analysis:{self.opts.name}/")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.provider is not None:
            await self.provider.aclose()
        if self.store is not None:
            self.store.close()

    @property
    def simulated(self) -> bool:
        """Sim backend, or any answer the endpoint marked simulated (the sim-server)."""
        return self.opts.backend == "sim" or any(m.simulated for m in self._memo.values())

    async def measure(self, label: str, config: MoAConfig) -> Measurement:
        """Measure ``config`` on the analysis's items (once per config per bench)."""
        assert self.evaluator is not None, "use Bench as an async context manager"
        known = self._memo.get(config.config_hash)
        if known is not None:
            return replace(known, label=label, paid_usd=0.0)
        self.catalog.check_config(config)
        started = time.perf_counter()
        ev = await self.evaluator.evaluate_items(
            config, self.dataset.ids, f"{self.evaluator.run_prefix}{config.config_hash}")
        m = Measurement.from_evaluation(label, ev)
        self._memo[config.config_hash] = m
        if not self.opts.quiet:
            tag = " (simulated)" if m.simulated else ""
            print(f"  [{self.opts.name}] {label:<38} {m.ci_text:<20} "
                  f"${m.cost_usd_per_item:.6f}/item{tag} · {m.calls} calls, paid now ${m.paid_usd:.4f}"
                  f"{tag} · {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        return m

    async def measure_all(self, labelled: Sequence[tuple[str, MoAConfig]]) -> list[Measurement]:
        """One config after another: each evaluation already runs its items concurrently, and
        the simulated world is CPU-bound, so running configs side by side would not be faster."""
        return [await self.measure(label, cfg) for label, cfg in labelled]

    def paired(self, a: Measurement, b: Measurement) -> PairedResult | None:
        """``a - b`` on the items both scored (paired bootstrap CI, sign test), in 0-1 units
        of the per-item score; ``None`` with fewer than 2 shared items."""
        shared = [i for i in self.dataset.ids if i in a.values and i in b.values]
        if len(shared) < 2:
            return None
        return paired_comparison([a.values[i] for i in shared], [b.values[i] for i in shared],
                                 seed=self.opts.seed)

    def describe(self) -> str:
        """One line: what was measured, on what, judged how."""
        o = self.opts
        subset = (f"{len(self.dataset)} of {len(self.full)} items (seed {o.seed})"
                  if len(self.dataset) < len(self.full) else f"all {len(self.full)} items")
        judge = f", judge {o.judge_model}" if o.is_judged else ""
        where = f"backend {o.backend}" + (f" at {o.base_url}" if o.base_url else "")
        return (f"data: {self.full.name} ({subset}); scorer: {o.scorer}{judge}; "
                f"quality = {o.quality_name}; {where}; catalog: {self.catalog.source}")


T = TypeVar("T")


def run_bench(opts: AnalysisOptions, body: Callable[[Bench], Awaitable[T]]) -> T:
    """Open a bench, await ``body(bench)`` and close it, from synchronous code."""
    async def go() -> T:
        async with Bench(opts) as bench:
            return await body(bench)
    return asyncio.run(go())


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` ("not installed" for a missing one): what made a file."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---- stable numbers ------------------------------------------------------------------------

#: Significant digits every number an analysis writes keeps (results.json, the pages' figures).
#: Dollars keep 6: a cheap model costs $7e-05 an item and sums of such must still add up.
#: Everything else (rates in %, seconds, p-values, correlations) keeps 4, more than any CI
#: here resolves. Few enough digits that last-digit float noise (another CPU's BLAS, another
#: summation order inside numpy) never reaches the files, so the same inputs give the same bytes.
#: Text (tables, notes, the README's blocks) shows fewer digits still (``fmt_ci``, ``fmt_usd``,
#: ``fmt_paired``), formatted from the exact values so that no number is rounded twice.
DIGITS = 4
USD_DIGITS = 6


def rounded(x: float, digits: int = DIGITS) -> float:
    """``x`` to ``digits`` significant digits, through its decimal text so that one double
    always gives one result. NaN and infinities pass through (``stable`` turns them into null)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def digits_for(key: str) -> int:
    """The digits a number keeps, by the name it is written under: ``*usd*`` are dollars."""
    return USD_DIGITS if "usd" in key.lower() else DIGITS


def stable(obj: Any, key: str = "") -> Any:
    """A JSON-ready copy of ``obj`` with every float ``rounded`` by ``digits_for`` its key
    (the nearest enclosing one, for lists), NaN and infinities as None, tuples as lists.
    Rounding an already rounded number changes nothing, so this can be applied at every writer."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, Mapping):
        return {k: stable(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [stable(v, key) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return stable(obj.tolist(), key)
    if isinstance(obj, float):
        return rounded(obj, digits_for(key)) if math.isfinite(obj) else None
    return obj


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """``payload`` as indented JSON with ``stable`` numbers, keys in the order given."""
    path.write_text(json.dumps(stable(payload), indent=2) + "\n", encoding="utf-8")


def stable_figure(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` whose numbers are ``stable`` (error-bar lengths, positions, values);
    the template is left alone: its numbers are plotly's constants, not ours."""
    d = fig.to_dict()
    template = d.get("layout", {}).pop("template", None)
    d = stable(d)
    if template is not None:
        d["layout"]["template"] = template
    return go.Figure(d)


# ---- formatting ----------------------------------------------------------------------------

def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def fmt_ci(mean: float, low: float, high: float, digits: int = 1) -> str:
    if math.isnan(mean):
        return "n/a"
    if math.isnan(low) or math.isnan(high):
        return f"{mean:.{digits}f} [no CI]"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def fmt_paired(p: PairedResult | None) -> str:
    """A paired difference in points (per-item score x 100) with its CI and sign-test p."""
    if p is None:
        return "n/a"
    d = p.diff
    return (f"{100 * p.mean_diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] "
            f"(p={p.sign_test_p:.2g})") if d.has_interval else f"{100 * p.mean_diff:+.1f}"


def paired_dict(p: PairedResult | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"mean_diff_points": 100 * p.mean_diff, "low": _clean(100 * p.diff.low),
            "high": _clean(100 * p.diff.high), "wins": p.wins, "losses": p.losses, "ties": p.ties,
            "sign_test_p": p.sign_test_p, "n": p.n}


def fmt_usd(x: float) -> str:
    return f"${x:.6f}"


def short(model: str) -> str:
    return model.rsplit("/", 1)[-1]


def error_y(ms: Sequence[Measurement]) -> dict[str, Any]:
    """Asymmetric error bars from the CIs (zero where there is no interval)."""
    def gap(a: float, b: float) -> float:
        return 0.0 if math.isnan(a) or math.isnan(b) else max(0.0, a - b)
    return {"type": "data", "symmetric": False,
            "array": [gap(m.high, m.quality) for m in ms],
            "arrayminus": [gap(m.quality, m.low) for m in ms]}


def sim_suffix(simulated: bool) -> str:
    return " (simulated)" if simulated else ""


# ---- outputs -------------------------------------------------------------------------------

def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; ``|`` inside a cell is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|",
                      *(line(r) for r in rows)])


@dataclass(frozen=True)
class Table:
    """One table, written both to summary.md and to the HTML page."""

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", markdown_table(self.headers, self.rows)]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return (f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{note}")


#: The README beside the analysis folders; each analysis rewrites its own block in it.
README = "README.md"


def readme_markers(name: str) -> tuple[str, str]:
    """The lines around analysis ``name``'s generated block in the README."""
    return (f"<!-- generated by analysis/{name}.py (or run_all.py): edits here are overwritten -->",
            f"<!-- end of generated {name} -->")


def replace_readme_block(path: Path, name: str, block: str) -> bool:
    """Put ``block`` between ``name``'s markers in the README at ``path``; False (and nothing
    written) when the file or its markers are missing, so outputs written elsewhere leave it be."""
    if not path.is_file():
        return False
    text = path.read_text("utf-8")
    begin, end = readme_markers(name)
    if begin not in text:
        return False
    head, rest = text.split(begin, 1)
    if end not in rest:
        raise ConfigError(f"{path}: {begin!r} has no {end!r} after it", field=name)
    new = f"{head}{begin}\n{block}\n{end}{rest.split(end, 1)[1]}"
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


@dataclass(frozen=True)
class AnalysisOutput:
    """What an analysis produced: its files, its figures and its numbers (``data``)."""

    name: str
    html_path: Path
    summary_path: Path
    json_path: Path
    figures: tuple[go.Figure, ...]
    tables: tuple[Table, ...]
    data: Mapping[str, Any]
    elapsed_s: float


_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222}h1{font-size:1.5em}h3{margin-top:1.6em}
.banner{background:#fff4d6;border:1px solid #e0b84c;padding:.6em 1em;border-radius:4px}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;
text-align:left}th{background:#f2f2f2}.note,.meta{color:#555;font-size:.9em}"""


#: One local copy of plotly.js beside the analysis folders, shared by every page: each page
#: still opens offline, and the repository holds plotly.js once instead of once per page.
PLOTLY_JS = "plotly.min.js"


def _figure_html(fig: go.Figure, div_id: str, js: str | bool) -> str:
    # A fixed div id keeps the committed example pages byte-stable across re-runs.
    return pio.to_html(fig, full_html=False, include_plotlyjs=js, include_mathjax=False,
                       config=_PLOTLY_CONFIG, div_id=div_id)


def write_shared_plotly(folder: Path) -> Path:
    """Write ``plotly.min.js`` into ``folder`` unless the same version is already there."""
    path = folder / PLOTLY_JS
    js = get_plotlyjs()
    if not path.exists() or path.read_text("utf-8") != js:
        path.write_text(js, encoding="utf-8")
    return path


def page_html(title: str, intro: Sequence[str], figures: Sequence[go.Figure],
              tables: Sequence[Table], notes: Sequence[str], simulated: bool, slug: str) -> str:
    """A page that loads plotly.js once from ``../plotly.min.js`` (a local file; no CDN)."""
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if simulated:
        parts.append(f"<p class='banner'>{html.escape(SIMULATED_BANNER)}</p>")
    parts += [f"<p class='meta'>{html.escape(line)}</p>" for line in intro]
    for i, fig in enumerate(figures):
        parts.append(_figure_html(fig, f"{slug}-fig-{i + 1}", js=f"../{PLOTLY_JS}" if i == 0 else False))
    parts += [t.html() for t in tables]
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
                     + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_markdown(title: str, intro: Sequence[str], tables: Sequence[Table],
                     notes: Sequence[str], simulated: bool) -> str:
    lines = [f"# {title}", ""]
    if simulated:
        lines += [f"> {SIMULATED_BANNER}", ""]
    lines += [f"{line}  " for line in intro] + [""]
    for t in tables:
        lines += [t.markdown(), ""]
    if notes:
        lines += ["### Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def write_outputs(bench: Bench, *, title: str, figures: Sequence[go.Figure],
                  tables: Sequence[Table], notes: Sequence[str], data: Mapping[str, Any],
                  started: float, readme: str | None = None) -> AnalysisOutput:
    """Write ``<name>.html``, ``summary.md`` and ``results.json`` into the output directory,
    and ``readme`` (Markdown) between the analysis's markers in ``README.md`` one folder up.

    Titles get "(simulated)" when the numbers come from the simulated world; no timestamps or
    timings go into the files, and every number is ``stable``, so re-running an unchanged
    analysis leaves them unchanged, byte for byte, on any machine.
    """
    opts = bench.opts
    simulated = bench.simulated
    full_title = title + (" (simulated model world)" if simulated else "")
    intro = [bench.describe()]
    out = opts.out_dir
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / f"{opts.name}.html"
    write_shared_plotly(out.resolve().parent)
    html_path.write_text(page_html(full_title, intro, [stable_figure(f) for f in figures], tables,
                                   notes, simulated, opts.name), encoding="utf-8")
    summary_path = out / "summary.md"
    summary_path.write_text(summary_markdown(full_title, intro, tables, notes, simulated),
                            encoding="utf-8")
    json_path = out / "results.json"
    payload = stable({"analysis": opts.name, "simulated": simulated,
                      "description": bench.describe(), "data": opts.data, "scorer": opts.scorer,
                      "quality_name": opts.quality_name, "n_items": len(bench.dataset), **data})
    write_json(json_path, payload)
    if readme is not None:
        replace_readme_block(out.parent / README, opts.name, readme)
    return AnalysisOutput(opts.name, html_path, summary_path, json_path, tuple(figures),
                          tuple(tables), payload, time.perf_counter() - started)


def base_layout(fig: go.Figure, title: str, *, height: int = 480) -> go.Figure:
    fig.update_layout(title=title, template="plotly_white", height=height,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18},
                      margin={"t": 70, "b": 110})
    return fig
