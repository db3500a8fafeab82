"""The loss family against numbers computed by hand from the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from alignsweep.train.losses import daa_loss

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def call(name, **kw):
    args = dict(
        policy_chosen_logps=T(-10.0, -4.0),
        policy_rejected_logps=T(-12.0, -3.0),
        ref_chosen_logps=T(-11.0, -4.0),
        ref_rejected_logps=T(-11.0, -4.0),
        chosen_lengths=T(5.0, 2.0),
        rejected_lengths=T(4.0, 3.0),
        beta=0.5,
    )
    args.update(kw)
    return daa_loss(name, **args)


def sig(x):
    return 1 / (1 + math.exp(-x))


# h for the two pairs: (-10+11) - (-12+11) = 2 ; (-4+4) - (-3+4) = -1
def test_dpo_by_hand():
    losses, rc, rr = call("dpo")
    assert losses.tolist() == pytest.approx([-math.log(sig(1.0)), -math.log(sig(-0.5))])
    assert rc.tolist() == pytest.approx([0.5, 0.0]) and rr.tolist() == pytest.approx([-0.5, 0.5])


def test_ipo_by_hand():
    losses, _, _ = call("ipo")  # target margin 1/(2*0.5) = 1
    assert losses.tolist() == pytest.approx([(2 - 1) ** 2, (-1 - 1) ** 2])
    losses, _, _ = call("ipo", length_normalized=True)
    # per-token: (1/5) - (-1/4) = 0.45 ; (0/2) - (1/3) = -1/3
    assert losses.tolist() == pytest.approx([(0.45 - 1) ** 2, (-1 / 3 - 1) ** 2])


def test_slic_by_hand():
    losses, _, _ = call("slic")
    assert losses.tolist() == pytest.approx([max(0, 1 - 1.0), max(0, 1 + 0.5)])


def test_simpo_by_hand():
    losses, rc, rr = call("simpo", beta=2.0, gamma=0.5)
    # m: -10/5=-2, -12/4=-3 ; -4/2=-2, -3/3=-1
    assert rc.tolist() == pytest.approx([-4.0, -4.0]) and rr.tolist() == pytest.approx([-6.0, -2.0])
    assert losses.tolist() == pytest.approx([-math.log(sig(2 - 0.5)), -math.log(sig(-2 - 0.5))])


def test_alphapo_by_hand():
    losses, rc, rr = call("alphapo", beta=2.0, alpha=0.5, gamma=0.5)
    r = lambda m: (2.0 / 0.5) * (1 - math.exp(-0.5 * m))  # noqa: E731
    assert rc.tolist() == pytest.approx([r(-2), r(-2)]) and rr.tolist() == pytest.approx([r(-3), r(-1)])
    assert losses.tolist() == pytest.approx(
        [-math.log(sig(r(-2) - r(-3) - 0.5)), -math.log(sig(r(-2) - r(-1) - 0.5))]
    )


def test_rdpo_by_hand():
    losses, _, _ = call("rdpo", length_coef=0.1)
    # beta*h + a*(|yw|-|yl|): 1 + 0.1*(5-4) ; -0.5 + 0.1*(2-3)
    assert losses.tolist() == pytest.approx([-math.log(sig(1.1)), -math.log(sig(-0.6))])


@pytest.mark.parametrize("alpha", [1e-7, -1e-7])
def test_alphapo_tends_to_simpo(alpha):
    a = call("alphapo", beta=2.0, alpha=alpha, gamma=0.3)
    s = call("simpo", beta=2.0, gamma=0.3)
    for x, y in zip(a, s):
        assert torch.allclose(x, y, atol=1e-6)


def test_rdpo_at_zero_is_dpo():
    for x, y in zip(call("rdpo", length_coef=0.0), call("dpo")):
        assert torch.equal(x, y)


def test_reference_based_losses_need_the_reference():
    with pytest.raises(ValueError, match="reference"):
        call("dpo", ref_chosen_logps=None)


# --- shape of each objective ------------------------------------------------------------------


def test_ipo_minimum_is_at_the_target_margin():
    beta = 0.25
    target = 1 / (2 * beta)
    hs = torch.linspace(target - 3, target + 3, 61, dtype=torch.float64)
    losses, _, _ = daa_loss(
        "ipo", policy_chosen_logps=hs, policy_rejected_logps=torch.zeros_like(hs),
        ref_chosen_logps=torch.zeros_like(hs), ref_rejected_logps=torch.zeros_like(hs),
        chosen_lengths=torch.ones_like(hs), rejected_lengths=torch.ones_like(hs), beta=beta,
    )
    assert hs[losses.argmin()].item() == pytest.approx(target)
    assert losses.min().item() == pytest.approx(0.0)


def test_slic_has_zero_loss_and_zero_gradient_beyond_the_margin():
    beta = 0.5
    pc = torch.tensor([2.5, 1.0], dtype=torch.float64, requires_grad=True)  # h = 2.5 > 1/beta ; h = 1 < 2
    zeros = torch.zeros(2, dtype=torch.float64)
    losses, _, _ = daa_loss(
        "slic", policy_chosen_logps=pc, policy_rejected_logps=zeros, ref_chosen_logps=zeros,
        ref_rejected_logps=zeros, chosen_lengths=zeros + 1, rejected_lengths=zeros + 1, beta=beta,
    )
    assert losses.tolist() == pytest.approx([0.0, 0.5])
    losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([0.0, -beta])


ALL = ["dpo", "ipo", "slic", "simpo", "alphapo", "rdpo", "cdpo", "robust_dpo", "exo", "nca", "bco", "sppo_hard",
       "apo_zero", "apo_down", "discopop", "dpo_norm", "aot", "aot_unpaired", "orpo"]
EXTRA = {"alphapo": {"alpha": 0.5, "gamma": 0.3}, "simpo": {"gamma": 0.3}, "rdpo": {"length_coef": 0.02},
         "cdpo": {"label_smoothing": 0.1}, "robust_dpo": {"label_smoothing": 0.1}, "exo": {"label_smoothing": 1e-3},
         "aot": {"label_smoothing": 0.1}, "aot_unpaired": {"label_smoothing": 0.1}, "discopop": {"discopop_tau": 0.05}}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("alpha", [-2.0, 2.0])
def test_gradients_are_finite_for_extreme_inputs(name, alpha):
    pc = torch.tensor([-500.0, -0.001], dtype=torch.float64, requires_grad=True)
    pr = torch.tensor([-0.001, -500.0], dtype=torch.float64, requires_grad=True)
    ones = torch.ones(2, dtype=torch.float64)
    kw = dict(EXTRA.get(name, {}))
    if name == "alphapo":
        kw["alpha"] = alpha
    losses, rc, rr = daa_loss(
        name, policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=-ones,
        ref_rejected_logps=-ones, chosen_lengths=ones, rejected_lengths=ones, beta=1.0, **kw,
    )
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()


# --- properties -------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

logp = st.floats(min_value=-200.0, max_value=-1e-3, allow_nan=False)
length = st.integers(min_value=1, max_value=64)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(ALL), pc=logp, pr=logp, rc=logp, rr=logp, lc=length, lr=length,
    beta=st.floats(min_value=1e-3, max_value=10.0), alpha=st.floats(min_value=-1.0, max_value=1.0),
)
def test_swapping_chosen_and_rejected_swaps_rewards_and_losses_stay_finite(name, pc, pr, rc, rr, lc, lr, beta, alpha):
    kw = dict(EXTRA.get(name, {}))
    if name == "alphapo":
        kw["alpha"] = alpha

    def run(a, b, ra, rb, la, lb):
        return daa_loss(
            name, policy_chosen_logps=T(a), policy_rejected_logps=T(b), ref_chosen_logps=T(ra),
            ref_rejected_logps=T(rb), chosen_lengths=T(la), rejected_lengths=T(lb), beta=beta, **kw,
        )

    loss, chosen, rejected = run(pc, pr, rc, rr, lc, lr)
    loss2, chosen2, rejected2 = run(pr, pc, rr, rc, lr, lc)
    assert torch.isfinite(loss).all() and torch.isfinite(loss2).all()
    assert torch.allclose(chosen, rejected2) and torch.allclose(rejected, chosen2)
