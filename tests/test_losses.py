"""The loss family against numbers computed by hand from the published formulas."""

from __future__ import annotations

import math

import pytest
import torch

from alignsweep.losses import daa_loss

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
