"""The ``moa-search`` command. Thin: it parses options and calls the library.

Any ``MoASearchError`` becomes one line on stderr and exit status 2; so does a usage mistake (an
unknown option, a bad or missing value), followed by a usage hint; anything else is a bug and
keeps its traceback. Text is scrubbed of API key values (``keys.scrub``) before it is printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Awaitable, Callable, Optional, Sequence, TypeVar

import typer

from .backends import default_catalog, make_provider
from .catalog import Catalog
from .config import BUILTIN_PRESETS, LOCAL_PRESETS, MoAConfig, builtin_preset
from .datasets import Dataset, answer_key_pairs, resolve_dataset
from .errors import ConfigError, MoASearchError, WorkFailedError
from .local import DEFAULT_CATALOG_OUT, DEFAULT_N_CTX
from .keys import scrub
from .progress import item_progress
from .prompts import user_prompt
from .runner import DegradedPolicy, ItemTrace, Runner
from .terminal import (err, natural_width, new_table, num_column, out, paired_line, print_confirmation,
                       print_evaluation, print_lines, print_study, print_table, print_wrapped, study_json,
                       text_column)

if TYPE_CHECKING:
    from .evaluate import ConfigEvaluation
    from .providers.base import Provider
    from .confirm import Confirmation
    from .search import StudyResult
    from .study_spec import StudySpec
    from .serving import ConnectionLimits
from .price_db import DEFAULT_THRESHOLD
from .store import CallStore

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search Mixture-of-Agents LLM configurations for quality, cost and latency.")

DEFAULT_STORE = "runs/calls.db"
DEFAULT_JUDGE = "gpt-4-turbo-2024-04-09"  # AlpacaEval 2.0's annotator family

CatalogOpt = Annotated[Optional[Path], typer.Option("--catalog", help="Model catalog TOML (default: built-in).")]
StoreOpt = Annotated[str, typer.Option("--store", help="Call store (cache and log of every call): an SQLite file, or postgresql://USER@HOST/DB.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="'sim' (offline simulated world), 'http', or 'local' (llama.cpp servers started here; default catalog: the local one).")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="Send every model to this endpoint.")]
KeyEnvOpt = Annotated[str, typer.Option("--api-key-env", help="Env var holding the key for --base-url (its name, never the key).")]
RetriesOpt = Annotated[Optional[int], typer.Option("--retries", min=0, help="HTTP retries per call, one budget for 429/5xx/timeouts/malformed replies (default 6).")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--timeout", min=0.001, help="Seconds per HTTP request, every endpoint (default: the catalog's timeout_s, else 120).")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option("--concurrency", min=1, help="HTTP requests in flight per endpoint (default: the catalog's concurrency, else 16).")]
SimEndpointOpt = Annotated[bool, typer.Option("--sim-endpoint", help="The --base-url is `moa-search sim-server`: send sample indices so Self-MoA samples differ.")]
# Connection limits of `serve` and `sim-server` (serving.ConnectionLimits; None = its default).
HeaderTimeoutOpt = Annotated[Optional[float], typer.Option("--header-timeout", min=0.001, max=3600, help="Seconds a client has to send a request's head (default 10); then 408 and close.")]
BodyTimeoutOpt = Annotated[Optional[float], typer.Option("--body-timeout", min=0.001, max=3600, help="Seconds a client has to send a request's body after its head (default 30).")]
IdleTimeoutOpt = Annotated[Optional[float], typer.Option("--idle-timeout", min=0.001, max=3600, help="Seconds an idle keep-alive connection stays open (default 15).")]
MaxConnectionsOpt = Annotated[Optional[int], typer.Option("--max-connections", min=1, max=100_000, help="Open connections at most; more are closed on accept (default: half the open-file limit, at most 1024).")]
DegradedOpt = Annotated[DegradedPolicy, typer.Option("--degraded", help="An item that lost an agent (a proposer failed after its retries): 'score' it with the answer the others made (default here), or 'fail' it (studies' default). Counted either way.")]


def connection_limits(header_timeout: float | None, body_timeout: float | None, idle_timeout: float | None,
                      max_connections: int | None) -> "ConnectionLimits":
    from .serving import ConnectionLimits
    given = {"header_timeout_s": header_timeout, "body_timeout_s": body_timeout,
             "idle_timeout_s": idle_timeout, "max_connections": max_connections}
    return ConnectionLimits(**{name: value for name, value in given.items() if value is not None})


def load_catalog(path: Path | None, backend: str = "sim") -> Catalog:
    return Catalog.load(path) if path else default_catalog(backend)


def resolve_config(preset: str | None, config_file: Path | None) -> MoAConfig:
    from .preset import load_config_or_preset
    if bool(preset) == bool(config_file):
        raise ConfigError("give exactly one of --preset NAME or --config FILE")
    return builtin_preset(preset).config if preset else load_config_or_preset(config_file)  # type: ignore[arg-type]


def open_store(location: str, no_store: bool = False) -> "CallStore | None":
    return None if no_store else CallStore(location)


def resolve_config_ref(ref: str, catalog: Catalog) -> MoAConfig:
    """A built-in preset name, a config/preset file, or a catalog model id (run alone)."""
    if Path(ref).is_file():
        from .preset import load_config_or_preset
        return load_config_or_preset(ref)
    if ref in BUILTIN_PRESETS or ref in LOCAL_PRESETS:
        return builtin_preset(ref).config
    if ref in catalog:
        return MoAConfig.single(ref)
    raise ConfigError(f"{ref!r} is not a file, a built-in preset ({', '.join([*BUILTIN_PRESETS, *LOCAL_PRESETS])}) "
                      f"or a model in {catalog.source}")


def provider_for(backend: str, cat: Catalog, base_url: str | None, dataset: "Dataset | None" = None,
                 sim_endpoint: bool = False, retries: int | None = None, api_key_env: str = "",
                 timeout_s: float | None = None, concurrency: int | None = None,
                 models: "Sequence[str] | None" = None):
    """The simulated world is told the validation set's references (its answer key).
    ``models``: the ones the command calls (``--backend local`` starts servers for those)."""
    key = None
    if backend == "sim" and dataset is not None:
        from .providers.simulated import AnswerKey
        key = AnswerKey.from_pairs(answer_key_pairs(dataset))
    return make_provider(backend, cat, base_url=base_url, answer_key=key, sim_endpoint=sim_endpoint,
                         max_retries=retries, api_key_env=api_key_env, timeout_s=timeout_s,
                         max_concurrency=concurrency, models=models)


T = TypeVar("T")


def on_backend(make_provider_: "Callable[[], Provider]", store: str | None,
               work: "Callable[[Provider, CallStore | None], Awaitable[T]]") -> T:
    """Run ``work`` with a new provider, then the call store, in that order: a backend that
    cannot start (a local model's server) fails before the store is opened, so bad input leaves
    no store behind. The provider is closed — a local backend's servers stopped — whatever happens."""
    async def go() -> T:
        provider = make_provider_()
        try:
            return await work(provider, open_store(store) if store is not None else None)
        finally:
            await provider.aclose()
    return asyncio.run(go())


def models_needed(*configs: MoAConfig, scorer_opts: "dict[str, object] | None" = None) -> tuple[str, ...]:
    judge = (scorer_opts or {}).get("judge_model")
    return tuple(sorted({m for c in configs for m in c.models} | ({str(judge)} if judge else set())))


def scorer_options(scorer: str, judge_model: str | None, rel_tol: float | None = None,
                   abs_tol: float | None = None) -> dict[str, object]:
    tolerances = {k: v for k, v in (("rel_tol", rel_tol), ("abs_tol", abs_tol)) if v is not None}
    if tolerances and scorer != "numeric":
        raise ConfigError(f"--rel-tol/--abs-tol go with the numeric scorer, not {scorer!r}")
    if "judge" in scorer or scorer == "length_controlled":
        return {"judge_model": judge_model or DEFAULT_JUDGE}
    if judge_model:
        raise ConfigError(f"--judge-model goes with a judge scorer, not {scorer!r}")
    return tolerances


def trace_summary(trace: ItemTrace) -> dict[str, object]:
    return {
        "item_id": trace.item_id,
        "simulated": trace.simulated,
        "calls": trace.n_calls,
        "cached_calls": trace.n_cached,
        "failed_calls": trace.n_failed_calls,
        "degraded": trace.degraded,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "cost_usd": round(trace.cost_usd, 6),
        "paid_usd": round(trace.paid_usd, 6),
        "latency_s": round(trace.latency_s, 3),
        "wall_s": round(trace.wall_s, 3),
        "cost_by_role": {k: round(v, 6) for k, v in trace.cost_by_role().items()},
        "model_mismatches": [{"requested": a, "replied": b} for a, b in trace.model_mismatches()],
    }


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", help="The user prompt.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="moa | moa-gpt4o | moa-lite | local-self-moa (--backend local)")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Config file (JSON or TOML).")] = None,
    catalog: CatalogOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not cache or log calls.")] = False,
    backend: BackendOpt = "sim",
    base_url: BaseUrlOpt = None,
    sim_endpoint: SimEndpointOpt = False,
    retries: RetriesOpt = None,
    api_key_env: KeyEnvOpt = "",
    timeout: TimeoutOpt = None,
    concurrency: ConcurrencyOpt = None,
    degraded: DegradedOpt = DegradedPolicy.SCORE,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run one MoA config on one prompt; print the answer and its cost and latency."""
    cfg = resolve_config(preset, config_file)
    cat = load_catalog(catalog, backend)
    cat.check_config(cfg)
    messages = user_prompt(prompt)
    trace = on_backend(lambda: provider_for(backend, cat, base_url, sim_endpoint=sim_endpoint, retries=retries,
                                            api_key_env=api_key_env, timeout_s=timeout, concurrency=concurrency,
                                            models=cfg.models),
                       None if no_store else store,
                       lambda provider, call_store: Runner(provider, call_store, degraded=degraded).run_item(cfg, messages))
    summary = trace_summary(trace)
    if as_json:
        out.print_json(json.dumps({"answer": trace.answer, "error": trace.error,
                                   "config_hash": cfg.config_hash, **summary}))
    else:
        label = " (simulated)" if trace.simulated else ""
        if not trace.failed:
            out.print(trace.answer, markup=False, highlight=False, soft_wrap=True)
            if trace.degraded:
                _say_error(f"degraded: made without {trace.n_failed_calls} of its agents, first error: "
                           f"{trace.first_error()}", prefix="warning")
        out.rule()
        out.print(f"config {cfg.summary()} [{cfg.config_hash}]", markup=False)
        out.print(f"calls {trace.n_calls} ({trace.n_cached} from store, {trace.n_failed_calls} failed) · "
                  f"tokens {trace.prompt_tokens} in / {trace.completion_tokens} out", markup=False)
        out.print(f"cost ${trace.cost_usd:.6f}{label} (paid now ${trace.paid_usd:.6f}) · "
                  f"latency {trace.latency_s:.2f} s critical path{label}", markup=False)
        if not trace.simulated:  # the simulated world's latency is simulated; its wall time says nothing
            out.print(f"wall time here {trace.wall_s:.2f} s (with queueing and retries)", markup=False)
    if trace.failed:
        raise WorkFailedError(" ".join(f"item failed: {trace.error}".split()))


@app.command("sim-server")
def sim_server(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port on 127.0.0.1 (0 = any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    catalog: CatalogOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sleep: Annotated[bool, typer.Option("--sleep/--no-sleep", help="Really wait the simulated latency.")] = False,
    latency_ms: Annotated[Optional[float], typer.Option("--latency-ms", min=0, help="Fixed latency per call.")] = None,
    rate_429: Annotated[float, typer.Option("--fault-429", min=0, max=1)] = 0.0,
    rate_500: Annotated[float, typer.Option("--fault-500", min=0, max=1)] = 0.0,
    rate_timeout: Annotated[float, typer.Option("--fault-timeout", min=0, max=1)] = 0.0,
    rate_malformed: Annotated[float, typer.Option("--fault-malformed", min=0, max=1)] = 0.0,
    answer_key: Annotated[Optional[list[Path]], typer.Option("--answer-key", help="Validation set(s) whose references the simulated world knows.")] = None,
    header_timeout: HeaderTimeoutOpt = None,
    body_timeout: BodyTimeoutOpt = None,
    idle_timeout: IdleTimeoutOpt = None,
    max_connections: MaxConnectionsOpt = None,
) -> None:
    """Serve the simulated model world over an OpenAI-compatible HTTP API."""
    from .providers.simulated import SimulatedProvider
    from .sim_server import FaultConfig, serve_forever

    key = _answer_key(answer_key or [])
    provider = SimulatedProvider(load_catalog(catalog), answer_key=key, seed=seed)
    faults = FaultConfig(rate_429=rate_429, rate_500=rate_500, rate_timeout=rate_timeout,
                         rate_malformed=rate_malformed, seed=seed)
    err.print("serving the simulated model world (simulated answers, not real LLMs); "
              "the listening address is logged below", markup=False)
    serve_forever(provider, host, port, faults=faults, sleep_latency=sleep or latency_ms is not None,
                  latency_override_s=None if latency_ms is None else latency_ms / 1000,
                  limits=connection_limits(header_timeout, body_timeout, idle_timeout, max_connections))


DataOpt = Annotated[str, typer.Option("--data", help="Validation set: a JSONL path or a built-in name (math, choice, instruct).")]
ScorerOpt = Annotated[str, typer.Option("--scorer", help="exact | numeric | choice | regex | pairwise_judge | length_controlled | single_grade_judge")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge-model", help=f"Judge model for judge scorers (default {DEFAULT_JUDGE}).")]
ItemsOpt = Annotated[Optional[int], typer.Option("--n-items", min=1, help="Deterministic subsample of this many items (default: all).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Each value whole on one line, however wide the table (default: fit the terminal, or 80 columns when piped).")]
RelTolOpt = Annotated[Optional[float], typer.Option("--rel-tol", min=0, help="numeric scorer: relative tolerance for every item (default: integer references exact, others 1e-6).")]
AbsTolOpt = Annotated[Optional[float], typer.Option("--abs-tol", min=0, help="numeric scorer: absolute tolerance for every item (default: integer references exact, others 1e-9).")]


def _load_items(data: str, n_items: int | None, seed: int) -> Dataset:
    ds = resolve_dataset(data)
    if n_items is not None and n_items > len(ds):
        raise ConfigError(f"expected at most {len(ds)} (the items in {ds.name}), got {n_items}", field="--n-items")
    return ds if n_items is None else ds.subsample(n_items, seed)


async def _evaluate(cfg: MoAConfig, ds: Dataset, scorer: str, opts: dict[str, object], provider: "Provider",
                    call_store: CallStore | None, quiet: bool, label: str,
                    degraded: DegradedPolicy) -> "ConfigEvaluation":
    from .evaluate import DatasetEvaluator
    evaluator = DatasetEvaluator(provider, call_store, ds, scorer, opts, degraded=degraded)
    with item_progress(len(ds), label, quiet=quiet, console=err) as on_item:
        return await evaluator.evaluate_items(cfg, ds.ids, f"eval:{cfg.config_hash}", on_item=on_item)


@app.command("eval")
def eval_(
    data: DataOpt,
    scorer: ScorerOpt,
    preset: Annotated[Optional[str], typer.Option("--preset")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config")] = None,
    judge_model: JudgeOpt = None,
    n_items: ItemsOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    catalog: CatalogOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    backend: BackendOpt = "sim",
    base_url: BaseUrlOpt = None,
    sim_endpoint: SimEndpointOpt = False,
    retries: RetriesOpt = None,
    api_key_env: KeyEnvOpt = "",
    timeout: TimeoutOpt = None,
    concurrency: ConcurrencyOpt = None,
    degraded: DegradedOpt = DegradedPolicy.SCORE,
    rel_tol: RelTolOpt = None,
    abs_tol: AbsTolOpt = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON result here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure one config on a validation set: quality with CI, cost per item, latency.
    Exits 1, naming the first error, when no item could be scored."""
    cfg = resolve_config(preset, config_file)
    cat = load_catalog(catalog, backend)
    cat.check_config(cfg)
    ds = _load_items(data, n_items, seed)
    opts = scorer_options(scorer, judge_model, rel_tol, abs_tol)
    needed = models_needed(cfg, scorer_opts=opts)
    ev = on_backend(lambda: provider_for(backend, cat, base_url, ds, sim_endpoint, retries, api_key_env, timeout,
                                         concurrency, needed), store,
                    lambda provider, call_store: _evaluate(cfg, ds, scorer, opts, provider, call_store,
                                                           quiet or as_json, "eval", degraded))
    result = {"dataset": ds.name, "dataset_source": ds.source, **ev.to_dict()}
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        out.print_json(json.dumps(result))
    else:
        print_evaluation(ev)
        if out_file:
            out.print(f"  wrote {out_file}", markup=False)
    _fail_if_nothing_scored(ev)


def _fail_if_nothing_scored(ev: "ConfigEvaluation", label: str = "") -> None:
    failure = ev.total_failure()
    if failure is not None:
        raise WorkFailedError(label + failure)


@app.command()
def compare(
    a: Annotated[str, typer.Argument(help="Preset name, config/preset file, or model id.")],
    b: Annotated[str, typer.Argument(help="Preset name, config/preset file, or model id.")],
    data: DataOpt,
    scorer: ScorerOpt,
    judge_model: JudgeOpt = None,
    n_items: ItemsOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    catalog: CatalogOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    backend: BackendOpt = "sim",
    base_url: BaseUrlOpt = None,
    sim_endpoint: SimEndpointOpt = False,
    retries: RetriesOpt = None,
    api_key_env: KeyEnvOpt = "",
    timeout: TimeoutOpt = None,
    concurrency: ConcurrencyOpt = None,
    degraded: DegradedOpt = DegradedPolicy.SCORE,
    rel_tol: RelTolOpt = None,
    abs_tol: AbsTolOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired comparison of two configs on the same items (paired bootstrap, sign test).
    Exits 1, naming the first error, when a config had no item scored."""
    from .stats import paired_comparison
    cat = load_catalog(catalog, backend)
    cfg_a, cfg_b = resolve_config_ref(a, cat), resolve_config_ref(b, cat)
    cat.check_config(cfg_a)
    cat.check_config(cfg_b)
    ds = _load_items(data, n_items, seed)
    opts = scorer_options(scorer, judge_model, rel_tol, abs_tol)
    needed = models_needed(cfg_a, cfg_b, scorer_opts=opts)

    async def both(provider: "Provider", call_store: CallStore | None) -> "tuple[ConfigEvaluation, ConfigEvaluation]":
        return (await _evaluate(cfg_a, ds, scorer, opts, provider, call_store, quiet or as_json, "A", degraded),
                await _evaluate(cfg_b, ds, scorer, opts, provider, call_store, quiet or as_json, "B", degraded))

    ev_a, ev_b = on_backend(lambda: provider_for(backend, cat, base_url, ds, sim_endpoint, retries, api_key_env,
                                                 timeout, concurrency, needed), store, both)
    _fail_if_nothing_scored(ev_a, f"A ({a}): ")
    _fail_if_nothing_scored(ev_b, f"B ({b}): ")
    both = [i for i in ds.ids if ev_a.result.values.get(i) is not None and ev_b.result.values.get(i) is not None]
    if len(both) < 2:
        raise MoASearchError(f"only {len(both)} item(s) were scored for both configs; cannot compare")
    paired = paired_comparison([ev_a.result.values[i] for i in both], [ev_b.result.values[i] for i in both],
                               seed=seed)
    if as_json:
        out.print_json(json.dumps({"a": ev_a.to_dict(), "b": ev_b.to_dict(), "n_paired": paired.n,
                                   "mean_diff": paired.mean_diff, "diff_ci": [paired.diff.low, paired.diff.high],
                                   "sign_test_p": paired.sign_test_p, "wilcoxon_p": paired.wilcoxon_p,
                                   "wins": paired.wins, "losses": paired.losses, "ties": paired.ties}))
        return
    out.print(f"A = {a}", markup=False)
    print_evaluation(ev_a)
    out.print(f"B = {b}", markup=False)
    print_evaluation(ev_b)
    out.rule()
    out.print(paired_line(paired), markup=False)


@app.command()
def calls(
    store: StoreOpt = DEFAULT_STORE,
    study: Annotated[Optional[Path], typer.Option("--study", help="The call store of this study file (in place of --store).")] = None,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", help="With --study: where studies keep their storage and call store (default ./runs).")] = None,
    model: Annotated[Optional[str], typer.Option("--model")] = None,
    role: Annotated[Optional[str], typer.Option("--role", help="proposer | aggregator | judge")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Run id prefix, e.g. 'study:sim-demo/'.")] = None,
    cached: Annotated[Optional[bool], typer.Option("--cached/--paid", help="Only cache hits / only paid calls.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=0)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOpt = False,
) -> None:
    """List and filter the call store, newest first, with the spend of the selection."""
    cs = _viewed_store(store, study, runs_dir)
    rows = cs.calls(model=model, role=role, run_id_prefix=run, cached=cached, limit=limit)
    spend = cs.spend(model=model, role=role, run_id_prefix=run, cached=cached)  # what is listed
    if as_json:
        from dataclasses import asdict
        out.print_json(json.dumps({"calls": [asdict(r) for r in rows], "spend": asdict(spend)}))
        return
    flat = new_table(num_column("id"), "time", text_column("model"), "role", text_column("run"),
                     text_column("item"), "cached", num_column("paid $"), num_column("list $"),
                     num_column("latency s"), text_column("error"))
    stacked = new_table(num_column("id"), "time\nlatency s", text_column("model\nrole"),
                        text_column("run\nitem"), "cached", num_column("paid $\nlist $"), text_column("error"))
    for r in rows:
        cells = (str(r.id), r.ts[11:19], r.model.rsplit("/", 1)[-1], r.role, r.run_id or "", r.item_id or "",
                 "yes" if r.cached else "", f"{r.paid_usd:.5f}", f"{r.cost_usd:.5f}",
                 "" if r.latency_s is None else f"{r.latency_s:.2f}", r.error or "")
        flat.add_row(*cells)
        i, ts, name, role_, run_id, item, hit, paid, listed, latency, error = cells
        stacked.add_row(i, f"{ts}\n{latency}", f"{name}\n{role_}", f"{run_id}\n{item}", hit, f"{paid}\n{listed}",
                        error[:40])
    print_table(flat if wide or natural_width(flat) <= out.width else stacked, wide)
    out.print(f"{spend.calls} calls ({spend.cached_calls} from store, {spend.failed_calls} failed) · "
              f"paid ${spend.paid_usd:.4f} · saved by the store ${spend.saved_usd:.4f}", markup=False)


def _viewed_store(store: str, study: Path | None, runs_dir: Path | None) -> CallStore:
    """The store ``calls`` lists: ``--study``'s, else ``--store``. When the default store is
    absent the error names the studies' stores under ``runs/``, where a study's calls went."""
    from .store_backend import NoStoreError, StoreError
    if study is not None:
        if store != DEFAULT_STORE:
            raise typer.BadParameter("give --study or --store, not both", param_hint="--study")
        from .study_spec import load_study_spec
        return CallStore(str(load_study_spec(study, runs_dir=runs_dir).call_store), create=False)
    try:
        return CallStore(store, create=False)  # "no call store here yet" rather than a new one
    except NoStoreError:
        found = sorted(Path(store).parent.glob("*/calls.db"),  # one with its study file, newest first
                       key=lambda f: (not _study_file(f).is_file(), -f.stat().st_mtime))
        if store != DEFAULT_STORE or not found:
            raise
        first = found[0]
        tries = [f"--store {first}"]
        if _study_file(first).is_file():
            tries.insert(0, f"--study {_study_file(first)}")
        raise StoreError(f"no call store here; studies keep theirs in runs/<name>/calls.db "
                         f"({', '.join(str(f) for f in found)}): try {' or '.join(tries)}", path=store) from None


def _study_file(call_store: Path) -> Path:
    """``studies/NAME.toml`` for ``runs/NAME/calls.db``: where the README's studies live."""
    return Path("studies") / f"{call_store.parent.name}.toml"


@app.command()
def serve(
    preset_file: Annotated[str, typer.Argument(help="A preset JSON file (moa-preset/1), or a built-in preset's name (e.g. moa, moa-lite).")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks a free port; the URL is printed at startup.")] = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    backend: BackendOpt = "http",
    base_url: BaseUrlOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    token_env: Annotated[Optional[str], typer.Option("--token-env", help="Env var holding the bearer token clients must send.")] = None,
    sim_endpoint: SimEndpointOpt = False,
    api_key_env: KeyEnvOpt = "",
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "--endpoint-concurrency", min=1, help="Inner calls in flight per upstream endpoint (default: the catalog's concurrency, else 16).")] = None,
    timeout: TimeoutOpt = None,
    catalog: Annotated[Optional[Path], typer.Option("--catalog", help="Where a built-in preset's models are looked up, and with --backend local the catalog giving local models' GGUF files (default: the backend's built-in catalog).")] = None,
    header_timeout: HeaderTimeoutOpt = None,
    body_timeout: BodyTimeoutOpt = None,
    idle_timeout: IdleTimeoutOpt = None,
    max_connections: MaxConnectionsOpt = None,
) -> None:
    """Serve a preset as an OpenAI-compatible /v1/chat/completions endpoint (refuses to start
    when an API key the preset's models need is not set)."""
    import os
    from .preset import from_builtin, load_preset, preset_catalog
    from .server import require_keys, serve as serve_preset
    names = (*BUILTIN_PRESETS, *LOCAL_PRESETS)
    if Path(preset_file).is_file():
        p = load_preset(preset_file)
    elif preset_file in names:
        p = from_builtin(builtin_preset(preset_file), load_catalog(catalog, backend))
    else:
        raise ConfigError(f"{preset_file!r} is neither a preset file nor a built-in preset ({', '.join(names)})")
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"environment variable {token_env} is not set", field="--token-env")
    cat = preset_catalog(p)
    if backend == "local":  # a preset names its local models, not their weights
        from .local.provider import attach_local
        cat = attach_local(cat, load_catalog(catalog, backend))
    provider = make_provider(backend, cat, base_url=base_url, sim_endpoint=sim_endpoint, api_key_env=api_key_env,
                             max_concurrency=concurrency, timeout_s=timeout, models=p.config.models)
    require_keys(provider, p)  # before the store is opened: a refused start leaves nothing behind
    serve_preset(p, provider, host=host, port=port, store=open_store(store), api_key=token,
                 limits=connection_limits(header_timeout, body_timeout, idle_timeout, max_connections))


study_app = typer.Typer(no_args_is_help=True, help="Run, inspect and export searches over MoA configs.")
app.add_typer(study_app, name="study")
RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help="Where studies keep their storage and call store (default ./runs).")]


def _confirm(spec: "StudySpec", result: "StudyResult", trials: Sequence[int], quiet: bool,
             timeout: float | None, concurrency: int | None) -> "Confirmation":
    from .confirm import confirm_study, heldout_total
    from .study import EndpointOverrides
    with item_progress(heldout_total(spec, result, trials), "held-out", quiet=quiet, console=err) as on_item:
        return confirm_study(spec, result, trials, on_item=on_item,
                             overrides=EndpointOverrides(timeout, concurrency))


@study_app.command("run")
def study_run(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    workers: Annotated[int, typer.Option("--workers", min=1, help="Processes sharing the study.")] = 1,
    runs_dir: RunsDirOpt = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the HTML report here.")] = None,
    timeout: TimeoutOpt = None,
    concurrency: ConcurrencyOpt = None,
    no_confirm: Annotated[bool, typer.Option("--no-confirm", help="A constrained study with held-out items: do not check the pick on them at the end (`study confirm` does it later).")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
    wide: WideOpt = False,
) -> None:
    """Run (or resume) a study; print the Pareto front. A constrained study with held-out items
    then checks its pick on them (as `study confirm`; --no-confirm skips it). Exits 1, naming
    the first error, when trials were evaluated but not one item could be scored."""
    from .progress import trial_progress
    from .study import EndpointOverrides, run_study_file
    from .study_spec import load_study_spec
    optuna_quiet()
    spec = load_study_spec(study_file, runs_dir=runs_dir)
    stale, prices = _study_prices(spec)
    if stale:
        _say_error(stale, prefix="warning")
    with trial_progress(spec.budget.trials, quiet=quiet or as_json, console=err) as shown:
        result = run_study_file(study_file, runs_dir=runs_dir, workers=workers, on_trial=shown,
                                overrides=EndpointOverrides(timeout, concurrency), progress=shown.items)
    from .confirm import auto_skip_reason
    from .study import quality_note
    skip = "" if no_confirm or result.total_failure() is not None else auto_skip_reason(spec, result)
    note = quality_note(spec)
    if not as_json:
        print_study(result, spec.scorer.degraded, wide)
        if note:
            out.print(note, markup=False, highlight=False)
    conf, confirm_error = None, None
    if skip is None:
        try:  # the study is stored either way; its output and report must not be lost with the check
            conf = _confirm(spec, result, (), quiet or as_json, timeout, concurrency)
        except MoASearchError as exc:
            confirm_error = exc  # raised (one line, non-zero exit) once the rest is out
    if as_json:
        out.print_json(json.dumps({**study_json(result), "prices": prices, "quality_note": note,
                                   "heldout": conf.to_dict() if conf else None,
                                   "heldout_error": str(confirm_error) if confirm_error else None}))
    else:
        if conf is not None:
            print_confirmation(conf, result, wide)
        elif skip:
            out.print(skip, markup=False, highlight=False)
        out.print(prices, markup=False, highlight=False, soft_wrap=True)
    if report is not None:
        _write_report(study_file, runs_dir, report, quiet=as_json)
    if confirm_error is not None:
        raise confirm_error
    failure = result.total_failure()
    if failure is not None:
        raise WorkFailedError(failure)


def optuna_quiet() -> None:
    """Optuna's per-trial INFO lines would drown our own progress lines."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@study_app.command("show")
def study_show(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    runs_dir: RunsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wide: WideOpt = False,
) -> None:
    """Print a study's Pareto front, the cheapest config meeting the target, the spend, and the
    held-out check when one was made (`study confirm`)."""
    from .confirm import load_confirmation
    from .study import quality_note, study_result
    spec, result = study_result(study_file, runs_dir=runs_dir)
    conf = load_confirmation(spec)
    stale, prices = _study_prices(spec)
    if stale:
        _say_error(stale, prefix="warning")
    note = quality_note(spec)
    if as_json:
        out.print_json(json.dumps({**study_json(result), "prices": prices, "quality_note": note,
                                   "heldout": conf.to_dict() if conf else None}))
    else:
        print_study(result, spec.scorer.degraded, wide)
        if note:
            out.print(note, markup=False, highlight=False)
        if conf is not None:
            print_confirmation(conf, result, wide)
        out.print(prices, markup=False, highlight=False, soft_wrap=True)


@study_app.command("confirm")
def study_confirm(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    trial: Annotated[Optional[list[int]], typer.Option("--trial", min=0, metavar="N", help="Check this trial (repeatable) instead of the pick (constrained) or the Pareto front.")] = None,
    runs_dir: RunsDirOpt = None,
    timeout: TimeoutOpt = None,
    concurrency: ConcurrencyOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
    wide: WideOpt = False,
) -> None:
    """Check the chosen config(s) and the baseline on the study's held-out items: quality with
    CIs beside the dev numbers, each minus the baseline item by item. Served from the call store
    when repeated; stored for `study show`. Exits 2 when the study holds no items out."""
    from .confirm import heldout_data
    from .study import study_result
    optuna_quiet()
    spec, result = study_result(study_file, runs_dir=runs_dir)
    heldout_data(spec)  # one line, before anything runs, when nothing is held out
    conf = _confirm(spec, result, tuple(trial or ()), quiet or as_json, timeout, concurrency)
    if as_json:
        out.print_json(json.dumps(conf.to_dict()))
    else:
        print_confirmation(conf, result, wide)


AllowPromptChangeOpt = Annotated[bool, typer.Option("--allow-prompt-change", help="archon: export a 'moa'-style config anyway (Archon sends its own prompts); the file's notes say so.")]
ArchonModelTypeOpt = Annotated[Optional[list[str]], typer.Option("--archon-model-type", metavar="MODEL=TYPE", help="archon: Archon's generator for a model, e.g. MODEL=OpenAI_API to reach another endpoint through OPENAI_BASE_URL (repeatable).")]


@study_app.command("export")
def study_export(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the preset files.")] = Path("presets"),
    trial: Annotated[Optional[int], typer.Option("--trial", min=0)] = None,
    pareto: Annotated[bool, typer.Option("--pareto", help="Every Pareto-optimal config.")] = False,
    cheapest: Annotated[bool, typer.Option("--cheapest-meeting-target")] = False,
    fmt: Annotated[str, typer.Option("--format", help="preset | archon | moa-reference | standalone")] = "preset",
    runs_dir: RunsDirOpt = None,
    allow_prompt_change: AllowPromptChangeOpt = False,
    archon_model_type: ArchonModelTypeOpt = None,
) -> None:
    """Write presets (moa-preset/1 JSON) or another runtime's format for chosen trials."""
    from .exporters import EXPORT_SUFFIXES, write_export
    from .study import select_trials, study_result, trial_preset
    options = _export_options(fmt, allow_prompt_change, archon_model_type)
    spec, result = study_result(study_file, runs_dir=runs_dir)
    cat = spec.load_catalog()
    for record in select_trials(result, trial=trial, pareto=pareto, cheapest_meeting_target=cheapest):
        preset = trial_preset(spec, result, record, cat)
        path = write_export(out_dir / f"{preset.name}{EXPORT_SUFFIXES[fmt]}", preset, fmt, **options)
        out.print(f"wrote {path}", markup=False)


def _export_options(fmt: str, allow_prompt_change: bool, archon_model_type: list[str] | None) -> dict[str, object]:
    """The exporters' options from the flags; Archon's only go with --format archon."""
    from .exporters import EXPORT_FORMATS
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}", field="--format")
    if fmt != "archon":
        if allow_prompt_change or archon_model_type:
            raise typer.BadParameter("goes with --format archon", param_hint="--allow-prompt-change / --archon-model-type")
        return {}
    types: dict[str, str] = {}
    for value in archon_model_type or []:
        model, sep, kind = value.rpartition("=")
        if not sep or not model or not kind:
            raise typer.BadParameter(f"expected MODEL=TYPE (e.g. my-model=OpenAI_API), got {value!r}",
                                     param_hint="--archon-model-type")
        types[model] = kind
    return {"allow_prompt_change": allow_prompt_change, "model_types": types}


preset_app = typer.Typer(no_args_is_help=True, help="Presets: export built-in or saved presets to other runtimes.")
app.add_typer(preset_app, name="preset")


@preset_app.command("export")
def preset_export(
    ref: Annotated[str, typer.Argument(metavar="NAME|FILE", help="A built-in preset (moa, moa-gpt4o, moa-lite, ...), a preset file or a config file.")],
    fmt: Annotated[str, typer.Option("--format", help="preset | archon | moa-reference | standalone")] = "preset",
    out_file: Annotated[Optional[Path], typer.Option("--out", help="File to write (default: print it).")] = None,
    catalog: CatalogOpt = None,
    prompt_style: Annotated[Optional[str], typer.Option("--prompt-style", help="moa | archon: the same agents in this prompt style (a new config: measured numbers are dropped).")] = None,
    base_url: Annotated[Optional[str], typer.Option("--base-url", help="Every model at this OpenAI-compatible endpoint (archon: model_type OpenAI_API, run with OPENAI_BASE_URL).")] = None,
    allow_prompt_change: AllowPromptChangeOpt = False,
    archon_model_type: ArchonModelTypeOpt = None,
) -> None:
    """Write one preset in a runtime's format: the built-ins by name, or a file."""
    from .exporters import export_text, write_export
    from .config import read_config_data
    from .preset import from_builtin, from_config, load_config_or_preset, load_preset, restyled
    options = _export_options(fmt, allow_prompt_change, archon_model_type)
    _check_prompt_style(prompt_style)
    cat = load_catalog(catalog)
    path = Path(ref)
    if path.is_file():
        data = read_config_data(path)
        preset = load_preset(path) if isinstance(data, dict) and "format" in data else \
            from_config(_slug(path.name.split(".")[0]), load_config_or_preset(path), cat)
    else:
        preset = from_builtin(builtin_preset(ref), cat)
    preset = restyled(preset, prompt_style=prompt_style, base_url=base_url)
    if base_url and fmt == "archon":  # Archon reaches another endpoint only through its OpenAI generator
        options["model_types"] = {**{m: "OpenAI_API" for m in preset.config.models}, **options["model_types"]}
    if out_file is None:
        out.print(export_text(preset, fmt, **options), markup=False, highlight=False, soft_wrap=True, end="")
    else:
        out.print(f"wrote {write_export(out_file, preset, fmt, **options)}", markup=False)


@app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(metavar="FILE", help="Config files of another runtime.")],
    source: Annotated[str, typer.Option("--from", help="archon (ScalingIntelligence/Archon JSON configs)")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the preset files.")] = Path("presets"),
    catalog: CatalogOpt = None,
    prompt_style: Annotated[Optional[str], typer.Option("--prompt-style", help="moa | archon (default: what the file runs, archon unless it records otherwise).")] = None,
) -> None:
    """Write moa-preset/1 files from another runtime's configs; each refusal is one line with its
    reason, and the command exits 2 when any file was refused."""
    from .importers import CONFIG_IMPORTERS
    from .importers.archon import catalog_entries
    from .preset import from_config, write_preset
    read = CONFIG_IMPORTERS.get(source)
    if read is None:
        raise typer.BadParameter(f"expected one of {list(CONFIG_IMPORTERS)}, got {source!r}", param_hint="--from")
    _check_prompt_style(prompt_style)  # a usage error, not a reason to refuse every file
    cat = load_catalog(catalog)
    refused = 0
    sources: dict[Path, Path] = {}  # preset file written -> the file it came from
    for path in files:
        imported = None
        try:
            imported = read(path, cat, prompt_style=prompt_style)
            if imported.missing:
                names = ", ".join(m for m, _ in imported.missing)
                raise ConfigError(f"not in the catalog ({cat.source}): {names}; add the entries printed "
                                  "below (or pass --catalog)", source=str(path))
            preset = from_config(_slug(path.name.split(".")[0]), imported.config, cat,
                                 description=f"Imported from Archon config {path.name}")
            target = out_dir / f"{preset.name}.json"
            if target in sources:  # two files of one name: the second would silently replace the first
                raise ConfigError(f"{target} was just written from {sources[target]}; import this "
                                  "file with another --out", source=str(path))
            written = write_preset(target, preset)
            sources[target] = path
        except MoASearchError as exc:
            refused += 1
            _say_error(str(exc), prefix="refused")
            if imported is not None and imported.missing:
                print_lines(catalog_entries(imported.missing))
            continue
        print_wrapped(f"imported {path} -> {written}: {imported.config.summary()} "
                       f"[{imported.config.config_hash}]", "    ")
        for note in imported.notes:
            print_wrapped(f"  note: {note}", "        ")
    out.print(f"{len(files) - refused} imported, {refused} refused", markup=False)
    if refused:
        raise typer.Exit(2)


def _check_prompt_style(value: str | None) -> None:
    """``--prompt-style``: one of the config's prompt styles, checked before any file is read."""
    from .config import PROMPT_STYLES
    if value is not None and value not in PROMPT_STYLES:
        raise typer.BadParameter(f"expected one of {list(PROMPT_STYLES)}, got {value!r}",
                                 param_hint="--prompt-style")


def _slug(text: str) -> str:
    """A preset name from a file name: letters, digits, '.', '_', '-', at most 64."""
    import re
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:64]
    return slug or "imported"


def _write_report(study_file: Path, runs_dir: Path | None, path: Path, quiet: bool = False,
                  png_dir: Path | None = None) -> None:
    from .report import write_study_report
    written = write_study_report(study_file, path, runs_dir=runs_dir, png_dir=png_dir)
    if not quiet:
        out.print(f"wrote report {written}", markup=False)


@app.command()
def report(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    out_file: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    runs_dir: RunsDirOpt = None,
    png_dir: Annotated[Optional[Path], typer.Option("--png", help="Also write static PNGs here (needs kaleido).")] = None,
) -> None:
    """Write a self-contained HTML report of a study (Plotly, opens offline)."""
    _write_report(study_file, runs_dir, out_file, png_dir=png_dir)


data_app = typer.Typer(no_args_is_help=True, help="Validation sets: import published benchmark files.")
app.add_typer(data_app, name="data")
FieldOpt = Annotated[Optional[str], typer.Option(help="jsonl/json/csv: the source field (dotted for nested JSON) read into this item field.")]


@data_app.command("import")
def data_import(
    src: Annotated[Path, typer.Argument(metavar="SRC", help="The benchmark file, in its published layout.")],
    fmt: Annotated[str, typer.Option("--format", help="gsm8k | arc | openbookqa | mmlu | alpacaeval | alpacaeval_annotations | mtbench | jsonl | json | csv")],
    out_file: Annotated[Path, typer.Option("--out", help="The validation set (JSONL) to write.")],
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="alpacaeval: a reference model's model_outputs.json; its outputs become baseline_output.")] = None,
    id_field: FieldOpt = None,
    prompt_field: FieldOpt = None,
    reference_field: FieldOpt = None,
    baseline_field: FieldOpt = None,
    category_field: FieldOpt = None,
) -> None:
    """Convert a benchmark file into a validation set that `eval`, `compare` and studies read.
    MT-Bench imports its first turn only (every turn is kept in metadata)."""
    from .datasets import write_dataset
    from .importers import ImportOptions, import_file
    if str(out_file) == "-":
        raise typer.BadParameter("expected a file to write, not '-'", param_hint="--out")
    opts = ImportOptions(baseline, id_field, prompt_field, reference_field, baseline_field, category_field)
    ds = import_file(src, fmt, opts, name=out_file.stem)
    write_dataset(ds, out_file)
    fields = ", ".join(f"{k} {v}" for k, v in ds.schema_summary().items() if v and k != "items")
    out.print(f"imported {len(ds)} items ({fmt}) -> {out_file}\n  items with: {fields}", markup=False)


local_app = typer.Typer(no_args_is_help=True, help="Local GGUF models served with llama.cpp (pip install -e '.[local]').")
app.add_typer(local_app, name="local")


@local_app.command("serve")
def local_serve(
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", help="Serve every .gguf file below this folder.")] = None,
    gguf: Annotated[Optional[list[str]], typer.Option("--gguf", help="A GGUF file to serve, as PATH or PATH=ALIAS (repeatable).")] = None,
    n_threads: Annotated[int, typer.Option("--n-threads", min=1, help="Threads per server.")] = 1,
    n_ctx: Annotated[int, typer.Option("--n-ctx", min=16, help="Context window per server (the catalog's context_window).")] = DEFAULT_N_CTX,
    chat_format: Annotated[Optional[str], typer.Option("--chat-format", help="llama.cpp chat format, e.g. chatml (default: the GGUF's template).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", min=1, max=65535, help="First server's port; the next count up (default: free ports).")] = None,
    catalog_out: Annotated[Path, typer.Option("--catalog-out", help="Catalog TOML to write for the served models.")] = DEFAULT_CATALOG_OUT,
) -> None:
    """Serve local GGUF models (installed weight packages, --models-dir, --gguf) until Ctrl-C."""
    from .local.discover import find_models
    from .local.serve import ServeOptions, serve_local
    from .local.state import state_path

    def echo(line: str) -> None:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
        out.file.flush()

    serve_local(find_models(models_dir, gguf or ()),
                ServeOptions(n_ctx=n_ctx, n_threads=n_threads, chat_format=chat_format, port=port,
                             catalog_out=catalog_out), state=state_path(), echo=echo)


catalog_app = typer.Typer(no_args_is_help=True, help="Models and prices from the genai-prices database (offline).")
app.add_typer(catalog_app, name="catalog")


@catalog_app.command("list")
def catalog_list(
    provider: Annotated[Optional[str], typer.Option("--provider", help="Only this provider (e.g. together, openai).")] = None,
    search: Annotated[Optional[str], typer.Option("--search", help="Only model ids containing this text.")] = None,
    catalog: CatalogOpt = None,
) -> None:
    """Models the price database knows, USD per 1M tokens; * marks those already in the catalog."""
    from . import price_db
    quotes = price_db.models(provider, search)
    in_catalog = price_db.catalog_entries_in_db(load_catalog(catalog).models)
    print_lines(price_db.list_lines(quotes, in_catalog))
    print_lines([f"{len(quotes)} models · {price_db.source()}"])


@catalog_app.command("add")
def catalog_add(
    refs: Annotated[list[str], typer.Argument(metavar="PROVIDER:MODEL...", help="e.g. together:meta-llama/Llama-3.3-70B-Instruct-Turbo")],
    catalog: Annotated[Path, typer.Option("--catalog", help="Catalog TOML to add to (created when absent; default ./catalog.toml).")] = Path("catalog.toml"),
    context_window: Annotated[Optional[int], typer.Option("--context-window", min=1, help="Input limit in tokens for the models the database gives none for.")] = None,
) -> None:
    """Add complete entries (provider table, price = "genai-prices", context window) to a catalog.
    Exits 1 when the database does not know a model."""
    from . import price_db
    from .inputs import parse_toml, read_text, write_text_atomic
    try:
        entries = [price_db.plan_entry(ref, context_window) for ref in refs]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="PROVIDER:MODEL / --context-window") from None
    except price_db.NotInDatabaseError as exc:
        _say_error(str(exc))
        raise typer.Exit(1) from None
    text = read_text(catalog, "catalog") if catalog.exists() else (
        f"# Models at today's prices, written by `moa-search catalog add` from {price_db.source()}.\n")
    new_text, skipped = price_db.add_to_catalog(text, entries, dict(parse_toml(text, str(catalog))))
    Catalog.from_toml_text(new_text, source=str(catalog), base_dir=catalog.parent)  # loads, or nothing is written
    write_text_atomic(catalog, new_text, "catalog")
    for model in skipped:
        _say_error(f"{model!r} is already in {catalog}; left as it is", prefix="note")
    print_lines([f"{catalog}: added {len(entries) - len(skipped)} model(s)"])


@catalog_app.command("check")
def catalog_check(
    catalog: CatalogOpt = None,
    threshold: Annotated[float, typer.Option("--threshold", min=0.0, help="Relative difference that counts as changed.")] = DEFAULT_THRESHOLD,
) -> None:
    """Each typed price in the catalog against the database today; exits 1 when any differs by
    more than --threshold or a model is unknown to the database."""
    from . import price_db
    cat = load_catalog(catalog)
    diffs = price_db.check(cat, threshold)
    if diffs:
        print_lines(price_db.check_lines(diffs))
    print_lines([f"{len({d.model for d in diffs})} of {len(cat.models)} models differ by more than {threshold * 100:g}% "
                  f"from {price_db.source()} or are not in it"])
    if diffs:
        raise typer.Exit(1)


def _study_prices(spec: "StudySpec") -> tuple[str | None, str]:
    """For the models a study can use: the one-line warning when their typed prices differ from
    the price database by more than ``catalog check``'s threshold (None when not), and the
    footer naming the price table its costs come from. Offline: the installed database only."""
    from . import price_db
    cat = spec.load_catalog()
    target = spec.objectives.target
    judge = spec.scorer.options.get("judge_model")
    models = {*spec.space.models, *spec.space.aggregators, *([str(judge)] if judge else []),
              *(target.baseline_config.models if target and target.baseline_config else ())}
    path = str(spec.catalog_path) if spec.catalog_path else None
    return price_db.stale_warning(cat, models, catalog_path=path), price_db.price_tables(cat, models)


def _answer_key(paths: list[Path]) -> "object | None":
    if not paths:
        return None
    from .datasets import load_dataset
    from .providers.simulated import AnswerKey
    pairs = [p for path in paths for p in answer_key_pairs(load_dataset(path))]
    return AnswerKey.from_pairs(pairs)


def _say_error(message: str, prefix: str = "error") -> None:
    err.print(f"{prefix}: {scrub(message)}", markup=False, highlight=False, soft_wrap=True)


def _command_path(argv: list[str] | None) -> str:
    """``moa-search study run`` from the words of ``argv`` that name (sub)commands: for usage
    errors raised before click made a context for the command (e.g. an option missing its value)."""
    command: object = typer.main.get_command(app)
    words = ["moa-search"]
    for arg in sys.argv[1:] if argv is None else argv:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None:
            break
        command, words = sub, words + [arg]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """The entry point: exit 0 on success, 1 when the work failed, 2 for bad input or usage.

    typer >= 0.29 bundles its own copy of click (``typer._click``); its exceptions are not the
    ``click`` package's, so they are caught here by typer's classes (pinned in pyproject.toml).
    """
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    try:
        code = app(args=argv, standalone_mode=False, prog_name="moa-search")
    except WorkFailedError as exc:  # valid input, nothing came of it: every call failed, ...
        _say_error(str(exc))
        return 1
    except MoASearchError as exc:
        _say_error(str(exc))
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except NoArgsIsHelpError:  # bare `moa-search` / `moa-search study`: typer printed the help
        return 0
    except UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else _command_path(argv)
        usage = exc.ctx.get_usage() if exc.ctx is not None else f"Usage: {path} [OPTIONS] ..."
        _say_error(exc.format_message())
        err.print(f"{usage}  (see '{path} --help')", markup=False, highlight=False, soft_wrap=True)
        return exc.exit_code
    except ClickException as exc:  # e.g. a file option that cannot be opened
        _say_error(exc.format_message())
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
