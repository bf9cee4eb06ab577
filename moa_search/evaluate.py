"""Measuring one config on a validation set: run it, score it, and account for every dollar.

This is the seam between the core (runner, scoring) and the search: ``DatasetEvaluator``
implements ``search.Evaluator`` so the search never sees providers or HTTP. The config's own
cost (what it would cost to run in production, at list prices) is kept apart from the judge's
cost and from what was actually paid now (cache hits are free). Degraded items (an agent lost,
see ``runner``) are counted apart, whichever ``DegradedPolicy`` decided their fate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .config import MoAConfig
from .conversation import run_conversations
from .datasets import Dataset, Item
from .providers.base import Provider
from .runner import DegradedPolicy, ItemTrace, Runner
from .scoring import EvalResult, Scorer, make_scorer, score_traces
from .search import TrialMetrics
from .store import CallStore


#: A progress display for one evaluation: ``(label, n_items)`` -> a context yielding ``on_item``
#: (``progress.TrialProgress.items``); the evaluator opens one per fidelity stage.
ItemProgress = Callable[[str, int], AbstractContextManager[Callable[[ItemTrace], None]]]


def build_scorer(name: str, options: Mapping[str, Any], runner: Runner) -> Scorer:
    """Judges reach their model through ``runner.call`` so judge calls are cached and logged."""
    opts = dict(options)
    if "judge" in name or name == "length_controlled":
        opts["call"] = runner.call
    return make_scorer(name, **opts)


@dataclass(frozen=True)
class ConfigEvaluation:
    """A config measured on items: the traces, the scored result and the money."""

    config: MoAConfig
    traces: tuple[ItemTrace, ...]
    result: EvalResult
    degraded_policy: DegradedPolicy = DegradedPolicy.SCORE

    @property
    def n_items(self) -> int:
        return len(self.traces)

    @property
    def n_failed(self) -> int:
        """Items whose run failed (degraded items under policy ``fail`` included)."""
        return sum(1 for t in self.traces if t.failed)

    @property
    def n_degraded(self) -> int:
        """Items that lost an agent: scored anyway or failed, by ``degraded_policy``."""
        return sum(1 for t in self.traces if t.degraded)

    def first_error(self) -> str | None:
        """The first error in item order: a failed call, else a judge failure or an unscorable
        item; None when every item was scored without one."""
        for t in self.traces:
            found = t.first_error()
            if found:
                return found
        return next((f"item {s.item_id}: {s.detail}" for s in self.result.scores
                     if s.value is None and s.detail), None)

    def total_failure(self) -> str | None:
        """Why nothing could be scored, with the first error, on one line; None when any item was."""
        r = self.result
        if r.n_scored > 0:
            return None
        counts = ", ".join(f"{k} {v}" for k, v in r.counts.items() if v)
        return " ".join(f"nothing could be scored: 0 of {r.n} items ({counts}); first error: "
                        f"{self.first_error() or 'none recorded'}".split())

    @property
    def cost_usd_per_item(self) -> float:
        return sum(t.cost_usd for t in self.traces) / max(1, len(self.traces))

    @property
    def paid_usd(self) -> float:
        """Everything this evaluation spent now, judge included."""
        return sum(t.paid_usd for t in self.traces) + self.result.judge_paid_usd

    def latency_percentile(self, q: float) -> float:
        ok = [t.latency_s for t in self.traces if not t.failed]
        return float(np.percentile(ok, q)) if ok else float("nan")

    @property
    def simulated(self) -> bool:
        return any(t.simulated for t in self.traces)

    def cost_by(self, key: str) -> dict[str, float]:
        """Per-item list cost split by ``role`` or ``model``; the judge appears as role 'judge'."""
        total: dict[str, float] = defaultdict(float)
        for t in self.traces:
            for k, v in (t.cost_by_role() if key == "role" else t.cost_by_model()).items():
                total[k] += v
        if key == "role" and self.result.judge_cost_usd:
            total["judge"] += self.result.judge_cost_usd
        return {k: v / max(1, len(self.traces)) for k, v in total.items()}

    def to_trial_metrics(self) -> TrialMetrics:
        q = self.result.quality
        return TrialMetrics(
            quality=q.mean, quality_low=q.low, quality_high=q.high, n_items=self.n_items,
            item_values={k: v for k, v in self.result.values.items() if v is not None},
            cost_usd_per_item=self.cost_usd_per_item, paid_usd=self.paid_usd,
            latency_p50_s=self.latency_percentile(50), latency_p95_s=self.latency_percentile(95),
            calls=sum(t.n_calls for t in self.traces) + self.result.judge_calls,
            cached_calls=sum(t.n_cached for t in self.traces),
            cost_by_role=self.cost_by("role"), cost_by_model=self.cost_by("model"),
            n_failed=self.n_failed, n_degraded=self.n_degraded, simulated=self.simulated,
            tokens_in=sum(t.prompt_tokens for t in self.traces),
            tokens_out=sum(t.completion_tokens for t in self.traces),
            item_latency_s={t.item_id: t.latency_s for t in self.traces if not t.failed},
            first_error=self.first_error(),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "config_hash": self.config.config_hash,
            "summary": self.config.summary(), "simulated": self.simulated,
            "n_items": self.n_items, "n_failed": self.n_failed, "n_degraded": self.n_degraded,
            "degraded_policy": self.degraded_policy.value, "first_error": self.first_error(),
            "quality": self.result.to_dict(),
            "cost_usd_per_item": self.cost_usd_per_item, "paid_usd": self.paid_usd,
            "judge_cost_usd": self.result.judge_cost_usd,
            "latency_p50_s": self.latency_percentile(50), "latency_p95_s": self.latency_percentile(95),
            "cost_by_role": self.cost_by("role"), "cost_by_model": self.cost_by("model"),
            "calls": sum(t.n_calls for t in self.traces) + self.result.judge_calls,
            "cached_calls": sum(t.n_cached for t in self.traces),
        }


async def evaluate_config(runner: Runner, config: MoAConfig, items: Sequence[Item], scorer: Scorer,
                          *, on_item: Callable[[ItemTrace], None] | None = None,
                          confidence: float = 0.95) -> ConfigEvaluation:
    # multi-turn items (MT-Bench) run every turn the scorer grades; their traces hold each answer
    traces = await run_conversations(runner, config, items, on_item=on_item,
                                     follow_ups=scorer.grades_follow_ups)
    result = await score_traces(scorer, items, traces, confidence=confidence)
    return ConfigEvaluation(config, tuple(traces), result, runner.degraded)


class DatasetEvaluator:
    """``search.Evaluator`` over a dataset: one runner per trial so the store logs the trial.
    ``degraded`` is the ``DegradedPolicy`` (a study passes its ``[scorer] degraded``);
    ``progress``, when given, shows each evaluation's items as they finish."""

    def __init__(self, provider: Provider, store: CallStore | None, dataset: Dataset, scorer: str,
                 scorer_options: Mapping[str, Any] | None = None, *, run_prefix: str = "",
                 max_concurrent_items: int = 8, degraded: DegradedPolicy | str = DegradedPolicy.SCORE,
                 progress: ItemProgress | None = None):
        self.provider = provider
        self.store = store
        self.dataset = dataset
        self.scorer = scorer
        self.scorer_options = dict(scorer_options or {})
        self.run_prefix = run_prefix
        self.max_concurrent_items = max_concurrent_items
        self.degraded = DegradedPolicy.parse(degraded)
        self.progress = progress

    def runner(self, run_id: str) -> Runner:
        return Runner(self.provider, self.store, max_concurrent_items=self.max_concurrent_items,
                      run_id=run_id, degraded=self.degraded)

    async def evaluate_items(self, config: MoAConfig, item_ids: Sequence[str], run_id: str, *,
                             on_item: Callable[[ItemTrace], None] | None = None) -> ConfigEvaluation:
        runner = self.runner(run_id)
        scorer = build_scorer(self.scorer, self.scorer_options, runner)
        items = [self.dataset.get(i) for i in item_ids]
        return await evaluate_config(runner, config, items, scorer, on_item=on_item)

    async def evaluate(self, config: MoAConfig, item_ids: Sequence[str], *,
                       trial_number: int) -> TrialMetrics:
        label = f"trial {trial_number}" if trial_number >= 0 else "baseline"
        shown = self.progress(label, len(item_ids)) if self.progress else nullcontext(None)
        with shown as on_item:
            evaluation = await self.evaluate_items(config, item_ids, f"{self.run_prefix}trial-{trial_number}",
                                                   on_item=on_item)
        return evaluation.to_trial_metrics()

    def paid(self) -> tuple[float, int]:
        """The search's ``PaidLedger``: what the call store logged under this evaluator's run
        prefix, in every process; calls that were in flight when a process died count too."""
        if self.store is None or not self.run_prefix:
            return 0.0, 0
        spend = self.store.spend(run_id_prefix=self.run_prefix)
        return spend.paid_usd, spend.paid_calls + spend.possibly_billed_calls
