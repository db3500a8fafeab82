"""The length-controlled win rate: what the judge would prefer if sample and reference were equally long.

Source: Dubois, Galambosi, Liang & Hashimoto (2024), "Length-Controlled AlpacaEval: A Simple Way to
Debias Automatic Evaluators" (arXiv:2404.04475), the metric of AlpacaEval 2 and the one AlphaPO
(Gupta et al. 2025) reports; AlpacaEval's `length_controlled_v1` GLM
(tatsu-lab/alpaca_eval, src/alpaca_eval/metrics/glm_winrate.py). A logistic regression of the
judge's verdicts on the length difference, read at zero difference:

    P(sample wins) = sigmoid(theta + phi * tanh(delta / sd(delta))),   lc_win_rate = sigmoid(theta)

delta = len(sample) - len(reference) in characters of the texts the judge read (AlpacaEval: the
outputs' `str.len()`), sd its standard deviation over the checkpoint's comparisons; tanh bounds the
feature as AlpacaEval 2 does. What differs from AlpacaEval 2, and why:
- no instruction-difficulty term: AlpacaEval estimates it once over many models on its fixed 805
  instructions; here one policy meets one reference per prompt, and a per-prompt term is not
  identifiable from a single comparison;
- no L1 penalty, cross-validation or regularisation toward its gamed baselines: a plain maximum
  (quasi-)likelihood fit by statsmodels' GLM (Binomial family, logit link);
- ties: a tie is the fractional response y = 1/2 (AlpacaEval likewise turns a draw into the soft
  label 0.5). The Bernoulli quasi-likelihood with fractional y (Papke & Wooldridge 1996) keeps the
  estimate consistent; as a tie's variance is not the binomial one, the standard error is the
  sandwich (HC0) one, carried to the probability scale by the delta method,
  se(lc) = lc (1 - lc) se(theta). With no length effect the estimate is close to the raw win rate.

Verdicts without a judgement (NaN) are left out, as in the raw win rate. Cases without a finite
answer give NaN with the reason in `lc_note` (never a crash or an invented number): fewer than
`MIN_VERDICTS` verdicts, every verdict a win (or every one a loss), verdicts perfectly separated by
the length difference, or the same non-zero length difference in every comparison (its effect
cannot be told apart from the win rate). When no comparison differs in length the raw win rate is
the length-controlled one (with its sandwich standard error); when every verdict is a tie it is 1/2
(standard error 0, the note saying so).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MIN_VERDICTS = 10  # fewer verdicts than this: lc_win_rate is NaN (two parameters on a handful of coin flips)
_MAX_COEF = 25.0  # |theta| or |phi| beyond this (odds e^25) is a fit running off to infinity: separation


@dataclass(frozen=True)
class LengthControlled:
    """lc_win_rate (probability, [0, 1]) with its standard error; length_coef is phi, the logit change
    per unit of tanh(delta / sd(delta)); note is "" when fitted, else why the values are NaN."""

    lc_win_rate: float
    lc_win_rate_se: float
    lc_length_coef: float
    lc_note: str = ""

    def row(self) -> dict:
        return {"lc_win_rate": self.lc_win_rate, "lc_win_rate_se": self.lc_win_rate_se,
                "lc_length_coef": self.lc_length_coef, "lc_note": self.lc_note}


def _undefined(note: str) -> LengthControlled:
    return LengthControlled(math.nan, math.nan, math.nan, note)


def _separated(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether wins and losses are (quasi-)completely separated by x, with no tie to pin the slope."""
    wins, losses, ties = x[y == 1.0], x[y == 0.0], x[(y > 0.0) & (y < 1.0)]
    if ties.size or not wins.size or not losses.size:
        return False
    return bool(wins.min() >= losses.max() or wins.max() <= losses.min())


def length_controlled_win_rate(
    outcomes: Sequence[float], sample_lengths: Sequence[float], reference_lengths: Sequence[float],
    *, min_verdicts: int = MIN_VERDICTS,
) -> LengthControlled:
    """The length-controlled win rate of one checkpoint (module docstring).

    `outcomes`: the judge's verdicts, shape (n,): 1 sample wins, 0 reference wins, 0.5 tie, NaN
    none; `sample_lengths`, `reference_lengths`: shape (n,), characters (any one unit: the feature
    is scaled by its standard deviation). Raises ValueError when the three differ in length."""
    y = np.asarray(outcomes, dtype=float)
    delta = np.asarray(sample_lengths, dtype=float) - np.asarray(reference_lengths, dtype=float)
    if y.shape != delta.shape:
        raise ValueError(f"outcomes and lengths differ in length: {y.size} and {delta.size}")
    keep = np.isfinite(y) & np.isfinite(delta)
    y, delta = y[keep], delta[keep]
    if y.size < min_verdicts:
        return _undefined(f"too few verdicts: {y.size} (the fit needs at least {min_verdicts})")
    if np.all(y == 1.0) or np.all(y == 0.0):
        which = "win" if y[0] == 1.0 else "loss"
        return _undefined(f"every verdict is a {which}: the logistic fit has no finite solution")
    if np.all(y == 0.5):  # the judge never prefers either, whatever the lengths
        return LengthControlled(0.5, 0.0, 0.0, "every verdict is a tie")
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    sd = float(delta.std(ddof=1))
    if sd == 0.0:
        if delta[0] != 0.0:
            return _undefined(f"every sample differs from its reference by the same length ({delta[0]:+g}): "
                              "its effect cannot be told apart from the win rate")
        exog = np.ones((y.size, 1))  # already at zero length difference: the raw win rate
    else:
        exog = np.column_stack([np.ones(y.size), np.tanh(delta / sd)])
        if _separated(exog[:, 1], y):
            return _undefined("perfect separation: the length difference alone decides every verdict")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        try:
            fit = sm.GLM(y, exog, family=sm.families.Binomial()).fit(cov_type="HC0")
        except (PerfectSeparationWarning, np.linalg.LinAlgError, ValueError) as exc:
            return _undefined(f"the logistic fit failed: {exc}")
    coef, bse = np.asarray(fit.params, dtype=float), np.asarray(fit.bse, dtype=float)
    if not (fit.converged and np.all(np.isfinite(coef)) and np.all(np.abs(coef) < _MAX_COEF)
            and np.all(np.isfinite(bse))):
        return _undefined("perfect separation: the logistic fit does not converge to finite coefficients")
    p = float(1.0 / (1.0 + math.exp(-coef[0])))
    return LengthControlled(p, p * (1.0 - p) * float(bse[0]), float(coef[1]) if coef.size > 1 else 0.0)
