"""Regressions across model sizes (alignsweep.analysis.scaling) on synthetic per-size fits whose
trend is known: d* = 2 (N / 1e6)^0.15 (log d* rises 0.15 ln 10 per decade), a flat peak win rate,
and a curvature falling 0.03 per decade (larger models degrade more slowly)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alignsweep.analysis.scaling import headline, model_sizes, regress_on_size, scaling_table

SIZES = {"s1": 1e6, "s2": 1e7, "s3": 1e8, "s4": 1e9}
SLOPE_LOG_D = 0.15 * math.log(10)


def synthetic_fits(rng, rel_d=0.05, se_peak=0.01, se_beta=0.005) -> pd.DataFrame:
    rows = []
    for model, n in SIZES.items():
        decades = math.log10(n / 1e6)
        d_true = 2 * (n / 1e6) ** 0.15
        d = d_true * math.exp(rng.normal(0, rel_d))
        rows.append({"algo": "dpo", "model": model, "form": "log", "checkpoints": "all",
                     "d_peak": d, "d_peak_se": rel_d * d, "peak": 0.6 + rng.normal(0, se_peak), "peak_se": se_peak,
                     "beta": 0.2 - 0.03 * decades + rng.normal(0, se_beta), "beta_se": se_beta})
    return pd.DataFrame(rows)


def test_recovers_known_trends_and_answers_the_papers_question():
    table = scaling_table(synthetic_fits(np.random.default_rng(1)), SIZES)
    rows = table.set_index("quantity")
    d = rows.loc["d_peak"]
    assert d["n_sizes"] == 4 and d["slope_ci_low"] < SLOPE_LOG_D < d["slope_ci_high"]
    assert d["answer"] == "larger models peak later (further from the reference)"
    # the unseen size: one decade beyond the largest, d* = 2 * 1e4^0.15
    assert d["predict_params"] == 1e10
    assert d["prediction_ci_low"] < 2 * 1e4**0.15 < d["prediction_ci_high"]
    assert rows.loc["curvature", "answer"] == "larger models degrade more slowly"
    assert rows.loc["curvature", "slope_ci_low"] < -0.03 < rows.loc["curvature", "slope_ci_high"]
    assert rows.loc["peak", "slope_ci_low"] < 0 < rows.loc["peak", "slope_ci_high"]
    assert any("larger models peak later" in line for line in headline(table))


def test_slope_intervals_cover_the_truth_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    hits = []
    for _ in range(300):
        fits = synthetic_fits(rng)
        r = regress_on_size([SIZES[m] for m in fits["model"]], fits["d_peak"], fits["d_peak_se"], log_values=True)
        hits.append(r["slope_ci_low"] < SLOPE_LOG_D < r["slope_ci_high"])
    assert 0.91 <= np.mean(hits) <= 0.99


def test_errors_too_small_for_the_scatter_are_inflated():
    """Points scattered 5x more than their stated errors: the PDG scale factor widens the interval."""
    rng = np.random.default_rng(3)
    x = np.array(list(SIZES.values()) * 2)
    y = 0.6 + 0.01 * np.log10(x) + rng.normal(0, 0.05, x.size)
    r = regress_on_size(x, y, np.full(x.size, 0.01))
    assert r["scale"] > 5 and r["slope_ci_low"] < 0.01 < r["slope_ci_high"]


def test_models_without_a_peak_are_named_and_one_size_gives_no_table():
    fits = synthetic_fits(np.random.default_rng(4))
    fits.loc[fits["model"] == "s4", ["d_peak", "d_peak_se"]] = np.nan
    row = scaling_table(fits, SIZES).set_index("quantity").loc["d_peak"]
    assert row["n_sizes"] == 3 and "s4" in row["note"]
    assert scaling_table(fits, {"s1": 1e6}).empty
    assert scaling_table(fits[fits["model"].isin(["s1", "s4"])].assign(d_peak=np.nan), SIZES).set_index(
        "quantity").loc["d_peak", "note"].startswith("the regression on model size needs at least two sizes")
    with pytest.raises(ValueError, match="at least two sizes"):
        regress_on_size([1e6, 1e6], [1.0, 2.0], [0.1, 0.1])


def test_sizes_come_from_the_runs_model_params():
    table = pd.DataFrame({"model": ["a", "a", "b", "c"], "model_params": [10.0, 10.0, 20.0, np.nan]})
    assert model_sizes(table) == {"a": 10.0, "b": 20.0}
