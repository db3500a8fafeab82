"""The Tree MDP toy (data=tree_mdp; model=tabular, tree_mlp, tree_depth_shared): exact enumeration,
exact KL, gradients through daa_loss, what DPO does to in- and out-of-distribution mass with a
tabular and with a shared (MLP) policy, and the experiment end to end."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from alignsweep.toys import tree_mdp as T
from alignsweep.train.losses import daa_loss
from alignsweep.config.schema import TreeMDPConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def tree_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(TreeMDPConfig), overrides)


def random_logits(tree: T.Tree, seed: int, scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.normal(scale=scale, size=(tree.n_states, tree.actions)), dtype=torch.float64)


def test_leaves_are_action_sequences_and_states_are_prefixes():
    tree = T.build_tree(3, 3)
    assert (tree.n_leaves, tree.n_states) == (27, 13)
    for leaf, actions in enumerate(itertools.product(range(3), repeat=3)):
        assert tuple(tree.moves[leaf]) == actions
    assert (tree.states[:, 0] == 0).all()  # every trajectory starts at the root
    prefixes = {}
    for leaf in range(27):
        for t in range(3):
            prefixes.setdefault(int(tree.states[leaf, t]), set()).add(tuple(tree.moves[leaf, :t]))
    assert sorted(prefixes) == list(range(13)) and all(len(p) == 1 for p in prefixes.values())


def test_pairs_use_only_the_given_leaves_and_the_higher_gold_reward_is_chosen():
    tree = T.build_tree(3, 3)
    data = T.make_data(tree, tree_cfg(leaves=[0, 13, 26], pairs=20))
    assert set(data.in_distribution) <= {0, 13, 26} and len(data.chosen) == 20
    assert (data.reward[data.chosen] > data.reward[data.rejected]).all()
    noisy = T.make_data(tree, tree_cfg(leaves=[0, 13, 26], pairs=200, label_temperature=1.0))
    assert 0.5 < (noisy.reward[noisy.chosen] > noisy.reward[noisy.rejected]).mean() < 1.0  # Bradley-Terry


@pytest.mark.parametrize("depth,actions", [(1, 3), (3, 3), (4, 2), (2, 5)])
def test_trajectory_probabilities_sum_to_one(depth, actions):
    tree = T.build_tree(depth, actions)
    logp = T.trajectory_logps(random_logits(tree, seed=depth * 10 + actions, scale=2.0), tree)
    assert logp.shape == (actions**depth,)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)


def brute_force(logits: np.ndarray, depth: int, actions: int) -> dict:
    """log pi of every action sequence by walking the tree, plain Python."""
    out = {}

    def walk(state: int, prefix: tuple, logp: float):
        if len(prefix) == depth:
            out[prefix] = logp
            return
        row = logits[state]
        norm = math.log(sum(math.exp(v) for v in row))
        for a in range(actions):
            child = state * actions + 1 + a  # breadth-first numbering of a complete tree
            walk(child, prefix + (a,), logp + row[a] - norm)

    walk(0, (), 0.0)
    return out


def test_exact_kl_and_masses_equal_a_brute_force_walk_of_the_tree():
    tree = T.build_tree(3, 3)
    pol, ref = random_logits(tree, 1, 1.5), random_logits(tree, 2, 1.0)
    cfg = tree_cfg()
    data = T.make_data(tree, cfg)
    metrics = T.exact_metrics(T.trajectory_logps(pol, tree).numpy(), T.trajectory_logps(ref, tree).numpy(), data)
    p, q = brute_force(pol.numpy(), 3, 3), brute_force(ref.numpy(), 3, 3)
    kl = sum(math.exp(p[y]) * (p[y] - q[y]) for y in p)
    kl_ref = sum(math.exp(q[y]) * (q[y] - p[y]) for y in p)
    ids = {tuple(tree.moves[leaf]) for leaf in data.in_distribution}
    assert metrics["kl"] == pytest.approx(kl, rel=1e-12)
    assert metrics["kl_ref_pi"] == pytest.approx(kl_ref, rel=1e-12)
    assert metrics["id_mass"] == pytest.approx(sum(math.exp(p[y]) for y in ids), rel=1e-12)
    assert metrics["id_mass"] + metrics["ood_mass"] == pytest.approx(1.0, abs=1e-12)
    chosen = [p[tuple(tree.moves[y])] - q[tuple(tree.moves[y])] for y in data.chosen]
    assert metrics["chosen_logratio"] == pytest.approx(np.mean(chosen), rel=1e-12)


def test_exact_win_rate_equals_the_pairwise_sum_ties_counting_half():
    rng = np.random.default_rng(0)
    reward = rng.integers(0, 4, size=27).astype(float)  # many ties
    p, q = rng.dirichlet(np.ones(27)), rng.dirichlet(np.ones(27))
    pairwise = sum(p[i] * q[j] * (1.0 if reward[i] > reward[j] else 0.5 if reward[i] == reward[j] else 0.0)
                   for i in range(27) for j in range(27))
    assert T.win_rate(p, q, reward) == pytest.approx(pairwise, rel=1e-12)
    assert T.win_rate(q, q, rng.normal(size=27)) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("algo,beta", [("dpo", 0.1), ("dpo", 1.0), ("ipo", 0.1), ("slic", 0.1), ("slic", 1.0)])
def test_gradient_of_the_tabular_policy_matches_finite_differences(algo, beta):
    tree = T.build_tree(3, 3)
    data = T.make_data(tree, tree_cfg())
    ref = random_logits(tree, 3, 0.5)
    ref_logp = T.trajectory_logps(ref, tree)
    lengths = torch.full((len(data.chosen),), 3)

    def loss_of(logits, check_kink=False):
        logp = T.trajectory_logps(logits, tree)
        losses, chosen, rejected = daa_loss(
            algo, policy_chosen_logps=logp[data.chosen], policy_rejected_logps=logp[data.rejected],
            ref_chosen_logps=ref_logp[data.chosen], ref_rejected_logps=ref_logp[data.rejected],
            chosen_lengths=lengths, rejected_lengths=lengths, beta=beta,
        )
        if check_kink and algo == "slic":  # the hinge has no derivative at its kink: stay away from it
            assert ((1 - (chosen - rejected)).abs() > 1e-3).all()
        return losses.mean()

    point = (ref + random_logits(tree, 4, 0.5)).requires_grad_(True)
    loss_of(point, check_kink=True).backward()
    numeric = torch.zeros_like(point)
    eps = 1e-6
    with torch.no_grad():
        for s, a in itertools.product(range(tree.n_states), range(tree.actions)):
            up, down = point.detach().clone(), point.detach().clone()
            up[s, a] += eps
            down[s, a] -= eps
            numeric[s, a] = (loss_of(up) - loss_of(down)) / (2 * eps)
    assert point.grad.abs().max() > 1e-3  # not a trivial zero
    torch.testing.assert_close(point.grad, numeric, rtol=1e-6, atol=1e-8)


def test_dpo_on_the_tabular_tree_moves_mass_into_the_data_not_out_of_it():
    """What the default toy really does (seed 0, DPO, beta 0.1, 300 Adam steps): the opposite of
    the paper's OOD finding for mass, the same for the chosen log-ratio.

    6 of 27 trajectories are in the data (uniform reference: ID mass 6/27). The tabular policy
    piles the mass onto the covered trajectory with the best gold reward (chosen in all 3 of its
    pairs), which is in distribution, so ID mass rises to about 0.98; the chosen log-ratio rises
    first, then falls below zero as the other chosen trajectories lose mass to that one, and it
    ends between the rejected log-ratio and zero."""
    cfg = tree_cfg()
    tree = T.build_tree(cfg.depth, cfg.actions)
    data = T.make_data(tree, cfg)
    result = T.train(tree, data, T.reference_logits(tree, cfg), algo="dpo", loss_params={"beta": 0.1},
                     steps=cfg.steps, lr=cfg.lr, optimizer=cfg.optimizer, log_every=cfg.log_every)
    rows = pd.DataFrame(result.rows)
    first, last = rows.iloc[0], rows.iloc[-1]
    assert len(rows) == 31 and result.state == "completed" and last["step"] == 300
    assert len(data.in_distribution) == 6
    assert first["id_mass"] == pytest.approx(6 / 27, abs=1e-12)
    assert last["id_mass"] == pytest.approx(0.984, abs=0.01)
    assert last["ood_mass"] == pytest.approx(1 - last["id_mass"], abs=1e-12) and last["ood_mass"] < 0.03
    assert rows["ood_mass"].is_monotonic_decreasing
    # where the mass went: the covered trajectory with the highest gold reward
    best = max(data.in_distribution, key=lambda leaf: data.reward[leaf])
    final_logp = T.trajectory_logps(result.final_logits, tree)
    assert final_logp[best].exp().item() > 0.9
    # the chosen log-ratio: up first, then below zero (the paper's "chosen likelihood falls")
    assert rows["chosen_logratio"].max() > 0.9
    assert last["chosen_logratio"] == pytest.approx(-5.35, abs=0.5)
    assert last["rejected_logratio"] < last["chosen_logratio"] < 0
    assert last["kl"] == pytest.approx(2.96, abs=0.1) and last["kl_ref_pi"] > last["kl"]
    assert last["train_loss"] < first["train_loss"] == pytest.approx(math.log(2))


def test_mlp_state_features_tell_every_state_apart_and_encode_its_depth():
    tree = T.build_tree(3, 3)
    x = T.state_features(tree)
    assert x.shape == (13, 3 * 3 + 3) and len({tuple(row) for row in x}) == 13
    assert (x[:, 9:].argmax(axis=1) == T.state_depths(tree)).all() and (x[:, 9:].sum(axis=1) == 1).all()
    assert (x[:, :9].sum(axis=1) == T.state_depths(tree)).all()  # one action one-hot per earlier position


def perturbed_policy(kind: str, tree: T.Tree, ref: np.ndarray, seed: int, **args) -> T.TreePolicy:
    policy = T.TreePolicy(kind, tree, ref, seed=seed, **args)
    rng = np.random.default_rng(seed + 100)
    with torch.no_grad():
        for param in policy.params:
            param += torch.tensor(rng.normal(scale=0.7, size=tuple(param.shape)))
    return policy


@pytest.mark.parametrize("kind", ["tabular", "depth_shared", "mlp"])
@pytest.mark.parametrize("reference", ["uniform", "random"])
def test_tree_policies_start_exactly_at_pi_ref_and_their_probabilities_sum_to_one(kind, reference):
    for depth, actions in [(3, 3), (4, 2), (2, 5)]:
        tree = T.build_tree(depth, actions)
        ref = T.reference_logits(tree, tree_cfg(reference=reference, seed=depth))
        start = T.TreePolicy(kind, tree, ref, seed=7)
        ref_logp = T.trajectory_logps(torch.tensor(ref), tree)
        assert torch.equal(T.trajectory_logps(start.logits(), tree), ref_logp)  # pi_0 = pi_ref, bit for bit
        moved = T.trajectory_logps(perturbed_policy(kind, tree, ref, seed=3).logits(), tree)
        assert moved.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (moved - ref_logp).abs().max() > 0.1  # the parameters do move the policy


def test_mlp_policy_shares_its_parameters_across_states():
    """The point of model=tree_mlp: a gradient step for one trajectory moves the logits of states
    off its path too (the tabular policy moves only the states on it)."""
    tree = T.build_tree(3, 3)
    ref = T.reference_logits(tree, tree_cfg())
    leaf = 0  # path: states 0, 1, 4
    for kind, off_path_moves in [("tabular", False), ("mlp", True)]:
        policy = perturbed_policy(kind, tree, ref, seed=1)
        T.trajectory_logps(policy.logits(), tree)[leaf].backward()
        with torch.no_grad():
            before = policy.logits().clone()
            for param in policy.params:
                param += 0.1 * param.grad
            change = (policy.logits() - before).abs().sum(dim=1)
        off_path = [s for s in range(tree.n_states) if s not in (0, 1, 4)]
        assert (change[off_path].max() > 1e-3) == off_path_moves


@pytest.mark.parametrize("algo,beta", [("dpo", 0.1), ("ipo", 1.0), ("slic", 0.1)])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradient_of_the_mlp_policy_matches_finite_differences(algo, beta, activation):
    tree = T.build_tree(3, 3)
    data = T.make_data(tree, tree_cfg())
    ref = T.reference_logits(tree, tree_cfg(reference="random"))
    policy = perturbed_policy("mlp", tree, ref, seed=5, hidden=8, activation=activation)
    ref_logp = T.trajectory_logps(torch.tensor(ref), tree)
    lengths = torch.full((len(data.chosen),), 3)

    def loss_of():
        logp = T.trajectory_logps(policy.logits(), tree)
        losses, chosen, rejected = daa_loss(
            algo, policy_chosen_logps=logp[data.chosen], policy_rejected_logps=logp[data.rejected],
            ref_chosen_logps=ref_logp[data.chosen], ref_rejected_logps=ref_logp[data.rejected],
            chosen_lengths=lengths, rejected_lengths=lengths, beta=beta,
        )
        if algo == "slic":  # the hinge has no derivative at its kink: stay away from it
            assert ((1 - (chosen - rejected)).abs() > 1e-3).all()
        return losses.mean()

    loss_of().backward()
    eps = 1e-6
    for param in policy.params:
        numeric = torch.zeros_like(param)
        with torch.no_grad():
            for index in itertools.product(*(range(n) for n in param.shape)):
                keep = param[index].item()
                param[index] = keep + eps
                up = loss_of()
                param[index] = keep - eps
                down = loss_of()
                param[index] = keep
                numeric[index] = (up - down) / (2 * eps)
        torch.testing.assert_close(param.grad, numeric, rtol=1e-5, atol=1e-8)
    assert max(param.grad.abs().max() for param in policy.params) > 1e-3  # not a trivial zero


def test_dpo_on_the_mlp_tree_moves_mass_onto_one_out_of_distribution_trajectory_at_beta_1():
    """What model=tree_mlp really does with the default toy (data seed 0, network seed 0, DPO, 300
    Adam steps at lr 0.05). Unlike the tabular policy:

    - beta 1: OOD mass first rises above its start (0.778 -> about 0.82 near step 60), and at the
      end 0.73 of all mass sits on ONE out-of-distribution trajectory, leaf 18 = actions (2, 0, 0),
      which shares its first action with the best covered leaf 24 = (2, 2, 0); in aggregate OOD mass
      ends a little below its start (about 0.73), because the 26 other OOD leaves lost theirs.
    - the chosen log-ratio never rises above zero (the tabular policy's first reaches about +1): the
      chosen trajectories lose likelihood from the first step, as the paper reports.
    - beta 0.1: like the tabular policy, all the mass goes to the best covered leaf (ID mass -> 1)."""
    cfg = tree_cfg()
    tree = T.build_tree(cfg.depth, cfg.actions)
    data = T.make_data(tree, cfg)
    ref = T.reference_logits(tree, cfg)
    result = T.train(tree, data, ref, algo="dpo", loss_params={"beta": 1.0}, steps=cfg.steps, lr=cfg.lr,
                     optimizer=cfg.optimizer, log_every=cfg.log_every, policy="mlp", policy_args={"seed": 0})
    rows = pd.DataFrame(result.rows)
    first, last = rows.iloc[0], rows.iloc[-1]
    assert len(rows) == 31 and result.state == "completed"
    assert first["ood_mass"] == pytest.approx(21 / 27, abs=1e-12) and first["kl"] == 0.0
    peak = rows.loc[rows["ood_mass"].idxmax()]
    assert peak["ood_mass"] == pytest.approx(0.817, abs=0.01) and 30 <= peak["step"] <= 90
    assert last["ood_mass"] == pytest.approx(0.733, abs=0.01)
    final = T.trajectory_logps(result.final_logits, tree).exp().numpy()
    assert 18 not in data.in_distribution and final[18] == pytest.approx(0.732, abs=0.01)
    best = max(data.in_distribution, key=lambda leaf: data.reward[leaf])
    assert best == 24 and final[24] == pytest.approx(0.267, abs=0.01)
    assert rows["chosen_logratio"].iloc[1:].max() < 0 and last["chosen_logratio"] == pytest.approx(-12.2, abs=0.5)
    assert last["rejected_logratio"] < last["chosen_logratio"]

    low = T.train(tree, data, ref, algo="dpo", loss_params={"beta": 0.1}, steps=cfg.steps, lr=cfg.lr,
                  log_every=cfg.log_every, policy="mlp", policy_args={"seed": 0})
    assert low.rows[-1]["id_mass"] > 0.999
    assert T.trajectory_logps(low.final_logits, tree)[best].exp().item() > 0.999


def test_kl_budget_stops_training_at_the_first_step_over_it():
    cfg = tree_cfg()
    tree = T.build_tree(cfg.depth, cfg.actions)
    data = T.make_data(tree, cfg)
    result = T.train(tree, data, T.reference_logits(tree, cfg), algo="dpo", loss_params={"beta": 0.1},
                     steps=cfg.steps, lr=cfg.lr, log_every=cfg.log_every, kl_budget=0.5)
    last = result.rows[-1]
    assert result.stop_reason == "kl_budget" and last["stop_reason"] == "kl_budget"
    assert last["kl"] > 0.5 and all(r["kl"] <= 0.5 for r in result.rows[:-1])
    assert last["step"] % cfg.log_every != 0  # an extra row where it stopped
    assert last["step"] == result.last_step < cfg.steps


def test_dry_run_imports_no_torch_and_refuses_bad_combinations(cli):
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from alignsweep.config.schema import register\n"
        "from alignsweep.config.resolve import resolve_job\n"
        "register()\n"
        f"with initialize_config_dir(config_dir={str(CONF)!r}, version_base='1.3'):\n"
        "    job = resolve_job(compose(config_name='config', overrides=['experiment=tree_mdp']))\n"
        "assert (job.model, job.data) == ('tabular', 'tree_mdp'), job\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    dry = cli("-m", "experiment=tree_mdp", "dry_run=true").stdout
    assert sum(l.startswith("#") and "model=tabular data=tree_mdp" in l for l in dry.splitlines()) == 6
    assert sum(l.startswith("#") and "model=tree_mlp data=tree_mdp" in l for l in dry.splitlines()) == 6

    proc = cli("model=tabular", check=False)  # data=embedded by default
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: model: model=tabular is a tabular policy")
    assert "data=tree_mdp" in proc.stderr
    proc = cli("data=tree_mdp", check=False)  # model=embedded_tiny by default
    assert proc.returncode == 2 and "data: data=tree_mdp (the Tree MDP toy) is trained by model=tabular" in proc.stderr
    proc = cli("model=tree_mlp", check=False)
    assert proc.returncode == 2 and "model=tree_mlp is a tree MLP policy (model.tree_policy=mlp)" in proc.stderr
    proc = cli("data=tree_mdp", "model=tree_mlp", "model.tree_policy=conv", check=False)
    assert proc.returncode == 2 and "model.tree_policy: expected one of tabular, depth_shared, mlp" in proc.stderr
    proc = cli("data=tree_mdp", "model=tree_mlp", "model.tree_net.activation=gelu", check=False)
    assert proc.returncode == 2 and "model.tree_net: expected hidden >= 1, activation tanh or relu" in proc.stderr
    proc = cli("data=tree_mdp", "model=tabular", "data.tree.leaves=[3,3]", check=False)
    assert proc.returncode == 2 and "data.tree.leaves: expected at least two distinct leaf indices" in proc.stderr


@pytest.mark.slow
def test_tree_mdp_experiment_end_to_end(cli):
    """`python -m alignsweep -m experiment=tree_mdp`, then collect, status and a resubmission."""
    run = cli("-m", "experiment=tree_mdp", "paths.output_dir=out", "hydra.sweep.dir=sweep")
    assert "12 of 12 jobs completed, 0 failed" in run.stdout
    sweep = cli.cwd / "sweep"
    for path in sorted(sweep.glob("figures/tree_mdp_ood_mass.*")):
        path.unlink()  # the launcher collected already; collect again from the directory alone
    collected = cli("collect", str(sweep)).stdout
    assert "no parameter count recorded" not in collected  # Tree MDP policies have no size to regress on
    table = pd.read_csv(sweep / "results.csv")
    assert table.groupby("run").size().eq(31).all() and table["run"].nunique() == 12
    assert (table["status"] == "completed").all() and table["model"].isin(["tabular", "tree_mlp"]).all()
    assert set(zip(table["model"], table["algo"], table["beta"])) == {
        (m, a, b) for m in ("tabular", "tree_mlp") for a in ("dpo", "ipo", "slic") for b in (0.1, 1.0)}
    assert np.allclose(table["id_mass"] + table["ood_mass"], 1.0)
    start = table[table["step"] == 0]
    assert np.allclose(start["id_mass"], 6 / 27) and np.allclose(start["kl"], 0.0)
    for suffix in ("png", "svg"):
        assert (sweep / "figures" / f"tree_mdp_ood_mass.{suffix}").stat().st_size > 10_000
    assert (sweep / "figures" / "fig1_overoptimization.png").exists()
    end = table[table["step"] == 300].set_index(["model", "algo", "beta"])
    assert end.loc[("tabular", "dpo", 1.0), "ood_mass"] == pytest.approx(0.198, abs=0.01)
    assert end.loc[("tree_mlp", "dpo", 1.0), "ood_mass"] == pytest.approx(0.733, abs=0.01)
    assert not (sweep / "figures" / "fig2_length.png").exists()  # every trajectory is equally long
    status = cli("status", str(sweep)).stdout
    assert "total: 12 completed" in status and "300/300" in status
    job = json.loads((sweep / "0" / "status.json").read_text())
    assert job["state"] == "completed" and job["data"]["in_distribution"] == [9, 17, 22, 24, 25, 26]

    again = cli("-m", "experiment=tree_mdp", "paths.output_dir=out", "hydra.sweep.dir=sweep")
    assert again.stdout.count("already completed, skipped") == 12
    pd.testing.assert_frame_equal(table, pd.read_csv(sweep / "results.csv"))
