"""Reading a study's results back from the Optuna storage alone."""

from __future__ import annotations

import optuna

from ..config import MoAConfig
from ..errors import ConfigError
from ..store_backend import redact_url
from .budget import _spent
from .records import StudyResult, TrialMetrics, TrialRecord, _record, read_baseline
from .storage import open_storage


def load_result(storage_url: str, study_name: str) -> StudyResult:
    """Everything a report needs, read back from the Optuna storage alone."""
    storage = open_storage(storage_url, create=False)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise ConfigError(f"no study {study_name!r} in {redact_url(storage_url)}; it holds {names}",
                          field="study.name") from None
    attrs = study.user_attrs
    objectives = attrs.get("objectives", {})
    # The Pareto set is read before the trials: a worker may finish a trial in between, and every
    # trial on the earlier front is then in the later list (trials are never removed).
    best = study.best_trials
    trials = study.get_trials(deepcopy=False)
    records = tuple(_record(t) for t in trials)
    by_number = {r.number: r for r in records}
    front: list[TrialRecord] = []
    seen: set[str] = set()
    for t in sorted(best, key=lambda t: t.number):  # Optuna's Pareto set
        r = by_number[t.number]
        key = r.config.config_hash if r.config else str(t.number)
        if key not in seen:
            seen.add(key)
            front.append(r)
    baseline = None
    b = read_baseline(study)
    if b is not None:
        baseline = TrialRecord(-1, "baseline", MoAConfig.from_dict(b["config"]),
                               TrialMetrics.from_dict(b["metrics"]), note=str(b.get("name", "")),
                               full_fidelity=True)
    usd, calls = _spent(trials, b)
    simulated = any(r.metrics.simulated for r in records if r.metrics is not None) or bool(
        baseline and baseline.metrics and baseline.metrics.simulated)
    return StudyResult(
        study_name=study_name, storage_url=storage_url, mode=objectives.get("mode", "pareto"),
        objective_names=tuple(objectives.get("names", ())),
        directions=tuple(d.name.lower() for d in study.directions), trials=records,
        pareto_front=tuple(front), spent_usd=usd, spent_calls=calls, target=objectives.get("target"),
        target_confidence=float(objectives.get("target_confidence", 0.9)), baseline=baseline,
        is_simulated=simulated)
