"""The sample-based part of a checkpoint's metric row: KL and sqrt(KL) with standard errors (the
estimator `eval.kl_estimator` names reported as `kl`), the judged win rate (ties count 1/2, verdicts
that could not be read left out and counted) and its length-controlled twin `lc_win_rate`
(`alignsweep.evaluate.length_control`), response lengths and the regression of the
algorithm's own implicit reward on length (`alignsweep.train.losses.implicit_reward`; NaN when
undefined), and the R^2 of the log-ratio log pi/pi_ref alone on length (`length_r2_log_ratio`). Definitions: `alignsweep.evaluate.evaluator`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from alignsweep.evaluate.length_control import length_controlled_win_rate
from alignsweep.evaluate.sequences import least_squares, mean_se
from alignsweep.train.losses import implicit_reward


def sample_metrics(
    est: dict, outcomes: Sequence[float], *, eos_id: int, kl_estimator: str, loss_name: str, loss_params: dict,
    texts: Sequence[str] | None = None, references: Sequence[str] | None = None,
) -> tuple[dict, list[int]]:
    """(row, lengths): the metrics of one evaluation's samples. `est` holds the samples' token ids
    (`responses`), their summed log-probs under policy and reference (`policy_logps`, `ref_logps`,
    shape (n,), nats) and both KL estimates with SEs; `outcomes` the judge's verdicts (1, 0, 0.5 or
    NaN); `texts` and `references` the strings the judge compared (their lengths in characters are the
length-controlled win rate's length difference). `lengths` are the responses' token counts without EOS."""
    responses = est["responses"]
    verdicts = [o for o in outcomes if not math.isnan(o)]
    win, win_se = mean_se(verdicts)
    lengths = [len(r) - (1 if r and r[-1] == eos_id else 0) for r in responses]
    kl, kl_se = est[f"kl_{kl_estimator}"], est[f"kl_{kl_estimator}_se"]
    sqrt_kl = math.sqrt(max(kl, 0.0))
    row = {
        "kl": kl,
        "kl_se": kl_se,
        "sqrt_kl": sqrt_kl,
        "sqrt_kl_se": kl_se / (2 * sqrt_kl) if sqrt_kl > 0 else float("nan"),
        "win_rate": win,
        "win_rate_se": win_se,
        "ties": sum(1 for o in verdicts if o == 0.5),
        "unparseable": len(outcomes) - len(verdicts),
        "n_eval": len(outcomes),
        "kl_mc": est["kl_mc"],
        "kl_mc_se": est["kl_mc_se"],
        "kl_exact_token": est["kl_exact_token"],
        "kl_exact_token_se": est["kl_exact_token_se"],
        "response_length": sum(lengths) / len(lengths),
        "truncated": sum(1 for r in responses if not r or r[-1] != eos_id),
    }
    if texts is None or references is None:
        row.update(lc_win_rate=math.nan, lc_win_rate_se=math.nan, lc_length_coef=math.nan,
                   lc_note="no texts given: the length difference is unknown")
    else:
        row.update(length_controlled_win_rate(outcomes, [len(t) for t in texts], [len(r) for r in references]).row())
    # the algorithm's own implicit reward of each sample (`alignsweep.train.losses.implicit_reward`),
    # |y| counting every scored token (EOS included, as in training)
    scored = torch.tensor([max(len(r), 1) for r in responses], dtype=est["policy_logps"].dtype)
    implicit = implicit_reward(loss_name, policy_logps=est["policy_logps"], ref_logps=est["ref_logps"],
                               lengths=scored, **loss_params).tolist()
    slope, r2 = least_squares([float(x) for x in lengths], implicit)
    row.update({"length_slope": slope, "length_r2": r2, "length_r2_log_ratio": log_ratio_length_r2(est, lengths)})
    return row, lengths


def log_ratio_length_r2(est: dict, lengths: Sequence[int]) -> float:
    """R^2 of the policy's own part of the reward, beta log pi(y)/pi_ref(y) (summed over the sample's
    tokens, nats; beta drops out of R^2), on response length (tokens) over the samples: DPO's implicit
    reward (Rafailov et al. 2023) for every algorithm, comparable across them. It equals `length_r2`
    where that is the implicit reward (DPO, IPO, SLiC, ...); for R-DPO (Park et al. 2024) it leaves out
    the fixed a|y| term, which alone makes `length_r2` close to 1; for the reference-free losses it
    is the log-ratio to the SFT model. NaN when undefined (one length, or a constant log-ratio, as at
    step 0)."""
    log_ratio = (est["policy_logps"] - est["ref_logps"]).tolist()
    return least_squares([float(x) for x in lengths], [float(v) for v in log_ratio])[1]
