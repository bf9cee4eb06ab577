"""Budgets: what a config is expected to cost before it runs, and what a study has spent.

Budgets. Spend is read from the storage (sum of finished trials' ``paid_usd``/``paid_calls``,
the baseline's, plus the reservations of trials other workers are running), so it survives
resumes and is shared by workers. A trial starts only if its estimate (``cost_estimate`` of the
config, or the highest observed $ per call times the config's calls, whichever is larger) fits in
what is left; each later fidelity stage is checked again with the measured per-item cost. Two
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

from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from optuna.trial import FrozenTrial, TrialState

from ..catalog import Catalog
from ..config import MoAConfig, canonical_json
from ..runner import sample_indices
from .cost_order import CostEstimate
from .records import trial_config, trial_metrics


def agent_calls_per_item(config: MoAConfig) -> int:
    return sum(len(layer) for layer in config.proposer_layers) + 1


class PriceEstimate:
    """A list-price estimate of $ per item from the catalog, before anything is measured.

    Each agent writes its model's typical answer (the sim profile's verbosity, else
    ``default_completion_tokens``, capped by max_tokens); each later layer reads the prompt plus
    every answer of the layer before. Judge calls are not included: the observed per-call cost
    takes over as soon as trials have run. ``calls`` gives the same estimate per call, with the
    call's identity (what its request depends on: the agent, its sample index, the proposer
    layers before it, the prompt template), so that calls a study already made can be priced at nothing
    (``uncached_share``): configs share proposer calls through the call store.
    """

    def __init__(self, catalog: Catalog, prompt_tokens: int = 300, default_completion_tokens: int = 500) -> None:
        self.catalog, self.prompt_tokens, self.default = catalog, prompt_tokens, default_completion_tokens
        # config hash -> its calls: samplers price every config of the space again per trial
        self._memo: dict[str, list[tuple[str, float]]] = {}

    def _out_tokens(self, model: str, max_tokens: int) -> int:
        info = self.catalog.get(model)
        return min(info.sim.verbosity if info.sim else self.default, max_tokens)

    def calls(self, config: MoAConfig) -> list[tuple[str, float]]:
        """(identity, list $) of each call of one item, aggregator last."""
        memo = self._memo.get(config.config_hash)
        if memo is not None:
            return memo
        out, previous = [], 0
        for i, layer in enumerate(config.proposer_layers):
            written = 0
            before = canonical_json([config.prompt_template,
                                     [[a.to_dict() for a in lay] for lay in config.proposer_layers[:i]]])
            for agent, k in zip(layer, sample_indices(layer)):
                n_out = self._out_tokens(agent.model, agent.max_tokens)
                cost = self.catalog.get(agent.model).cost(self.prompt_tokens + previous, n_out)
                out.append((f"{before}|{canonical_json(agent.to_dict())}|{k}", cost))
                written += n_out
            previous = written
        agg = config.aggregator
        before = canonical_json([config.prompt_template,
                                 [[a.to_dict() for a in lay] for lay in config.proposer_layers]])
        cost = self.catalog.get(agg.model).cost(self.prompt_tokens + previous, self._out_tokens(agg.model, agg.max_tokens))
        out.append((f"{before}|{canonical_json(agg.to_dict())}|0", cost))
        self._memo[config.config_hash] = out
        return out

    def __call__(self, config: MoAConfig) -> float:
        return sum(cost for _, cost in self.calls(config))

    def latency(self, config: MoAConfig) -> float | None:
        """Estimated critical-path seconds per item from the catalog's typed speeds (``sim``
        profiles: time to first token, tokens/s, the simulated world's formula); None when a
        model has no typed speed (a guess from its price would be no estimate)."""
        total, previous = 0.0, 0
        for layer in (*config.proposer_layers, (config.aggregator,)):
            slowest, written = 0.0, 0
            for agent in layer:
                sim = self.catalog.get(agent.model).sim
                if sim is None:
                    return None
                n_out = self._out_tokens(agent.model, agent.max_tokens)
                prompt = self.prompt_tokens + previous
                slowest = max(slowest, sim.ttft_s + prompt / (20 * sim.tokens_per_s) + n_out / sim.tokens_per_s)
                written += n_out
            total, previous = total + slowest, written
        return total


def price_estimate(catalog: Catalog, *, prompt_tokens: int = 300,
                   default_completion_tokens: int = 500) -> PriceEstimate:
    """The catalog's list-price estimate of $ per item (``PriceEstimate``)."""
    return PriceEstimate(catalog, prompt_tokens, default_completion_tokens)


def measured_configs(trials: Sequence[FrozenTrial]) -> list[tuple[MoAConfig, int]]:
    """(config, items it ran on) of every trial that made calls (complete or stopped early)."""
    out = []
    for t in trials:
        if t.user_attrs.get("status") not in ("complete", "stopped_early"):
            continue
        m, config = trial_metrics(t), trial_config(t)
        if m is not None and m.n_items and config is not None:
            out.append((config, m.n_items))
    return out


def covered_calls(estimate: CostEstimate, measured: Sequence[tuple[MoAConfig, int]]) -> dict[str, int]:
    """Call identity -> how many of the study's items (a prefix: fidelity stages run the first
    items first) some measured config already made that call on; ``measured`` = (config, items).
    Empty for an estimate that does not price calls one by one."""
    calls = getattr(estimate, "calls", None)
    out: dict[str, int] = {}
    for config, n in measured if calls is not None else ():
        for key, _ in calls(config):
            out[key] = max(out.get(key, 0), n)
    return out


def cost_now(estimate: CostEstimate, measured: Sequence[tuple[MoAConfig, int]],
             n_items: int) -> Callable[[MoAConfig], float]:
    """$ per item to evaluate a config now on ``n_items`` items: its list estimate less the
    calls the ``measured`` configs (config, items) already made, which the call store serves."""
    covered = covered_calls(estimate, measured)
    return lambda config: float(estimate(config)) * uncached_share(estimate, config, n_items, covered)


def uncached_share(estimate: CostEstimate, config: MoAConfig, n_items: int,
                   covered: Mapping[str, int]) -> float:
    """The share of ``config``'s list-price estimate on the first ``n_items`` items that is still
    to pay: calls another config already made are served by the call store. 1.0 for an estimate
    that does not price calls one by one."""
    calls = getattr(estimate, "calls", None)
    if calls is None or n_items <= 0:
        return 1.0
    priced = calls(config)
    total = sum(cost for _, cost in priced) * n_items
    if total <= 0:
        return 1.0
    left = sum(cost * max(0, n_items - covered.get(key, 0)) for key, cost in priced)
    return left / total


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

