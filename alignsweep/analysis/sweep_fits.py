"""One fitted over-optimization curve per group of a collected sweep table (`fits.csv`).

The curve forms, their standard errors and the bootstrap are `alignsweep.analysis.fits`; here a
sweep table (`alignsweep.results.collect`) is cut into groups (algorithm, model), the step-0
evaluations give the baseline and its standard error (`step0_baseline`), and each row of the
result says how its uncertainty was obtained (`uncertainty`): from the residuals, or from a
bootstrap over runs, stratified by configuration when the sweep repeats configurations over seeds
(`alignsweep.analysis.seeds`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from alignsweep.analysis.fits import FORMS, TooFewPoints, fit_overoptimization

_FIT_COLUMNS = [
    "n", "alpha", "beta", "baseline", "baseline_fitted", "rmse", "d_peak", "peak", "alpha_se", "beta_se", "baseline_se",
    "d_peak_se", "peak_se", "extrapolated", "d_max", "dof",
]
_RESULT_COLUMNS = ["form", "checkpoints", *_FIT_COLUMNS, "uncertainty", "error"]


def fit_groups(
    table: Any,
    by: Iterable[str] = ("algo", "model"),
    form: str = "log",
    checkpoints: str = "final",
    *,
    n_bootstrap: int = 0,
    seed: int = 0,
    strata: Iterable[str] = (),
) -> Any:
    """One fitted curve per group of a sweep table (columns run, step, sqrt_kl, win_rate, *by).

    checkpoints="final" fits each run's last evaluation (its largest step): one point per run,
    e.g. per beta; "all" fits every evaluation, intermediate checkpoints too. The baseline is the
    group's step-0 win rate (the SFT policy, which every run starts from) when it has any, with its
    standard error (`step0_baseline`), and those rows are then left out of the fit (at d = 0 they
    only restate the baseline); otherwise the baseline is fitted. The bootstrap resamples runs.
    With `strata` (columns, e.g. beta: `alignsweep.analysis.seeds.strata_columns`) the bootstrap
    resamples runs within each combination of their values: the seeds of each configuration.
    Rows without a step (runs never evaluated) are ignored. A group that cannot be fitted still
    gets a row, with nan parameters and `error` saying why.
    """
    import pandas as pd

    if checkpoints not in ("final", "all"):
        raise ValueError(f"checkpoints must be 'final' or 'all'; got {checkpoints!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(repr(f) for f in FORMS)}; got {form!r}")
    by = [by] if isinstance(by, str) else list(by)
    strata = [strata] if isinstance(strata, str) else list(strata)
    missing = [c for c in ["run", "step", "sqrt_kl", "win_rate", *by, *strata] if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}")

    uncertainty = "residuals" if n_bootstrap <= 0 else (
        f"bootstrap: {n_bootstrap} resamples of runs" + (f" within {', '.join(strata)}" if strata else ""))
    rows = []
    evaluated = table.dropna(subset=["step"]).reset_index(drop=True)  # unique labels for idxmax
    for key, group in evaluated.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        baseline, baseline_se = step0_baseline(group[group["step"] == 0])
        points = group.loc[group.groupby("run")["step"].idxmax()] if checkpoints == "final" else group
        if baseline is not None:
            points = points[points["step"] != 0]
        row = dict(zip(by, key), form=form, checkpoints=checkpoints, uncertainty=uncertainty)
        labels = points[strata].astype(str).agg("|".join, axis=1) if strata else None
        try:
            fit = fit_overoptimization(
                points["sqrt_kl"], points["win_rate"], form, baseline, baseline_se, runs=points["run"],
                n_bootstrap=n_bootstrap, seed=seed, strata=labels,
            )
        except TooFewPoints as exc:  # reported in the row, never dropped
            nan, given = math.nan, baseline is not None
            note = " (the step-0 rows give the baseline and are not fitted)" if given else ""
            row.update(
                n=exc.n, alpha=nan, beta=nan, baseline=baseline if given else nan, baseline_fitted=not given,
                rmse=nan, d_peak=nan, peak=nan, alpha_se=nan, beta_se=nan,
                baseline_se=(baseline_se or 0.0) if given else nan, d_peak_se=nan, peak_se=nan, extrapolated=False,
                d_max=nan,
                dof=nan, error=str(exc) + note,
            )
        else:
            row.update({c: getattr(fit, c) for c in _FIT_COLUMNS}, error=None)
        rows.append(row)
    out = pd.DataFrame(rows, columns=[*by, *_RESULT_COLUMNS])
    out["error"] = out["error"].astype(object).where(out["error"].notna(), None)  # None, not nan
    return out


def step0_baseline(step0: Any) -> tuple[float | None, float | None]:
    """The baseline (SFT) win rate and its standard error from a group's step-0 rows.

    Jobs that share one step-0 measurement (`eval.share_step0`: same SFT model, data, seed, judge)
    repeat the same row; each distinct measurement counts once (rows equal in win rate, its standard
    error and KL). The baseline is their mean and its standard error sqrt(sum se_i^2) / k from the
    rows' `win_rate_se`, or, without it, the spread of k >= 2 measurements (std / sqrt(k)); None
    when unknown (the baseline is then taken as exact). (None, None) without step-0 rows."""
    rows = step0[np.isfinite(step0["win_rate"].astype(float))]
    if rows.empty:
        return None, None
    keys = [c for c in ("win_rate", "win_rate_se", "kl") if c in rows.columns]
    distinct = rows.drop_duplicates(subset=keys)
    k = len(distinct)
    baseline = float(distinct["win_rate"].mean())
    ses = distinct["win_rate_se"].astype(float).to_numpy() if "win_rate_se" in distinct.columns else np.array([])
    if ses.size and np.all(np.isfinite(ses)):
        return baseline, float(math.sqrt(float((ses**2).sum())) / k)
    if k >= 2:
        return baseline, float(distinct["win_rate"].std(ddof=1) / math.sqrt(k))
    return baseline, None
