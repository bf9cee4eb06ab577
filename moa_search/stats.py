"""Statistics for noisy quality measurements: confidence intervals, paired tests, win rates.

A search compares configs on a few dozen items, so every quality number carries an interval and
every "A beats B" claim a paired test: without them the search would chase noise. Everything is
seeded, so the same values always give the same interval.

Conventions: an ``Estimate`` with fewer than 2 values has no interval (``low``/``high`` are NaN,
which compares False against any target, so "is it good enough?" is answered "not shown"); a
constant sample has a zero-width interval. Win rates follow AlpacaEval and are percentages
(0-100); qualities are fractions (0-1).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np
from scipy import optimize, special, stats

__all__ = ["Estimate", "PairedResult", "TargetCheck", "alpacaeval_win_rate", "at_least",
           "bootstrap_ci", "length_controlled_win_rate", "lc_win_rate_ci", "paired_comparison",
           "per_category"]

NAN = float("nan")
# Resamples x items held in memory at once; BCa's jackknife is n x n, so this caps it for big n.
_BATCH_CELLS = 2_000_000
# A token ridge on the LC intercept: keeps an all-wins fit finite, biases nothing measurable.
_INTERCEPT_L2 = 1e-8


@dataclass(frozen=True)
class Estimate:
    """A sample mean with a two-sided bootstrap interval and its analytic standard error."""

    mean: float
    low: float
    high: float
    n: int
    stderr: float
    confidence: float = 0.95

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def to_dict(self) -> dict[str, float | int | None]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x
        return {"mean": clean(self.mean), "low": clean(self.low), "high": clean(self.high),
                "n": self.n, "stderr": clean(self.stderr), "confidence": self.confidence}


@dataclass(frozen=True)
class PairedResult:
    """``a`` versus ``b`` on the same items: the mean of ``a - b`` and two tests of "no difference".

    ``sign_test_p`` ignores ties and magnitudes (robust, right for 0/1 scores);
    ``wilcoxon_p`` uses magnitudes and is ``None`` when every difference is zero.
    """

    n: int
    mean_diff: float
    diff: Estimate
    wins: int
    losses: int
    ties: int
    sign_test_p: float
    wilcoxon_p: float | None


@dataclass(frozen=True)
class TargetCheck:
    """Is the mean at least ``target``, with one-sided ``confidence``?

    ``lower_bound`` is the one-sided bootstrap lower confidence bound of the mean; ``passed`` is
    ``lower_bound >= target``. ``probability`` is the share of bootstrap means at or above the
    target: a rough "how likely is it good enough", useful to rank near-misses.
    """

    target: float
    mean: float
    lower_bound: float
    confidence: float
    passed: bool
    probability: float
    n: int


def _as_array(values: Sequence[float] | np.ndarray, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite numbers (drop unscored items before averaging)")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _sem(arr: np.ndarray) -> float:
    return float(stats.sem(arr)) if arr.size >= 2 else NAN


def bootstrap_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0,
                 method: Literal["BCa", "percentile"] = "BCa") -> Estimate:
    """The mean with a bootstrap interval (BCa by default: better coverage for skewed 0/1 data).

    BCa can be undefined (e.g. a sample that is all ones but one); then the percentile interval
    is used instead, since a slightly worse interval beats no interval.
    """
    _check_confidence(confidence)
    arr = _as_array(values)
    n = int(arr.size)
    if n == 0:
        return Estimate(NAN, NAN, NAN, 0, NAN, confidence)
    mean = float(arr.mean())
    if n == 1:
        return Estimate(mean, NAN, NAN, 1, NAN, confidence)
    if np.ptp(arr) == 0.0:
        return Estimate(mean, mean, mean, n, 0.0, confidence)
    low, high = _bootstrap_interval(arr, confidence, n_resamples, seed, method, "two-sided")
    return Estimate(mean, low, high, n, _sem(arr), confidence)


def _bootstrap_interval(arr: np.ndarray, confidence: float, n_resamples: int, seed: int,
                        method: str, alternative: str) -> tuple[float, float]:
    def run(m: str) -> tuple[float, float]:
        with warnings.catch_warnings():
            # scipy warns (and returns NaN) when BCa is degenerate; we fall back below.
            warnings.simplefilter("ignore")
            res = stats.bootstrap((arr,), np.mean, confidence_level=confidence,
                                  n_resamples=n_resamples, method=m, alternative=alternative,
                                  rng=np.random.default_rng(seed), vectorized=True,
                                  batch=max(1, _BATCH_CELLS // arr.size))
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    low, high = run(method)
    if method != "percentile" and (math.isnan(low) or math.isnan(high)):
        low, high = run("percentile")
    return low, high


def paired_comparison(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                      seed: int, confidence: float = 0.95, n_resamples: int = 2000) -> PairedResult:
    """Compare two configs scored on the same items, item by item.

    Pairing removes the between-item variance (hard items are hard for both), which is what makes
    small differences detectable on a few dozen items. The interval is a bootstrap over items of
    the per-item differences, i.e. a paired bootstrap.
    """
    x, y = _as_array(a, "a"), _as_array(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"paired samples need equal lengths, got {x.size} and {y.size}")
    d = x - y
    wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
    ties = int(d.size) - wins - losses
    sign_p = float(stats.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    wilcoxon_p: float | None = None
    if wins + losses:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-sample normal-approximation notes
            wilcoxon_p = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    est = bootstrap_ci(d, confidence, n_resamples, seed)
    return PairedResult(n=int(d.size), mean_diff=est.mean, diff=est, wins=wins, losses=losses,
                        ties=ties, sign_test_p=sign_p, wilcoxon_p=wilcoxon_p)


def at_least(values: Sequence[float] | np.ndarray, target: float, confidence: float = 0.95,
             n_resamples: int = 2000, seed: int = 0) -> TargetCheck:
    """Is quality >= target with one-sided ``confidence``? ("cheapest config that matches X")

    One-sided, because the question is one-sided: a config far above the target is as good as
    one just above it.
    """
    _check_confidence(confidence)
    arr = _as_array(values)
    n = int(arr.size)
    if n < 2:
        mean = float(arr.mean()) if n else NAN
        return TargetCheck(target, mean, NAN, confidence, False, NAN, n)
    mean = float(arr.mean())
    if np.ptp(arr) == 0.0:
        ok = mean >= target
        return TargetCheck(target, mean, mean, confidence, ok, 1.0 if ok else 0.0, n)
    lower, _ = _bootstrap_interval(arr, confidence, n_resamples, seed, "BCa", "greater")
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    probability = float(np.mean(means >= target))
    return TargetCheck(target, mean, lower, confidence, bool(lower >= target), probability, n)


def per_category(values: Sequence[float] | np.ndarray, categories: Sequence[str], *,
                 confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> dict[str, Estimate]:
    """One ``Estimate`` per category, sorted by name: where a config wins and where it loses."""
    arr = _as_array(values)
    if arr.size != len(categories):
        raise ValueError(f"got {arr.size} values but {len(categories)} categories")
    groups: dict[str, list[float]] = {}
    for value, cat in zip(arr.tolist(), categories):
        groups.setdefault(cat, []).append(value)
    return {cat: bootstrap_ci(groups[cat], confidence, n_resamples, seed) for cat in sorted(groups)}


# ---- AlpacaEval-style win rates ------------------------------------------------------------

def alpacaeval_win_rate(preferences: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(win_rate, standard_error)`` in percent, computed as AlpacaEval computes them.

    Preferences use AlpacaEval's encoding: 1 = the baseline wins, 2 = the candidate wins,
    1.5 = a draw (fractional values are soft preferences). ``win_rate = mean((p - 1) * 100)``
    and ``standard_error`` is the standard error of that mean (``scipy.stats.sem``, ddof=1).
    Missing preferences (NaN) are dropped, as AlpacaEval drops unannotated items. AlpacaEval's
    legacy 0-for-draw is *not* accepted: a 0 more likely means 0/1-encoded preferences were
    passed by mistake, so values outside [1, 2] raise ``ValueError``.
    """
    arr = np.asarray(preferences, dtype=float).ravel()
    arr = arr[~np.isnan(arr)]
    bad = arr[(arr < 1.0) | (arr > 2.0)]
    if bad.size:
        raise ValueError(f"AlpacaEval preferences must be in [1, 2] (1 = baseline wins, "
                         f"2 = candidate wins); got {bad[:3].tolist()}")
    if arr.size == 0:
        return NAN, NAN
    scaled = (arr - 1.0) * 100.0
    return float(scaled.mean()), _sem(scaled)


def _lc_features(len_candidate: np.ndarray, len_baseline: np.ndarray) -> np.ndarray:
    """tanh(length difference / its standard deviation): bounded, so a few huge outputs cannot
    dominate the fit (AlpacaEval LC uses the same normalisation)."""
    delta = len_candidate - len_baseline
    if delta.size == 0:
        return delta
    sd = float(np.std(delta))
    if sd == 0.0:
        return np.zeros_like(delta)
    return np.tanh(delta / sd)


def _fit_lc(p: np.ndarray, z: np.ndarray, l2: float) -> float:
    """Fit ``P(candidate wins) = sigmoid(b0 + b1 * z)`` to soft labels; return sigmoid(b0).

    The length slope ``b1`` gets a light ridge penalty ``l2`` (it keeps the fit finite when
    length separates wins from losses). The intercept gets only a token penalty
    (``_INTERCEPT_L2``, to keep an all-wins record finite): penalising it properly would bias
    the headline number, and without a length effect (equal lengths) the intercept alone then
    reproduces the raw win rate. Newton steps (trust-exact, exact Hessian): two parameters, so
    each fit is a handful of 2x2 solves, cheap enough to refit inside a bootstrap.
    """
    penalty = np.array([_INTERCEPT_L2, l2])

    def loss(theta: np.ndarray) -> float:
        eta = theta[0] + theta[1] * z
        # log(1 + e^eta) - p * eta is the soft-label logistic loss, computed stably.
        return float(np.sum(np.logaddexp(0.0, eta) - p * eta) + 0.5 * penalty @ theta ** 2)

    def grad(theta: np.ndarray) -> np.ndarray:
        resid = special.expit(theta[0] + theta[1] * z) - p
        return np.array([resid.sum(), resid @ z]) + penalty * theta

    def hess(theta: np.ndarray) -> np.ndarray:
        mu = special.expit(theta[0] + theta[1] * z)
        w = mu * (1.0 - mu)
        wz = float(w @ z)
        return np.array([[w.sum(), wz], [wz, float(w @ (z * z))]]) + np.diag(penalty)

    res = optimize.minimize(loss, np.zeros(2), jac=grad, hess=hess, method="trust-exact",
                            options={"gtol": 1e-9})
    return float(special.expit(res.x[0]))


def _lc_inputs(preferences: Sequence[float] | np.ndarray, len_candidate: Sequence[float] | np.ndarray,
               len_baseline: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_array(preferences, "preferences")
    lc, lb = _as_array(len_candidate, "len_candidate"), _as_array(len_baseline, "len_baseline")
    if not (p.size == lc.size == lb.size):
        raise ValueError(f"got {p.size} preferences, {lc.size} candidate and {lb.size} baseline lengths")
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("preferences must be in [0, 1] (1 = candidate preferred)")
    return p, _lc_features(lc, lb)


def length_controlled_win_rate(preferences: Sequence[float] | np.ndarray,
                               len_candidate: Sequence[float] | np.ndarray,
                               len_baseline: Sequence[float] | np.ndarray, *,
                               l2: float = 1.0) -> float:
    """AlpacaEval-style length-controlled win rate, in percent.

    Judges favour longer answers; a config that wins by padding should not look better. The
    preference (0-1, 1 = candidate preferred) is regressed on the normalised length difference
    with an intercept, and the win rate is read off at zero length difference. With only two
    parameters (no per-instruction term) this is a simplified AlpacaEval LC; it keeps the
    property that matters: wins explained by length are discounted toward 50.
    """
    p, z = _lc_inputs(preferences, len_candidate, len_baseline)
    if p.size == 0:
        return NAN
    return 100.0 * _fit_lc(p, z, l2)


def lc_win_rate_ci(preferences: Sequence[float] | np.ndarray,
                   len_candidate: Sequence[float] | np.ndarray,
                   len_baseline: Sequence[float] | np.ndarray, *, confidence: float = 0.95,
                   n_resamples: int = 200, seed: int = 0, l2: float = 1.0) -> Estimate:
    """The LC win rate (percent) with a percentile bootstrap interval over items.

    Each resample refits the regression, so the default uses fewer resamples than
    ``bootstrap_ci``; ``stderr`` is the standard deviation of the bootstrap LC values.
    """
    _check_confidence(confidence)
    p, z = _lc_inputs(preferences, len_candidate, len_baseline)
    n = int(p.size)
    if n == 0:
        return Estimate(NAN, NAN, NAN, 0, NAN, confidence)
    point = 100.0 * _fit_lc(p, z, l2)
    if n == 1:
        return Estimate(point, NAN, NAN, 1, NAN, confidence)
    if np.ptp(p) == 0.0:
        return Estimate(point, point, point, n, 0.0, confidence)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    for k in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        boot[k] = 100.0 * _fit_lc(p[idx], z[idx], l2)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    return Estimate(point, float(low), float(high), n, float(np.std(boot, ddof=1)), confidence)


# ---- Student-t bounds: the search's stopping and target rules (fast, no resampling) -----------

def mean_bound(values: Iterable[float], confidence: float, *, upper: bool) -> float:
    """One-sided Student-t bound of the mean; with fewer than 2 values, the mean itself."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean
    half = float(stats.t.ppf(confidence, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean + half if upper else mean - half


def confidence_at_least(values: Iterable[float], target: float) -> float:
    """P(true mean >= target) under a one-sided t model of the per-item values."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return 0.0
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    if sd == 0.0 or x.size < 2:
        return 1.0 if mean >= target else 0.0
    return float(stats.t.cdf((mean - target) / (sd / math.sqrt(x.size)), x.size - 1))

