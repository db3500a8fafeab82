"""The registry of task kinds a job can be: which function trains and evaluates it.

A kind maps to the dotted path of its `train_and_evaluate(cfg, job, run_dir, tracker, resume_from)`
function, imported when a job of that kind runs: the worker names the Tree MDP toy here instead
of importing it, and the toy imports only the library rooms below it (losses, run directory).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

TASK_KINDS: dict[str, str] = {
    # language-model preference optimisation through TRL (every data config but tree_mdp)
    "preference": "alignsweep.worker.pipeline:train_and_evaluate",
    # the Tree MDP toy of Rafailov et al. (data=tree_mdp): a tree policy, exact metrics, no TRL
    "tree_mdp": "alignsweep.toys.tree_mdp:train_and_evaluate",
}


def task_kind(cfg: Any) -> str:
    """The kind of task a job config describes: `tree_mdp` when `data.tree` is set, else `preference`."""
    return "tree_mdp" if getattr(cfg.data, "tree", None) is not None else "preference"


def task_runner(cfg: Any) -> Callable[..., dict]:
    """The `train_and_evaluate` function of the job's task kind (`TASK_KINDS`)."""
    module, _, name = TASK_KINDS[task_kind(cfg)].partition(":")
    return getattr(importlib.import_module(module), name)
