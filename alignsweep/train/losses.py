"""The direct alignment losses, exactly as published, in one place.

Every trainer in alignsweep computes its loss through `daa_loss` (see `alignsweep.train.trainer`), so the
formulas below are the ones a sweep optimises. Inputs are 1-D tensors with one entry per pair:
log-probabilities **summed** over response tokens and response lengths in tokens. With

    h    = (pc - rc) - (pr - rr)          the log-ratio margin (policy vs reference)
    m(y) = logp(y) / |y|                  the mean token log-probability

the per-pair losses are

    dpo      -log sigmoid(beta * h)                                  Rafailov et al. 2023
    ipo      (h - 1/(2 beta))^2                                      Azar et al. 2023 eq. 17, beta = tau
                                                                     (TRL's `ipo`, the DPO authors' code)
    ipo_daa  (beta * h - 1)^2 = beta^2 (h - 1/beta)^2                Rafailov et al. 2024, the DAA form
    slic     max(0, 1 - beta * h)                                    Zhao et al. 2023, DAA form of Rafailov et al. 2024
    simpo    -log sigmoid(beta m(y_w) - beta m(y_l) - gamma)         Meng et al. 2024
    alphapo  -log sigmoid(r(y_w) - r(y_l) - gamma),
             r(y) = (beta/alpha)(1 - exp(-alpha m(y)))               Gupta et al. 2025
    rdpo     -log sigmoid(beta h + a (|y_w| - |y_l|))                Park et al. 2024

The two IPO conventions differ at equal beta: `ipo` regresses h onto 1/(2 beta), `ipo_daa` onto
1/beta (twice the margin) with a loss beta^2 times larger; `ipo` at beta = b/2 has the minimiser of
`ipo_daa` at beta = b.

`gamma` here is absolute. SimPO's paper and code (and AlphaPO's, TRL PR #3776) set gamma/beta
(`gamma_beta_ratio`); `alignsweep.config.resolve` turns that into the absolute gamma these take.

The implicit reward of each algorithm (`implicit_reward`: what `reward_accuracy` compares and what
the evaluator regresses on response length) is the quantity inside its loss:

    dpo, ipo_daa, slic   beta * (log pi(y) - log pi_ref(y))
    ipo                  beta * (log pi(y) - log pi_ref(y)), per token when length_normalized
    rdpo                 beta * (log pi(y) - log pi_ref(y)) + a |y|
    simpo                beta * m(y)
    alphapo              (beta/alpha)(1 - exp(-alpha m(y)))
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

REFERENCE_FREE = frozenset({"simpo", "alphapo"})


def _margin_rewards(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    """beta-scaled log-ratios: the implicit rewards of the reference-based algorithms."""
    return beta * (pc - rc), beta * (pr - rr)


def dpo(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DPO, Rafailov et al. 2023, eq. 7: the Bradley-Terry likelihood of the implicit reward."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def ipo(
    beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, lc: Tensor, lr: Tensor, length_normalized: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO, Azar et al. 2023, eq. 17 with tau = beta: regress the margin h onto 1/(2 beta).

    `length_normalized` averages each log-ratio over its tokens first (TRL's `ipo`).
    """
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    if length_normalized:
        chosen_ratio, rejected_ratio = chosen_ratio / lc, rejected_ratio / lr
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_ratio, beta * rejected_ratio


def ipo_daa(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IPO in the DAA form of Rafailov et al. 2024 (g(z) = (z - 1)^2 at z = beta * h): regress the
    beta-scaled margin onto 1, i.e. h onto 1/beta. Summed log-ratios."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return (chosen - rejected - 1.0) ** 2, chosen, rejected


def slic(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SLiC-HF's calibration hinge on the log-ratio margin, as Rafailov et al. 2024 write it."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return torch.relu(1.0 - (chosen - rejected)), chosen, rejected


def rdpo(
    beta: float, a: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, lc: Tensor, lr: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """R-DPO, Park et al. 2024: DPO whose implicit reward carries a length term a*|y|."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    chosen, rejected = chosen + a * lc, rejected + a * lr
    return -F.logsigmoid(chosen - rejected), chosen, rejected


EXP_LINEAR_FROM = 40.0  # exp(u) continues linearly beyond u = 40 (e^40 ~ 2e17): no overflow, no dead gradient


def _expm1_safe(u: Tensor) -> Tensor:
    """expm1(u), continued by its tangent beyond EXP_LINEAR_FROM so it stays finite with a gradient.

    Only inputs no real model produces reach the linear part (alpha * mean token log-prob < -40).
    """
    top = torch.full_like(u, EXP_LINEAR_FROM)
    return torch.expm1(torch.minimum(u, top)) + torch.exp(top) * torch.relu(u - top)


def alphapo_reward(beta: float, alpha: float, logps: Tensor, lengths: Tensor) -> Tensor:
    """r(y) = (beta/alpha)(1 - exp(-alpha m(y))) = -(beta/alpha) expm1(-alpha m(y)).

    At alpha = 0 it is beta*m(y) (SimPO), the limit from both sides; expm1 keeps small alpha exact.
    """
    m = logps / lengths
    if alpha == 0:
        return beta * m
    if abs(alpha) < 1e-6:  # beta/alpha would overflow for subnormal alpha: second-order series instead
        return beta * m * (1 - alpha * m / 2)
    return -(beta / alpha) * _expm1_safe(-alpha * m)


def alphapo(
    beta: float, alpha: float, gamma: float, pc: Tensor, pr: Tensor, lc: Tensor, lr: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """AlphaPO, Gupta et al. 2025: SimPO with the reward shaped by alpha."""
    chosen, rejected = alphapo_reward(beta, alpha, pc, lc), alphapo_reward(beta, alpha, pr, lr)
    return -F.logsigmoid(chosen - rejected - gamma), chosen, rejected


def simpo(beta: float, gamma: float, pc: Tensor, pr: Tensor, lc: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO, Meng et al. 2024: length-normalised, reference-free, with a target margin gamma."""
    return alphapo(beta, 0.0, gamma, pc, pr, lc, lr)


def daa_loss(
    name: str,
    *,
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor] = None,
    ref_rejected_logps: Optional[Tensor] = None,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    beta: float,
    alpha: Optional[float] = None,
    gamma: Optional[float] = None,
    length_normalized: bool = False,
    length_coef: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair losses and the implicit rewards of chosen and rejected responses (1-D tensors)."""
    pc, pr = policy_chosen_logps, policy_rejected_logps
    lc = chosen_lengths.to(pc.dtype).clamp(min=1)
    lr = rejected_lengths.to(pr.dtype).clamp(min=1)
    if name in REFERENCE_FREE:
        if name == "simpo":
            return simpo(beta, gamma or 0.0, pc, pr, lc, lr)
        return alphapo(beta, 0.0 if alpha is None else alpha, gamma or 0.0, pc, pr, lc, lr)
    if ref_chosen_logps is None or ref_rejected_logps is None:
        raise ValueError(f"{name} needs reference log-probabilities")
    rc, rr = ref_chosen_logps, ref_rejected_logps
    if name == "dpo":
        return dpo(beta, pc, pr, rc, rr)
    if name == "ipo":
        return ipo(beta, pc, pr, rc, rr, lc, lr, length_normalized)
    if name == "ipo_daa":
        return ipo_daa(beta, pc, pr, rc, rr)
    if name == "slic":
        return slic(beta, pc, pr, rc, rr)
    if name == "rdpo":
        return rdpo(beta, length_coef, pc, pr, rc, rr, lc, lr)
    raise ValueError(f"unknown loss {name!r}")


def implicit_reward(
    name: str,
    *,
    policy_logps: Tensor,
    ref_logps: Optional[Tensor],
    lengths: Tensor,
    beta: float,
    alpha: Optional[float] = None,
    gamma: Optional[float] = None,
    length_normalized: bool = False,
    length_coef: float = 0.0,
) -> Tensor:
    """The algorithm's own implicit reward of each response (1-D, one entry per response), the
    quantity its loss compares (see the module's table); `lengths` in tokens, log-probs summed.
    Computed through `daa_loss` with the response as both members of a pair, so it cannot drift
    from the loss."""
    if ref_logps is None:
        ref_logps = torch.zeros_like(policy_logps)
    _, rewards, _ = daa_loss(
        name, policy_chosen_logps=policy_logps, policy_rejected_logps=policy_logps, ref_chosen_logps=ref_logps,
        ref_rejected_logps=ref_logps, chosen_lengths=lengths, rejected_lengths=lengths, beta=beta, alpha=alpha,
        gamma=gamma, length_normalized=length_normalized, length_coef=length_coef,
    )
    return rewards


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Per pair: 1 when the chosen response's implicit reward is higher, 1/2 on a tie, else 0.

    A tie (e.g. every pair at step 0 of a reference-based loss, where the policy is the reference
    and both rewards are 0) is a coin flip, not a wrong answer: the accuracy of the SFT model is
    0.5 there. Both the evaluation's `reward_accuracy` and training's `rewards/accuracies` use it
    (TRL's own `rewards/accuracies` counts ties as wrong)."""
    return (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype) + 0.5 * (chosen_rewards == rejected_rewards).to(
        chosen_rewards.dtype
    )


def loss_params(cfg: Any, job: Any) -> dict:
    """The keyword arguments of `daa_loss` for a resolved job (`alignsweep.config.resolve.Job`):
    beta, alpha, gamma, and the algorithm's own switches from `cfg.algo` (IPO's length
    normalisation, R-DPO's length coefficient). The one place config names become loss arguments."""
    params: dict = {"beta": job.beta, "alpha": job.alpha, "gamma": job.gamma}
    if job.algo == "ipo":  # TRL's convention; ipo_daa has none
        params["length_normalized"] = bool(cfg.algo.length_normalized)
    if job.algo == "rdpo":
        params["length_coef"] = float(cfg.algo.length_coef or 0.0)
    return params
