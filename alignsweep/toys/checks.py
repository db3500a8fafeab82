"""Cheap checks of a Tree MDP job (data=tree_mdp, a tree policy model), for the configuration
layer and the dry run: no torch, no numpy."""

from __future__ import annotations

import math
from typing import Any

from alignsweep.errors import ConfigError

# model.tree_policy: how a Tree MDP policy computes its logits (alignsweep.toys.tree_mdp.TreePolicy)
TREE_POLICIES = {"tabular": "tabular", "depth_shared": "depth-shared", "mlp": "tree MLP"}


def check_tree_job(cfg: Any, tree: Any) -> None:
    """The Tree MDP toy (data=tree_mdp) is trained only by a tree policy (model.tree_policy set:
    model=tabular, tree_mlp or tree_depth_shared), and a tree policy has nothing else to train on;
    its gold reward is the only judge."""
    kind = cfg.model.tree_policy
    if tree is None:
        raise ConfigError(
            f"model: model={cfg.model.name} is a {TREE_POLICIES.get(kind, kind)} policy (model.tree_policy={kind}), "
            f"which only data=tree_mdp can train, got data={cfg.data.name}; use data=tree_mdp or another model"
        )
    if kind is None:
        raise ConfigError(
            f"data: data={cfg.data.name} (the Tree MDP toy) is trained by model=tabular, tree_mlp or "
            f"tree_depth_shared (a model with model.tree_policy set), got model={cfg.model.name}"
        )
    if kind not in TREE_POLICIES:
        raise ConfigError(f"model.tree_policy: expected one of {', '.join(TREE_POLICIES)}, got {kind!r}")
    net = cfg.model.tree_net
    if kind == "mlp" and (net.hidden < 1 or net.activation not in ("tanh", "relu") or net.init_scale < 0):
        raise ConfigError(
            f"model.tree_net: expected hidden >= 1, activation tanh or relu, init_scale >= 0, got hidden={net.hidden!r}, "
            f"activation={net.activation!r}, init_scale={net.init_scale!r}"
        )
    if cfg.algo.name == "kto":
        raise ConfigError(
            "algo: kto's reference point needs mismatched (prompt, completion) pairs, and the Tree MDP has one "
            "start state (no prompts to mismatch); train kto on a preference task (e.g. data=embedded)"
        )
    if cfg.judge.name != "gold":
        raise ConfigError(f"judge: data={cfg.data.name} is judged exactly by its own gold reward; use judge=gold")
    if cfg.model.dtype not in ("float64", "float32"):
        raise ConfigError(f"model.dtype: a tree policy computes in float64 or float32, got {cfg.model.dtype!r}")
    checks = [
        ("depth", tree.depth >= 1, ">= 1"),
        ("actions", tree.actions >= 2, ">= 2"),
        ("pairs", tree.pairs >= 1, ">= 1"),
        ("steps", tree.steps >= 1, ">= 1"),
        ("log_every", tree.log_every >= 1, ">= 1"),
        ("lr", tree.lr > 0, "> 0"),
        ("label_temperature", tree.label_temperature >= 0, ">= 0"),
        ("reference_scale", tree.reference_scale >= 0, ">= 0"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"data.tree.{key}: must be {what}, got {getattr(tree, key)!r}")
    if tree.depth * math.log(tree.actions) > math.log(1_000_000):
        raise ConfigError(
            f"data.tree: actions**depth = {tree.actions}**{tree.depth} trajectories is too many to enumerate "
            "(at most 1,000,000)"
        )
    n_leaves = tree.actions**tree.depth
    if tree.leaves is not None:
        leaves = list(tree.leaves)
        bad = [leaf for leaf in leaves if not 0 <= leaf < n_leaves]
        if bad or len(set(leaves)) != len(leaves) or len(leaves) < 2:
            raise ConfigError(
                f"data.tree.leaves: expected at least two distinct leaf indices in [0, {n_leaves}), got {leaves}"
            )
    elif not 2 <= tree.n_leaves <= n_leaves:
        raise ConfigError(f"data.tree.n_leaves: must be in [2, {n_leaves}] (actions**depth), got {tree.n_leaves}")
    if tree.reference not in ("uniform", "random"):
        raise ConfigError(f"data.tree.reference: expected uniform or random, got {tree.reference!r}")
    if tree.optimizer not in ("adam", "sgd"):
        raise ConfigError(f"data.tree.optimizer: expected adam or sgd, got {tree.optimizer!r}")
