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

Uncertainty. A measured baseline (the step-0 win rate, a mean over a few hundred prompts) has
its own standard error, and every point is fitted relative to it: theta = (X^T X)^-1 X^T (r - b)
moves by -v per unit of b, v = (X^T X)^-1 X^T 1, so cov(theta) = s^2 (X^T X)^-1 + se_b^2 v v^T
(independent: the baseline is measured on samples of its own). The bootstrap resamples whole runs
(a run's checkpoints share its deviations) and draws the baseline from N(b, se_b^2) per resample.
`d_peak_se` is the delta method on that covariance; `extrapolated` says the peak lies outside the
measured sqrt(KL) range (0 with a given baseline, else the smallest d, to the largest d).
`FitResult.interval` gives 95% (or any level) intervals. `fit_overoptimization` fits one set of
points; `alignsweep.analysis.sweep_fits.fit_groups` one curve per group of a collected sweep table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
from scipy import linalg, stats

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
    baseline_se: float  # the given baseline's standard error (0 when given as exact)
    d_peak_se: float = math.nan  # delta method; nan without a peak
    peak_se: float = math.nan  # R(d*)'s standard error, delta method with the baseline's error; nan without a peak
    extrapolated: bool = False  # d_peak outside the measured sqrt(KL) range (True for an infinite one)
    d_max: float = math.nan  # the largest measured sqrt(KL)
    dof: float = math.inf  # degrees of freedom of the residual variance (n - p; inf for the bootstrap)
    cov: tuple = ()  # covariance of (alpha, beta[, baseline]) as nested tuples, the baseline's error included
    cov_baseline: tuple = ()  # the part of `cov` due to the given baseline's error (known, not estimated)

    def interval(self, name: str, level: float = 0.95) -> tuple[float, float]:
        """Two-sided `level` interval of alpha, beta, baseline or d_peak: estimate -/+ t se, t of
        Student's distribution with the Welch-Satterthwaite degrees of freedom of se^2 (its
        residual part has `dof`, the baseline's part is known); d_peak's is symmetric on log d*
        (quadratic form: on d*), the scale of its delta-method error."""
        if name == "baseline" and not self.baseline_fitted:
            g = None
        elif name == "d_peak":
            if not (self.d_peak > 0 and math.isfinite(self.d_peak)) or not self.cov:
                return math.nan, math.nan
            g = _peak_gradient(self.alpha, self.beta, self.form, len(self.cov))
        else:
            g = np.eye(len(self.cov))[("alpha", "beta", "baseline").index(name)] if self.cov else None
        t = stats.norm.ppf(0.5 + level / 2)
        if g is not None and math.isfinite(self.dof):
            total, known = float(g @ np.array(self.cov) @ g), float(g @ np.array(self.cov_baseline) @ g)
            estimated = total - known
            dof = self.dof * total**2 / estimated**2 if estimated > 0 else math.inf
            t = stats.t.ppf(0.5 + level / 2, dof) if math.isfinite(dof) else t
        if name == "d_peak" and self.form == "log":
            half = float(t) * self.d_peak_se / self.d_peak
            return self.d_peak * math.exp(-half), self.d_peak * math.exp(half)
        value, se = getattr(self, name), getattr(self, f"{name}_se")
        return value - float(t) * se, value + float(t) * se

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
    coef, *_ = linalg.lstsq(X, y)
    return X, y, coef


def _peak_gradient(alpha: float, beta: float, form: str, p: int) -> np.ndarray:
    """Gradient of log d* (log form: alpha/beta - 1) or d* (quadratic: alpha/(2 beta)) in (alpha, beta[, b])."""
    g = np.zeros(p)
    a, b = np.float64(alpha), np.float64(beta)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        g[:2] = [1.0 / b, -a / (b * b)] if form == "log" else [1.0 / (2 * b), -a / (2 * b * b)]
    return g


def _d_peak_se(d_peak: float, alpha: float, beta: float, form: str, cov: np.ndarray) -> float:
    if not (d_peak > 0 and math.isfinite(d_peak)):
        return math.nan
    g = _peak_gradient(alpha, beta, form, cov.shape[0])
    with np.errstate(over="ignore", invalid="ignore"):
        var = float(g @ cov @ g)
    if not math.isfinite(var):
        return math.nan
    se = math.sqrt(max(var, 0.0))
    return se * d_peak if form == "log" else se  # log form: se(log d*) * d*


def _peak_se(d_peak: float, alpha: float, beta: float, form: str, cov: np.ndarray, v, b_se: float) -> float:
    """se of R(d*) = b + beta d* (log) or b + alpha d* / 2 (quadratic). Its gradient in (alpha, beta)
    is (d*, d* (1 - alpha / beta)) or (d*, -d*^2); a fitted baseline adds 1 in its place; a given
    one enters with var b_se^2 and its covariance -b_se^2 v with (alpha, beta), v = (X^T X)^-1 X^T 1."""
    if not (d_peak > 0 and math.isfinite(d_peak)):
        return math.nan
    g = np.zeros(cov.shape[0])
    g[:2] = [d_peak, d_peak * (1.0 - alpha / beta)] if form == "log" else [d_peak, -d_peak * d_peak]
    if v is None:
        g[2] = 1.0
        var = float(g @ cov @ g)
    else:
        var = float(g @ cov @ g) + b_se**2 * (1.0 - 2.0 * float(g @ v))
    return math.sqrt(var) if math.isfinite(var) and var >= 0 else math.nan


def _bootstrap_cov(d, r, form, baseline, baseline_se, runs, n_bootstrap, seed, p, strata=None) -> np.ndarray:
    """Covariance of the coefficients over `n_bootstrap` resamples of whole runs (and draws of the
    baseline), solved together as weighted normal equations; undetermined resamples are skipped.
    With `strata` (one label per point) runs are resampled within their stratum (e.g. the seeds of
    each beta), so that every resample keeps the sweep's design, and the covariance is scaled by
    k/(k-1), k the strata's harmonic mean size, when every stratum has two runs or more."""
    fit_baseline = baseline is None
    labels, first, run_of = np.unique(np.asarray(runs, dtype=object).astype(str), return_index=True,
                                      return_inverse=True)
    G = labels.size
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_bootstrap, G))
    stratum = np.zeros(G, dtype=int) if strata is None else np.unique(
        np.asarray(strata, dtype=object).astype(str)[first], return_inverse=True)[1]
    for s in np.unique(stratum):
        members = np.flatnonzero(stratum == s)
        picks = members[rng.integers(0, members.size, (n_bootstrap, members.size))]
        np.add.at(counts, (np.repeat(np.arange(n_bootstrap), members.size), picks.ravel()), 1.0)
    w = counts[:, run_of]  # (B, n): each point weighted by how often its run was drawn
    informative = d if fit_baseline else np.where(d > 0, d, np.nan)
    values, d_id = np.unique(np.nan_to_num(informative, nan=-1.0), return_inverse=True)
    present = (w @ (d_id[:, None] == np.arange(values.size)[None, :])) > 0
    present[:, values == -1.0] = False
    ok = present.sum(axis=1) >= p
    X = _design(d, form, fit_baseline)
    y = np.broadcast_to(r, (n_bootstrap, r.size)).copy()
    if not fit_baseline:
        drawn = baseline + (baseline_se or 0.0) * rng.standard_normal(n_bootstrap)
        y -= drawn[:, None]
    A = np.einsum("bi,ij,ik->bjk", w[ok], X, X)
    c = np.einsum("bi,ij,bi->bj", w[ok], X, y[ok])
    draws = np.linalg.solve(A, c[..., None])[..., 0] if ok.any() else np.zeros((0, p))
    if len(draws) < 2:
        return np.full((p, p), np.nan)
    # resampling k runs of a stratum shows (k-1)/k of their variance (the bootstrap variance of a
    # mean is s^2 (k-1)/k^2): with strata of k >= 2 runs, undo it (k: their harmonic mean)
    sizes = np.bincount(stratum)[np.unique(stratum)]
    k = sizes.size / np.sum(1.0 / sizes) if strata is not None and sizes.min() >= 2 else np.inf
    return np.cov(draws, rowvar=False, ddof=1) * (k / (k - 1) if np.isfinite(k) else 1.0)


def fit_overoptimization(
    sqrt_kl: Iterable[float],
    win_rate: Iterable[float],
    form: str = "log",
    baseline: float | None = None,
    baseline_se: float | None = None,
    *,
    runs: Iterable[Any] | None = None,
    n_bootstrap: int = 0,
    seed: int = 0,
    strata: Iterable[Any] | None = None,
) -> FitResult:
    """Least-squares fit of R(d) = baseline + d * (alpha - beta * g(d)), g = log d or d.

    `baseline` given (e.g. the SFT policy's win rate) fixes the value at d = 0, and
    `baseline_se` (its standard error; None = exact) is propagated into every parameter's
    standard error; None makes it a free parameter. `runs` labels each point's run (for the
    bootstrap; None: every point its own); `strata` labels each point's stratum, within which the
    bootstrap resamples runs (`alignsweep.analysis.seeds.strata_columns`: seeds within a beta). Pairs with a non-finite value are dropped. The fit needs
    p + 1 points (p = 2 or 3 free parameters), so that the residual variance, and with it the
    standard errors, exists. Standard errors come from s^2 (X^T X)^-1 plus the baseline's term
    (module docstring), or, when n_bootstrap > 0, from refitting n_bootstrap resamples of the runs
    with a fresh draw of the baseline (resamples that cannot determine the fit are skipped).
    Raises TooFewPoints, or ValueError for malformed input.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(repr(f) for f in FORMS)}; got {form!r}")
    d = np.asarray(sqrt_kl, dtype=float).ravel()
    r = np.asarray(win_rate, dtype=float).ravel()
    if d.shape != r.shape:
        raise ValueError(f"sqrt_kl and win_rate differ in length: {d.size} and {r.size}")
    labels = np.arange(d.size) if runs is None else np.asarray(list(runs), dtype=object).ravel()
    if labels.shape != d.shape:
        raise ValueError(f"runs and sqrt_kl differ in length: {labels.size} and {d.size}")
    if baseline is not None:
        baseline = float(baseline)
        if not math.isfinite(baseline):
            raise ValueError(f"baseline must be finite or None; got {baseline}")
    b_se = 0.0 if baseline is None or baseline_se is None else float(baseline_se)
    if not (math.isfinite(b_se) and b_se >= 0):
        raise ValueError(f"baseline_se must be a finite value >= 0 or None; got {baseline_se}")
    groups = None if strata is None else np.asarray(list(strata), dtype=object).ravel()
    keep = np.isfinite(d) & np.isfinite(r)
    d, r, labels = d[keep], r[keep], labels[keep]
    groups = None if groups is None else groups[keep]
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
    xtx_inv = linalg.inv(X.T @ X)
    known = np.zeros((p, p))
    if n_bootstrap > 0:
        cov = _bootstrap_cov(d, r, form, baseline, b_se, labels, n_bootstrap, seed, p, groups)
        dof = math.inf
    else:
        if not fit_baseline:
            v = xtx_inv @ X.T @ np.ones(n)
            known = b_se**2 * np.outer(v, v)
        cov = rss / (n - p) * xtx_inv + known
        dof = float(n - p)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))

    alpha, beta = float(coef[0]), float(coef[1])
    base = float(coef[2]) if fit_baseline else baseline
    d_peak, peak = _peak(alpha, beta, base, form)
    low = 0.0 if not fit_baseline else float(d.min())
    extrapolated = bool(d_peak == math.inf or (math.isfinite(d_peak) and not low <= d_peak <= float(d.max())))
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
        baseline_se=float(se[2]) if fit_baseline else b_se,
        d_peak_se=_d_peak_se(d_peak, alpha, beta, form, cov),
        peak_se=_peak_se(d_peak, alpha, beta, form, cov, None if fit_baseline else xtx_inv @ X.T @ np.ones(n), b_se),
        extrapolated=extrapolated,
        d_max=float(d.max()),
        dof=dof,
        cov=tuple(map(tuple, cov.tolist())),
        cov_baseline=tuple(map(tuple, known.tolist())),
    )
