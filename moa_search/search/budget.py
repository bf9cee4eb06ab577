"""Budgets: what a config is expected to cost before it runs, and what a study has spent.

Budgets. Spend is read from the storage (sum of finished trials' ``paid_usd``/``paid_calls``,
the baseline's, plus the reservations of trials other workers are running), so it survives
resumes and is shared by workers. A trial starts only if its estimate (``cost_estimate`` of the
config, or the highest observed $ per call times the config's calls, whichever is larger) fits in
what is left; the second fidelity stage is checked again with the measured per-item cost. Two
workers that check at the same instant can each start one trial; the overshoot is bounded by one
trial's estimate per extra worker.

The trial budget counts *evaluations* (complete, stopped early, failed): duplicates and
budget-skipped trials are recorded but free, because the space maps several parameter vectors
to one config and samplers revisit good regions, so counting them would spend the budget on
nothing. It is exact across workers: a trial runs only if fewer than ``budget.trials`` counted
trials have a smaller number (numbers are assigned atomically by the storage; a running trial of
another worker counts until it turns out to be free, and that worker then asks again). A sampler
that only proposes evaluated configs for ``max(30, budget.trials)`` trials in a row has
converged, and the study stops.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from optuna.trial import FrozenTrial, TrialState

from ..catalog import Catalog
from ..config import MoAConfig
from .cost_order import CostEstimate


def agent_calls_per_item(config: MoAConfig) -> int:
    return sum(len(layer) for layer in config.proposer_layers) + 1


def price_estimate(catalog: Catalog, *, prompt_tokens: int = 300,
                   default_completion_tokens: int = 500) -> CostEstimate:
    """A list-price estimate of $ per item from the catalog, before anything is measured.

    Each agent writes its model's typical answer (the sim profile's verbosity, else
    ``default_completion_tokens``, capped by max_tokens); each later layer reads the prompt plus
    every answer of the layer before. Judge calls are not included: the observed per-call cost
    takes over as soon as trials have run.
    """
    def out_tokens(model: str, max_tokens: int) -> int:
        info = catalog.get(model)
        return min(info.sim.verbosity if info.sim else default_completion_tokens, max_tokens)

    def estimate(config: MoAConfig) -> float:
        total, previous = 0.0, 0
        for layer in config.proposer_layers:
            written = 0
            for agent in layer:
                out = out_tokens(agent.model, agent.max_tokens)
                total += catalog.get(agent.model).cost(prompt_tokens + previous, out)
                written += out
            previous = written
        agg = config.aggregator
        total += catalog.get(agg.model).cost(prompt_tokens + previous, out_tokens(agg.model, agg.max_tokens))
        return total

    return estimate


@runtime_checkable
class PaidLedger(Protocol):
    """Where an evaluator records what it paid (the call store): the truth for budgets.

    Trials record their own spend, but a worker killed mid-trial records nothing, though the
    calls it made were paid (and the ones in flight possibly billed). An evaluator that has a
    ledger reports its total, and the budget counts the larger of the two."""

    def paid(self) -> tuple[float, int]:
        """($ paid, calls paid or possibly billed) by this study so far, every process included."""
        ...


def _reserved(trials: Sequence[FrozenTrial], exclude: int | None = None) -> tuple[float, int]:
    """What running trials (other workers) hold back from the budget."""
    usd, calls = 0.0, 0
    for t in trials:
        if t.state == TrialState.RUNNING and t.number != exclude:
            r_usd, r_calls = t.user_attrs.get("reserved", (0.0, 0))
            usd += float(r_usd)
            calls += int(r_calls)
    return usd, calls


def spent_with_ledger(trials: Sequence[FrozenTrial], baseline: Mapping[str, Any] | None,
                      ledger: PaidLedger | None, exclude: int | None = None,
                      pending: tuple[float, int] = (0.0, 0)) -> tuple[float, int]:
    """``_spent`` plus ``pending`` (the excluded trial's own spend so far, which the ledger
    already holds), raised to the ledger's total plus the running reservations when that is more
    (conservative: another running trial's calls so far count in both)."""
    usd, calls = _spent(trials, baseline, exclude)
    usd, calls = usd + pending[0], calls + pending[1]
    if ledger is None:
        return usd, calls
    r_usd, r_calls = _reserved(trials, exclude)
    l_usd, l_calls = ledger.paid()
    return max(usd, l_usd + r_usd), max(calls, l_calls + r_calls)


def _spent(trials: Sequence[FrozenTrial], baseline: Mapping[str, Any] | None,
           exclude: int | None = None) -> tuple[float, int]:
    """Spend recorded in the storage; running trials (other workers) count their reservation."""
    usd, calls = _reserved(trials, exclude)
    for t in trials:
        if t.number == exclude:
            continue
        if t.state.is_finished():
            usd += float(t.user_attrs.get("paid_usd", 0.0))
            calls += int(t.user_attrs.get("paid_calls", 0))
    if baseline:
        m = baseline["metrics"]
        usd += float(m["paid_usd"])
        calls += int(m["calls"]) - int(m["cached_calls"])
    return usd, calls

