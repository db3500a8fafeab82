"""The algorithms alignsweep trains (one `conf/algo/NAME.yaml` each) and the knobs only some of
them read. Torch-free: checked when a job is composed (`alignsweep.config.resolve`)."""

from __future__ import annotations

from typing import Any

from alignsweep.errors import ConfigError

ALGORITHMS = (
    "dpo", "ipo", "ipo_daa", "slic", "simpo", "alphapo", "rdpo", "cdpo", "robust_dpo", "exo", "nca", "bco",
    "sppo_hard", "apo_zero", "apo_down", "discopop", "dpo_norm", "aot", "aot_unpaired", "orpo", "kto",
)
# an algorithm's own knobs (`algo.KEY`, in the algorithms' conf/algo files): any other algorithm refuses them
ALGO_KNOBS = {
    "label_smoothing": ("cdpo", "robust_dpo", "exo", "aot", "aot_unpaired"),
    "discopop_tau": ("discopop",),
    "length_coef": ("rdpo",),
    "length_normalized": ("ipo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
}


def refuse_foreign_knobs(cfg: Any) -> None:
    """`algo.KEY` set for an algorithm whose loss never reads it (ALGO_KNOBS) would train the same
    job under another label; exo's eps must be > 0 (its loss takes log eps)."""
    name = cfg.algo.name
    for key, owners in ALGO_KNOBS.items():
        value = cfg.algo.get(key)
        if value not in (None, False) and name not in owners:
            raise ConfigError(
                f"algo.{key}: algo={name} has no {key} parameter (only {', '.join(owners)} do), got "
                f"algo.{key}={value!r}; remove `algo.{key}=` or choose one of those algorithms"
            )
    if name == "exo" and not (cfg.algo.get("label_smoothing") or 0) > 0:
        raise ConfigError(
            f"algo.label_smoothing: exo takes log(eps), so eps must be > 0 (the paper recommends 1e-3), got "
            f"{cfg.algo.get('label_smoothing')!r}; e.g. `algo.label_smoothing=0.001`"
        )
    if name == "kto":
        for key in ("desirable_weight", "undesirable_weight"):
            if cfg.algo.get(key) is None:
                raise ConfigError(f"algo.{key}: kto needs a weight > 0 (TRL's default 1.0); e.g. `algo.{key}=1.0`")
        if cfg.model.per_device_batch < 2:
            raise ConfigError(
                f"model.per_device_batch: kto estimates its reference point from mismatched pairs within a "
                f"micro-batch, so it needs at least 2 pairs per device (as TRL's KTOTrainer), got "
                f"{cfg.model.per_device_batch}; e.g. `model.per_device_batch=2`"
            )
    if name == "discopop" and cfg.algo.get("discopop_tau") is None:
        raise ConfigError("algo.discopop_tau: discopop needs tau > 0 (the paper's 0.05); e.g. `algo.discopop_tau=0.05`")
