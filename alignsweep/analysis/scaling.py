"""Over-optimization across model sizes: do larger models degrade less?

Rafailov et al. (2024, Sec. 4 and Fig. 1) compare the fitted over-optimization curves of several
model sizes. Here each (algorithm, model) curve of `fits.csv` (`alignsweep.analysis.sweep_fits`)
gives three numbers with standard errors, each regressed on x = log10(parameters) by weighted
least squares (statsmodels WLS, weights 1 / se^2):

- `d_peak` (on log d*, se(log d*) = se(d*) / d*): where the curve peaks; a positive slope means
  larger models can move further from the reference before the win rate falls;
- `peak`: the peak win rate R(d*);
- `curvature` (the fit's beta, `fit_b`): how fast the win rate falls past the peak; a negative
  slope means larger models degrade more slowly.

The points' errors are known (the fits'), so the coefficients' covariance is (X^T W X)^-1 times
a scale factor max(1, chi^2 / dof) (the Particle Data Group's inflation when the points scatter more
than their errors allow; 1 with two sizes, where no scatter can be seen). Intervals are normal
(known variances). `prediction` is the regression's value at `predict_params` (default ten times the
largest model: one decade beyond), with the interval of the regression line there (the unseen
model's own fit error comes on top). A model without a finite value (no peak, a failed fit) is
left out and named in `note`; a size enters once per (algorithm, form, checkpoints).

Parameter counts come from the runs (`model_params`, every parameter of the trained policy,
embeddings included, recorded in status.json when the job loads the model and collected as a
column by `alignsweep.results.collect`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

QUANTITIES = {"d_peak": ("d_peak", "d_peak_se"), "peak": ("peak", "peak_se"), "curvature": ("beta", "beta_se")}
COLUMNS = ["algo", "form", "checkpoints", "quantity", "n_sizes", "models", "slope", "slope_se", "slope_ci_low",
           "slope_ci_high", "p_value", "intercept", "scale", "answer", "predict_params", "prediction",
           "prediction_ci_low", "prediction_ci_high", "note"]


def model_sizes(table: Any) -> dict[str, float]:
    """Parameter count per model of a collected table (its `model_params` column; a model whose runs
    did not record one is missing from the result)."""
    if table.empty or "model_params" not in table.columns:
        return {}
    known = table.dropna(subset=["model_params"])
    return {str(m): float(n) for m, n in known.groupby("model")["model_params"].max().items()}


def regress_on_size(params: Any, values: Any, ses: Any, *, log_values: bool = False,
                    predict_params: float | None = None, level: float = 0.95) -> dict:
    """WLS of `values` (or their log, with `log_values`) on log10(`params`), weights 1 / se^2.

    params, values, ses: shape (n,), n >= 2 distinct sizes with finite positive ses. Returns slope
    (per decade of parameters; for log values, of the natural log), its se, `level` interval and
    two-sided p-value, intercept, the scale factor, and the prediction at `predict_params` (back on
    the values' own scale) with its interval. Raises ValueError with fewer than two sizes."""
    import statsmodels.api as sm

    x = np.log10(np.asarray(params, dtype=float))
    y, se = np.asarray(values, dtype=float), np.asarray(ses, dtype=float)
    if log_values:
        y, se = np.log(y), se / y
    if np.unique(x).size < 2:
        raise ValueError(f"the regression on model size needs at least two sizes; got {np.unique(x).size}")
    X = sm.add_constant(x, has_constant="add")
    w = 1.0 / se**2
    dof = x.size - 2
    plain = sm.WLS(y, X, weights=w).fit()
    chi2 = float(np.sum(w * plain.resid**2))
    scale = max(1.0, chi2 / dof) if dof > 0 else 1.0
    fit = sm.WLS(y, X, weights=w).fit(cov_type="fixed scale", cov_kwds={"scale": scale})
    z = float(stats.norm.ppf(0.5 + level / 2))
    slope, slope_se = float(fit.params[1]), float(fit.bse[1])
    at = float(predict_params if predict_params is not None else 10 * np.max(np.asarray(params, dtype=float)))
    point = np.array([1.0, math.log10(at)])
    mean = float(point @ fit.params)
    half = z * math.sqrt(float(point @ fit.cov_params() @ point))
    back = math.exp if log_values else float
    return {
        "slope": slope, "slope_se": slope_se, "slope_ci_low": slope - z * slope_se, "slope_ci_high": slope + z * slope_se,
        "p_value": float(2 * stats.norm.sf(abs(slope / slope_se))), "intercept": float(fit.params[0]), "scale": scale,
        "predict_params": at, "prediction": back(mean), "prediction_ci_low": back(mean - half),
        "prediction_ci_high": back(mean + half),
    }


def _answer(quantity: str, low: float, high: float) -> str:
    """What the slope's interval says, in the paper's terms."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undetermined"
    if low <= 0 <= high:
        return "no clear trend with size (the interval holds 0)"
    up = low > 0
    return {
        "d_peak": "larger models peak later (further from the reference)" if up else "larger models peak earlier",
        "peak": "larger models reach a higher peak win rate" if up else "larger models reach a lower peak win rate",
        "curvature": "larger models degrade faster past the peak" if up else "larger models degrade more slowly",
    }[quantity]


def scaling_table(fits: Any, sizes: dict[str, float], predict_params: float | None = None) -> Any:
    """One row per (algorithm, form, checkpoints, quantity) of a fits table (`fit_groups` by algo
    and model) whose models have parameter counts in `sizes`: the regressions of the module
    docstring (`COLUMNS`). Groups with fewer than two usable sizes get a row with NaN values and
    the reason in `note`. Empty when the fits cover fewer than two sized models."""
    import pandas as pd

    if fits is None or fits.empty or "model" not in fits.columns:
        return pd.DataFrame(columns=COLUMNS)
    sized = fits[fits["model"].astype(str).isin(sizes)]
    if sized["model"].nunique() < 2:
        return pd.DataFrame(columns=COLUMNS)
    rows = []
    for (algo, form, which), group in sized.groupby(["algo", "form", "checkpoints"], sort=True):
        for quantity, (value, error) in QUANTITIES.items():
            vals = pd.to_numeric(group[value], errors="coerce")
            ses = pd.to_numeric(group[error], errors="coerce") if error in group.columns else vals * np.nan
            ok = np.isfinite(vals) & np.isfinite(ses) & (ses > 0) & (vals > 0 if quantity == "d_peak" else True)
            left_out = sorted(group.loc[~ok, "model"].astype(str))
            row = {"algo": algo, "form": form, "checkpoints": which, "quantity": quantity, "n_sizes": int(ok.sum()),
                   "models": ",".join(group.loc[ok, "model"].astype(str)),
                   "note": f"left out (no finite {value} with a standard error): {', '.join(left_out)}" if left_out else ""}
            params = group.loc[ok, "model"].astype(str).map(sizes).to_numpy(dtype=float)
            try:
                row.update(regress_on_size(params, vals[ok], ses[ok], log_values=quantity == "d_peak",
                                           predict_params=predict_params))
            except ValueError as exc:
                row["note"] = "; ".join(filter(None, [str(exc), row["note"]]))
            row["answer"] = _answer(quantity, row.get("slope_ci_low", math.nan), row.get("slope_ci_high", math.nan))
            rows.append(row)
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def headline(scaling: Any, form: str = "log", checkpoints: str = "all") -> list[str]:
    """One line per algorithm answering the paper's question from the `form`/`checkpoints` rows."""
    lines = []
    if scaling is None or scaling.empty:
        return lines
    chosen = scaling[(scaling["form"] == form) & (scaling["checkpoints"] == checkpoints)]
    for algo, group in chosen.groupby("algo", sort=True):
        parts = []
        for _, row in group.iterrows():
            if np.isfinite(row["slope"]):
                parts.append(f"{row['quantity']}: {row['answer']} (slope {row['slope']:+.3g} per decade, 95% CI "
                             f"{row['slope_ci_low']:+.3g} to {row['slope_ci_high']:+.3g})")
        if parts:
            lines.append(f"{algo}: " + "; ".join(parts))
    return lines
