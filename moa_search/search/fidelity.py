"""Multi-fidelity: stop a clearly worse config after some of its items, merge the stages.

Multi-fidelity rule (ours: Optuna's pruners do not handle multi-objective studies). With
``[fidelity] enabled`` and more items than ``first_items``, a trial runs its items, in the
study's seeded random order (``staged_order``), in stages (``stage_ends``), and is checked
after each but the last by the *certain* rule (``certain_stop_reason``: the target is out of
reach even if every item left scores 1, which spends no error; or, from ``first_items`` on, the
front is, by quality and by a 10 % margin on cost and latency), and at the *looks*
(``fidelity_looks``: after ``first_items``, then after twice as many, and so on while items
remain) by the statistical rule below. It stops at a look when, at the per-look
one-sided confidence ``1 - (1 - c) / K`` (``c`` = ``[fidelity] confidence``, ``K`` = the number
of looks; the tests each rule uses are named below):

* *dominated*: some fully evaluated config R is no worse on every other objective (cost per item
  and/or latency p50, as measured on the subset) and "this config's quality is no worse than
  R's" is rejected: half the look's error goes to one test of this config's values against the
  best such R's quality (exact: measured on every item; ``stats.bounded_p_at_least``), half to
  paired tests on the shared items, each of the m references at an m-th of it (Bonferroni): the
  exact sign test for 0/1 scores, Hoeffding's bound for graded scores in [0, 1], the Student-t
  bound otherwise (``stats.paired_p_below_zero``); in constrained mode R must also be feasible
  and only cost counts;
* *below target* (constrained mode): "quality >= target" is rejected, at half the look's error,
  on the items so far, by the exact binomial tail for 0/1 scores, else Hoeffding's Chernoff bound when every item's value is in [0, 1] (``stats.bounded_p_at_least``:
  valid for any bounded scores and far sharper than a t bound for 0/1 scores near the target),
  else by the Student-t upper bound.

Otherwise it evaluates the next stage only and merges it with the ones before.

Why the per-look confidence makes the looks valid: a config is wrongly stopped if any of its
``K`` checks errs; each errs with probability at most ``(1 - c) / K``, so by the union bound
(Bonferroni alpha spending, valid whatever the looks' correlation and whenever the trial stops)
all of them together err with probability at most ``1 - c``, the error rate a single look at
confidence ``c`` had. Within a look the two rules share its error: the paired tests take half;
the below-target test and the one-sample dominance test take the other half together (a
feasible reference's quality is at least the target, so the second rejects whenever the first
does). More looks buy earlier stops for a stricter level per look: a config far below the
target stops after ``first_items``, a marginal one after twice as many, instead of running
every item. A stopped trial is told
to Optuna as PRUNED (so it never enters ``study.best_trials``), its subset metrics kept in its
user attributes. Pairing against the same items is what makes 16 items enough to call a
config "clearly" worse. Every test here is valid without a normality assumption when scores
are in [0, 1] (the Student-t bounds used before stopped true-front configs in the benchmark:
with 0/1 scores near 0 or 1 their error rate is far above the nominal one).
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Sequence

import numpy as np
from optuna.trial import FrozenTrial

from ..stats import bootstrap_ci, bounded_p_at_least, mean_bound, paired_p_below_zero
from ..study_spec import StudySpec
from .cost_order import DEFAULT_SLACK
from .records import TrialMetrics, _objective_values, trial_metrics

#: Two-sided level of the CIs this module computes when it merges fidelity stages.
CI_LEVEL = 0.95


def merge_metrics(a: TrialMetrics, b: TrialMetrics) -> TrialMetrics:
    """Combine two evaluations of one config on disjoint items (the two fidelity stages).

    Quality and its CI are recomputed from the per-item values with the same bootstrap interval
    the evaluator reports (so it stays inside the values' range, unlike a t interval). Latency
    percentiles are exact when each part that scored an item carries ``item_latency_s`` (a part
    whose items all failed has none, and its NaN p50 must not reach the merge), else an
    item-weighted average.
    """
    values = {**a.item_values, **b.item_values}
    x = np.asarray(list(values.values()), dtype=float)
    n = a.n_items + b.n_items
    wa, wb = (a.n_items / n, b.n_items / n) if n else (0.5, 0.5)
    lat = {**a.item_latency_s, **b.item_latency_s}
    if lat and all(m.item_latency_s or not m.item_values for m in (a, b)):
        p50, p95 = (float(np.percentile(list(lat.values()), q)) for q in (50, 95))
    else:
        p50 = wa * a.latency_p50_s + wb * b.latency_p50_s
        p95 = max(a.latency_p95_s, b.latency_p95_s)
    ci = bootstrap_ci(x, CI_LEVEL) if x.size else None

    def mix(ma: Mapping[str, float], mb: Mapping[str, float]) -> dict[str, float]:
        return {k: wa * ma.get(k, 0.0) + wb * mb.get(k, 0.0) for k in sorted(set(ma) | set(mb))}

    def add(x1: int | None, x2: int | None) -> int | None:
        return None if x1 is None or x2 is None else x1 + x2

    return TrialMetrics(
        quality=float(x.mean()) if x.size else math.nan,
        quality_low=ci.low if ci else math.nan, quality_high=ci.high if ci else math.nan,
        n_items=n, item_values=values,
        cost_usd_per_item=wa * a.cost_usd_per_item + wb * b.cost_usd_per_item,
        paid_usd=a.paid_usd + b.paid_usd, latency_p50_s=p50, latency_p95_s=p95,
        calls=a.calls + b.calls, cached_calls=a.cached_calls + b.cached_calls,
        cost_by_role=mix(a.cost_by_role, b.cost_by_role), cost_by_model=mix(a.cost_by_model, b.cost_by_model),
        n_failed=a.n_failed + b.n_failed, simulated=a.simulated or b.simulated,
        tokens_in=add(a.tokens_in, b.tokens_in), tokens_out=add(a.tokens_out, b.tokens_out),
        item_latency_s=lat, n_degraded=a.n_degraded + b.n_degraded,
        first_error=a.first_error or b.first_error,
    )


def staged_order(items: Sequence[str], seed: int) -> list[str]:
    """The order fidelity stages take the items in: a permutation fixed by the study seed.

    Why not file order: the bounds above hold for items drawn at random from the study's set,
    and a file sorted by category or difficulty would make its first items a biased sample (a
    config strong on the hard half stopped on the easy half). Why one order for every trial:
    paired tests need shared items, and an early-stopped config's calls then cover a prefix
    that later trials reuse through the call store (``budget.covered_calls``)."""
    return sorted(items, key=lambda i: hashlib.sha256(f"{seed}|{i}".encode()).digest())


def fidelity_looks(first_items: int, n_items: int) -> list[int]:
    """The item counts after which a trial is checked: ``first_items``, doubling, below ``n_items``."""
    looks, n = [], max(1, first_items)
    while n < n_items:
        looks.append(n)
        n *= 2
    return looks


#: Between the statistical looks the items also run in smaller stages, checked by the certain
#: rule only (``certain_stop_reason``): below ``first_items`` doubling from this count, after it
#: every ``first_items // 2`` items. That rule spends no error, so the extra checks cost nothing
#: but a few more rounds of waiting (a stage's items run concurrently).
SCREEN_START = 4


def stage_ends(first_items: int, n_items: int) -> list[int]:
    """Where the stages end (``n_items``, the last, excluded): the statistical looks
    (``fidelity_looks``) and the certain rule's checks between them."""
    ends = set(fidelity_looks(first_items, n_items))
    n = SCREEN_START
    while n < min(first_items, n_items):
        ends.add(n)
        n *= 2
    step = max(SCREEN_START, first_items // 2)
    n = first_items + step
    while n < n_items:
        ends.add(n)
        n += step
    return sorted(ends)


def quality_is_item_mean(spec: StudySpec) -> bool:
    """Whether the study's quality is the mean of its per-item values, which every rule here
    tests (and ``merge_metrics`` recomputes). Not so for the length-controlled win rate, a
    fit over the whole set: such a study runs every item at once, fidelity or not."""
    from ..scoring import scorer_class  # scorers pull in the judges; only their headline is needed
    return getattr(scorer_class(spec.scorer.name), "headline", None) != "lc_win_rate"


def reachable_quality(done: TrialMetrics, n_rest: int) -> float | None:
    """The highest quality the config can still end with: every one of the ``n_rest`` items
    left scoring the maximum, 1 (a failed item, left out of the mean, only lowers the bound's
    slack). None when some value is outside [0, 1] (no maximum is known)."""
    values = list(done.item_values.values())
    if any(not 0.0 <= v <= 1.0 for v in values):
        return None
    if not values and not n_rest:
        return None
    return (sum(values) + n_rest) / (len(values) + n_rest)


def no_worse_references(trials: Sequence[FrozenTrial], number: int, others: Sequence[str],
                        mine: Mapping[str, float], *, margin: float = 0.0, feasible_only: bool = False,
                        ) -> list[tuple[FrozenTrial, TrialMetrics, dict[str, float]]]:
    """The fully evaluated configs (not trial ``number``; only feasible ones if asked) whose
    values on the ``others`` objectives are no worse than ``mine``, by ``margin`` (their value
    times 1 + margin at most mine): the references both stop rules compare quality against."""
    out = []
    for t in trials:
        if t.number == number or t.user_attrs.get("status") != "complete":
            continue
        if feasible_only and not all(v <= 0 for v in t.constraints.values()):
            continue
        ref = trial_metrics(t)
        if ref is None:
            continue
        theirs = dict(zip(others, _objective_values(others, ref)))
        if all(theirs[k] * (1 + margin) <= mine[k] for k in others):
            out.append((t, ref, theirs))
    return out


def certain_stop_reason(done: TrialMetrics, n_rest: int, number: int, spec: StudySpec,
                        target: float | None, trials: Sequence[FrozenTrial]) -> str | None:
    """Why trial ``number`` stops without a test, or None: even if each of its ``n_rest``
    remaining items scores 1, its quality on the study's items stays below the target
    (constrained), or (Pareto, once ``first_items`` items have run) at most that of a fully
    evaluated config that also beats it by ``DEFAULT_SLACK`` (10 %) on every other objective.

    The quality part involves no chance: the study's quality is the mean over its fixed items
    (whatever the target confidence, a config whose mean cannot reach the target cannot be
    feasible), so the constrained rule stops no config that could meet the target, and it
    spends none of the looks' error. A high target needs few misses to rule a config out (48
    items and a target of 46/48: three), which the statistical tests at ``first_items`` cannot
    match. The Pareto rule is certain only in quality: its cost and latency are measured on the
    items so far, as the statistical rule measures them, so it waits for as many items as that
    rule does, and R must beat them by the margin (a config tied at the best quality once lost
    the front by 0.2 % latency on 16 items).
    Constrained mode has no such rule: there only cost decides among feasible configs, and a
    subset's cost is no certain ground (a run stopped the true cheapest config, 1 % cheaper than
    the feasible reference, on four items' cost); the statistical rule covers it."""
    best = reachable_quality(done, n_rest)
    if best is None:
        return None
    counted = f"at most {best:.4g} even if the {n_rest} items left all score 1"
    if spec.objectives.mode == "constrained":
        if target is not None and best < target - 1e-12:
            return f"below target for sure: quality {counted} (target {target:.4g}, {done.n_items} items run)"
        return None
    if done.n_items < spec.fidelity.first_items:
        return None
    others = tuple(m for m in spec.objectives.metrics if m != "quality")
    mine = dict(zip(others, _objective_values(others, done)))
    for t, ref, theirs in no_worse_references(trials, number, others, mine, margin=DEFAULT_SLACK):
        if ref.quality < best - 1e-12:
            continue
        if ref.quality > best + 1e-12 or any(theirs[k] < mine[k] for k in others):
            better = "".join(f"; {k} {theirs[k]:.4g} < {mine[k]:.4g} by over {DEFAULT_SLACK:.0%}" for k in others)
            return f"dominated by trial {t.number}: quality {counted}, its {ref.quality:.4g}{better}"
    return None


def look_confidence(confidence: float, n_looks: int) -> float:
    """The one-sided confidence of each of ``n_looks`` checks such that the chance that any of
    them errs is at most ``1 - confidence`` (union bound)."""
    return 1.0 - (1.0 - confidence) / max(1, n_looks)


def early_stop_reason(first: TrialMetrics, number: int, spec: StudySpec, target: float | None,
                      trials: Sequence[FrozenTrial], confidence: float | None = None) -> str | None:
    """Why trial ``number``, measured on its items so far (``first``), stops early (the rule
    above), or None. ``confidence`` is the per-look level (default: ``[fidelity] confidence``)."""
    conf = spec.fidelity.confidence if confidence is None else confidence
    constrained = spec.objectives.mode == "constrained"
    if constrained and target is not None:
        # Half the look's error, as the one-sample dominance test below has: a feasible
        # reference's quality is >= the target, so that test rejects whenever this one does at
        # the same level, and the two together err at most half the look's error (the paired
        # tests take the other half). At the full error they would together take 1.5 times it.
        alpha = (1 - conf) / 2
        p = bounded_p_at_least(first.item_values.values(), target)
        if not math.isnan(p):  # values in [0, 1]: Hoeffding's bound, valid and sharp near 0 / 1
            if p <= alpha:
                return (f"below target: P(quality >= {target:.4g}) <= {p:.3g} on the "
                        f"first {first.n_items} items, quality {first.quality:.4g} (confidence {1 - alpha:.4g})")
            ucb = math.inf
        else:
            ucb = mean_bound(first.item_values.values(), 1 - alpha, upper=True)
        if ucb < target:
            return (f"below target: quality upper bound {ucb:.4g} < {target:.4g} on the first "
                    f"{first.n_items} items (confidence {1 - alpha:.4g})")
    others = ("cost",) if constrained else tuple(m for m in spec.objectives.metrics if m != "quality")
    mine = dict(zip(others, _objective_values(others, first)))
    refs = []  # (trial, its metrics, their other objectives, the items both ran)
    for t, ref, theirs in no_worse_references(trials, number, others, mine, feasible_only=constrained):
        shared = [k for k in first.item_values if k in ref.item_values]
        if len(shared) >= 2:
            refs.append((t, ref, theirs, shared))
    if not refs:
        return None
    # Half the look's error for one test against the best of them: its quality is exact (the
    # mean over every item of the study), so "this config's quality reaches it" is one
    # hypothesis, whatever the number of references.
    t, ref, theirs, _ = max(refs, key=lambda r: (r[1].quality, -r[0].number))
    p = bounded_p_at_least(first.item_values.values(), ref.quality)
    if not math.isnan(p) and p <= (1 - conf) / 2:
        better = ", ".join(f"{k} {theirs[k]:.4g} <= {mine[k]:.4g}" for k in others)
        return (f"dominated by trial {t.number}: P(quality >= its {ref.quality:.4g}) <= {p:.3g} on "
                f"{first.n_items} items (confidence {conf:.4g})" + (f"; {better}" if better else ""))
    # The other half for paired tests, Bonferroni over the references: a config on the true
    # front is stopped wrongly if any one of them looks better by chance.
    alpha = (1 - conf) / 2 / len(refs)
    for t, ref, theirs, shared in refs:
        diffs = [first.item_values[k] - ref.item_values[k] for k in shared]
        p = paired_p_below_zero(diffs)
        if math.isnan(p):  # scores outside [0, 1]: the Student-t bound
            ucb = mean_bound(diffs, 1 - alpha, upper=True)
            why = f"paired quality difference upper bound {ucb:.4g} < 0"
            stop = ucb < 0
        else:
            why = f"P(no worse) <= {p:.3g} (sign test / Hoeffding, Bonferroni over {len(refs)})"
            stop = p <= alpha
        if stop:
            better = ", ".join(f"{k} {theirs[k]:.4g} <= {mine[k]:.4g}" for k in others)
            return (f"dominated by trial {t.number}: {why} on {len(shared)} items (confidence {conf:.4g})"
                    + (f"; {better}" if better else ""))
    return None
