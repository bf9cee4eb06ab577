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

__all__ = ["LC_APPROXIMATE_NOTE", "LC_L2", "Estimate", "PairedResult", "TargetCheck",
           "alpacaeval_win_rate", "at_least", "bootstrap_ci", "decode_alpacaeval_preferences",
           "length_controlled_win_rate", "lc_win_rate_ci", "paired_comparison", "per_category"]

NAN = float("nan")
# Resamples x items held in memory at once; BCa's jackknife is n x n, so this caps it for big n.
_BATCH_CELLS = 2_000_000
# A token ridge on the LC intercept: keeps an all-wins fit finite, biases nothing measurable.
_INTERCEPT_L2 = 1e-8
#: The ridge on the LC length (and difficulty) coefficients. alpaca_eval's GLM is an
#: almost-unpenalised fit (liblinear L1 with C=100, i.e. 0.01 per unit of summed log-loss); the
#: same 0.01 here only keeps a fit finite where length separates wins from losses, and moves the
#: LC win rate by far less than a point. (It was 1.0 before; that moved it up to ~12 points.)
LC_L2 = 0.01
#: Said wherever an LC win rate without per-instruction difficulty is shown: alpaca_eval's
#: leaderboard number also has a difficulty term (and a pull toward length-gamed baselines).
LC_APPROXIMATE_NOTE = "approximate: no instruction difficulty"


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

def decode_alpacaeval_preferences(preferences: Sequence[float] | np.ndarray, *,
                                  zero_is_draw: bool = False) -> np.ndarray:
    """AlpacaEval preferences as floats in [1, 2] (NaN = unannotated, kept).

    1 = the baseline wins, 2 = the candidate wins, 1.5 = a draw, fractions are soft preferences.
    AlpacaEval 1.0 annotation files write a draw as 0, which alpaca_eval itself reads as 1.5;
    ``zero_is_draw`` does the same. It is off by default because, in a list of numbers of
    unknown origin, a 0 more likely means 0/1-encoded preferences passed by mistake: then any
    value outside [1, 2] raises ``ValueError``.
    """
    arr = np.asarray(preferences, dtype=float).ravel().copy()
    if zero_is_draw:
        arr[arr == 0.0] = 1.5
    known = arr[~np.isnan(arr)]
    bad = known[(known < 1.0) | (known > 2.0)]
    if bad.size:
        draw = " or 0 = draw (AlpacaEval 1.0)" if zero_is_draw else ""
        raise ValueError(f"AlpacaEval preferences must be in [1, 2] (1 = baseline wins, "
                         f"2 = candidate wins, 1.5 = draw){draw}; got {bad[:3].tolist()}")
    return arr


def alpacaeval_win_rate(preferences: Sequence[float] | np.ndarray, *,
                        zero_is_draw: bool = False) -> tuple[float, float]:
    """``(win_rate, standard_error)`` in percent, computed as AlpacaEval computes them.

    Preferences are decoded by ``decode_alpacaeval_preferences`` (``zero_is_draw`` for
    AlpacaEval 1.0 files). ``win_rate = mean((p - 1) * 100)`` and ``standard_error`` is the
    standard error of that mean (``scipy.stats.sem``, ddof=1). Missing preferences (NaN) are
    dropped, as AlpacaEval drops unannotated items.
    """
    arr = decode_alpacaeval_preferences(preferences, zero_is_draw=zero_is_draw)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return NAN, NAN
    scaled = (arr - 1.0) * 100.0
    return float(scaled.mean()), _sem(scaled)


def _lc_features(len_candidate: np.ndarray, len_baseline: np.ndarray) -> np.ndarray:
    """tanh(length difference / its standard deviation): bounded, so a few huge outputs cannot
    dominate the fit. As alpaca_eval: the sample standard deviation (ddof=1, pandas' default);
    its sign convention (baseline minus model) only flips the slope, since tanh is odd."""
    delta = len_candidate - len_baseline
    if delta.size < 2:
        return np.zeros_like(delta)
    sd = float(np.std(delta, ddof=1))
    if sd == 0.0:
        return np.zeros_like(delta)
    return np.tanh(delta / sd)


def _fit_glm(p: np.ndarray, x: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Fit ``P(candidate wins) = sigmoid(x @ theta)`` to soft labels ``p``; return ``theta``.

    The soft-label log-loss is what alpaca_eval minimises by duplicating each row as a win
    weighted ``p`` and a loss weighted ``1 - p``. ``penalty`` is a per-coefficient ridge.
    Newton steps (trust-exact, exact Hessian): two or three parameters, so each fit is a handful
    of small solves, cheap enough to refit inside a bootstrap.
    """
    def loss(theta: np.ndarray) -> float:
        eta = x @ theta
        # log(1 + e^eta) - p * eta is the soft-label logistic loss, computed stably.
        return float(np.sum(np.logaddexp(0.0, eta) - p * eta) + 0.5 * penalty @ theta ** 2)

    def grad(theta: np.ndarray) -> np.ndarray:
        return x.T @ (special.expit(x @ theta) - p) + penalty * theta

    def hess(theta: np.ndarray) -> np.ndarray:
        mu = special.expit(x @ theta)
        return (x * (mu * (1.0 - mu))[:, None]).T @ x + np.diag(penalty)

    res = optimize.minimize(loss, np.zeros(x.shape[1]), jac=grad, hess=hess,
                            method="trust-exact", options={"gtol": 1e-9})
    return np.asarray(res.x)


def _fit_lc(p: np.ndarray, z: np.ndarray, difficulty: np.ndarray | None, l2: float) -> float:
    """The LC win rate (a fraction): fit the GLM, then predict with the length term zeroed.

    Columns: an intercept (alpaca_eval's ``not_gamed_baseline``, 1 for every row), the length
    term ``z`` and, when given, the instruction difficulty. The intercept gets only a token
    penalty (``_INTERCEPT_L2``, to keep an all-wins record finite): penalising it would bias the
    headline number; ``l2`` applies to the other coefficients. The prediction is the mean over
    items of ``sigmoid(b0 + b_d * difficulty_i)``, i.e. ``sigmoid(b0)`` without difficulty.
    """
    columns = [np.ones_like(z), z] + ([difficulty] if difficulty is not None else [])
    x = np.column_stack(columns)
    penalty = np.array([_INTERCEPT_L2] + [l2] * (len(columns) - 1))
    theta = _fit_glm(p, x, penalty)
    x[:, 1] = 0.0
    return float(np.mean(special.expit(x @ theta)))


def _lc_inputs(preferences: Sequence[float] | np.ndarray, len_candidate: Sequence[float] | np.ndarray,
               len_baseline: Sequence[float] | np.ndarray,
               difficulty: Sequence[float] | np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    p = _as_array(preferences, "preferences")
    lc, lb = _as_array(len_candidate, "len_candidate"), _as_array(len_baseline, "len_baseline")
    if not (p.size == lc.size == lb.size):
        raise ValueError(f"got {p.size} preferences, {lc.size} candidate and {lb.size} baseline lengths")
    if np.any((p < 0.0) | (p > 1.0)):
        raise ValueError("preferences must be in [0, 1] (1 = candidate preferred)")
    d = None
    if difficulty is not None:
        d = _as_array(difficulty, "difficulty")
        if d.size != p.size:
            raise ValueError(f"got {p.size} preferences but {d.size} instruction difficulties")
    return p, _lc_features(lc, lb), d


def length_controlled_win_rate(preferences: Sequence[float] | np.ndarray,
                               len_candidate: Sequence[float] | np.ndarray,
                               len_baseline: Sequence[float] | np.ndarray, *,
                               difficulty: Sequence[float] | np.ndarray | None = None,
                               l2: float = LC_L2) -> float:
    """AlpacaEval's length-controlled win rate, in percent.

    Judges favour longer answers; a config that wins by padding should not look better. The
    preference (0-1, 1 = candidate preferred) is regressed on the normalised length difference
    (and, when ``difficulty`` gives alpaca_eval's per-instruction difficulty, on it too), and
    the win rate is predicted with the length difference set to zero. With ``difficulty`` this
    is alpaca_eval's ``length_controlled_v1`` GLM fitted to this model alone (its extra
    regularisation toward two length-gamed baselines needs their annotations, which are not
    here). Without it, it is alpaca_eval's minimal GLM (length + intercept): an approximation
    of the leaderboard's number, which ``LC_APPROXIMATE_NOTE`` says wherever it is shown.
    """
    p, z, d = _lc_inputs(preferences, len_candidate, len_baseline, difficulty)
    if p.size == 0:
        return NAN
    return 100.0 * _fit_lc(p, z, d, l2)


def lc_win_rate_ci(preferences: Sequence[float] | np.ndarray,
                   len_candidate: Sequence[float] | np.ndarray,
                   len_baseline: Sequence[float] | np.ndarray, *, confidence: float = 0.95,
                   n_resamples: int = 200, seed: int = 0,
                   difficulty: Sequence[float] | np.ndarray | None = None,
                   l2: float = LC_L2) -> Estimate:
    """The LC win rate (percent) with a percentile bootstrap interval over items.

    Each resample refits the regression, so the default uses fewer resamples than
    ``bootstrap_ci``; ``stderr`` is the standard deviation of the bootstrap LC values.
    """
    _check_confidence(confidence)
    p, z, d = _lc_inputs(preferences, len_candidate, len_baseline, difficulty)
    n = int(p.size)
    if n == 0:
        return Estimate(NAN, NAN, NAN, 0, NAN, confidence)
    point = 100.0 * _fit_lc(p, z, d, l2)
    if n == 1:
        return Estimate(point, NAN, NAN, 1, NAN, confidence)
    if np.ptp(p) == 0.0:
        return Estimate(point, point, point, n, 0.0, confidence)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_resamples)
    for k in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        boot[k] = 100.0 * _fit_lc(p[idx], z[idx], None if d is None else d[idx], l2)
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



def _bernoulli_kl(p: float, q: float) -> float:
    """KL(Bernoulli(p) || Bernoulli(q)), with 0 log 0 = 0."""
    out = 0.0
    if p > 0:
        out += p * math.log(p / q)
    if p < 1:
        out += (1 - p) * math.log((1 - p) / (1 - q))
    return out


def bounded_p_at_least(values: Iterable[float], target: float) -> float:
    """A p-value for "the mean is at least ``target``" from values in [0, 1]: ``exp(-n KL(mean ||
    target))`` when the observed mean is below the target (for 0/1 values the exact binomial
    tail ``P(Bin(n, target) <= successes)``, which that bound majorises), else 1.

    Hoeffding's (1963, Theorem 1) Chernoff bound: valid for any independent values in [0, 1]
    (not only 0/1 scores) and, by his Section 6, for items drawn without replacement from a
    finite set, the case of a study's first items. Unlike the Student-t bound it makes no
    normality assumption, and it is much sharper near 0 or 1, where a t interval of 0/1 scores
    is both invalid and wide: 12 of 16 right excludes a mean of 0.96 at p = 0.015, which the t
    bound (upper 0.97 at 0.95) cannot. Returns nan for values outside [0, 1] (no such bound)."""
    x = np.asarray(list(values), dtype=float)
    if x.size == 0 or np.any(x < 0) or np.any(x > 1):
        return math.nan
    if not 0 < target <= 1:
        return 1.0 if target <= 0 else 0.0
    mean = float(x.mean())
    if mean >= target:
        return 1.0
    if np.all((x == 0) | (x == 1)):  # 0/1 scores: the exact binomial tail, never above the bound
        return float(stats.binom.cdf(int(x.sum()), x.size, target))
    return math.exp(-x.size * _bernoulli_kl(mean, target))


def paired_p_below_zero(diffs: Iterable[float]) -> float:
    """A p-value for "the mean paired difference is at least 0" (so a small value says the
    first config is worse), or nan when no bound without a normality assumption applies.

    Differences of 0/1 scores are -1, 0 or 1, and then the mean is ``P(+1) - P(-1)``: the exact
    sign test on the discordant pairs (McNemar's, one-sided) is valid and the most powerful. For
    graded scores in [0, 1] (differences in [-1, 1]) it is ``bounded_p_at_least`` of
    ``(d + 1) / 2`` against 1/2. A Student-t bound is neither: three discordant pairs out of
    sixteen, all one way, give a t upper bound below 0 (p < 0.05) where the sign test gives
    p = 0.125, and such a stop had discarded true-front configs in the benchmark."""
    d = np.asarray(list(diffs), dtype=float)
    if d.size == 0 or np.any(np.abs(d) > 1):
        return math.nan
    if np.all(np.isin(d, (-1.0, 0.0, 1.0))):
        wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
        if wins >= losses:
            return 1.0
        return float(stats.binom.cdf(wins, wins + losses, 0.5))
    return bounded_p_at_least((d + 1) / 2, 0.5)
