"""`python -m alignsweep --help` (and `alignsweep --help`): what a user can choose, one line a group.

Hydra's default help dumps the whole composed config (125 lines) under "`__main__` is powered by
Hydra" and lists internal groups (`model/family`). `conf/hydra/help/alignsweep.yaml` replaces it
with a template whose group list comes from the `alignsweep_groups` resolver below: the options
are read from `conf/` when the help is printed, so the list cannot drift from the files.
"""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"

# The groups a user picks from, in the order of conf/config.yaml's defaults list, with one line
# each. Internal groups (model/family: settings a model file inherits) are not offered.
GROUPS = {
    "algo": "the direct alignment loss",
    "lora": "LoRA adapters instead of full fine-tuning (model.lora; none = full)",
    "model": "policy and reference model (and the resources a job asks for)",
    "data": "the preference data",
    "judge": "who decides win rates",
    "logger": "experiment tracking",
    "recipe": "a published model/data/hyperparameter setting",
    "experiment": "a named sweep or paper preset",
    "hydra/launcher": "where the jobs run",
}


# Groups model files inherit from (`defaults: - family/pythia@_here_`), never chosen on the command line.
INTERNAL_GROUPS = ("model/family",)


def offered(completions: str) -> str:
    """Hydra's shell-completion answer (space-separated words) without the internal groups."""
    return " ".join(w for w in completions.split() if not w.startswith(INTERNAL_GROUPS))


def group_options(group: str) -> list[str]:
    """The options of config group `group` (its YAML files in conf/, sorted), subgroups excluded."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def groups_text() -> str:
    """One line per group: `  group=OPTION  what it is: option, option, ...`."""
    width = max(len(g) for g in GROUPS)
    return "\n".join(
        f"  {group:<{width}}  {about}: {', '.join(group_options(group))}" for group, about in GROUPS.items()
    )


def knobs_text() -> str:
    """The knobs only some losses read, with who reads them (`alignsweep.train.loss_registry.ALGO_KNOBS`)."""
    from alignsweep.train.loss_registry import ALGO_KNOBS

    width = max(len(k) for k in ALGO_KNOBS) + len("algo.")
    return "\n".join(f"  {'algo.' + knob:<{width}}  {', '.join(owners)}" for knob, owners in ALGO_KNOBS.items())


def register_help() -> None:
    """Register the `alignsweep_groups` and `alignsweep_knobs` resolvers the help template uses (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("alignsweep_groups", groups_text, replace=True)
    OmegaConf.register_new_resolver("alignsweep_knobs", knobs_text, replace=True)
