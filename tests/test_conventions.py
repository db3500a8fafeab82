"""Conventions named where they are chosen, and one value per concept in every output (issue 19):
both IPO targets, gamma as gamma/beta or absolute, each algorithm's own implicit reward, ties and
undefined values, and the resolved beta/alpha/gamma in config.yaml, results.csv and wandb."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from alignsweep.config.resolve import resolve_job
from alignsweep.config.run_config import resolved_container
from alignsweep.config.schema import register
from alignsweep.data import embedded
from alignsweep.errors import ConfigError
from alignsweep.evaluate.evaluator import Evaluator
from alignsweep.evaluate.sequences import least_squares
from alignsweep.train import models
from alignsweep.train.losses import daa_loss, implicit_reward, reward_accuracy

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose_cfg(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# -- IPO: both targets, under explicit names ---------------------------------------------------------


def test_ipo_is_the_tau_convention_and_ipo_daa_the_daa_form():
    """Issue 19, case 4: `ipo` minimises (h - 1/(2 beta))^2 (IPO paper, TRL); Rafailov et al. write
    (beta h - 1)^2, target 1/beta: that is `ipo_daa`. ipo at beta/2 has ipo_daa's minimiser at beta."""
    h = torch.tensor([0.0, 2.5, 5.0, 10.0], dtype=torch.float64)
    zeros = torch.zeros_like(h)
    ones = torch.ones_like(h)

    def loss(name, beta):
        return daa_loss(name, policy_chosen_logps=h, policy_rejected_logps=zeros, ref_chosen_logps=zeros,
                        ref_rejected_logps=zeros, chosen_lengths=ones, rejected_lengths=ones, beta=beta)[0]

    assert torch.allclose(loss("ipo", 0.1), (h - 5.0) ** 2)  # target 1/(2*0.1) = 5
    assert torch.allclose(loss("ipo_daa", 0.1), (0.1 * h - 1.0) ** 2)  # target 1/0.1 = 10
    assert float(loss("ipo_daa", 0.1)[3]) == 0.0 and float(loss("ipo", 0.05)[3]) == 0.0  # same minimiser
    cfg = compose_cfg("algo=ipo_daa", "beta=0.2")
    assert resolve_job(cfg).algo == "ipo_daa" and resolve_job(cfg).beta == 0.2


def test_the_overoptimization_presets_say_which_ipo_their_beta_grid_means():
    for name in ("overopt_tldr", "overopt_embedded", "demo", "tree_mdp"):
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert "1/(2 beta)" in text, name


# -- gamma: gamma/beta (SimPO's convention) or absolute, exactly one -----------------------------------


def test_gamma_follows_beta_at_the_papers_gamma_over_beta_when_beta_is_swept():
    """Issue 19, case 6: experiment=demo ran SimPO and AlphaPO at gamma/beta = 5 when beta = 0.05."""
    for algo in ("simpo", "alphapo"):
        for beta in (0.05, 0.2, 1.0):
            job = resolve_job(compose_cfg("experiment=demo", f"algo={algo}", f"beta={beta}"))
            assert job.gamma == pytest.approx(0.1 * beta), (algo, beta)
    assert resolve_job(compose_cfg("algo=simpo", "gamma=0.7", "beta=0.5")).gamma == 0.7  # absolute wins
    assert resolve_job(compose_cfg("algo=simpo", "gamma_beta_ratio=0.5", "beta=2")).gamma == 1.0


@pytest.mark.parametrize("overrides, named", [
    (["algo=simpo", "gamma=0.3", "gamma_beta_ratio=0.1"], "gamma_beta_ratio"),
    (["algo=alphapo", "algo.gamma=0.3"], "algo.gamma_beta_ratio"),
    (["algo=dpo", "gamma_beta_ratio=0.1"], "gamma_beta_ratio"),
    (["algo=dpo", "algo.beta=0.5", "beta=0.2"], "algo.beta"),
    (["algo=alphapo", "algo.alpha=0.5", "alpha=0.1"], "algo.alpha"),
])
def test_one_value_set_twice_differently_is_refused(overrides, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        resolve_job(compose_cfg(*overrides))


def test_conflicting_betas_stop_the_sweep_before_it_starts(cli):
    """Issue 19, case 7: `algo.beta=0.5 beta=0.2` silently used 0.2."""
    for args in (["algo.beta=0.5", "beta=0.2"], ["-m", "algo.beta=0.5", "beta=0.2,0.3"]):
        proc = cli(*args, "dry_run=true", check=False)
        assert proc.returncode == 2 and "algo.beta" in proc.stderr and "Traceback" not in proc.stderr
    assert cli("algo.beta=0.5", "dry_run=true").stdout.count("beta=0.5") == 1  # one of them alone is fine


def test_the_simpo_arm_of_an_alphapo_sweep_runs_at_simpos_own_lr():
    """Issue 19, case 9: the SimPO arm (alpha = 0) of experiment=alphapo_ultrafeedback ran at
    AlphaPO's lr 7e-7, not SimPO's published 5e-7."""
    lr = {alpha: compose_cfg("experiment=alphapo_ultrafeedback", "recipe=mistral_instruct", f"alpha={alpha}").train.lr
          for alpha in (0.0, 0.25, -0.25)}
    assert lr == {0.0: 5e-7, 0.25: 7e-7, -0.25: 7e-7}
    assert compose_cfg("recipe=mistral_instruct", "algo=simpo").train.lr == 5e-7
    job = resolve_job(compose_cfg("recipe=llama3_instruct", "algo=simpo"))
    assert (job.beta, job.gamma) == (10.0, pytest.approx(3.0))  # SimPO's (beta, gamma/beta) = (10, 0.3)


# -- one value per concept in every output ---------------------------------------------------------


def test_the_written_config_holds_the_resolved_values_only():
    """Issue 19, case 7: config.yaml kept the algorithm's default (0.1; 2.5 for AlphaPO) beside
    the beta actually used."""
    saved = resolved_container(compose_cfg("algo=alphapo", "beta=0.4", "alpha=0.5"))
    assert saved["beta"] == saved["algo"]["beta"] == 0.4
    assert saved["alpha"] == saved["algo"]["alpha"] == 0.5
    assert saved["gamma"] == saved["algo"]["gamma"] == pytest.approx(0.04)
    assert saved["gamma_beta_ratio"] is None and saved["algo"]["gamma_beta_ratio"] is None
    again = resolve_job(OmegaConf.merge(compose_cfg("algo=alphapo"), OmegaConf.create(saved)))
    assert (again.beta, again.alpha, again.gamma) == (0.4, 0.5, pytest.approx(0.04))  # the worker's reading
    dpo = resolved_container(compose_cfg("algo=dpo", "beta=0.3"))
    assert dpo["algo"]["beta"] == 0.3 and dpo["alpha"] is None and dpo["gamma"] is None


@pytest.mark.slow
def test_config_results_and_wandb_show_the_beta_that_ran(cli):
    from alignsweep.results.collect import collect

    from .wandb_log import run_record

    cli("algo=simpo", "beta=0.5", "train.checkpoints=1", "data.embedded.n_train=256", "eval.prompts=32", "hydra.run.dir=run")
    run = cli.cwd / "run"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.beta == saved.algo.beta == 0.5 and saved.gamma == saved.algo.gamma == pytest.approx(0.05)
    table = collect(run)
    assert set(table["beta"]) == {0.5} and not [c for c in table.columns if c.startswith("cfg.algo.")]
    config = run_record(run)["config"]
    logged = json.loads(config) if isinstance(config, str) else config
    logged = logged.get("update", logged)

    def value(node):
        return node["value"] if isinstance(node, dict) and "value" in node else node

    algo = value(logged["algo"])
    assert value(logged["beta"]) == algo["beta"] == 0.5
    assert value(logged["gamma"]) == algo["gamma"] == pytest.approx(0.05) and algo["gamma_beta_ratio"] is None


# -- implicit rewards, ties, undefined values --------------------------------------------------------


def test_each_algorithm_has_its_own_implicit_reward():
    logp = torch.tensor([-4.0, -9.0], dtype=torch.float64)
    ref = torch.tensor([-5.0, -6.0], dtype=torch.float64)
    n = torch.tensor([2.0, 3.0], dtype=torch.float64)

    def r(name, **kw):
        return implicit_reward(name, policy_logps=logp, ref_logps=ref, lengths=n, beta=0.5, **kw)

    for name in ("dpo", "ipo", "ipo_daa", "slic"):
        assert torch.allclose(r(name), 0.5 * (logp - ref))
    assert torch.allclose(r("ipo", length_normalized=True), 0.5 * (logp - ref) / n)
    assert torch.allclose(r("rdpo", length_coef=0.1), 0.5 * (logp - ref) + 0.1 * n)
    assert torch.allclose(r("simpo", gamma=0.3), 0.5 * logp / n)
    assert torch.allclose(r("alphapo", alpha=0.5, gamma=0.0), (0.5 / 0.5) * (1 - torch.exp(-0.5 * logp / n)))


def test_ties_count_half_in_reward_accuracy():
    chosen = torch.tensor([1.0, 0.0, 2.0, 0.0])
    rejected = torch.tensor([0.0, 0.0, 3.0, 0.0])
    assert reward_accuracy(chosen, rejected).tolist() == [1.0, 0.5, 0.0, 0.5]


def test_the_regression_on_length_is_undefined_not_zero_when_every_sample_is_cut():
    """Issue 19, case 8: length_slope/length_r2 were 0.0 when every sample is cut (one length)."""
    slope, r2 = least_squares([16.0] * 8, [float(i) for i in range(8)])
    assert math.isnan(slope) and math.isnan(r2)
    slope, r2 = least_squares([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])  # constant reward: flat line, R^2 0/0
    assert slope == 0.0 and math.isnan(r2)
    assert least_squares([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((2.0, 1.0))


ARCH = SimpleNamespace(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position_embeddings=32)


@pytest.fixture(scope="module")
def tiny():
    tok = models.build_word_tokenizer([embedded.PAD, embedded.EOS, embedded.UNK, "a", "b", "c", "d"])
    ref = models.build_tiny_model(ARCH, tok, seed=1).eval()
    policy = models.build_tiny_model(ARCH, tok, seed=2).eval()
    rows = [{"prompt": p, "reference": " a b"} for p in ("a b", "c", "d a c", "b")] * 8
    heldout = [{"prompt": p, "chosen": " a b", "rejected": " c"} for p in ("a b", "c", "d a c", "b")] * 4

    class Longer:
        def compare(self, prompts, samples, references):
            return [float(len(s.split()) > len(r.split())) for s, r in zip(samples, references)]

    def evaluator(loss, params):
        return Evaluator(ref_model=ref, tokenizer=tok, judge=Longer(), eval_rows=rows, heldout_rows=heldout,
                         loss_name=loss, loss_params=params, max_new_tokens=6, temperature=1.0, batch_size=64, seed=0)

    return SimpleNamespace(tok=tok, ref=ref, policy=policy, evaluator=evaluator)


def test_reward_accuracy_of_the_sft_model_is_one_half_for_reference_based_losses(tiny):
    """Issue 19, case 8: at step 0 every implicit reward of a reference-based loss is 0: ties,
    counted as wrong (accuracy 0.0) before."""
    for loss in ("dpo", "ipo", "slic"):
        row = tiny.evaluator(loss, {"beta": 0.1}).evaluate(tiny.ref, step=0)
        assert row["reward_accuracy"] == 0.5, loss
        assert row["length_slope"] == 0.0 and math.isnan(row["length_r2"])  # every reward is 0


def test_length_r2_regresses_the_algorithms_own_implicit_reward(tiny):
    """Issue 19, case 5: length R^2 used beta log pi/pi_ref for every algorithm."""
    params = {"beta": 2.0, "alpha": 0.5, "gamma": 0.2}
    ev = tiny.evaluator("alphapo", params)
    row = ev.evaluate(tiny.policy, step=3)
    est = ev.kl(tiny.policy, seed=ev.seed + 3)  # the same samples (seeded)
    eos = tiny.tok.eos_token_id
    lengths = [len(r) - (1 if r and r[-1] == eos else 0) for r in est["responses"]]
    m = est["policy_logps"].double() / torch.tensor([len(r) for r in est["responses"]], dtype=torch.float64)
    reward = (2.0 / 0.5) * (1 - torch.exp(-0.5 * m))
    slope, r2 = least_squares([float(x) for x in lengths], reward.tolist())
    assert row["length_slope"] == pytest.approx(slope, rel=1e-4) and row["length_r2"] == pytest.approx(r2, rel=1e-4)
    dpo_style = least_squares([float(x) for x in lengths], (2.0 * (est["policy_logps"] - est["ref_logps"])).tolist())
    assert row["length_r2"] != pytest.approx(dpo_style[1], rel=1e-3)


def _hand_made_samples(policy_logps, ref_logps) -> dict:
    """Four samples of 2, 3, 4 and 5 tokens without EOS (token id 9), their summed log-probs."""
    return {"responses": [[9] * n for n in (2, 3, 4, 5)], "policy_logps": torch.tensor(policy_logps, dtype=torch.float64),
            "ref_logps": torch.tensor(ref_logps, dtype=torch.float64), "kl_mc": 0.1, "kl_mc_se": 0.01,
            "kl_exact_token": 0.1, "kl_exact_token_se": 0.01}


def test_length_r2_log_ratio_is_the_r2_of_the_policys_part_of_rdpos_reward():
    """R-DPO's length_r2 regresses beta log pi/pi_ref + a|y|, which the fixed a|y| alone makes ~1;
    length_r2_log_ratio regresses beta log pi/pi_ref only. By hand: lengths x = 2, 3, 4, 5 and
    log-ratios y = 1, 0, 2, 3: Sxx = 5, Syy = 5, Sxy = 4, so R^2 = 16/25 = 0.64."""
    from alignsweep.evaluate.metrics import sample_metrics

    est = _hand_made_samples([-4.0, -6.0, -3.0, -2.0], [-5.0, -6.0, -5.0, -5.0])  # log-ratios 1, 0, 2, 3
    common = {"eos_id": 0, "kl_estimator": "mc"}
    rdpo, _ = sample_metrics(est, [1.0] * 4, loss_name="rdpo", loss_params={"beta": 0.1, "length_coef": 1.0}, **common)
    assert rdpo["length_r2_log_ratio"] == pytest.approx(0.64, abs=1e-12)
    # its own reward 0.1 y + |y| = 2.1, 3.0, 4.2, 5.3: R^2 near 1 by construction
    assert rdpo["length_r2"] > 0.99
    dpo, _ = sample_metrics(est, [1.0] * 4, loss_name="dpo", loss_params={"beta": 0.1}, **common)
    assert dpo["length_r2"] == pytest.approx(0.64, abs=1e-12) and dpo["length_r2_log_ratio"] == pytest.approx(dpo["length_r2"], abs=1e-12)
    # the reference-free losses get the log-ratio to the SFT model too; step 0 (policy = reference): NaN
    simpo, _ = sample_metrics(est, [1.0] * 4, loss_name="simpo", loss_params={"beta": 2.0, "gamma": 0.2}, **common)
    assert simpo["length_r2_log_ratio"] == pytest.approx(0.64, abs=1e-12)
    step0, _ = sample_metrics(_hand_made_samples([-4.0, -6.0, -3.0, -2.0], [-4.0, -6.0, -3.0, -2.0]), [1.0] * 4,
                              loss_name="rdpo", loss_params={"beta": 0.1, "length_coef": 1.0}, **common)
    assert math.isnan(step0["length_r2_log_ratio"]) and step0["length_r2"] == pytest.approx(1.0)


def test_the_tree_mdp_counts_ties_half_too():
    """The same kind in the Tree MDP toy: at step 0 pi = pi_ref, every pair a tie."""
    from alignsweep.config.schema import TreeMDPConfig
    from alignsweep.toys import tree_mdp as T

    cfg = OmegaConf.structured(TreeMDPConfig)
    tree = T.build_tree(cfg.depth, cfg.actions)
    data = T.make_data(tree, cfg)
    result = T.train(tree, data, T.reference_logits(tree, cfg), algo="dpo", loss_params={"beta": 0.1},
                     steps=2, lr=cfg.lr, log_every=1, kl_budget=None)
    assert result.rows[0]["step"] == 0 and result.rows[0]["reward_accuracy"] == 0.5
