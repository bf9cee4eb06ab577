"""The ``moa-search`` command. Thin: it parses options and calls the library.

Any ``MoASearchError`` becomes one line on stderr and exit status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from .backends import make_provider
from .catalog import Catalog
from .config import BUILTIN_PRESETS, MoAConfig, builtin_preset, load_config_file
from .datasets import Dataset, answer_key_pairs, resolve_dataset
from .errors import ConfigError, MoASearchError
from .progress import item_progress
from .prompts import user_prompt
from .runner import ItemTrace, Runner

if TYPE_CHECKING:
    from .evaluate import ConfigEvaluation
    from .search import StudyResult, TrialRecord
from .store import CallStore

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Search Mixture-of-Agents LLM configurations for quality, cost and latency.")
# Wider than rich's 80-column default when piped, so tables of configs stay readable in logs.
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)

DEFAULT_STORE = Path("runs/calls.db")
DEFAULT_JUDGE = "gpt-4-turbo-2024-04-09"  # AlpacaEval 2.0's annotator family

CatalogOpt = Annotated[Optional[Path], typer.Option("--catalog", help="Model catalog TOML (default: built-in).")]
StoreOpt = Annotated[Path, typer.Option("--store", help="SQLite call store (cache and log of every call).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="'sim' (offline simulated world) or 'http'.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="Send every model to this endpoint.")]
KeyEnvOpt = Annotated[str, typer.Option("--api-key-env", help="Env var holding the key for --base-url (its name, never the key).")]
RetriesOpt = Annotated[Optional[int], typer.Option("--retries", help="HTTP retries per call on 429/5xx/timeouts (default 6).")]
SimEndpointOpt = Annotated[bool, typer.Option("--sim-endpoint", help="The --base-url is `moa-search sim-server`: send sample indices so Self-MoA samples differ.")]


def load_catalog(path: Path | None) -> Catalog:
    return Catalog.load(path) if path else Catalog.default()


def resolve_config(preset: str | None, config_file: Path | None) -> MoAConfig:
    if bool(preset) == bool(config_file):
        raise ConfigError("give exactly one of --preset NAME or --config FILE")
    return builtin_preset(preset).config if preset else load_config_file(config_file)  # type: ignore[arg-type]


def open_store(path: Path, no_store: bool = False) -> "CallStore | None":
    return None if no_store else CallStore(path)


def resolve_config_ref(ref: str, catalog: Catalog) -> MoAConfig:
    """A built-in preset name, a config/preset file, or a catalog model id (run alone)."""
    if Path(ref).is_file():
        return load_config_file(ref)
    if ref in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[ref].config
    if ref in catalog:
        return MoAConfig.single(ref)
    raise ConfigError(f"{ref!r} is not a file, a built-in preset ({', '.join(BUILTIN_PRESETS)}) "
                      f"or a model in {catalog.source}")


def provider_for(backend: str, cat: Catalog, base_url: str | None, dataset: "Dataset | None" = None,
                 sim_endpoint: bool = False, retries: int | None = None, api_key_env: str = ""):
    """The simulated world is told the validation set's references (its answer key)."""
    key = None
    if backend == "sim" and dataset is not None:
        from .providers.simulated import AnswerKey
        key = AnswerKey.from_pairs(answer_key_pairs(dataset))
    return make_provider(backend, cat, base_url=base_url, answer_key=key, sim_endpoint=sim_endpoint,
                         max_retries=retries, api_key_env=api_key_env)


def scorer_options(scorer: str, judge_model: str | None) -> dict[str, object]:
    if "judge" in scorer or scorer == "length_controlled":
        return {"judge_model": judge_model or DEFAULT_JUDGE}
    if judge_model:
        raise ConfigError(f"--judge-model goes with a judge scorer, not {scorer!r}")
    return {}


def trace_summary(trace: ItemTrace) -> dict[str, object]:
    return {
        "item_id": trace.item_id,
        "simulated": trace.simulated,
        "calls": trace.n_calls,
        "cached_calls": trace.n_cached,
        "failed_calls": trace.n_failed_calls,
        "prompt_tokens": trace.prompt_tokens,
        "completion_tokens": trace.completion_tokens,
        "cost_usd": round(trace.cost_usd, 6),
        "paid_usd": round(trace.paid_usd, 6),
        "latency_s": round(trace.latency_s, 3),
        "cost_by_role": {k: round(v, 6) for k, v in trace.cost_by_role().items()},
    }


@app.command()
def run(
    prompt: Annotated[str, typer.Option("--prompt", help="The user prompt.")],
    preset: Annotated[Optional[str], typer.Option("--preset", help="moa | moa-gpt4o | moa-lite")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="Config file (JSON or TOML).")] = None,
    catalog: CatalogOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not cache or log calls.")] = False,
    backend: BackendOpt = "sim",
    base_url: BaseUrlOpt = None,
    sim_endpoint: SimEndpointOpt = False,
    retries: RetriesOpt = None,
    api_key_env: KeyEnvOpt = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run one MoA config on one prompt; print the answer and its cost and latency."""
    cfg = resolve_config(preset, config_file)
    cat = load_catalog(catalog)
    cat.check_config(cfg)
    messages = user_prompt(prompt)
    call_store = open_store(store, no_store)

    async def go() -> ItemTrace:
        provider = provider_for(backend, cat, base_url, sim_endpoint=sim_endpoint, retries=retries,
                                api_key_env=api_key_env)
        try:
            return await Runner(provider, call_store).run_item(cfg, messages)  # type: ignore[arg-type]
        finally:
            await provider.aclose()

    trace = asyncio.run(go())
    summary = trace_summary(trace)
    if as_json:
        out.print_json(json.dumps({"answer": trace.answer, "error": trace.error,
                                   "config_hash": cfg.config_hash, **summary}))
    else:
        label = " (simulated)" if trace.simulated else ""
        if trace.failed:
            err.print(f"error: item failed: {trace.error}", markup=False, highlight=False, soft_wrap=True)
        else:
            out.print(trace.answer, markup=False, highlight=False, soft_wrap=True)
        out.rule()
        out.print(f"config {cfg.summary()} [{cfg.config_hash}]", markup=False)
        out.print(f"calls {trace.n_calls} ({trace.n_cached} from store, {trace.n_failed_calls} failed) · "
                  f"tokens {trace.prompt_tokens} in / {trace.completion_tokens} out", markup=False)
        out.print(f"cost ${trace.cost_usd:.6f}{label} (paid now ${trace.paid_usd:.6f}) · "
                  f"latency {trace.latency_s:.2f} s critical path{label}", markup=False)
    if trace.failed:
        raise typer.Exit(1)


@app.command("sim-server")
def sim_server(
    port: Annotated[int, typer.Option("--port", help="TCP port on 127.0.0.1 (0 = any free port).")] = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    catalog: CatalogOpt = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    sleep: Annotated[bool, typer.Option("--sleep/--no-sleep", help="Really wait the simulated latency.")] = False,
    latency_ms: Annotated[Optional[float], typer.Option("--latency-ms", help="Fixed latency per call.")] = None,
    rate_429: Annotated[float, typer.Option("--fault-429")] = 0.0,
    rate_500: Annotated[float, typer.Option("--fault-500")] = 0.0,
    rate_timeout: Annotated[float, typer.Option("--fault-timeout")] = 0.0,
    rate_malformed: Annotated[float, typer.Option("--fault-malformed")] = 0.0,
    answer_key: Annotated[Optional[list[Path]], typer.Option("--answer-key", help="Validation set(s) whose references the simulated world knows.")] = None,
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
                  latency_override_s=None if latency_ms is None else latency_ms / 1000)


DataOpt = Annotated[str, typer.Option("--data", help="Validation set: a JSONL path or a built-in name (math, choice, instruct).")]
ScorerOpt = Annotated[str, typer.Option("--scorer", help="exact | numeric | choice | regex | pairwise_judge | length_controlled | single_grade_judge")]
JudgeOpt = Annotated[Optional[str], typer.Option("--judge-model", help=f"Judge model for judge scorers (default {DEFAULT_JUDGE}).")]
ItemsOpt = Annotated[Optional[int], typer.Option("--n-items", help="Deterministic subsample of this many items.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def _load_items(data: str, n_items: int | None, seed: int) -> Dataset:
    ds = resolve_dataset(data)
    return ds.subsample(n_items, seed) if n_items else ds


async def _evaluate(cfg: MoAConfig, ds: Dataset, scorer: str, judge_model: str | None, cat: Catalog,
                    backend: str, base_url: str | None, call_store: CallStore | None, quiet: bool,
                    label: str, sim_endpoint: bool = False, retries: int | None = None,
                    api_key_env: str = "") -> "ConfigEvaluation":
    from .evaluate import DatasetEvaluator
    provider = provider_for(backend, cat, base_url, ds, sim_endpoint, retries, api_key_env)
    try:
        evaluator = DatasetEvaluator(provider, call_store, ds, scorer, scorer_options(scorer, judge_model))
        with item_progress(len(ds), label, quiet=quiet, console=err) as on_item:
            return await evaluator.evaluate_items(cfg, ds.ids, f"eval:{cfg.config_hash}", on_item=on_item)
    finally:
        await provider.aclose()


def _print_evaluation(ev: "ConfigEvaluation") -> None:
    r = ev.result
    sim = " (simulated)" if ev.simulated else ""
    q = r.quality
    out.print(f"{ev.config.summary()} [{ev.config.config_hash}]{sim}", markup=False)
    out.print(f"  quality ({r.scorer}, {r.headline}): {100 * q.mean:.1f}% "
              f"[{100 * q.low:.1f}, {100 * q.high:.1f}] {int(100 * q.confidence)}% CI, "
              f"n={r.n_scored}/{r.n} scored", markup=False)
    if r.win_rate is not None:
        out.print(f"  win rate vs baseline {r.win_rate:.1f} ± {r.win_rate_se:.1f} (s.e.) · "
                  f"length-controlled {r.lc_win_rate:.1f}", markup=False)
    counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
    out.print(f"  items: {counts}", markup=False)
    for cat, est in sorted(r.per_category.items()):
        out.print(f"    {cat:<14} {100 * est.mean:5.1f}%  (n={est.n})", markup=False)
    out.print(f"  cost ${ev.cost_usd_per_item:.6f}/item{sim} · judge ${r.judge_cost_usd:.4f} total · "
              f"paid now ${ev.paid_usd:.4f}", markup=False)
    out.print(f"  latency p50 {ev.latency_percentile(50):.2f} s · p95 {ev.latency_percentile(95):.2f} s "
              f"(critical path{sim})", markup=False)


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
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON result here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Measure one config on a validation set: quality with CI, cost per item, latency."""
    cfg = resolve_config(preset, config_file)
    cat = load_catalog(catalog)
    cat.check_config(cfg)
    ds = _load_items(data, n_items, seed)
    ev = asyncio.run(_evaluate(cfg, ds, scorer, judge_model, cat, backend, base_url, open_store(store),
                               quiet or as_json, "eval", sim_endpoint, retries, api_key_env))
    result = {"dataset": ds.name, "dataset_source": ds.source, **ev.to_dict()}
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        out.print_json(json.dumps(result))
    else:
        _print_evaluation(ev)
        if out_file:
            out.print(f"  wrote {out_file}", markup=False)


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
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Paired comparison of two configs on the same items (paired bootstrap, sign test)."""
    from .stats import paired_comparison
    cat = load_catalog(catalog)
    cfg_a, cfg_b = resolve_config_ref(a, cat), resolve_config_ref(b, cat)
    cat.check_config(cfg_a)
    cat.check_config(cfg_b)
    ds = _load_items(data, n_items, seed)
    call_store = open_store(store)
    ev_a = asyncio.run(_evaluate(cfg_a, ds, scorer, judge_model, cat, backend, base_url, call_store,
                                 quiet or as_json, "A", sim_endpoint, retries, api_key_env))
    ev_b = asyncio.run(_evaluate(cfg_b, ds, scorer, judge_model, cat, backend, base_url, call_store,
                                 quiet or as_json, "B", sim_endpoint, retries, api_key_env))
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
    _print_evaluation(ev_a)
    out.print(f"B = {b}", markup=False)
    _print_evaluation(ev_b)
    out.rule()
    out.print(f"A - B on {paired.n} paired items: {100 * paired.mean_diff:+.1f} points "
              f"[{100 * paired.diff.low:+.1f}, {100 * paired.diff.high:+.1f}] {int(100 * paired.diff.confidence)}% CI; "
              f"A better on {paired.wins}, B on {paired.losses}, tied {paired.ties}; "
              f"sign test p = {paired.sign_test_p:.3g}", markup=False)


@app.command()
def calls(
    store: StoreOpt = DEFAULT_STORE,
    model: Annotated[Optional[str], typer.Option("--model")] = None,
    role: Annotated[Optional[str], typer.Option("--role", help="proposer | aggregator | judge")] = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Run id prefix, e.g. 'study:sim-demo/'.")] = None,
    cached: Annotated[Optional[bool], typer.Option("--cached/--paid", help="Only cache hits / only paid calls.")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List and filter the call store, newest first, with the spend of the selection."""
    if not store.exists():
        raise ConfigError("no call store here yet", source=str(store))
    cs = CallStore(store)
    rows = cs.calls(model=model, role=role, run_id_prefix=run, cached=cached, limit=limit)
    spend = cs.spend(run_id_prefix=run)
    if as_json:
        from dataclasses import asdict
        out.print_json(json.dumps({"calls": [asdict(r) for r in rows], "spend": asdict(spend)}))
        return
    from rich.table import Table
    table = Table("id", "time", "model", "role", "run", "item", "cached", "paid $", "list $", "latency s", "error")
    for r in rows:
        table.add_row(str(r.id), r.ts[11:19], r.model.rsplit("/", 1)[-1], r.role, r.run_id or "",
                      r.item_id or "", "yes" if r.cached else "", f"{r.paid_usd:.5f}", f"{r.cost_usd:.5f}",
                      "" if r.latency_s is None else f"{r.latency_s:.2f}", (r.error or "")[:40])
    out.print(table)
    out.print(f"{spend.calls} calls ({spend.cached_calls} from store, {spend.failed_calls} failed) · "
              f"paid ${spend.paid_usd:.4f} · saved by the store ${spend.saved_usd:.4f}", markup=False)


@app.command()
def serve(
    preset_file: Annotated[Path, typer.Argument(help="A preset JSON file (moa-preset/1).")],
    port: Annotated[int, typer.Option("--port")] = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    backend: BackendOpt = "http",
    base_url: BaseUrlOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    token_env: Annotated[Optional[str], typer.Option("--token-env", help="Env var holding the bearer token clients must send.")] = None,
    sim_endpoint: SimEndpointOpt = False,
    api_key_env: KeyEnvOpt = "",
    concurrency: Annotated[Optional[int], typer.Option("--endpoint-concurrency", help="Inner calls in flight per upstream endpoint (default 16).")] = None,
) -> None:
    """Serve a preset as an OpenAI-compatible /v1/chat/completions endpoint."""
    import os
    from .preset import load_preset, preset_catalog
    from .server import serve as serve_preset
    p = load_preset(preset_file)
    token = None
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise ConfigError(f"environment variable {token_env} is not set", field="--token-env")
    provider = make_provider(backend, preset_catalog(p), base_url=base_url, sim_endpoint=sim_endpoint,
                             api_key_env=api_key_env, max_concurrency=concurrency)
    serve_preset(p, provider, host=host, port=port, store=open_store(store), api_key=token)


study_app = typer.Typer(no_args_is_help=True, help="Run, inspect and export searches over MoA configs.")
app.add_typer(study_app, name="study")
RunsDirOpt = Annotated[Optional[Path], typer.Option("--runs-dir", help="Where studies keep their storage and call store (default ./runs).")]


def _metrics_row(r: "TrialRecord") -> list[str]:
    m = r.metrics
    assert m is not None and r.config is not None
    return [str(r.number), r.config.summary(),
            f"{100 * m.quality:.1f} [{100 * m.quality_low:.1f}, {100 * m.quality_high:.1f}]",
            f"{m.cost_usd_per_item:.6f}",
            f"{m.latency_p50_s:.2f}", f"{m.latency_p95_s:.2f}", str(m.n_items)]


def print_study(result: "StudyResult") -> None:
    from rich.table import Column, Table
    sim = " (simulated world)" if result.is_simulated else ""
    table = Table("trial", Column("config", min_width=30), "quality % [95% CI]", "$/item", "p50 s", "p95 s", "n",
                  title=f"Pareto front of study {result.study_name}{sim}: "
                        f"{', '.join(f'{d} {o}' for o, d in zip(result.objective_names, result.directions))}")
    for r in sorted(result.pareto_front, key=lambda r: r.metrics.cost_usd_per_item if r.metrics else 0):
        if r.metrics is not None:
            table.add_row(*_metrics_row(r))
    out.print(table)
    if result.target is not None:
        t = result.cheapest_meeting_target()
        out.print(("[green]target met[/green]: " if t.met else "[yellow]target not met[/yellow]: ") + t.message,
                  highlight=False)
    ran = sum(1 for r in result.trials if r.counted)
    dups = sum(1 for r in result.trials if r.status == "duplicate")
    out.print(f"{len(result.trials)} trials ({ran} evaluated, {dups} repeats of an evaluated config served "
              f"free, {len(result.evaluated)} distinct configs at full fidelity) · spent ${result.spent_usd:.4f}{sim} in {result.spent_calls} paid calls"
              + (f" · stopped: {result.stop_reason}" if result.stop_reason else ""), markup=False)


def _result_json(result: "StudyResult") -> dict[str, object]:
    def rec(r: "TrialRecord") -> dict[str, object]:
        m = r.metrics
        return {"trial": r.number, "status": r.status, "config_hash": r.config.config_hash if r.config else None,
                "summary": r.config.summary() if r.config else None,
                "quality": m.quality if m else None, "quality_ci": [m.quality_low, m.quality_high] if m else None,
                "cost_usd_per_item": m.cost_usd_per_item if m else None,
                "latency_p50_s": m.latency_p50_s if m else None, "latency_p95_s": m.latency_p95_s if m else None,
                "n_items": m.n_items if m else None}
    out_json: dict[str, object] = {"study": result.study_name, "simulated": result.is_simulated,
                                   "spent_usd": result.spent_usd, "spent_calls": result.spent_calls,
                                   "stop_reason": result.stop_reason,
                                   "pareto_front": [rec(r) for r in result.pareto_front],
                                   "trials": [rec(r) for r in result.trials]}
    if result.target is not None:
        t = result.cheapest_meeting_target()
        out_json["cheapest_meeting_target"] = {"met": t.met, "trial": t.record.number if t.record else None,
                                               "confidence": t.achieved_confidence, "message": t.message}
    return out_json


@study_app.command("run")
def study_run(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    workers: Annotated[int, typer.Option("--workers", help="Processes sharing the study.")] = 1,
    runs_dir: RunsDirOpt = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the HTML report here.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Run (or resume) a study; print the Pareto front."""
    from .progress import trial_progress
    from .study import run_study_file
    from .study_spec import load_study_spec
    optuna_quiet()
    total = load_study_spec(study_file, runs_dir=runs_dir).budget.trials
    with trial_progress(total, quiet=quiet or as_json, console=err) as on_trial:
        result = run_study_file(study_file, runs_dir=runs_dir, workers=workers, on_trial=on_trial)
    if as_json:
        out.print_json(json.dumps(_result_json(result)))
    else:
        print_study(result)
    if report is not None:
        _write_report(study_file, runs_dir, report, quiet=as_json)


def optuna_quiet() -> None:
    """Optuna's per-trial INFO lines would drown our own progress lines."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@study_app.command("show")
def study_show(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    runs_dir: RunsDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a study's Pareto front, the cheapest config meeting the target, and the spend."""
    from .study import study_result
    _, result = study_result(study_file, runs_dir=runs_dir)
    if as_json:
        out.print_json(json.dumps(_result_json(result)))
    else:
        print_study(result)


@study_app.command("export")
def study_export(
    study_file: Annotated[Path, typer.Argument(help="Study file (TOML).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Directory for the preset files.")] = Path("presets"),
    trial: Annotated[Optional[int], typer.Option("--trial")] = None,
    pareto: Annotated[bool, typer.Option("--pareto", help="Every Pareto-optimal config.")] = False,
    cheapest: Annotated[bool, typer.Option("--cheapest-meeting-target")] = False,
    fmt: Annotated[str, typer.Option("--format", help="preset | archon | moa-reference | standalone")] = "preset",
    runs_dir: RunsDirOpt = None,
) -> None:
    """Write presets (moa-preset/1 JSON) or another runtime's format for chosen trials."""
    from .exporters import EXPORT_FORMATS, export_text
    from .preset import write_preset
    from .study import select_trials, study_result, trial_preset
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}", field="--format")
    spec, result = study_result(study_file, runs_dir=runs_dir)
    cat = spec.load_catalog()
    suffix = {"preset": ".json", "archon": ".archon.json", "moa-reference": ".sh", "standalone": ".py"}[fmt]
    for record in select_trials(result, trial=trial, pareto=pareto, cheapest_meeting_target=cheapest):
        preset = trial_preset(spec, result, record, cat)
        path = out_dir / f"{preset.name}{suffix}"
        if fmt == "preset":
            write_preset(path, preset)
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(export_text(preset, fmt))
        out.print(f"wrote {path}", markup=False)


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


def _answer_key(paths: list[Path]) -> "object | None":
    if not paths:
        return None
    from .datasets import load_dataset
    from .providers.simulated import AnswerKey
    pairs = [p for path in paths for p in answer_key_pairs(load_dataset(path))]
    return AnswerKey.from_pairs(pairs)


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False)  # click returns Exit codes in this mode
    except MoASearchError as exc:
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
