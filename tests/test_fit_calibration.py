"""Calibrated over-optimization fits (issue 19, case 3): a measured baseline's error propagated into
every standard error, a bootstrap over whole runs and the baseline, d_peak's standard error and
its `extrapolated` flag, checked by coverage on synthetic sweeps with known parameters."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alignsweep.analysis.fits import fit_overoptimization
from alignsweep.analysis.sweep_fits import fit_groups, step0_baseline

ALPHA, BETA, BASE = 0.30, 0.15, 0.50  # log form; peak at d* = e
D_PEAK = math.exp(ALPHA / BETA - 1)
SE = 0.03  # a win rate over 256 prompts near 0.5
FINALS = np.array([0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0])  # seven betas' final sqrt(KL)
FRACTIONS = np.array([0.2, 0.4, 0.6, 0.8, 1.0])  # five checkpoints along each run


def curve(d):
    d = np.asarray(d, dtype=float)
    return BASE + d * (ALPHA - BETA * np.where(d > 0, np.log(np.where(d > 0, d, 1.0)), 0.0))


def coverage(checkpoints: str, sweeps: int, n_bootstrap: int = 0, baseline_se=SE, seed=0) -> dict:
    """How often the 95% intervals of alpha, beta and d_peak contain the truth, over synthetic
    sweeps: every point and the step-0 baseline measured with standard error SE."""
    rng = np.random.default_rng(seed)
    if checkpoints == "final":
        d, runs = FINALS, np.arange(FINALS.size)
    else:
        d, runs = (FINALS[:, None] * FRACTIONS[None, :]).ravel(), np.repeat(np.arange(FINALS.size), FRACTIONS.size)
    points = curve(d) + rng.normal(0.0, SE, (sweeps, d.size))
    baselines = BASE + rng.normal(0.0, SE, sweeps)
    hits = {"alpha": 0, "beta": 0, "d_peak": 0}
    for i in range(sweeps):
        fit = fit_overoptimization(d, points[i], "log", baselines[i], baseline_se, runs=runs,
                                   n_bootstrap=n_bootstrap, seed=i)
        for name, truth in (("alpha", ALPHA), ("beta", BETA), ("d_peak", D_PEAK)):
            low, high = fit.interval(name)
            hits[name] += low <= truth <= high
    return {k: v / sweeps for k, v in hits.items()}


@pytest.mark.parametrize("checkpoints", ["final", "all"])
def test_95_percent_intervals_cover_the_truth_with_a_measured_baseline(checkpoints):
    got = coverage(checkpoints, sweeps=400)
    for name in ("alpha", "beta", "d_peak"):
        assert 0.90 <= got[name] <= 0.99, (checkpoints, got)


def test_treating_the_measured_baseline_as_exact_undercovers():
    """What the fits did before: the step-0 win rate's own error ignored."""
    got = coverage("final", sweeps=400, baseline_se=None)
    assert got["alpha"] < 0.85, got


@pytest.mark.parametrize("checkpoints", ["final", "all"])
def test_bootstrap_over_runs_and_the_baseline_covers_the_truth(checkpoints):
    got = coverage(checkpoints, sweeps=150, n_bootstrap=200, seed=1)
    for name in ("alpha", "beta"):
        assert 0.90 <= got[name] <= 0.99, (checkpoints, got)
    assert got["d_peak"] >= 0.90, got  # conservative with intermediate checkpoints (delta method on the draws)


def test_the_bootstrap_resamples_whole_runs():
    """A run's checkpoints share its deviations from the curve (each run off it by its own amount):
    resampling whole runs gives standard errors the size of the spread over sweeps; resampling
    points as if independent understates it."""
    d = (FINALS[:, None] * FRACTIONS[None, :]).ravel()
    runs = np.repeat(np.arange(FINALS.size), FRACTIONS.size)
    rng = np.random.default_rng(3)
    fits = {"runs": [], "points": []}
    for i in range(150):
        r = curve(d) + rng.normal(0, 0.04, FINALS.size)[runs] + rng.normal(0, 0.005, d.size)
        fits["runs"].append(fit_overoptimization(d, r, "log", BASE, runs=runs, n_bootstrap=200, seed=i))
        fits["points"].append(fit_overoptimization(d, r, "log", BASE, n_bootstrap=200, seed=i))
    spread = np.std([f.alpha for f in fits["runs"]], ddof=1)
    by_run = np.median([f.alpha_se for f in fits["runs"]])
    by_point = np.median([f.alpha_se for f in fits["points"]])
    assert by_run == pytest.approx(spread, rel=0.35)
    assert by_point < 0.7 * spread


def test_the_baseline_error_enters_every_standard_error_analytically():
    d = FINALS
    r = curve(d)  # exact points: the residual part is 0, only the baseline's error is left
    exact = fit_overoptimization(d, r, "log", BASE)
    measured = fit_overoptimization(d, r, "log", BASE, SE)
    assert exact.alpha_se == pytest.approx(0, abs=1e-12) and exact.beta_se == pytest.approx(0, abs=1e-12)
    # a baseline off by db shifts the fit by -(X^T X)^-1 X^T 1 db: compute that by refitting
    moved = fit_overoptimization(d, r, "log", BASE + 1e-4)
    assert measured.alpha_se == pytest.approx(abs(moved.alpha - exact.alpha) / 1e-4 * SE, rel=1e-6)
    assert measured.beta_se == pytest.approx(abs(moved.beta - exact.beta) / 1e-4 * SE, rel=1e-6)
    assert measured.baseline_se == SE


def test_d_peak_has_a_standard_error_and_says_when_it_is_extrapolated():
    rng = np.random.default_rng(0)
    inside = fit_overoptimization(FINALS, curve(FINALS) + rng.normal(0, 0.01, FINALS.size), "log", BASE, SE)
    assert inside.d_peak == pytest.approx(D_PEAK, rel=0.3) and 0 < inside.d_peak_se < inside.d_peak
    assert not inside.extrapolated
    short = FINALS[FINALS < 2.0]  # the measured range ends before the peak at e
    beyond = fit_overoptimization(short, curve(short), "log", BASE, SE)
    assert beyond.d_peak == pytest.approx(D_PEAK) and beyond.extrapolated and beyond.d_max == 1.5
    rising = fit_overoptimization(FINALS, BASE + 0.05 * FINALS + 1e-3 * FINALS**2, "quadratic", BASE, SE)
    assert math.isnan(rising.d_peak) and math.isnan(rising.d_peak_se) and not rising.extrapolated


def test_fit_groups_takes_the_step0_standard_error_and_counts_a_shared_step0_once():
    rows = []
    for i, final in enumerate(FINALS):
        run = f"r{i}"
        # every job read the same shared step-0 measurement: identical rows
        rows.append(dict(run=run, algo="dpo", model="m", step=0, sqrt_kl=0.0, kl=0.0, win_rate=BASE,
                         win_rate_se=SE))
        rows.append(dict(run=run, algo="dpo", model="m", step=10, sqrt_kl=final, kl=final**2,
                         win_rate=float(curve(final)), win_rate_se=SE))
    table = pd.DataFrame(rows)
    assert step0_baseline(table[table["step"] == 0]) == (BASE, SE)  # one measurement, not seven
    two = pd.DataFrame([dict(win_rate=0.4, win_rate_se=0.03, kl=0.0), dict(win_rate=0.5, win_rate_se=0.04, kl=1e-9)])
    assert step0_baseline(two) == pytest.approx((0.45, 0.025))  # sqrt(0.03^2 + 0.04^2) / 2
    row = fit_groups(table).iloc[0]
    assert row["baseline_se"] == SE and row["alpha_se"] > 0 and row["d_peak_se"] > 0
    assert row["extrapolated"] == False  # noqa: E712 (a numpy bool)
    assert {"d_peak_se", "extrapolated", "d_max"} <= set(fit_groups(table).columns)


def test_tables_and_figures_show_d_peaks_error_and_extrapolation():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignsweep.analysis.plots import _draw_peak
    from alignsweep.analysis.report import fit_table

    short = FINALS[FINALS < 2.0]
    rows = [dict(run=f"r{i}", algo="dpo", model=m, step=s, sqrt_kl=d if s else 0.0, win_rate=float(curve(d)) if s else BASE,
                 win_rate_se=SE)
            for m, ds in (("inside", FINALS), ("beyond", short)) for i, d in enumerate(ds) for s in (0, 10)]
    fitted = fit_groups(pd.DataFrame(rows)).set_index("model")
    shown = fit_table(fitted.reset_index())
    # shown under names apart from the losses' alpha and beta (report.FIT_NAMES)
    assert {"sqrt(KL) at peak", "sqrt(KL) at peak SE", "extrapolated", "R0 SE", "fit_a (slope)"} <= set(shown.columns)
    assert not fitted.loc["inside", "extrapolated"] and fitted.loc["beyond", "extrapolated"]
    fig, ax = plt.subplots()
    _draw_peak(ax, fitted.loc["beyond"], "log", "C0")
    assert any("extrapolated" in t.get_text() for t in ax.texts)
    _draw_peak(ax, fitted.loc["inside"], "log", "C1")
    bars = [c for c in ax.containers if getattr(c, "has_xerr", False)]
    assert len(bars) == 1  # the interior peak, with its standard error as a horizontal bar
    plt.close(fig)


@pytest.mark.parametrize("form,truth", [("log", (0.30, 0.15, 0.30)), ("quadratic", (0.20, 0.02, 0.30))])
@pytest.mark.parametrize("given", [False, True])
def test_peak_se_is_the_spread_of_the_fitted_peak(form, truth, given):
    """peak_se (delta method, the baseline's error included) against the spread of R(d*) over 400
    replicate sweeps drawn from a known curve, noise and (when given) a measured baseline."""
    alpha, beta, b = truth
    d = np.linspace(0.3, 8.0, 12)
    g = np.where(d > 0, d * np.log(d), 0.0) if form == "log" else d * d
    rng = np.random.default_rng(5)
    peaks, ses = [], []
    for _ in range(400):
        r = b + alpha * d - beta * g + rng.normal(0, 0.01, d.size)
        base = b + rng.normal(0, 0.02) if given else None
        fit = fit_overoptimization(d, r, form, base, 0.02 if given else None)
        peaks.append(fit.peak)
        ses.append(fit.peak_se)
    assert np.median(ses) == pytest.approx(np.std(peaks, ddof=1), rel=0.2)


def test_the_bootstrap_over_seeds_matches_the_spread_across_replicate_sweeps():
    """Final checkpoints of 4 betas x 3 seeds, each run off the curve by its own noise: the bootstrap
    that resamples seeds within each beta gives alpha's spread over 150 replicate sweeps (a bootstrap
    of k seeds sees (k-1)/k of the variance, which the fit undoes: 0.83 of the spread without it)."""
    from alignsweep.analysis.sweep_fits import fit_groups

    alpha, beta, base = 0.30, 0.15, 0.30
    d = np.repeat([0.5, 1.5, 3.0, 5.0], 3)
    g = d * np.log(d)
    rng = np.random.default_rng(11)
    estimates, ses = [], []
    for _ in range(150):
        r = base + alpha * d - beta * g + rng.normal(0, 0.02, d.size)
        rows = [{"run": f"r{i}", "algo": "dpo", "model": "m", "beta": float(i // 3), "step": 10, "sqrt_kl": d[i],
                 "win_rate": r[i]} for i in range(d.size)]
        fit = fit_groups(pd.DataFrame(rows), n_bootstrap=400, strata=["beta"]).iloc[0]
        estimates.append(fit["alpha"])
        ses.append(fit["alpha_se"])
    assert 0.88 < np.median(ses) / np.std(estimates, ddof=1) < 1.15
