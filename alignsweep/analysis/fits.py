"""Fit the over-optimization curve of win rate against sqrt(KL).

Gao et al. (2022, "Scaling Laws for Reward Model Overoptimization") found that the gold reward of
a policy optimized against a proxy rises and then falls with d = sqrt(KL(pi || pi_ref)); Rafailov
et al. (2024, "Scaling Laws for Reward Model Overoptimization in Direct Alignment Algorithms")
fit the same functional forms to the win rates of DPO, IPO and SLiC checkpoints:

    log form:        R(d) = baseline + d * (alpha - beta * log d)
    quadratic form:  R(d) = baseline + d * (alpha - beta * d)

Both equal the baseline (the SFT policy's win rate) at d = 0, taking d * log d = 0 there. With
beta > 0 they peak at d* = exp(alpha / beta - 1) (log) or d* = alpha / (2 beta) (quadratic): the
KL budget beyond which more optimization makes the policy worse.

For a fixed baseline, R - baseline is linear in (alpha, beta), so ordinary least squares is
exact and needs no starting point or iteration; a free baseline is one more (intercept) column.
`fit_overoptimization` fits one set of points; `fit_groups` fits one curve per group of a
collected sweep table (`alignsweep.results.collect`), using the step-0 evaluations as the baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

FORMS = ("log", "quadratic")


class TooFewPoints(ValueError):
    """The points cannot determine the fit: too few of them, or too few distinct sqrt(KL) values.

    `n` is the number of points there are, `needed` the number the fit needs.
    """

    def __init__(self, message: str, n: int | None = None, needed: int | None = None):
        super().__init__(message)
        self.n, self.needed = n, needed


@dataclass(frozen=True)
class FitResult:
    """One fitted curve. Standard errors are nan where a parameter is not identifiable."""

    form: str  # "log" | "quadratic"
    alpha: float
    beta: float
    baseline: float
    baseline_fitted: bool  # True when the baseline was a free parameter
    rmse: float  # root-mean-square residual on the points used
    d_peak: float  # argmax of R over d >= 0; nan when the curve has no interior maximum (beta <= 0, ...)
    peak: float  # R(d_peak); nan likewise
    n: int  # points used
    alpha_se: float
    beta_se: float
    baseline_se: float  # 0 when the baseline was given

    def predict(self, d: Any) -> np.ndarray:
        """R(d) for an array-like of sqrt(KL) values (nan for negative d, which cannot occur)."""
        d = np.asarray(d, dtype=float)
        with np.errstate(invalid="ignore"):
            out = self.baseline + self.alpha * d - self.beta * _curvature_term(d, self.form)
        return np.where(d < 0, np.nan, out)


def _curvature_term(d: np.ndarray, form: str) -> np.ndarray:
    """d * log d (with 0 at d = 0) or d**2: the regressor whose coefficient is -beta."""
    if form == "quadratic":
        return d * d
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * np.log(safe), 0.0)


def _design(d: np.ndarray, form: str, fit_baseline: bool) -> np.ndarray:
    columns = [d, -_curvature_term(d, form)]
    if fit_baseline:
        columns.append(np.ones_like(d))
    return np.column_stack(columns)


def _peak(alpha: float, beta: float, baseline: float, form: str) -> tuple[float, float]:
    """(d*, R(d*)) at the curve's interior maximum over d > 0, or (nan, nan) when it has none.

    With beta <= 0 the fitted curve is linear or convex: no over-optimization peak. With
    beta > 0 the log form always peaks inside (its slope is +inf at d = 0); the quadratic peaks
    inside only when alpha > 0, and otherwise only ever falls from the baseline.
    """
    if not beta > 0:
        return math.nan, math.nan
    if form == "log":
        x = alpha / beta - 1.0
        d = math.exp(x) if x < 700 else math.inf  # a tiny beta puts the peak out of reach
        return d, baseline + beta * d  # log d* = alpha/beta - 1, so R(d*) = baseline + beta * d*
    if not alpha > 0:
        return math.nan, math.nan
    d = alpha / (2.0 * beta)
    return d, baseline + alpha * d / 2.0


def _n_distinct(d: np.ndarray, fit_baseline: bool) -> int:
    """How many distinct informative d values there are (the design's rank, up to p).

    Columns (d, d log d) or (d, d^2) are independent on any two distinct nonzero d; with an
    intercept, any three distinct d (0 included) determine the curve, as f is strictly concave.
    """
    return len(np.unique(d)) if fit_baseline else len(np.unique(d[d > 0]))


def _solve(d, r, form, baseline):
    fit_baseline = baseline is None
    X = _design(d, form, fit_baseline)
    y = r if fit_baseline else r - baseline
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    return X, y, coef


def fit_overoptimization(
    sqrt_kl: Iterable[float],
    win_rate: Iterable[float],
    form: str = "log",
    baseline: float | None = None,
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> FitResult:
    """Least-squares fit of R(d) = baseline + d * (alpha - beta * g(d)), g = log d or d.

    `baseline` given (e.g. the SFT policy's win rate) fixes the value at d = 0; None makes it a
    free parameter. Pairs with a non-finite value are dropped. The fit needs p + 1 points
    (p = 2 or 3 free parameters), so that the residual variance, and with it the standard
    errors, exists. Standard errors come from sigma^2 (X^T X)^-1, or, when n_bootstrap > 0, from
    refitting n_bootstrap resamples of the points drawn with replacement (resamples that cannot
    determine the fit are skipped).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(repr(f) for f in FORMS)}; got {form!r}")
    d = np.asarray(sqrt_kl, dtype=float).ravel()
    r = np.asarray(win_rate, dtype=float).ravel()
    if d.shape != r.shape:
        raise ValueError(f"sqrt_kl and win_rate differ in length: {d.size} and {r.size}")
    if baseline is not None:
        baseline = float(baseline)
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite or None; got {baseline}")
    keep = np.isfinite(d) & np.isfinite(r)
    d, r = d[keep], r[keep]
    k = int(keep.size - keep.sum())
    dropped = f" (after dropping {k} pair{'s' * (k != 1)} with a non-finite value)" if k else ""
    if np.any(d < 0):
        raise ValueError(f"sqrt_kl must be >= 0; got {d[d < 0].min()}")

    fit_baseline = baseline is None
    p = 3 if fit_baseline else 2
    n = d.size
    fit = f"the {form} fit with a {'fitted' if fit_baseline else 'given'} baseline"
    if n < p + 1:
        raise TooFewPoints(f"the data has {n} point{'s' * (n != 1)}{dropped}; {fit} needs at least {p + 1}", n, p + 1)
    distinct = _n_distinct(d, fit_baseline)
    if distinct < p:
        kind = "distinct sqrt_kl values" if fit_baseline else "distinct nonzero sqrt_kl values"
        raise TooFewPoints(f"the data has {n} points but only {distinct} {kind}; {fit} needs at least {p}", n, p)

    X, y, coef = _solve(d, r, form, baseline)
    resid = y - X @ coef
    rss = float(resid @ resid)
    if n > p:
        cov = rss / (n - p) * np.linalg.inv(X.T @ X)
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    else:
        se = np.full(p, np.nan)

    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_bootstrap):
            idx = rng.integers(0, n, n)
            if _n_distinct(d[idx], fit_baseline) < p:
                continue  # degenerate resample: the curve is not determined
            draws.append(_solve(d[idx], r[idx], form, baseline)[2])
        se = np.std(draws, axis=0, ddof=1) if len(draws) >= 2 else np.full(p, np.nan)

    alpha, beta = float(coef[0]), float(coef[1])
    base = float(coef[2]) if fit_baseline else baseline
    d_peak, peak = _peak(alpha, beta, base, form)
    return FitResult(
        form=form,
        alpha=alpha,
        beta=beta,
        baseline=base,
        baseline_fitted=fit_baseline,
        rmse=math.sqrt(rss / n),
        d_peak=d_peak,
        peak=peak,
        n=n,
        alpha_se=float(se[0]),
        beta_se=float(se[1]),
        baseline_se=float(se[2]) if fit_baseline else 0.0,
    )


_FIT_COLUMNS = [
    "n", "alpha", "beta", "baseline", "baseline_fitted", "rmse", "d_peak", "peak", "alpha_se", "beta_se", "baseline_se",
]
_RESULT_COLUMNS = ["form", "checkpoints", *_FIT_COLUMNS, "error"]


def fit_groups(
    table: Any,
    by: Iterable[str] = ("algo", "model"),
    form: str = "log",
    checkpoints: str = "final",
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
) -> Any:
    """One fitted curve per group of a sweep table (columns run, step, sqrt_kl, win_rate, *by).

    checkpoints="final" fits each run's last evaluation (its largest step): one point per run,
    e.g. per beta; "all" fits every evaluation, intermediate checkpoints too. The baseline is the mean win
    rate of the group's step-0 rows (the SFT policy, which every run starts from) when it has
    any, and those rows are then left out of the fit (at d = 0 they only restate the baseline);
    otherwise the baseline is fitted. Rows without a step (runs never evaluated) are ignored.
    A group that cannot be fitted still gets a row, with nan parameters and `error` saying why.
    """
    import pandas as pd

    if checkpoints not in ("final", "all"):
        raise ValueError(f"checkpoints must be 'final' or 'all'; got {checkpoints!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(repr(f) for f in FORMS)}; got {form!r}")
    by = [by] if isinstance(by, str) else list(by)
    missing = [c for c in ["run", "step", "sqrt_kl", "win_rate", *by] if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")

    rows = []
    evaluated = table.dropna(subset=["step"]).reset_index(drop=True)  # unique labels for idxmax
    for key, group in evaluated.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        step0 = group["win_rate"][(group["step"] == 0) & np.isfinite(group["win_rate"].astype(float))]
        baseline = float(step0.mean()) if len(step0) else None
        points = group.loc[group.groupby("run")["step"].idxmax()] if checkpoints == "final" else group
        if baseline is not None:
            points = points[points["step"] != 0]
        row = dict(zip(by, key), form=form, checkpoints=checkpoints)
        try:
            fit = fit_overoptimization(
                points["sqrt_kl"], points["win_rate"], form, baseline, n_bootstrap=n_bootstrap, seed=seed
            )
        except TooFewPoints as exc:  # reported in the row, never dropped
            nan, given = math.nan, baseline is not None
            note = " (the step-0 rows give the baseline and are not fitted)" if given else ""
            row.update(
                n=exc.n, alpha=nan, beta=nan, baseline=baseline if given else nan, baseline_fitted=not given,
                rmse=nan, d_peak=nan, peak=nan, alpha_se=nan, beta_se=nan, baseline_se=0.0 if given else nan,
                error=str(exc) + note,
            )
        else:
            row.update({c: getattr(fit, c) for c in _FIT_COLUMNS}, error=None)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *_RESULT_COLUMNS])
    out["error"] = out["error"].astype(object).where(out["error"].notna(), None)  # None, not nan
    return out
