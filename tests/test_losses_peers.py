"""The losses the peers offer (TRL's DPOTrainer loss types, ORPO): hand-computed values from each
paper's formula, the limits that connect them to DPO, and TRL's own code on the same inputs."""

from __future__ import annotations

import math

import pytest
import torch

from alignsweep.train.loss_registry import ALGO_KNOBS, REFERENCE_FREE
from alignsweep.train.losses import daa_loss, implicit_reward

LABEL_SMOOTHING = ALGO_KNOBS["label_smoothing"]

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
NEW = ["cdpo", "robust_dpo", "exo", "nca", "bco", "sppo_hard", "apo_zero", "apo_down", "discopop", "dpo_norm",
       "aot", "aot_unpaired", "orpo"]


def call(name, **kw):
    # c = pc - rc = (1, 0), r = pr - rr = (-1, 1), h = (2, -1); at beta 0.5: beta*h = (1, -0.5)
    args = dict(
        policy_chosen_logps=T(-10.0, -4.0), policy_rejected_logps=T(-12.0, -3.0),
        ref_chosen_logps=T(-11.0, -4.0), ref_rejected_logps=T(-11.0, -4.0),
        chosen_lengths=T(5.0, 2.0), rejected_lengths=T(4.0, 3.0), beta=0.5,
    )
    args.update(kw)
    return daa_loss(name, **args)


def sig(x):
    return 1 / (1 + math.exp(-x))


def ls(x):  # log sigmoid
    return math.log(sig(x))


def losses(name, **kw):
    return call(name, **kw)[0].tolist()


def test_cdpo_by_hand():
    assert losses("cdpo", label_smoothing=0.2) == pytest.approx(
        [-0.8 * ls(1) - 0.2 * ls(-1), -0.8 * ls(-0.5) - 0.2 * ls(0.5)])


def test_robust_dpo_by_hand():
    assert losses("robust_dpo", label_smoothing=0.2) == pytest.approx(
        [(-0.8 * ls(1) + 0.2 * ls(-1)) / 0.6, (-0.8 * ls(-0.5) + 0.2 * ls(0.5)) / 0.6])


def test_exo_by_hand():
    def exo(z, eps):
        s = sig(z)
        return s * (math.log(s) - math.log(1 - eps)) + (1 - s) * (math.log(1 - s) - math.log(eps))

    assert losses("exo", label_smoothing=0.2) == pytest.approx([exo(1, 0.2), exo(-0.5, 0.2)])


def test_nca_bco_sppo_apo_by_hand():
    # beta*c = (0.5, 0), beta*r = (-0.5, 0.5)
    assert losses("nca") == pytest.approx(
        [-ls(0.5) - 0.5 * ls(-0.5) - 0.5 * ls(0.5), -ls(0) - 0.5 * ls(0) - 0.5 * ls(-0.5)])
    assert losses("bco") == pytest.approx([-ls(0.5) - ls(0.5), -ls(0) - ls(-0.5)])
    # targets +-1/(2 beta) = +-1: (1-1)^2 + (-1+1)^2 ; (0-1)^2 + (1+1)^2
    assert losses("sppo_hard") == pytest.approx([0.0, 5.0])
    assert losses("apo_zero") == pytest.approx([1 - sig(0.5) + sig(-0.5), 1 - sig(0) + sig(0.5)])
    assert losses("apo_down") == pytest.approx([sig(0.5) + 1 - sig(1), sig(0) + 1 - sig(-0.5)])


def test_discopop_by_hand():
    def disco(z, tau):
        mix = sig(z / tau)
        return -ls(z) * (1 - mix) + math.exp(-z) * mix

    assert losses("discopop", discopop_tau=0.05) == pytest.approx([disco(1, 0.05), disco(-0.5, 0.05)])
    assert losses("discopop", discopop_tau=2.0) == pytest.approx([disco(1, 2.0), disco(-0.5, 2.0)])


def test_discopop_stays_finite_where_its_mix_underflows():
    """beta*h = -712: sigmoid(z/tau) underflows to 0 while exp(-z) overflows; the product is 0
    (written as 0 * inf it is NaN, which the property test found), the loss the logistic one."""
    pc = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    out = daa_loss("discopop", policy_chosen_logps=pc, policy_rejected_logps=T(-1.0), ref_chosen_logps=T(-1.0),
                   ref_rejected_logps=T(-179.0), chosen_lengths=T(1.0), rejected_lengths=T(1.0), beta=4.0,
                   discopop_tau=0.05)[0]
    out.sum().backward()
    assert out.item() == pytest.approx(712.0) and torch.isfinite(pc.grad).all()


def test_dpo_norm_by_hand():
    out, chosen, rejected = call("dpo_norm")
    # per-token log-ratios: c/|y_w| = (1/5, 0), r/|y_l| = (-1/4, 1/3)
    assert out.tolist() == pytest.approx([-ls(0.5 * 0.45), -ls(0.5 * (-1 / 3))])
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.125, 1 / 6])


def test_aot_by_hand():
    # paired: sort(pc - pr) = sort(2, -1) = (-1, 2); sort(rc - rr) = (0, 0); beta*d = (-0.5, 1)
    assert losses("aot") == pytest.approx([-ls(-0.5), -ls(1)])
    assert losses("aot", label_smoothing=0.1) == pytest.approx(
        [-0.9 * ls(-0.5) - 0.1 * ls(0.5), -0.9 * ls(1) - 0.1 * ls(-1)])
    # unpaired: sort(c) = (0, 1), sort(r) = (-1, 1); beta*d = (0.5, 0)
    assert losses("aot_unpaired") == pytest.approx([-ls(0.5), -ls(0)])


def test_orpo_by_hand():
    def log_odds(m):
        return m - math.log(1 - math.exp(m))

    out, chosen, rejected = call("orpo", beta=0.1, ref_chosen_logps=None, ref_rejected_logps=None)
    # m(y_w) = (-2, -2), m(y_l) = (-3, -1)
    assert out.tolist() == pytest.approx([
        2 - 0.1 * ls(log_odds(-2) - log_odds(-3)), 2 - 0.1 * ls(log_odds(-2) - log_odds(-1))])
    assert chosen.tolist() == pytest.approx([log_odds(-2)] * 2)
    assert rejected.tolist() == pytest.approx([log_odds(-3), log_odds(-1)])


# --- limits that connect them -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cdpo", "robust_dpo", "aot", "aot_unpaired"])
def test_no_smoothing_and_one_pair_is_dpo(name):
    one = dict(policy_chosen_logps=T(-10.0), policy_rejected_logps=T(-12.0), ref_chosen_logps=T(-11.0),
               ref_rejected_logps=T(-11.5), chosen_lengths=T(5.0), rejected_lengths=T(4.0))
    # a single pair: nothing to sort, so AOT is DPO too
    for x, y in zip(call(name, label_smoothing=0.0, **one), call("dpo", **one)):
        assert torch.allclose(x, y, atol=1e-12)


def test_dpo_norm_with_one_token_responses_is_dpo():
    ones = T(1.0, 1.0)
    for x, y in zip(call("dpo_norm", chosen_lengths=ones, rejected_lengths=ones), call("dpo")):
        assert torch.allclose(x, y, atol=1e-12)


def test_cdpo_is_a_mixture_and_robust_dpo_its_unbiased_correction():
    """(1-2 eps) robust = (1-eps) A - eps B and cdpo = (1-eps) A + eps B, so
    cdpo + (1-2 eps) robust = 2 (1-eps) DPO: the combination the TRL pin uses."""
    eps = 0.3
    lhs = call("cdpo", label_smoothing=eps)[0] + (1 - 2 * eps) * call("robust_dpo", label_smoothing=eps)[0]
    assert torch.allclose(lhs, 2 * (1 - eps) * call("dpo")[0], atol=1e-12)


def test_exo_is_a_kl_with_its_zero_at_the_smoothed_label():
    """EXO is KL((s, 1-s) || (1-eps, eps)): >= 0, and 0 exactly where sigmoid(beta h) = 1 - eps."""
    eps, beta = 0.1, 0.5
    h = math.log((1 - eps) / eps) / beta
    out = call("exo", label_smoothing=eps, beta=beta, policy_chosen_logps=T(h - 11.0), policy_rejected_logps=T(-11.0),
               ref_chosen_logps=T(-11.0), ref_rejected_logps=T(-11.0), chosen_lengths=T(1.0),
               rejected_lengths=T(1.0))[0]
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    assert min(losses("exo", label_smoothing=eps)) > 0


def test_discopop_tends_to_its_two_components():
    """tau -> 0: exp(-beta h) where beta h > 0, the logistic loss where beta h < 0 (eq. 5)."""
    out = losses("discopop", discopop_tau=1e-4)
    assert out == pytest.approx([math.exp(-1), -ls(-0.5)])


def test_sppo_hard_is_zero_at_its_targets_and_orpo_without_lambda_is_sft():
    assert losses("sppo_hard")[0] == pytest.approx(0.0)
    out = call("orpo", beta=0.0, ref_chosen_logps=None, ref_rejected_logps=None)[0]
    assert out.tolist() == pytest.approx([2.0, 2.0])  # -m(y_w): the mean token NLL of the chosen


def test_orpo_is_reference_free_and_the_smoothing_set_matches_the_config():
    from alignsweep.config.algorithms import ALGO_KNOBS, ALGORITHMS

    assert "orpo" in REFERENCE_FREE
    assert set(ALGO_KNOBS["label_smoothing"]) == set(LABEL_SMOOTHING)
    assert set(NEW) <= set(ALGORITHMS)


# --- implicit rewards (length R^2, reward accuracy) ----------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_implicit_reward_of_each_new_loss(name):
    logps, ref, lengths = T(-6.0, -2.0, -9.0), T(-5.0, -3.0, -9.5), T(3.0, 2.0, 6.0)
    kw = {"label_smoothing": 0.1} if name in LABEL_SMOOTHING else {}
    got = implicit_reward(name, policy_logps=logps, ref_logps=None if name in REFERENCE_FREE else ref,
                          lengths=lengths, beta=0.5, **kw)
    if name == "orpo":
        m = logps / lengths
        want = m - torch.log(1 - torch.exp(m))
    elif name == "dpo_norm":
        want = 0.5 * (logps - ref) / lengths
    else:
        want = 0.5 * (logps - ref)
    assert torch.allclose(got, want, atol=1e-12)


# --- ORPO against TRL's own odds-ratio code ------------------------------------------------------


def test_orpo_is_trls_odds_ratio_loss_plus_the_chosen_nll():
    """TRL's ORPOTrainer.odds_ratio_loss on length-averaged log-probs (its `average_log_prob=True`)
    returns beta * log sigmoid(log odds ratio); the loss adds the chosen NLL. Random inputs."""
    from types import SimpleNamespace

    from trl.experimental.orpo import ORPOTrainer

    gen = torch.Generator().manual_seed(0)
    lc, lr = torch.randint(1, 30, (64,), generator=gen).float(), torch.randint(1, 30, (64,), generator=gen).float()
    pc, pr = -torch.rand(64, generator=gen) * 3 * lc - 1e-3, -torch.rand(64, generator=gen) * 3 * lr - 1e-3
    me = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device="cpu"))
    theirs = ORPOTrainer.odds_ratio_loss(me, pc / lc, pr / lr)[0]
    ours = daa_loss("orpo", policy_chosen_logps=pc, policy_rejected_logps=pr, chosen_lengths=lc,
                    rejected_lengths=lr, beta=0.25)[0]
    assert torch.allclose(ours - (-pc / lc), -theirs, atol=1e-6)


# --- configs: every loss composes and resolves; knobs a loss does not read are refused -------------

from tests.test_config import compose_cfg  # noqa: E402

from alignsweep.config.resolve import resolve_job  # noqa: E402
from alignsweep.errors import ConfigError  # noqa: E402


@pytest.mark.parametrize("name", NEW)
def test_each_loss_composes_resolves_and_gives_its_parameters(name):
    from types import SimpleNamespace

    from alignsweep.train.losses import loss_params

    cfg = compose_cfg(f"algo={name}")
    job = resolve_job(cfg)
    assert job.algo == name and job.beta > 0 and job.reference_free == (name in REFERENCE_FREE)
    params = loss_params(cfg, job)
    assert ("label_smoothing" in params) == (name in LABEL_SMOOTHING)
    assert ("discopop_tau" in params) == (name == "discopop")
    # the defaults run: finite losses on the module's inputs
    kw = {k: v for k, v in params.items() if v is not None and k not in ("alpha", "gamma")}
    out = call(name, **kw)[0]
    assert torch.isfinite(out).all()
    assert SimpleNamespace(**params).beta == cfg.algo.beta


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["algo=dpo", "algo.label_smoothing=0.1"], "algo.label_smoothing: algo=dpo has no label_smoothing"),
        (["algo=discopop", "algo.label_smoothing=0.1"], "algo.label_smoothing: algo=discopop has no"),
        (["algo=cdpo", "algo.discopop_tau=0.1"], "algo.discopop_tau: algo=cdpo has no"),
        (["algo=dpo", "algo.length_coef=0.1"], "algo.length_coef: algo=dpo has no"),
        (["algo=nca", "algo.length_normalized=true"], "algo.length_normalized: algo=nca has no"),
        (["algo=exo", "algo.label_smoothing=0"], "algo.label_smoothing: exo takes log(eps)"),
        (["algo=robust_dpo", "algo.label_smoothing=0.5"], "algo.label_smoothing: must be >= 0 and < 0.5"),
        (["algo=cdpo", "algo.label_smoothing=-0.1"], "algo.label_smoothing: must be >= 0"),
        (["algo=discopop", "algo.discopop_tau=0"], "algo.discopop_tau: must be > 0"),
        (["algo=orpo", "alpha=0.5"], "alpha: algo=orpo has no alpha"),
        (["algo=cdpo", "gamma=0.5"], "gamma: algo=cdpo has no gamma"),
        (["algo=exo", "algo.label_smoothing=0.7"], "algo.label_smoothing: must be >= 0 and < 0.5"),
        (["algo=rdpo", "algo.length_coef=-0.01"], "algo.length_coef: must be >= 0"),  # a reward for length
        (["algo=kto", "algo.undesirable_weight=0"], "algo.undesirable_weight: must be > 0"),
        (["algo=dpo", "algo.reference_free=true"], "algo.reference_free: dpo's loss reads the reference model"),
    ],
)
def test_knobs_a_loss_does_not_read_are_refused(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_job(compose_cfg(*overrides))
    assert str(err.value).startswith(key), str(err.value)


def test_every_algo_file_comments_each_hyperparameter_with_its_source():
    """Each key of conf/algo/NAME.yaml (but `name`) carries a comment that says where its default
    comes from: TRL's default, a paper's setting, or that there is none published."""
    import re

    from tests.test_config import CONF

    sources = re.compile(r"TRL|paper|et al|setting|published|Rafailov|default", re.IGNORECASE)
    for path in sorted((CONF / "algo").glob("*.yaml")):
        for line in path.read_text().splitlines():
            if not line or line.startswith("#") or line.startswith("name:"):
                continue
            key, _, comment = line.partition("#")
            assert comment.strip(), f"{path.name}: {key.strip()} has no comment"
            assert sources.search(comment), f"{path.name}: {key.strip()}'s comment names no source: {comment.strip()}"


def test_a_swept_loss_knob_is_on_each_dry_run_line(cli):
    """`-m algo=cdpo algo.label_smoothing=0,0.2` shows two different jobs, not the same line twice;
    a knob the loss does not read stops the sweep before anything runs (exit 2)."""
    out = cli("-m", "algo=cdpo", "algo.label_smoothing=0,0.2", "dry_run=true").stdout
    assert "algo.label_smoothing=0.0 " in out and "algo.label_smoothing=0.2 " in out
    proc = cli("-m", "algo=dpo,cdpo", "algo.label_smoothing=0.2", "dry_run=true", check=False)
    assert proc.returncode == 2 and "algo.label_smoothing: algo=dpo has no label_smoothing" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# --- end to end: the new losses train, evaluate and collect like DPO --------------------------------


@pytest.mark.slow
def test_new_losses_train_evaluate_and_collect(cli):
    """A reference-based smoothed loss, a batch-sorting one, one with its own tau and the
    reference-free ORPO, as one real sweep on the embedded task (short runs)."""
    import pandas as pd

    algos = ["cdpo", "aot_unpaired", "discopop", "orpo"]
    cli("-m", f"algo={','.join(algos)}", "logger=none", "train.epochs=0.1", "train.checkpoints=1",
        "eval.prompts=16", "hydra.sweep.dir=sweep")
    table = pd.read_csv(cli.cwd / "sweep" / "results.csv")
    assert sorted(table["algo"].unique()) == sorted(algos)
    assert (table["status"] == "completed").all()
    final = table[table["step"] > 0]
    assert len(final) == len(algos)
    for column in ("win_rate", "kl", "reward_accuracy", "train_loss"):
        assert final[column].map(math.isfinite).all(), column
    assert (final["kl_exact_token"] > 3 * final["kl_exact_token_se"]).all(), "training moved every policy"
    assert set(table[table["algo"] == "cdpo"]["cfg.algo.label_smoothing"]) == {0.1}
