"""alpaca_eval's length-controlled GLM, written here from its published definition, to check
``stats.length_controlled_win_rate`` against (alpaca_eval itself cannot be installed here).

The definition (alpaca_eval ``metrics/glm_winrate.py``, Dubois et al. 2024):

- features per annotation: ``tanh(std_delta_len)`` with ``std_delta_len = (len(output_1) -
  len(output_2)) / std`` (output_1 is the baseline's; characters; pandas' sample standard
  deviation, ddof=1), ``instruction_difficulty`` (``length_controlled_v1`` only) and a column of
  ones (``not_gamed_baseline``); no other intercept (``fit_intercept=False``);
- target: ``preference - 1`` in [0, 1] (a 0 = draw read as 1.5), fitted as soft labels by
  duplicating every row as a ``y = 1`` row weighted ``p`` and a ``y = 0`` row weighted ``1 - p``;
- model: L1-penalised logistic regression as liblinear solves it, ``min ||w||_1 + C * sum_i
  weight_i * logloss_i`` with ``C = 100`` (the fixed-C path; the leaderboard's cross-validated
  path picks C from a grid and adds a pull toward two length-gamed baselines, whose
  annotations are not public here);
- LC win rate: the mean predicted preference with ``std_delta_len`` set to 0, times 100.

Solved with L-BFGS-B on the split ``w = u - v`` (u, v >= 0), which makes the L1 term smooth:
a different algorithm from the Newton ridge fit in ``stats``, so agreement is not circular.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, special

C = 100.0


def reference_lc_win_rate(preference_1_2: np.ndarray, len_baseline: np.ndarray,
                          len_model: np.ndarray, difficulty: np.ndarray | None = None) -> float:
    pref = np.asarray(preference_1_2, dtype=float)
    pref = np.where(pref == 0.0, 1.5, pref) - 1.0
    delta = np.asarray(len_baseline, float) - np.asarray(len_model, float)
    std_delta_len = delta / np.std(delta, ddof=1)
    columns = [np.tanh(std_delta_len)]
    if difficulty is not None:
        columns.append(np.asarray(difficulty, float))
    columns.append(np.ones_like(delta))
    x = np.column_stack(columns)
    # duplicated rows: y = 1 weighted p, y = 0 weighted 1 - p
    xx = np.vstack([x, x])
    yy = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    ww = np.concatenate([pref, 1.0 - pref])
    k = x.shape[1]

    def objective(uv: np.ndarray) -> tuple[float, np.ndarray]:
        w = uv[:k] - uv[k:]
        eta = xx @ w
        nll = ww * (np.logaddexp(0.0, eta) - yy * eta)
        g = xx.T @ (ww * (special.expit(eta) - yy))
        value = float(uv.sum() + C * nll.sum())
        grad_w = C * g
        return value, np.concatenate([1.0 + grad_w, 1.0 - grad_w])

    res = optimize.minimize(objective, np.zeros(2 * k), jac=True, method="L-BFGS-B",
                            bounds=[(0.0, None)] * (2 * k),
                            options={"maxiter": 20000, "ftol": 1e-15, "gtol": 1e-10})
    w = res.x[:k] - res.x[k:]
    x_test = x.copy()
    x_test[:, 0] = 0.0
    return float(np.mean(special.expit(x_test @ w)) * 100.0)
