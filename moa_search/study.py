"""A study file, run: the dataset split, the provider, the call store and the evaluator wired up.

``search`` knows nothing of providers or datasets; this module is where a ``StudySpec`` meets
them. It also turns results back into presets (``export_presets``) with their provenance.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from .catalog import Catalog
from .datasets import Dataset, answer_key_pairs
from .errors import ConfigError, MoASearchError, WorkFailedError
from .evaluate import DatasetEvaluator, ItemProgress
from .preset import PresetFile, Provenance, from_config
from .search import (StudyResult, TrialEvent, TrialRecord, load_result, prepare_study_async,
                     run_study_async)
from .store import CallStore, NoStoreError
from .study_spec import StudySpec, load_study_spec


@dataclass(frozen=True)
class StudyData:
    """The full set, the dev items the search sees, and the held-out rest."""

    dataset: Dataset
    dev_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]


def study_data(spec: StudySpec) -> StudyData:
    d = spec.data
    dataset = d.load()
    if d.dev_fraction < 1.0:
        dev, heldout = dataset.split(d.dev_fraction, d.split_seed)
    else:
        dev, heldout = dataset, None
    if d.n_items is not None:
        if d.n_items > len(dev):
            raise ConfigError(f"n_items = {d.n_items} but the dev split has only {len(dev)} items",
                              source=spec.source, field="data.n_items")
        dev = dev.subsample(d.n_items, d.split_seed)
    return StudyData(dataset, dev.ids, heldout.ids if heldout is not None else ())


@dataclass(frozen=True)
class EndpointOverrides:
    """``study run --timeout / --concurrency``: they override the per-endpoint values of the
    study's catalog (which is where a study file sets them); None keeps the catalog's."""

    timeout_s: float | None = None
    concurrency: int | None = None


def make_evaluator(spec: StudySpec, data: StudyData, catalog: Catalog | None = None,
                   overrides: EndpointOverrides = EndpointOverrides(),
                   progress: ItemProgress | None = None) -> tuple[DatasetEvaluator, CallStore]:
    """The simulated world is told the references of the study's items (its answer key)."""
    from .backends import make_provider

    catalog = catalog or spec.load_catalog()
    key = None
    if spec.backend == "sim":
        from .providers.simulated import AnswerKey
        key = AnswerKey.from_pairs(answer_key_pairs(data.dataset))
    provider = make_provider(spec.backend, catalog, answer_key=key, seed=spec.seed,
                             timeout_s=overrides.timeout_s, max_concurrency=overrides.concurrency)
    store = CallStore(spec.call_store)
    evaluator = DatasetEvaluator(provider, store, data.dataset, spec.scorer.name, spec.scorer.options,
                                 run_prefix=run_prefix(spec), degraded=spec.scorer.degraded,
                                 progress=progress)
    return evaluator, store


def run_prefix(spec: StudySpec) -> str:
    """The call store's run ids of a study's calls start with this (``<prefix>trial-N``)."""
    return f"study:{spec.name}/"


def with_store_spend(spec: StudySpec, result: StudyResult) -> StudyResult:
    """The study's spend as the call store logged it, when that is more than the trials
    recorded: a worker killed mid-trial records nothing, but its calls were paid."""
    try:
        store = CallStore(spec.call_store, create=False)
    except NoStoreError:
        return result
    with store:
        spend = store.spend(run_id_prefix=run_prefix(spec))
    calls = spend.paid_calls + spend.possibly_billed_calls
    return replace(result, spent_usd=max(result.spent_usd, spend.paid_usd),
                   spent_calls=max(result.spent_calls, calls))


async def _run(spec: StudySpec, worker: int, on_trial: Callable[[TrialEvent], None] | None,
               prepare_only: bool = False, overrides: EndpointOverrides = EndpointOverrides(),
               progress: ItemProgress | None = None) -> StudyResult | None:
    data = study_data(spec)
    evaluator, store = make_evaluator(spec, data, overrides=overrides, progress=progress)
    try:
        if prepare_only:
            await prepare_study_async(spec, evaluator, data.dev_ids)
            return None
        return await run_study_async(spec, evaluator, data.dev_ids, on_trial=on_trial, worker=worker)
    finally:
        await evaluator.provider.aclose()
        store.close()


def _worker_main(path: str, runs_dir: str | None, worker: int,
                 overrides: EndpointOverrides = EndpointOverrides()) -> None:
    """A worker process: a failure is one scrubbed line on stderr and the CLI's exit code
    (1: nothing came of the work, 2: bad input), never a multiprocessing traceback."""
    import sys

    import optuna

    from .keys import scrub
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # worker 0 reports progress, not Optuna
    try:
        spec = load_study_spec(path, runs_dir=runs_dir)
        asyncio.run(_run(spec, worker, None, overrides=overrides))
    except MoASearchError as exc:
        print(f"error (worker {worker}): {scrub(str(exc))}", file=sys.stderr)
        sys.exit(1 if isinstance(exc, WorkFailedError) else 2)


def run_study_file(path: str | Path, *, runs_dir: str | Path | None = None, workers: int = 1,
                   on_trial: Callable[[TrialEvent], None] | None = None,
                   overrides: EndpointOverrides = EndpointOverrides(),
                   progress: ItemProgress | None = None) -> StudyResult:
    """Run or resume the study in ``path``. With ``workers > 1``, the study is prepared once
    (baseline measured, presets enqueued) and then N processes share the storage and the call
    store; this process is worker 0 and reports progress. ``overrides`` apply in every worker
    (each process has its own concurrency slots). ``progress`` shows worker 0's items."""
    if workers < 1:
        raise ConfigError(f"expected --workers >= 1, got {workers}", field="workers")
    spec = load_study_spec(path, runs_dir=runs_dir)
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        result = asyncio.run(_run(spec, 0, on_trial, overrides=overrides, progress=progress))
        assert result is not None
        return with_store_spend(spec, result)
    asyncio.run(_run(spec, 0, None, prepare_only=True, overrides=overrides, progress=progress))  # the baseline's items
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(str(path), None if runs_dir is None else str(runs_dir), w,
                                                    overrides), daemon=False) for w in range(1, workers)]
    for p in procs:
        p.start()
    try:
        result = asyncio.run(_run(spec, 0, on_trial, overrides=overrides, progress=progress))
    finally:
        for p in procs:
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise MoASearchError(f"{len(failed)} worker process(es) exited with status {failed}; "
                             f"finished trials are kept, run the same command to resume")
    # re-read: the other workers' trials finished after worker 0's own result was taken
    return with_store_spend(spec, replace(load_result(spec.storage, spec.name),
                                          stop_reason=result.stop_reason if result else ""))


def study_result(path: str | Path, *, runs_dir: str | Path | None = None) -> tuple[StudySpec, StudyResult]:
    """The study's results as its storage holds them; one line when it has not been run yet
    (an SQLite storage a run would have created is missing)."""
    spec = load_study_spec(path, runs_dir=runs_dir)
    if spec.storage.startswith("sqlite:///") and not Path(spec.storage[len("sqlite:///"):]).exists():
        raise MoASearchError(f"study {spec.name} has not been run yet (no {spec.storage}); run "
                             f"`moa-search study run {path}` first")
    return spec, with_store_spend(spec, load_result(spec.storage, spec.name))


def trial_preset(spec: StudySpec, result: StudyResult, record: TrialRecord, catalog: Catalog,
                 name: str | None = None) -> PresetFile:
    if record.config is None or record.metrics is None:
        raise ConfigError(f"trial {record.number} has no measured config (status {record.status})",
                          field="trial")
    m = record.metrics
    dataset = spec.data.builtin or str(spec.data.path)
    provenance = Provenance(
        validation_set=dataset, scorer=spec.scorer.name, quality=m.quality,
        quality_ci=(m.quality_low, m.quality_high), n_items=m.n_items,
        cost_usd_per_item=m.cost_usd_per_item, latency_p50_s=m.latency_p50_s,
        latency_p95_s=m.latency_p95_s, simulated=m.simulated, study=spec.name, trial=record.number)
    label = "simulated " if m.simulated else ""
    return from_config(name or f"{spec.name}-trial-{record.number}", record.config, catalog, provenance,
                       description=f"{record.config.summary()} from study {spec.name}, trial "
                                   f"{record.number} ({label}quality {m.quality:.3f}, "
                                   f"${m.cost_usd_per_item:.6f}/item)")


def select_trials(result: StudyResult, *, trial: int | None = None, pareto: bool = False,
                  cheapest_meeting_target: bool = False) -> Sequence[TrialRecord]:
    if sum((trial is not None, pareto, cheapest_meeting_target)) != 1:
        raise ConfigError("give exactly one of --trial N, --pareto, --cheapest-meeting-target")
    if trial is not None:
        for r in result.trials:
            if r.number == trial:
                return (r,)
        raise ConfigError(f"no trial {trial} in study {result.study_name} "
                          f"(trials 0..{len(result.trials) - 1})", field="trial")
    if pareto:
        if not result.pareto_front:
            raise MoASearchError(f"study {result.study_name} has no finished trial yet")
        return result.pareto_front
    target = result.cheapest_meeting_target()
    if not target.met or target.record is None:
        raise MoASearchError(target.message)
    return (target.record,)


def quality_note(spec: StudySpec) -> str | None:
    """What the study's quality column is when that needs saying: a length-controlled win rate
    is alpaca_eval's number only with a per-instruction difficulty on every item (issue 12), so
    without one every table of it says "approximate"."""
    from .scoring import scorer_class
    from .stats import LC_APPROXIMATE_NOTE
    if getattr(scorer_class(spec.scorer.name), "headline", None) != "lc_win_rate":
        return None
    data = study_data(spec)
    dev = [data.dataset.get(i) for i in data.dev_ids]
    if all(item.instruction_difficulty is not None for item in dev):
        return "quality: length-controlled win rate (alpaca_eval's fit with instruction difficulty)"
    return f"quality: length-controlled win rate ({LC_APPROXIMATE_NOTE})"
