"""The Tree MDP toy of Rafailov et al. 2024: where does a DAA move the probability mass its data
does not pin down?

From every state `actions` actions lead deterministically to children; after `depth` actions the
leaf goes to an absorbing state with probability 1 (log-probability 0), so a trajectory is its
leaf, its actions are its tokens, and there are actions**depth of them: few enough to enumerate.
Leaf `i` is the trajectory whose actions are the base-`actions` digits of `i`, first action first.

The data: a gold reward drawn N(0, 1) per leaf; `pairs` preference pairs among a few covered leaves,
the higher reward chosen (or Bradley-Terry labels). The in-distribution (ID) trajectories are the
leaves that appear in the pairs; every other leaf is out of distribution (OOD).

The policy (`model.tree_policy`, see `TreePolicy`): model=tabular has one logit vector per internal
state; model=tree_depth_shared one per depth; model=tree_mlp computes them with a small network of
state features shared by all states (function approximation, as a language model has). Each starts
exactly at the reference (uniform, or a seeded random softmax) and is trained with full-batch
optimizer steps on `alignsweep.train.losses.daa_loss` with log-probabilities summed over the trajectory's
actions, exactly as the transformer jobs are.
Every logged quantity is exact, by enumeration: ID and OOD mass, KL(pi || pi_ref) and
KL(pi_ref || pi), the mean log-ratio log pi/pi_ref of chosen and rejected trajectories, the loss,
and the gold-reward win rate against pi_ref. Nothing is sampled after the data, so a job is
deterministic and takes seconds; a requeued job simply starts over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np


@dataclass(frozen=True)
class Tree:
    """The tree's trajectories as index arrays: trajectory `i` takes action `moves[i, t]` in state
    `states[i, t]` (states numbered breadth-first, the root 0)."""

    depth: int
    actions: int
    states: np.ndarray  # (n_leaves, depth)
    moves: np.ndarray  # (n_leaves, depth)

    @property
    def n_leaves(self) -> int:
        return self.actions**self.depth

    @property
    def n_states(self) -> int:
        """Internal states (the ones with a choice); leaves and the absorbing state have none."""
        return (self.actions**self.depth - 1) // (self.actions - 1)


def build_tree(depth: int, actions: int) -> Tree:
    leaves = np.arange(actions**depth)
    moves = np.stack([(leaves // actions ** (depth - 1 - t)) % actions for t in range(depth)], axis=1)
    # the state before action t: its depth-t prefix, after the (actions**t - 1)/(actions - 1) shallower states
    states = np.stack(
        [(actions**t - 1) // (actions - 1) + leaves // actions ** (depth - t) for t in range(depth)], axis=1
    )
    return Tree(depth, actions, states, moves)


@dataclass(frozen=True)
class PreferenceData:
    reward: np.ndarray  # gold reward of every leaf
    chosen: np.ndarray  # leaf of each pair's chosen trajectory
    rejected: np.ndarray  # leaf of each pair's rejected trajectory

    @property
    def in_distribution(self) -> np.ndarray:
        """The leaves that appear in the data (sorted): the ID trajectories."""
        return np.unique(np.concatenate([self.chosen, self.rejected]))


def make_data(tree: Tree, cfg: Any) -> PreferenceData:
    """Gold reward, covered leaves, pairs and labels, all from `cfg.seed` (a `TreeMDPConfig`)."""
    rng = np.random.default_rng(cfg.seed)
    reward = rng.normal(size=tree.n_leaves)
    if cfg.leaves is not None:
        covered = np.asarray(list(cfg.leaves))
    else:
        covered = rng.choice(tree.n_leaves, size=cfg.n_leaves, replace=False)
    chosen, rejected = [], []
    for _ in range(cfg.pairs):
        i, j = rng.choice(covered, size=2, replace=False)
        if cfg.label_temperature > 0:
            first_wins = rng.random() < 1.0 / (1.0 + np.exp(-(reward[i] - reward[j]) / cfg.label_temperature))
        else:
            first_wins = reward[i] > reward[j]
        chosen.append(i if first_wins else j)
        rejected.append(j if first_wins else i)
    return PreferenceData(reward, np.asarray(chosen), np.asarray(rejected))


def reference_logits(tree: Tree, cfg: Any) -> np.ndarray:
    """pi_ref's logits per internal state: zeros (uniform) or seeded normal ones with std
    `reference_scale` (their own random stream, so the data does not change with the reference)."""
    if cfg.reference == "uniform":
        return np.zeros((tree.n_states, tree.actions))
    rng = np.random.default_rng([cfg.seed, 1])
    return rng.normal(scale=cfg.reference_scale, size=(tree.n_states, tree.actions))


def state_features(tree: Tree) -> np.ndarray:
    """The input of model=tree_mlp at every internal state: one-hot of the action taken at each earlier
    position (zeros for positions not reached yet), then one-hot of the state's depth;
    shape (n_states, depth*actions + depth). Distinct for distinct states."""
    x = np.zeros((tree.n_states, tree.depth * tree.actions + tree.depth))
    for leaf in range(tree.n_leaves):
        for t in range(tree.depth):
            s = tree.states[leaf, t]
            x[s, [p * tree.actions + tree.moves[leaf, p] for p in range(t)]] = 1.0
            x[s, tree.depth * tree.actions + t] = 1.0
    return x


def state_depths(tree: Tree) -> np.ndarray:
    """The depth (actions taken so far) of every internal state."""
    depth = np.zeros(tree.n_states, dtype=np.int64)
    depth[tree.states] = np.arange(tree.depth)
    return depth


class TreePolicy:
    """The trained policy's logits per internal state, `ref_logits + delta(state)`, where `delta` is
    zero at initialisation, so pi_0 = pi_ref exactly whatever the parametrisation:

    - tabular: delta is a free (n_states, actions) table (each state its own logits);
    - depth_shared: delta is a (depth, actions) table, one row shared by the states of a depth;
    - mlp: delta(s) = W2 act(W1 x(s) + b1) + b2 with x = `state_features`, W1 ~ N(0, init_scale**2 /
      fan_in) from `seed`, b1 = 0, and W2 = b2 = 0 (so the hidden layer gets gradient from step 1 on).

    The reference logits stay fixed: with data.tree.reference=random the MLP learns a shared
    correction on top of a per-state reference, as a fine-tuned model does on top of its SFT start."""

    def __init__(self, kind: str, tree: Tree, ref_logits: np.ndarray, *, dtype: Any = None, seed: int = 0,
                 hidden: int = 32, activation: str = "tanh", init_scale: float = 1.0):
        import torch

        dtype = dtype or torch.float64
        self.kind, self.tree = kind, tree
        self.ref = torch.tensor(ref_logits, dtype=dtype)
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, requires_grad=True)  # noqa: E731
        if kind == "tabular":
            self.params = [zeros(tree.n_states, tree.actions)]
        elif kind == "depth_shared":
            self.depth_of = torch.as_tensor(state_depths(tree))
            self.params = [zeros(tree.depth, tree.actions)]
        elif kind == "mlp":
            self.x = torch.tensor(state_features(tree), dtype=dtype)
            rng = np.random.default_rng([seed, 2])  # its own stream: the data and the reference do not change
            w1 = rng.normal(scale=init_scale / np.sqrt(self.x.shape[1]), size=(self.x.shape[1], hidden))
            self.act = torch.tanh if activation == "tanh" else torch.relu
            self.params = [torch.tensor(w1, dtype=dtype, requires_grad=True), zeros(hidden),
                           zeros(hidden, tree.actions), zeros(tree.actions)]
        else:
            raise ValueError(f"unknown tree policy {kind!r}: tabular | depth_shared | mlp")

    def logits(self) -> Any:
        """(n_states, actions) logits of the current policy (a torch tensor with the graph)."""
        if self.kind == "tabular":
            return self.ref + self.params[0]
        if self.kind == "depth_shared":
            return self.ref + self.params[0][self.depth_of]
        w1, b1, w2, b2 = self.params
        return self.ref + self.act(self.x @ w1 + b1) @ w2 + b2


def trajectory_logps(logits: Any, tree: Tree) -> Any:
    """log pi(y) of every trajectory y: its actions' log-probabilities, summed (a torch tensor)."""
    import torch

    states, moves = torch.as_tensor(tree.states), torch.as_tensor(tree.moves)
    return torch.log_softmax(logits, dim=-1)[states, moves].sum(dim=-1)


def win_rate(policy_probs: np.ndarray, ref_probs: np.ndarray, reward: np.ndarray) -> float:
    """P(r(y) > r(y')) + P(r(y) = r(y'))/2 for y ~ pi, y' ~ pi_ref, exactly (O(n log n))."""
    order = np.argsort(reward, kind="stable")
    sorted_reward = reward[order]
    below = np.concatenate([[0.0], np.cumsum(ref_probs[order])])
    lo = np.searchsorted(sorted_reward, reward, side="left")
    hi = np.searchsorted(sorted_reward, reward, side="right")
    return float(np.sum(policy_probs * (below[lo] + 0.5 * (below[hi] - below[lo]))))


def exact_metrics(logp: np.ndarray, ref_logp: np.ndarray, data: PreferenceData) -> dict:
    """Every quantity of a metric row that depends on the policy, by enumeration of all leaves."""
    p, q = np.exp(logp), np.exp(ref_logp)
    ratio = logp - ref_logp
    mask = np.zeros(len(p), dtype=bool)
    mask[data.in_distribution] = True
    kl = float(np.sum(p * ratio))
    chosen_ratio, rejected_ratio = ratio[data.chosen], ratio[data.rejected]
    return {
        "id_mass": float(p[mask].sum()),
        "ood_mass": float(p[~mask].sum()),
        "kl": kl,
        "sqrt_kl": float(np.sqrt(max(kl, 0.0))),
        "kl_ref_pi": float(np.sum(q * -ratio)),
        "chosen_logratio": float(chosen_ratio.mean()),
        "rejected_logratio": float(rejected_ratio.mean()),
        "chosen_logp": float(logp[data.chosen].mean()),
        "rejected_logp": float(logp[data.rejected].mean()),
        # ties count 1/2, as alignsweep.train.losses.reward_accuracy (0.5 at step 0, where pi = pi_ref)
        "reward_accuracy": float(np.mean((chosen_ratio > rejected_ratio) + 0.5 * (chosen_ratio == rejected_ratio))),
        "gold_reward": float(np.sum(p * data.reward)),
        "win_rate": win_rate(p, q, data.reward),
        "win_rate_se": 0.0,  # exact: no sampling error
    }


@dataclass
class TrainResult:
    rows: list[dict]
    state: str  # completed | diverged
    stop_reason: str  # end_of_training | kl_budget | non_finite_loss
    last_step: int
    final_logits: Any


def train(
    tree: Tree,
    data: PreferenceData,
    ref_logits: np.ndarray,
    *,
    algo: str,
    loss_params: dict,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    log_every: int = 10,
    kl_budget: Optional[float] = None,
    dtype: str = "float64",
    on_row: Optional[Callable[[dict], None]] = None,
    policy: str = "tabular",
    policy_args: Optional[dict] = None,
) -> TrainResult:
    """Full-batch training of a `TreePolicy` of kind `policy` (its keyword arguments `policy_args`:
    seed, hidden, activation, init_scale) from pi_ref; a metric row at step 0, every
    `log_every` steps and at the end (or when KL(pi || pi_ref) first exceeds `kl_budget`).

    `train_loss` in a row is the full-batch loss of the policy the row describes (before the
    update of that step). Runs on one CPU thread: the tensors have a few dozen entries, and more
    threads only add synchronisation (20x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tree, data, ref_logits, algo=algo, loss_params=loss_params, steps=steps, lr=lr,
                      optimizer=optimizer, log_every=log_every, kl_budget=kl_budget, dtype=dtype, on_row=on_row,
                      policy=policy, policy_args=policy_args or {})
    finally:
        torch.set_num_threads(threads)


def _train(tree, data, ref_logits, *, algo, loss_params, steps, lr, optimizer, log_every, kl_budget, dtype,
           on_row, policy, policy_args) -> TrainResult:
    import torch

    from alignsweep.train.losses import daa_loss

    torch_dtype = getattr(torch, dtype)
    ref = torch.tensor(ref_logits, dtype=torch_dtype)
    net = TreePolicy(policy, tree, ref_logits, dtype=torch_dtype, **policy_args)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(net.params, lr=lr)
    ref_logp = trajectory_logps(ref, tree)
    ref_logp_np = ref_logp.double().numpy()
    chosen, rejected = torch.as_tensor(data.chosen), torch.as_tensor(data.rejected)
    lengths = torch.full((len(data.chosen),), tree.depth)
    rows: list[dict] = []
    state, stop_reason = "completed", "end_of_training"
    step = 0
    for step in range(steps + 1):
        logits = net.logits()
        logp = trajectory_logps(logits, tree)
        losses, _, _ = daa_loss(
            algo,
            policy_chosen_logps=logp[chosen],
            policy_rejected_logps=logp[rejected],
            ref_chosen_logps=ref_logp[chosen],
            ref_rejected_logps=ref_logp[rejected],
            chosen_lengths=lengths,
            rejected_lengths=lengths,
            **loss_params,
        )
        loss = losses.mean()
        if not torch.isfinite(loss):
            state, stop_reason = "diverged", "non_finite_loss"
            break
        logp_np = logp.detach().double().numpy()
        over = kl_budget is not None and float(np.sum(np.exp(logp_np) * (logp_np - ref_logp_np))) > kl_budget
        if step % log_every == 0 or step == steps or over:
            row = {
                "step": step,
                "epoch": float(step),  # every step sees every pair once
                "progress": step / steps,
                "checkpoint": len(rows),
                "train_loss": float(loss.detach()),
                **exact_metrics(logp_np, ref_logp_np, data),
            }
            if over:
                row["stop_reason"] = "kl_budget"
            rows.append(row)
            if on_row is not None:
                on_row(row)
        if over:
            stop_reason = "kl_budget"
            break
        if step == steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return TrainResult(rows, state, stop_reason, step, net.logits().detach())


def policy_args(cfg: Any) -> dict:
    """`TreePolicy`'s keyword arguments from a job's config: the network's shape from model.tree_net,
    its initialisation from the top-level `seed` (which changes nothing for the other policies)."""
    if cfg.model.tree_policy != "mlp":
        return {}
    net = cfg.model.tree_net
    return {"seed": int(cfg.seed), "hidden": int(net.hidden), "activation": net.activation,
            "init_scale": float(net.init_scale)}


def train_and_evaluate(cfg: Any, job: Any, run_dir: Path, tracker: Any, resume_from: Any = None) -> dict:
    """The worker's job for data=tree_mdp (`alignsweep.worker.job.run` calls it, through `alignsweep.worker.kinds`, in place of TRL
    training): metric rows to RUN_DIR/metrics.jsonl as they come, progress in status.json.

    `resume_from` is always None: the job writes no trainer checkpoints, and a requeued job starts
    over (the worker sets earlier rows aside), which costs seconds and gives the same rows."""
    from alignsweep.results import rundir
    from alignsweep.train.losses import loss_params

    tree_cfg = cfg.data.tree
    tree = build_tree(tree_cfg.depth, tree_cfg.actions)
    data = make_data(tree, tree_cfg)
    steps = int(tree_cfg.steps)
    logged = sorted({*range(0, steps + 1, tree_cfg.log_every), steps})
    rundir.write_status(
        run_dir,
        phase="train",
        step=0,
        total_steps=steps,
        checkpoint_steps=logged,
        checkpoints_done=0,
        data={
            "trajectories": tree.n_leaves,
            "pairs": len(data.chosen),
            "in_distribution": [int(leaf) for leaf in data.in_distribution],
        },
    )
    identity = {"algo": job.algo, "beta": job.beta, "alpha": job.alpha, "gamma": job.gamma, "model": job.model}
    last_status = [0.0]

    def on_row(row: dict) -> None:
        row.update(identity)
        rundir.append_metrics(run_dir, row)
        tracker.log(row, step=row["step"])
        now = time.time()
        if now - last_status[0] > 1.0 or row["step"] == steps:
            last_status[0] = now
            rundir.write_status(
                run_dir, step=row["step"], checkpoints_done=row["checkpoint"] + 1, last_win_rate=row["win_rate"]
            )

    result = train(
        tree,
        data,
        reference_logits(tree, tree_cfg),
        algo=job.algo,
        loss_params=loss_params(cfg, job),
        steps=steps,
        lr=float(tree_cfg.lr),
        optimizer=tree_cfg.optimizer,
        log_every=int(tree_cfg.log_every),
        kl_budget=job.kl_budget,
        dtype=cfg.model.dtype,
        on_row=on_row,
        policy=cfg.model.tree_policy,
        policy_args=policy_args(cfg),
    )
    return {"state": result.state, "phase": "done", "step": result.last_step, "stop_reason": result.stop_reason}
