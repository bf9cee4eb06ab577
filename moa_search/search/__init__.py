"""The search: Optuna asks for configs, an ``Evaluator`` measures them, budgets bound the spend.

The search knows nothing of HTTP, providers or scorers: it sees an ``Evaluator`` that turns a
``MoAConfig`` and item ids into ``TrialMetrics``. Everything a study learns is written to the
Optuna storage (trial values, constraints, and user attributes), so a study can be resumed,
shared by parallel workers, and reported on (``load_result``) without any other state.

One module per concept: ``records`` (what a trial records, what a study returns), ``budget``
(cost estimates, spend), ``fidelity`` (early stopping, merging stages), ``samplers`` (and
``cost_order``, the cheapest-first sampler, and ``pareto_skip``, the proposals a sampler
redraws unpaid), ``storage`` (Optuna storage and study),
``prepare`` (creating a study once), ``loop`` (the study loop), ``results`` (reading back).
"""

from ..stats import confidence_at_least, mean_bound
from .budget import agent_calls_per_item, price_estimate
from .cost_order import DEFAULT_SLACK, CheapestFirstSampler, CostEstimate
from .fidelity import CI_LEVEL, merge_metrics
from .loop import run_study, run_study_async
from .prepare import prepare_study, prepare_study_async
from .records import (Evaluator, StudyResult, TargetResult, TrialEvent, TrialMetrics,
                      TrialRecord)
from .results import load_result
from .samplers import build_sampler, nsga2_population
from .storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, open_storage, open_study

__all__ = [
    "CI_LEVEL", "CheapestFirstSampler", "CostEstimate", "DEFAULT_SLACK", "Evaluator",
    "GRACE_PERIOD_S", "HEARTBEAT_INTERVAL_S", "StudyResult", "TargetResult", "TrialEvent",
    "TrialMetrics", "TrialRecord", "agent_calls_per_item", "build_sampler",
    "confidence_at_least", "load_result", "mean_bound", "merge_metrics", "nsga2_population",
    "open_storage", "open_study", "prepare_study", "prepare_study_async", "price_estimate",
    "run_study", "run_study_async",
]
