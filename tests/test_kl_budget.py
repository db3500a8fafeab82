"""The running KL check of `kl_budget`: evaluation mode (gradient checkpointing), the exact-token
estimator, and the stopping rule that pools prompts while the decision is within the error."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from alignsweep.data import embedded
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.kl_budget import TOLERANCE, Z
from alignsweep.train import models

ARCH = SimpleNamespace(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=32)
WORDS = ["a", "b", "c", "d", "e"]


def _model(tok, seed: int, scale: float = 3.0):
    m = models.build_tiny_model(ARCH, tok, seed=seed)
    with torch.no_grad():
        m.get_output_embeddings().weight.mul_(scale)  # peaked next-token distributions: KL of order 1
    return m


@pytest.fixture(scope="module")
def tok():
    return models.build_word_tokenizer([embedded.PAD, embedded.EOS, embedded.UNK, *WORDS])


def _evaluator(tok, ref, prompts, max_new=6, estimator="mc"):
    return Evaluator(
        ref_model=ref, tokenizer=tok, judge=None, eval_rows=[{"prompt": p, "reference": " a"} for p in prompts],
        heldout_rows=[], loss_name="dpo", loss_params={"beta": 0.1}, max_new_tokens=max_new, temperature=1.0,
        batch_size=64, seed=0, kl_estimator=estimator,
    )


@pytest.mark.parametrize("prompts", [["a b c", "a", "b c d e a", "e"], ["a b", "c d", "e a", "b b"]],
                         ids=["padded", "equal_length"])
def test_the_kl_of_a_policy_training_with_gradient_checkpointing_is_sampled_in_evaluation_mode(tok, prompts):
    """Issue 19, case 1: the running check sampled with the policy in training mode; with gradient
    checkpointing transformers drops the KV cache there (crash on padded prompts, a context-free
    decoder on equal-length ones). Now the estimate is the evaluation-mode one and training mode
    is restored."""
    ref = _model(tok, seed=1).eval()
    policy = _model(tok, seed=2)
    ev = _evaluator(tok, ref, prompts * 8)
    expected = ev.kl(policy.eval(), seed=7)
    policy.gradient_checkpointing_enable()
    policy.train()
    got = ev.kl(policy, seed=7)
    assert policy.training  # restored
    assert got["responses"] == expected["responses"]
    assert got["kl_exact_token"] == pytest.approx(expected["kl_exact_token"], rel=1e-6)
    assert got["kl_mc"] == pytest.approx(expected["kl_mc"], rel=1e-6)
    budget = ev.kl_budget(budget=100.0, prompts_per_check=8)
    check = budget.check(policy, step=4)  # the check the callback runs
    assert policy.training and not check.over and math.isfinite(check.kl)


@pytest.fixture(scope="module")
def pair(tok):
    """Two tiny models whose KL is known closely (every prompt, many draws), and an evaluator
    over 256 prompts."""
    ref, policy = _model(tok, seed=1).eval(), _model(tok, seed=3).eval()
    prompts = [" ".join(WORDS[(i + k) % 5] for k in range(1 + i % 4)) for i in range(256)]
    ev = _evaluator(tok, ref, prompts)
    truth = [ev.kl(policy, seed=s)["kl_exact_token"] for s in range(4)]
    return SimpleNamespace(ev=ev, policy=policy, kl=sum(truth) / len(truth))


def test_a_check_far_from_the_budget_costs_one_block_and_decides_right(pair):
    low = pair.ev.kl_budget(budget=pair.kl / 4, prompts_per_check=16).check(pair.policy, step=8)
    high = pair.ev.kl_budget(budget=pair.kl * 4, prompts_per_check=16).check(pair.policy, step=8)
    assert (low.prompts, low.over) == (16, True)
    assert (high.prompts, high.over) == (16, False)


def test_a_check_near_the_budget_pools_prompts_until_its_error_is_small_or_every_prompt_is_used(pair):
    """Issue 19, case 2: 32 prompts and the first estimate above the budget stopped early at small
    budgets. Near the budget the check now pools blocks until the budget is Z standard errors away
    or the standard error is at most TOLERANCE x budget."""
    for budget in (pair.kl * 0.97, pair.kl * 1.03):
        check = pair.ev.kl_budget(budget=budget, prompts_per_check=16).check(pair.policy, step=8)
        assert check.prompts > 16
        decided = abs(check.kl - budget) >= Z * check.kl_se or check.kl_se <= TOLERANCE * budget
        assert decided or check.prompts == 256
        assert check.over == (check.kl > budget)  # the first check: no growth known yet


def test_the_exact_token_estimator_decides_whatever_kl_reports(pair):
    """The running check uses kl_exact_token (lower variance) even when eval.kl_estimator=mc."""
    check = pair.ev.kl_budget(budget=pair.kl * 10, prompts_per_check=32).check(pair.policy, step=12)
    # the check at step 12 (every=1) starts at block 12: prompts 384..415 of 256, i.e. 128..159
    est = pair.ev.kl(pair.policy, indices=range(128, 160), seed=10_000 + 12 + (1 << 32))
    assert check.kl == pytest.approx(est["kl_exact_token"]) and check.kl_se == pytest.approx(est["kl_exact_token_se"])


@pytest.mark.slow
def test_the_kl_budget_runs_with_gradient_checkpointing(cli):
    """Issue 19, case 1 as the user typed it: `python -m alignsweep kl_budget=2
    model.gradient_checkpointing=true` failed at the first check (KV cache dropped in training mode)."""
    cli("kl_budget=2", "model.gradient_checkpointing=true", "logger=none", "hydra.run.dir=run", timeout=1500)
    status = json.loads((cli.cwd / "run" / "status.json").read_text())
    assert status["state"] == "completed", status.get("error")
    assert status["stop_reason"] == "kl_budget" and status["kl_check"]["over"]


def test_the_stop_is_at_the_check_nearest_the_budget(pair):
    """Between checks the KL grows; the check stops training when the next one would overshoot
    the budget by more than this one falls short (estimate + growth/2 > budget)."""
    budget = pair.ev.kl_budget(budget=pair.kl * 1.1, prompts_per_check=256, every=4)
    budget.previous = (4, pair.kl * 0.7)  # the last check, 4 steps ago: growth 0.3 KL per check
    near = budget.check(pair.policy, step=8)
    assert near.kl < pair.kl * 1.1 and near.over  # short by ~0.1 KL, the next check would be ~0.2 over
    far = pair.ev.kl_budget(budget=pair.kl * 1.3, prompts_per_check=256, every=4)
    far.previous = (4, pair.kl * 0.7)
    assert not far.check(pair.policy, step=8).over  # short by ~0.3 KL: the next check is nearer
