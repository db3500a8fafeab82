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

and, with eps = `label_smoothing`, c/r the chosen/rejected log-ratios log pi/pi_ref (h = c - r),
A = -log sigmoid(beta h), B = -log sigmoid(-beta h), s = sigmoid(beta h):

    cdpo        (1-eps) A + eps B                                    Mitchell 2023 (conservative DPO)
    robust_dpo  [(1-eps) A - eps B] / (1 - 2 eps)                    Chowdhury et al. 2024 eq. 12 (TRL `robust`)
    exo         s (log s - log(1-eps)) + (1-s)(log(1-s) - log eps)   Ji et al. 2024 eq. 16, K=2 (TRL `exo_pair`)
    nca         -log sig(beta c) - 1/2 log sig(-beta c) - 1/2 log sig(-beta r)   Chen et al. 2024 (TRL `nca_pair`)
    bco         -log sig(beta c) - log sig(-beta r)                  Jung et al. 2024, no running shift (TRL `bco_pair`)
    sppo_hard   (c - 1/(2 beta))^2 + (r + 1/(2 beta))^2              Wu et al. 2024 eq. 4.7, P in {0,1} (TRL `sppo_hard`)
    apo_zero    1 - sig(beta c) + sig(beta r)                        D'Oosterlinck et al. 2024 eq. 7
    apo_down    sig(beta c) + 1 - sig(beta h)                        D'Oosterlinck et al. 2024 eq. 8
    discopop    (1 - sig(beta h / tau)) A + sig(beta h / tau) exp(-beta h)   Lu et al. 2024 eq. 5, tau = `discopop_tau`
    dpo_norm    -log sigmoid(beta (c/|y_w| - r/|y_l|))               DPO on per-token log-ratios (TRL `sigmoid_norm`)
    aot         (1-eps) A' + eps B' at h' = sort(pc - pr)_i - sort(rc - rr)_i        Melnyk et al. 2024 (TRL `aot`)
    aot_unpaired  the same at h' = sort(c)_i - sort(r)_i                             (TRL `aot_unpaired`)
    orpo        -m(y_w) - beta log sigmoid(log odds(y_w) - log odds(y_l)),
                odds(y) = e^m(y) / (1 - e^m(y)), beta = lambda      Hong et al. 2024 eqs. 4-7, reference-free
    kto         (w_d (1 - sig(beta (c - z))) + w_u (1 - sig(beta (z - r)))) / 2          Ethayarajh et al. 2024 eq. 7

KTO is unpaired: each pair is split into a desirable example (prompt, y_w) and an undesirable one
(prompt, y_l), as TRL's `unpair_preference_dataset`; its per-pair entry is the mean of their two
losses, so the batch mean is TRL's mean over the 2B examples. z is the reference point
(`kto_reference_point`): the batch's mean log pi/pi_ref over mismatched (prompt, completion) pairs,
clamped at 0 and detached; w_d, w_u are `desirable_weight`, `undesirable_weight` (TRL's names).

AOT's two sorts pair the i-th smallest values within the batch: its per-pair entries are per rank,
not per input pair (their mean is the loss; the rewards stay per pair).

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
    cdpo, robust_dpo, exo, nca, bco, sppo_hard, apo_zero, apo_down, discopop, aot, aot_unpaired
                         beta * (log pi(y) - log pi_ref(y))  (TRL's `rewards/chosen` for each)
    kto                  beta * (log pi(y) - log pi_ref(y))  (TRL's KTOTrainer `rewards/chosen`)
    dpo_norm             beta * (log pi(y) - log pi_ref(y)) / |y|
    orpo                 log odds(y) = m(y) - log(1 - e^m(y))  (what its sigmoid compares)
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from alignsweep.train.loss_registry import ALGORITHMS, reads  # which loss reads which knob, is reference-free


def _margin_rewards(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    """beta-scaled log-ratios: the implicit rewards of the reference-based algorithms."""
    return beta * (pc - rc), beta * (pr - rr)


def dpo(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """DPO, Rafailov et al. 2023, eq. 7: the Bradley-Terry likelihood of the implicit reward
    beta log pi/pi_ref. pc, pr, rc, rr: summed log-probs (nats) of the policy's and reference's chosen
    and rejected responses, each (pairs,); returns (losses, chosen rewards, rejected rewards), each
    (pairs,). The other losses below take and return the same."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def ipo(
    beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, lc: Tensor, lr: Tensor, length_normalized: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """IPO, Azar et al. 2023, eq. 17 with tau = beta: regress the margin h onto 1/(2 beta).

    `length_normalized` averages each log-ratio over its tokens first (TRL's `ipo`); lc, lr: response
    lengths in tokens, (pairs,). Shapes and units as `dpo`.
    """
    chosen_ratio, rejected_ratio = pc - rc, pr - rr
    if length_normalized:
        chosen_ratio, rejected_ratio = chosen_ratio / lc, rejected_ratio / lr
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_ratio, beta * rejected_ratio


def ipo_daa(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IPO in the DAA form of Rafailov et al. 2024 (g(z) = (z - 1)^2 at z = beta * h): regress the
    beta-scaled margin onto 1, i.e. h onto 1/beta. Summed log-ratios; shapes and units as `dpo`."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return (chosen - rejected - 1.0) ** 2, chosen, rejected


def slic(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SLiC-HF's calibration hinge (Zhao et al. 2023) on the log-ratio margin, max(0, 1 - beta h), as
    Rafailov et al. 2024 write it (reference-based). Shapes and units as `dpo`."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return torch.relu(1.0 - (chosen - rejected)), chosen, rejected


def rdpo(
    beta: float, a: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, lc: Tensor, lr: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """R-DPO, Park et al. 2024: DPO whose implicit reward carries a length term a*|y|, a in nats per
    token, lc, lr lengths in tokens (pairs,). Shapes and units as `dpo`."""
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
    Gupta et al. 2025, eq. for r_alpha. logps: summed log-probs (nats), lengths in tokens, same shape;
    returns that shape.
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
    """AlphaPO, Gupta et al. 2025: SimPO with the reward shaped by alpha (`alphapo_reward`); gamma the
    absolute margin. Reference-free: pc, pr summed policy log-probs (nats), lc, lr lengths in tokens,
    each (pairs,); returns (losses, chosen rewards, rejected rewards), each (pairs,)."""
    chosen, rejected = alphapo_reward(beta, alpha, pc, lc), alphapo_reward(beta, alpha, pr, lr)
    return -F.logsigmoid(chosen - rejected - gamma), chosen, rejected


def simpo(beta: float, gamma: float, pc: Tensor, pr: Tensor, lc: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO, Meng et al. 2024: length-normalised, reference-free, with a target margin gamma
    (absolute). Shapes and units as `alphapo`."""
    return alphapo(beta, 0.0, gamma, pc, pr, lc, lr)


def _smoothed(beta: float, h: Tensor, eps: float) -> Tensor:
    """(1-eps)(-log sigmoid(beta h)) + eps(-log sigmoid(-beta h)): DPO with labels flipped w.p. eps."""
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def _pairwise(name: str, beta: float, c: Tensor, r: Tensor, eps: float, tau: float) -> Tensor:
    """The per-pair losses of the reference-based losses added after DPO (module table), from the
    chosen and rejected log-ratios c, r (summed over tokens)."""
    h = c - r
    if name == "cdpo":
        return _smoothed(beta, h, eps)
    if name == "robust_dpo":
        return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    if name == "exo":
        z = beta * h
        return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
            F.logsigmoid(-z) - math.log(eps)
        )
    if name == "nca":
        return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)
    if name == "bco":
        return -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r)
    if name == "sppo_hard":
        return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2
    if name == "apo_zero":
        return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)
    if name == "apo_down":
        return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * h)
    if name == "discopop":
        z = beta * h
        # mix * exp(-z) as exp(log mix - z): where mix underflows to 0, exp(-z) alone overflows (0 * inf)
        return -F.logsigmoid(z) * torch.sigmoid(-z / tau) + torch.exp(F.logsigmoid(z / tau) - z)
    raise ValueError(f"unknown loss {name!r}")


def aot(
    beta: float, eps: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, unpaired: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """AOT, Melnyk et al. 2024 (distributional alignment via optimal transport): the smoothed DPO
    loss on the batch's sorted margins: paired, sort(pc - pr) - sort(rc - rr); unpaired,
    sort(c) - sort(r). Entry i of the losses is rank i, not pair i. Shapes and units as `dpo` (the
    rewards stay per pair); TRL's `aot` / `aot_unpaired`."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    if unpaired:
        h = torch.sort(pc - rc, dim=0)[0] - torch.sort(pr - rr, dim=0)[0]
    else:
        h = torch.sort(pc - pr, dim=0)[0] - torch.sort(rc - rr, dim=0)[0]
    return _smoothed(beta, h, eps), chosen, rejected


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - e^x) for x < 0, elementwise (any shape), without cancellation (branch at -log 2;
    Maechler 2012, "Accurately Computing log(1 - exp(-|a|))")."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(beta: float, pc: Tensor, pr: Tensor, lc: Tensor, lr: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ORPO, Hong et al. 2024 eqs. 4-7, per pair: -m(y_w) - beta log sigmoid(log odds(y_w) - log
    odds(y_l)), m = mean token log-prob, log odds(y) = m - log(1 - e^m); beta is the paper's lambda.
    Rewards: the log odds. Reference-free: pc, pr summed policy log-probs (nats), lc, lr lengths in
    tokens, each (pairs,); returns (losses, chosen rewards, rejected rewards), each (pairs,)."""
    mc, mr = pc / lc, pr / lr
    chosen, rejected = mc - log1mexp(mc), mr - log1mexp(mr)
    return -mc - beta * F.logsigmoid(chosen - rejected), chosen, rejected


def kto_reference_point(policy_kl_logps: Tensor, ref_kl_logps: Tensor, gather: Any = None) -> Tensor:
    """KTO's reference point z (Ethayarajh et al. 2024 eq. 7, TRL's KTOTrainer): the batch estimate of
    KL(pi || pi_ref), mean log pi/pi_ref over mismatched (prompt, completion) pairs (summed log-probs,
    1-D), detached, averaged over processes by `gather` (accelerate's gather_for_metrics) when given,
    clamped at 0. A 0-dim tensor."""
    z = (policy_kl_logps - ref_kl_logps).mean().detach()
    if gather is not None:
        z = gather(z).mean()
    return z.clamp(min=0)


def kto(
    beta: float, z: Tensor, desirable_weight: float, undesirable_weight: float, pc: Tensor, pr: Tensor, rc: Tensor,
    rr: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """KTO, Ethayarajh et al. 2024 eq. 7 (TRL's `kto` loss type), a pair as its two unpaired examples:
    per pair the mean of w_d (1 - sigmoid(beta (c - z))) and w_u (1 - sigmoid(beta (z - r))). z: the
    0-dim reference point in nats (`kto_reference_point`); other shapes and units as `dpo`."""
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    desirable = desirable_weight * (1 - torch.sigmoid(chosen - beta * z))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * z - rejected))
    return (desirable + undesirable) / 2, chosen, rejected


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
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
    kl_reference_point: Optional[Tensor] = None,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair losses and the implicit rewards of chosen and rejected responses (1-D tensors of
    shape (pairs,)); the module's tables give each `name`'s formula. Log-probs summed over response
    tokens (nats), lengths in tokens. `label_smoothing` is eps (cdpo, robust_dpo, exo, aot*),
    `discopop_tau` DiscoPOP's tau, `desirable_weight`, `undesirable_weight` KTO's (TRL's names and
    defaults); `kl_reference_point` is KTO's z (`kto_reference_point`, 0-dim). Raises ValueError for
    an unknown name, a reference-based loss without reference log-probs, or kto without its z."""
    pc, pr = policy_chosen_logps, policy_rejected_logps
    lc = chosen_lengths.to(pc.dtype).clamp(min=1)
    lr = rejected_lengths.to(pr.dtype).clamp(min=1)
    if name not in ALGORITHMS:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(ALGORITHMS)}")
    if name == "simpo":  # the reference-free formulas (alignsweep.train.loss_registry.REFERENCE_FREE)
        return simpo(beta, gamma or 0.0, pc, pr, lc, lr)
    if name == "orpo":
        return orpo(beta, pc, pr, lc, lr)
    if name == "alphapo":
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
    if name in ("aot", "aot_unpaired"):
        return aot(beta, label_smoothing, pc, pr, rc, rr, unpaired=name == "aot_unpaired")
    if name == "kto":
        if kl_reference_point is None:
            raise ValueError("kto needs its reference point (kl_reference_point: kto_reference_point(...))")
        return kto(beta, kl_reference_point, desirable_weight, undesirable_weight, pc, pr, rc, rr)
    if name == "dpo_norm":
        chosen, rejected = beta * (pc - rc) / lc, beta * (pr - rr) / lr
        return -F.logsigmoid(chosen - rejected), chosen, rejected
    chosen, rejected = _margin_rewards(beta, pc, pr, rc, rr)
    return _pairwise(name, beta, pc - rc, pr - rr, label_smoothing, discopop_tau), chosen, rejected


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
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """The algorithm's own implicit reward of each response (1-D, one entry per response), the
    quantity its loss compares (see the module's table); `lengths` in tokens, log-probs summed.
    Computed through `daa_loss` with the response as both members of a pair, so it cannot drift
    from the loss (KTO's reward does not read its reference point: 0 is passed)."""
    if ref_logps is None:
        ref_logps = torch.zeros_like(policy_logps)
    _, rewards, _ = daa_loss(
        name, policy_chosen_logps=policy_logps, policy_rejected_logps=policy_logps, ref_chosen_logps=ref_logps,
        ref_rejected_logps=ref_logps, chosen_lengths=lengths, rejected_lengths=lengths, beta=beta, alpha=alpha,
        gamma=gamma, length_normalized=length_normalized, length_coef=length_coef,
        label_smoothing=label_smoothing, discopop_tau=discopop_tau, kl_reference_point=torch.zeros(()),
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
    )
    return rewards


def reward_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Per pair: 1 when the chosen response's implicit reward is higher, 1/2 on a tie, else 0. Inputs
    and output (pairs,), in the rewards' units.

    A tie (e.g. every pair at step 0 of a reference-based loss, where the policy is the reference
    and both rewards are 0) is a coin flip, not a wrong answer: the accuracy of the SFT model is
    0.5 there. Both the evaluation's `reward_accuracy` and training's `rewards/accuracies` use it
    (TRL's own `rewards/accuracies` counts ties as wrong)."""
    return (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype) + 0.5 * (chosen_rewards == rejected_rewards).to(
        chosen_rewards.dtype
    )


def loss_params(cfg: Any, job: Any) -> dict:
    """The keyword arguments of `daa_loss` for a resolved job (`alignsweep.config.resolve.Job`):
    beta, alpha, gamma, and the algorithm's own knobs from `cfg.algo` (IPO's length normalisation,
    R-DPO's length coefficient, label_smoothing, discopop_tau, KTO's weights; which algorithm reads which:
    `alignsweep.train.loss_registry.ALGO_KNOBS`). The one place config names become loss arguments."""
    params: dict = {"beta": job.beta, "alpha": job.alpha, "gamma": job.gamma}
    if job.algo == "ipo":  # TRL's convention; ipo_daa has none
        params["length_normalized"] = bool(cfg.algo.length_normalized)
    if job.algo == "rdpo":
        params["length_coef"] = float(cfg.algo.length_coef or 0.0)
    if reads(job.algo, "label_smoothing"):
        params["label_smoothing"] = float(cfg.algo.label_smoothing or 0.0)
    if job.algo == "discopop":
        params["discopop_tau"] = float(cfg.algo.discopop_tau)
    if job.algo == "kto":
        params["desirable_weight"] = float(cfg.algo.desirable_weight)
        params["undesirable_weight"] = float(cfg.algo.undesirable_weight)
    return params
