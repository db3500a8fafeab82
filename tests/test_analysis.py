"""The over-optimization fits of alignsweep.analysis.fits against data with known parameters.

Expected values are written here from the formulas (Gao et al. 2022; Rafailov et al. 2024),
never taken from the code under test:
    log:        R(d) = b + d (alpha - beta log d),  d* = exp(alpha / beta - 1),  R(d*) = b + beta d*
    quadratic:  R(d) = b + d (alpha - beta d),      d* = alpha / (2 beta),        R(d*) = b + alpha d* / 2
Tolerances follow from the noise: the exact least-squares covariance sigma^2 (X^T X)^-1 of the
design, computed here independently.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignsweep.analysis.fits import FitResult, TooFewPoints, fit_overoptimization
from alignsweep.analysis.sweep_fits import fit_groups

# (alpha, beta, baseline) with a peak inside the sampled range of d
TRUE = {"log": (0.30, 0.15, 0.30), "quadratic": (0.20, 0.02, 0.30)}
D = np.linspace(0.2, 10.0, 60)
SIGMA = 0.005


def curve(d, form, alpha, beta, baseline):
    d = np.asarray(d, dtype=float)
    if form == "log":
        dlogd = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
        return baseline + alpha * d - beta * dlogd
    return baseline + d * (alpha - beta * d)


def analytic_peak(form, alpha, beta, baseline):
    if form == "log":
        d = math.exp(alpha / beta - 1)
        return d, baseline + d * (alpha - beta * math.log(d))
    d = alpha / (2 * beta)
    return d, baseline + d * (alpha - beta * d)


def true_cov(d, form, fit_baseline, sigma):
    """sigma^2 (X^T X)^-1 for columns (d, -g(d)[, 1]): the sampling covariance of the estimates."""
    g = d * np.log(d) if form == "log" else d * d
    cols = [d, -g] + ([np.ones_like(d)] if fit_baseline else [])
    X = np.column_stack(cols)
    return sigma**2 * np.linalg.inv(X.T @ X)


@pytest.mark.parametrize("form", ["log", "quadratic"])
@pytest.mark.parametrize("fit_baseline", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_parameters_from_noisy_data(form, fit_baseline, seed):
    alpha, beta, b = TRUE[form]
    rng = np.random.default_rng(seed)
    r = curve(D, form, alpha, beta, b) + rng.normal(0, SIGMA, D.size)
    fit = fit_overoptimization(D, r, form=form, baseline=None if fit_baseline else b)

    cov = true_cov(D, form, fit_baseline, SIGMA)
    se = np.sqrt(np.diag(cov))
    assert fit.form == form and fit.n == D.size and fit.baseline_fitted is fit_baseline
    assert abs(fit.alpha - alpha) < 5 * se[0]
    assert abs(fit.beta - beta) < 5 * se[1]
    if fit_baseline:
        assert abs(fit.baseline - b) < 5 * se[2]
    else:
        assert fit.baseline == b and fit.baseline_se == 0.0
    # the residual spread is the noise
    assert 0.7 * SIGMA < fit.rmse < 1.3 * SIGMA
    # reported standard errors match the exact sampling ones (sigma estimated from RSS, so loosely)
    assert fit.alpha_se == pytest.approx(se[0], rel=0.3)
    assert fit.beta_se == pytest.approx(se[1], rel=0.3)

    # the peak: delta method on (alpha, beta) for the tolerance
    d_true, peak_true = analytic_peak(form, alpha, beta, b)
    if form == "log":  # d* = exp(alpha/beta - 1): grad of d* wrt (alpha, beta)
        grad = d_true * np.array([1 / beta, -alpha / beta**2])
    else:  # d* = alpha / (2 beta)
        grad = np.array([1 / (2 * beta), -alpha / (2 * beta**2)])
    d_se = math.sqrt(grad @ cov[:2, :2] @ grad)
    assert abs(fit.d_peak - d_true) < 5 * d_se
    assert abs(fit.peak - peak_true) < 5 * max(se) + 5 * SIGMA
    # and the reported peak is the curve's value at the reported argmax
    assert fit.peak == pytest.approx(float(fit.predict(fit.d_peak)), abs=1e-12)


@pytest.mark.parametrize("form", ["log", "quadratic"])
@pytest.mark.parametrize("fit_baseline", [False, True])
def test_exact_data_gives_exact_parameters(form, fit_baseline):
    alpha, beta, b = TRUE[form]
    d = np.array([0.0, 0.5, 1.0, 2.0, 3.5, 5.0, 8.0])
    fit = fit_overoptimization(d, curve(d, form, alpha, beta, b), form, None if fit_baseline else b)
    assert fit.rmse < 1e-12
    assert fit.alpha == pytest.approx(alpha, abs=1e-10)
    assert fit.beta == pytest.approx(beta, abs=1e-10)
    assert fit.baseline == pytest.approx(b, abs=1e-10)
    d_true, peak_true = analytic_peak(form, alpha, beta, b)
    assert fit.d_peak == pytest.approx(d_true, rel=1e-9)
    assert fit.peak == pytest.approx(peak_true, rel=1e-9)
    assert fit.alpha_se < 1e-9 and fit.beta_se < 1e-9
    # predict reproduces the curve, and the baseline at d = 0
    grid = np.array([0.0, 0.3, 2.7, 12.0])
    np.testing.assert_allclose(fit.predict(grid), curve(grid, form, alpha, beta, b), atol=1e-10)
    assert float(fit.predict(0.0)) == pytest.approx(b, abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(
    form=st.sampled_from(["log", "quadratic"]),
    alpha=st.floats(-2, 2),
    beta=st.floats(-2, 2),
    b=st.floats(0, 1),
    fit_baseline=st.booleans(),
)
def test_exact_recovery_for_any_parameters(form, alpha, beta, b, fit_baseline):
    d = np.array([0.1, 0.4, 1.0, 1.7, 3.0, 4.5])
    fit = fit_overoptimization(d, curve(d, form, alpha, beta, b), form, None if fit_baseline else b)
    assert fit.alpha == pytest.approx(alpha, abs=1e-8)
    assert fit.beta == pytest.approx(beta, abs=1e-8)
    assert fit.baseline == pytest.approx(b, abs=1e-8)


@pytest.mark.parametrize("form,fit_baseline", [("log", True), ("quadratic", False)])
def test_standard_errors_have_the_right_size(form, fit_baseline):
    """Over 200 noisy replicates the spread of the estimates matches the reported standard errors."""
    alpha, beta, b = TRUE[form]
    d = np.linspace(0.3, 9.0, 25)
    rng = np.random.default_rng(123)
    mean = curve(d, form, alpha, beta, b)
    fits = [
        fit_overoptimization(d, mean + rng.normal(0, 0.02, d.size), form, None if fit_baseline else b)
        for _ in range(200)
    ]
    for name in ("alpha", "beta") + (("baseline",) if fit_baseline else ()):
        empirical = np.std([getattr(f, name) for f in fits], ddof=1)
        reported = np.mean([getattr(f, f"{name}_se") for f in fits])
        assert abs(empirical / reported - 1) < 0.3, (name, empirical, reported)


def test_bootstrap_standard_errors_agree_with_analytic_ones():
    alpha, beta, b = TRUE["log"]
    rng = np.random.default_rng(7)
    r = curve(D, "log", alpha, beta, b) + rng.normal(0, 0.02, D.size)
    analytic = fit_overoptimization(D, r, "log")
    boot = fit_overoptimization(D, r, "log", n_bootstrap=300, seed=1)
    # same point estimates; only the standard errors change
    assert (boot.alpha, boot.beta, boot.baseline) == (analytic.alpha, analytic.beta, analytic.baseline)
    for name in ("alpha_se", "beta_se", "baseline_se"):
        assert getattr(boot, name) == pytest.approx(getattr(analytic, name), rel=0.4)
    # reproducible for a seed
    assert fit_overoptimization(D, r, "log", n_bootstrap=300, seed=1) == boot
    # baseline given: it has no standard error
    assert fit_overoptimization(D, r, "log", b, n_bootstrap=50).baseline_se == 0.0


@pytest.mark.parametrize(
    "form,baseline,n,needed",
    [("log", None, 3, 4), ("quadratic", None, 2, 4), ("log", 0.3, 2, 3), ("quadratic", 0.3, 1, 3)],
)
def test_too_few_points_says_how_many(form, baseline, n, needed):
    d = np.arange(1, n + 1) * 0.7
    with pytest.raises(TooFewPoints) as info:
        fit_overoptimization(d, 0.3 + 0.1 * d, form, baseline)
    message = str(info.value)
    assert f"has {n} point" in message and f"at least {needed}" in message and form in message
    assert (info.value.n, info.value.needed) == (n, needed)
    assert isinstance(info.value, ValueError)


def test_repeated_sqrt_kl_values_cannot_determine_the_curve():
    with pytest.raises(TooFewPoints, match="only 2 distinct sqrt_kl values"):
        fit_overoptimization([1.0, 1.0, 2.0, 2.0, 2.0], [0.4, 0.41, 0.5, 0.5, 0.51], "log")
    # with a given baseline, points at d = 0 carry no information on (alpha, beta)
    with pytest.raises(TooFewPoints, match="only 1 distinct nonzero"):
        fit_overoptimization([0.0, 0.0, 2.0, 2.0], [0.3, 0.3, 0.5, 0.5], "quadratic", 0.3)


def test_non_finite_pairs_are_dropped_and_not_counted():
    alpha, beta, b = TRUE["log"]
    d = np.array([0.5, 1.0, np.nan, 2.0, 3.0, 4.0, 6.0])
    r = curve(np.nan_to_num(d), "log", alpha, beta, b)
    r[4] = np.nan
    fit = fit_overoptimization(list(d), list(r), "log")
    assert fit.n == 5
    assert fit.alpha == pytest.approx(alpha, abs=1e-10) and fit.baseline == pytest.approx(b, abs=1e-10)
    # nan that leaves too few points: the message counts only the finite ones
    with pytest.raises(TooFewPoints, match=r"has 3 points \(after dropping 2 pairs"):
        fit_overoptimization([1, 2, np.nan, 3, 4], [0.4, 0.5, 0.6, 0.6, np.nan], "log")


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="sqrt_kl"):
        fit_overoptimization([0.5, -1.0, 2.0, 3.0], [0.3, 0.4, 0.5, 0.6])
    with pytest.raises(ValueError, match="'log', 'quadratic'"):
        fit_overoptimization([0.5, 1.0, 2.0, 3.0], [0.3, 0.4, 0.5, 0.6], form="cubic")
    with pytest.raises(ValueError, match="length"):
        fit_overoptimization([0.5, 1.0, 2.0], [0.3, 0.4])


@pytest.mark.parametrize("form", ["log", "quadratic"])
def test_no_peak_when_beta_is_not_positive(form):
    d = np.linspace(0.2, 5, 10)
    for beta in (-0.05, 0.0):
        fit = fit_overoptimization(d, curve(d, form, 0.1, beta, 0.3), form, 0.3)
        assert fit.beta == pytest.approx(beta, abs=1e-10)
        assert math.isnan(fit.d_peak) and math.isnan(fit.peak)


def test_quadratic_falling_from_the_start_has_no_interior_peak():
    d = np.linspace(0.2, 5, 10)
    fit = fit_overoptimization(d, curve(d, "quadratic", -0.1, 0.02, 0.3), "quadratic", 0.3)
    assert math.isnan(fit.d_peak) and math.isnan(fit.peak)


def test_fit_result_is_frozen():
    fit = fit_overoptimization(D, curve(D, "log", *TRUE["log"]), "log")
    assert isinstance(fit, FitResult)
    with pytest.raises(AttributeError):
        fit.alpha = 1.0


# ---------------------------------------------------------------- fit_groups

LOG = TRUE["log"]


def sweep_table() -> pd.DataFrame:
    """dpo: 3 runs (steps 0, 10, 20), final points exactly on the curve, step-10 points off it;
    ipo: one run with steps 0 and 10 (one point after the baseline: too few); a never-evaluated
    pending run (step nan). Rows shuffled: "final" must go by step, not by row order."""
    rows = []
    sft = [0.29, 0.30, 0.31]  # step-0 evaluations of the shared SFT model: baseline = mean = 0.30
    for i, final_d in enumerate([1.0, 2.5, 5.0]):
        run = f"dpo-{i}"
        rows.append(dict(run=run, algo="dpo", model="m", step=0, sqrt_kl=0.0, win_rate=sft[i]))
        rows.append(dict(run=run, algo="dpo", model="m", step=10, sqrt_kl=final_d / 2, win_rate=0.9))
        rows.append(
            dict(run=run, algo="dpo", model="m", step=20, sqrt_kl=final_d, win_rate=float(curve(final_d, "log", *LOG)))
        )
    rows.append(dict(run="ipo-0", algo="ipo", model="m", step=0, sqrt_kl=0.0, win_rate=0.3))
    rows.append(dict(run="ipo-0", algo="ipo", model="m", step=10, sqrt_kl=1.5, win_rate=0.5))
    rows.append(dict(run="ipo-1", algo="ipo", model="m", step=np.nan, sqrt_kl=np.nan, win_rate=np.nan))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)


def test_fit_groups_final_checkpoints():
    out = fit_groups(sweep_table(), form="log", checkpoints="final")
    assert list(out["algo"]) == ["dpo", "ipo"] and list(out["model"]) == ["m", "m"]
    assert {"form", "checkpoints", "n", "alpha", "beta", "baseline", "baseline_fitted", "rmse", "d_peak",
            "peak", "alpha_se", "beta_se", "baseline_se", "error"} <= set(out.columns)
    dpo, ipo = out.iloc[0], out.iloc[1]
    # the three step-20 rows only, baseline from the step-0 rows (excluded from the points)
    assert dpo["error"] is None
    assert dpo["n"] == 3 and not dpo["baseline_fitted"]
    assert dpo["baseline"] == pytest.approx(0.30)
    assert dpo["rmse"] < 1e-12
    assert dpo["alpha"] == pytest.approx(LOG[0], abs=1e-10) and dpo["beta"] == pytest.approx(LOG[1], abs=1e-10)
    assert dpo["d_peak"] == pytest.approx(math.exp(LOG[0] / LOG[1] - 1))
    assert (dpo["form"], dpo["checkpoints"]) == ("log", "final")
    # the unfittable group is still there, with nan parameters and the reason
    assert "has 1 point" in ipo["error"] and "at least 3" in ipo["error"]
    assert ipo["n"] == 1 and math.isnan(ipo["alpha"]) and math.isnan(ipo["beta"]) and math.isnan(ipo["d_peak"])
    assert ipo["baseline"] == pytest.approx(0.3)


def test_fit_groups_all_checkpoints_uses_every_evaluation_but_step_zero():
    out = fit_groups(sweep_table(), by=["algo"], form="log", checkpoints="all").set_index("algo")
    assert out.loc["dpo", "n"] == 6  # steps 10 and 20 of three runs
    assert out.loc["dpo", "rmse"] > 0.05  # the off-curve step-10 points are in
    assert out.loc["ipo", "n"] == 1 and out.loc["ipo", "error"]


def test_fit_groups_fits_the_baseline_without_step_zero_rows():
    d = np.array([0.5, 1.0, 2.0, 4.0, 7.0])
    table = pd.DataFrame(
        dict(run=[f"r{i}" for i in range(5)], algo="slic", model="m", step=100, sqrt_kl=d,
             win_rate=curve(d, "quadratic", *TRUE["quadratic"]))
    )
    row = fit_groups(table, form="quadratic").iloc[0]
    assert row["error"] is None and row["baseline_fitted"] and row["n"] == 5
    assert row["baseline"] == pytest.approx(TRUE["quadratic"][2], abs=1e-10)
    assert row["d_peak"] == pytest.approx(TRUE["quadratic"][0] / (2 * TRUE["quadratic"][1]))


def test_fit_groups_rejects_bad_arguments():
    with pytest.raises(ValueError, match="checkpoints"):
        fit_groups(sweep_table(), checkpoints="best")
    with pytest.raises(ValueError, match="win_rate"):
        fit_groups(sweep_table().drop(columns=["win_rate"]))


def test_analysis_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, alignsweep.analysis.fits; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
