"""The length-controlled win rate (alignsweep.evaluate.length_control) on synthetic verdicts whose
answer is known: drawn from P(win) = sigmoid(theta + phi tanh(delta / sd(delta))), the model of
AlpacaEval 2 (Dubois et al. 2024), so lc_win_rate must recover sigmoid(theta)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignsweep.evaluate.length_control import MIN_VERDICTS, length_controlled_win_rate


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def synthetic(theta: float, phi: float, n: int, seed: int, shift: float = 60.0, tie_rate: float = 0.0):
    """Verdicts of n comparisons; samples longer than references by `shift` characters on average.
    A fraction `tie_rate` of comparisons are ties (y = 1/2), drawn independently of length."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(100, 300, n).astype(float)
    sample = ref + rng.normal(shift, 80.0, n).round()
    delta = sample - ref
    p = sigmoid(theta + phi * np.tanh(delta / delta.std(ddof=1)))
    y = (rng.random(n) < p).astype(float)
    y[rng.random(n) < tie_rate] = 0.5
    return y, sample, ref


@pytest.mark.parametrize("seed", range(6))
def test_recovers_the_win_rate_at_zero_length_difference(seed):
    theta, phi = -0.4, 1.5  # true lc win rate sigmoid(-0.4) = 0.401; long samples inflate the raw one
    y, sample, ref = synthetic(theta, phi, 600, seed)
    lc = length_controlled_win_rate(y, sample, ref)
    truth = float(sigmoid(theta))
    assert lc.lc_note == ""
    assert abs(lc.lc_win_rate - truth) < 3 * lc.lc_win_rate_se  # within its own error
    assert 0.01 < lc.lc_win_rate_se < 0.06
    assert abs(lc.lc_length_coef - phi) < 0.6
    assert y.mean() > truth + 0.1  # the raw win rate is length-inflated: the LC one is not


def test_the_error_is_calibrated_over_many_draws():
    """Over 200 synthetic checkpoints the estimate lands within 1.96 SE of the truth ~95% of the time."""
    theta, phi = 0.3, 1.0
    hits = []
    for seed in range(200):
        y, sample, ref = synthetic(theta, phi, 300, 1000 + seed, tie_rate=0.1)
        lc = length_controlled_win_rate(y, sample, ref)
        hits.append(abs(lc.lc_win_rate - sigmoid(theta)) < 1.96 * lc.lc_win_rate_se)
    assert 0.90 <= np.mean(hits) <= 0.99


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shift", [0.0, 60.0])
def test_without_a_length_effect_it_is_the_raw_win_rate(seed, shift):
    """No length effect: LC = raw within the LC error. Centred lengths (shift 0) give the raw
    win rate's error; samples longer on average put zero difference away from the data's centre,
    so reading the fit there costs precision (a larger error, never a smaller one)."""
    y, sample, ref = synthetic(0.5, 0.0, 500, seed, shift=shift, tie_rate=0.2)
    lc = length_controlled_win_rate(y, sample, ref)
    raw = y.mean()
    raw_se = y.std(ddof=1) / math.sqrt(y.size)
    assert abs(lc.lc_win_rate - raw) < 2 * lc.lc_win_rate_se
    if shift == 0.0:
        assert lc.lc_win_rate_se == pytest.approx(raw_se, rel=0.1)
    else:
        assert raw_se < lc.lc_win_rate_se < 2 * raw_se


def test_ties_count_as_half_a_win():
    """Half the comparisons ties, the rest alternating win/loss, no length difference: exactly the
    raw win rate (ties 1/2) and the sandwich error of a mean."""
    y = np.array([0.5] * 20 + [1.0, 0.0] * 10 + [1.0] * 4)
    lengths = np.full(y.size, 50.0)
    lc = length_controlled_win_rate(y, lengths, lengths)
    assert lc.lc_win_rate == pytest.approx(y.mean())
    assert lc.lc_win_rate_se == pytest.approx(y.std(ddof=0) / math.sqrt(y.size), rel=1e-6)
    assert lc.lc_length_coef == 0.0 and lc.lc_note == ""


def test_unjudged_comparisons_are_left_out():
    y, sample, ref = synthetic(0.0, 1.0, 200, 7)
    with_nan = np.concatenate([y, [np.nan] * 5])
    full = length_controlled_win_rate(with_nan, np.concatenate([sample, [9.0] * 5]), np.concatenate([ref, [1.0] * 5]))
    assert full == length_controlled_win_rate(y, sample, ref)


@pytest.mark.parametrize(
    "y,sample,ref,reason",
    [
        ([1.0] * 30, range(30), [10] * 30, "every verdict is a win"),
        ([0.0] * 30, range(30), [10] * 30, "every verdict is a loss"),
        ([1.0, 0.0] * 4, range(8), [3] * 8, "too few verdicts: 8"),
        ([1.0, 0.0, float("nan")] * 4, range(12), [3] * 12, "too few verdicts: 8"),  # NaN verdicts do not count
        # longer always wins: the length difference alone decides
        ([0.0] * 15 + [1.0] * 15, range(30), [15] * 30, "perfect separation"),
        ([1.0, 0.0, 0.5] * 10, [40] * 30, [10] * 30, "the same length (+30)"),
    ],
)
def test_degenerate_verdicts_give_nan_and_say_why(y, sample, ref, reason):
    lc = length_controlled_win_rate(y, list(sample), list(ref))
    assert math.isnan(lc.lc_win_rate) and math.isnan(lc.lc_win_rate_se) and math.isnan(lc.lc_length_coef)
    assert reason in lc.lc_note


def test_all_ties_is_one_half_exactly():
    lc = length_controlled_win_rate([0.5] * 20, range(20), [10] * 20)
    assert (lc.lc_win_rate, lc.lc_win_rate_se, lc.lc_note) == (0.5, 0.0, "every verdict is a tie")


def test_minimum_is_documented_and_lengths_must_match():
    assert MIN_VERDICTS == 10
    with pytest.raises(ValueError, match="differ in length"):
        length_controlled_win_rate([1.0, 0.0], [1, 2, 3], [1, 2, 3])
