"""Creating a study once: its settings, the known configs queued first, the baseline measured."""

from __future__ import annotations

import asyncio
import hashlib
import math
import warnings
from typing import Sequence

import optuna

from ..config import BUILTIN_PRESETS, MoAConfig, canonical_json
from ..errors import ConfigError, WorkFailedError
from ..study_spec import StudySpec
from .budget import price_estimate
from .cost_order import CostEstimate
from .records import BASELINE_KEY, METRIC_NAMES, Evaluator, baseline_attrs, fit_map
from .storage import creation_lock, open_storage, open_study


def items_digest(item_ids: Sequence[str]) -> str:
    return hashlib.sha256(canonical_json(list(item_ids)).encode()).hexdigest()[:16]


async def prepare_study_async(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
                              storage: optuna.storages.BaseStorage | None = None,
                              cost_estimate: CostEstimate | None = None) -> optuna.Study:
    """Create the study once: record its settings, enqueue known configs, measure the baseline.

    Idempotent: a study that already has these is left as it is. Run it once before starting
    parallel workers so they do not each enqueue presets or measure the baseline. The baseline
    is evaluated outside Optuna (it need not be in the space; ``trial_number=-1``); its spend
    counts towards the budget, and a trial that suggests the same config reuses its metrics.
    """
    if not item_ids:
        raise ConfigError("no items to evaluate on", source=spec.source, field="data")
    if len(set(item_ids)) != len(item_ids):
        raise ConfigError("item ids must be unique", source=spec.source, field="data")
    if storage is None:
        storage = open_storage(spec.storage, source=spec.source)  # takes the lock itself
    with creation_lock(spec.storage):  # processes starting together set the study up once
        return await _prepare(spec, evaluator, item_ids, storage, cost_estimate)


async def _prepare(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str],
                   storage: optuna.storages.BaseStorage,
                   cost_estimate: CostEstimate | None) -> optuna.Study:
    study = open_study(spec, storage=storage)
    attrs = study.user_attrs
    digest = items_digest(item_ids)
    if "items_digest" in attrs and attrs["items_digest"] != digest:
        raise ConfigError(f"study {spec.name!r} was run on other items ({attrs.get('n_items')} items); "
                          f"resume it with the same data settings or use a new study name",
                          source=spec.source, field="data")
    if "items_digest" not in attrs:
        study.set_user_attr("items_digest", digest)
        study.set_user_attr("n_items", len(item_ids))
        study.set_user_attr("objectives", {
            "mode": spec.objectives.mode, "names": list(spec.objectives.objective_names),
            "target": spec.objectives.target.value if spec.objectives.target else None,
            "target_confidence": spec.objectives.target_confidence})
    if study.metric_names is None:  # the dashboard's names for the objectives, with units
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAMES[n] for n in spec.objectives.objective_names])
    if not attrs.get("initialized") and not study.get_trials(deepcopy=False):
        _enqueue_known(study, spec, cost_estimate or price_estimate(spec.load_catalog()), len(item_ids))
        study.set_user_attr("initialized", True)
    target = spec.objectives.target
    if target is not None and target.baseline_config is not None and "baseline" not in study.user_attrs:
        config = target.baseline_config
        budget = spec.budget.usd
        if budget is not None:
            estimate = (cost_estimate or price_estimate(spec.load_catalog()))(config) * len(item_ids)
            if estimate > budget:
                raise ConfigError(f"measuring the baseline {target.baseline!r} on {len(item_ids)} items "
                                  f"is estimated at ${estimate:.2f}, more than the whole budget",
                                  source=spec.source, field="budget.usd")
        metrics = await evaluator.evaluate(config, list(item_ids), trial_number=-1)
        if not math.isfinite(metrics.quality):
            raise WorkFailedError(f"the baseline {target.baseline!r} could not be scored on any item; "
                                  f"no quality target can be derived from it; first error: "
                                  f"{metrics.first_error or 'none recorded'}")
        short, full = baseline_attrs(target.baseline, config, metrics)
        storage.set_study_system_attr(study._study_id, BASELINE_KEY, full)
        study.set_user_attr("baseline", short)
        objectives = dict(study.user_attrs["objectives"])
        objectives["target"] = metrics.quality
        study.set_user_attr("objectives", objectives)
    return study


def prepare_study(spec: StudySpec, evaluator: Evaluator, item_ids: Sequence[str], *,
                  cost_estimate: CostEstimate | None = None) -> None:
    """Synchronous ``prepare_study_async`` (the CLI calls it before forking workers)."""
    asyncio.run(prepare_study_async(spec, evaluator, item_ids, cost_estimate=cost_estimate))


#: A known config is queued only if its estimate on every item is at most this share of the
#: USD budget.
KNOWN_CONFIG_BUDGET_SHARE = 1 / 8


def _enqueue_known(study: optuna.Study, spec: StudySpec, estimate: CostEstimate | None = None,
                   n_items: int = 0) -> None:
    """Put the paper's presets, then each single aggregator model, first in the queue.

    Only those the space can express are enqueued (with the space's sampling parameters), at
    most half the trial budget so the sampler still gets its share, and, with a USD budget,
    none estimated at more than ``KNOWN_CONFIG_BUDGET_SHARE`` of it: a paper preset with six
    proposers in three layers can cost a third of a small budget before the sampler has
    learned anything (measured: the default study's front lost ~10 points of hypervolume at
    10 % of the exhaustive spend). The others are listed with the reason in the study
    attribute ``enqueue_skipped``.
    """
    if spec.sampler.name in ("grid", "cheapest-first"):  # they visit configs in their own order
        return
    space = spec.space
    candidates = [(f"preset {name}", space.adapt(p.config)) for name, p in BUILTIN_PRESETS.items()]
    candidates += [(f"single {m}", MoAConfig.single(m, temperature=space.temperatures[0],
                                                     max_tokens=space.max_tokens)) for m in space.aggregators]
    skipped: dict[str, str] = {}
    cap = max(1, spec.budget.trials // 2)
    queued: set[str] = set()
    for label, config in candidates:
        reason = space.explain_outside(config)
        if reason is not None:
            skipped[label] = reason
            continue
        if config.config_hash in queued:
            continue
        usd = spec.budget.usd
        if usd is not None and estimate is not None and n_items:
            cost = float(estimate(config)) * n_items
            if cost > KNOWN_CONFIG_BUDGET_SHARE * usd:
                skipped[label] = (f"estimated ${cost:.4g} on {n_items} items, more than "
                                  f"{KNOWN_CONFIG_BUDGET_SHARE:.3g} of the USD budget (${usd:g})")
                continue
        if len(queued) >= cap:
            skipped[label] = f"more known configs than half the trial budget ({cap})"
            continue
        queued.add(config.config_hash)
        study.enqueue_trial(space.config_to_params(config), user_attrs={"enqueued_as": label},
                            skip_if_exists=True)
    study.set_user_attr("enqueue_skipped", fit_map(skipped))  # a dashboard attribute: under 1 KB

