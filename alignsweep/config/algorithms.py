"""The algorithms alignsweep trains (one `conf/algo/NAME.yaml` each) and the knobs only some of
them read. Torch-free: checked when a job is composed (`alignsweep.config.resolve`)."""

from __future__ import annotations

from typing import Any

from alignsweep.errors import ConfigError
# declared once, in alignsweep.train.loss_registry (torch-free); re-exported for the checks
from alignsweep.train.loss_registry import ALGO_KNOBS, ALGORITHMS, is_reference_free  # noqa: F401


def refuse_foreign_knobs(cfg: Any) -> None:
    """`algo.KEY` set for an algorithm whose loss never reads it (ALGO_KNOBS) would train the same
    job under another label; exo's eps must be > 0 (its loss takes log eps)."""
    name = cfg.algo.name
    given = cfg.algo.get("reference_free")
    if given is not None and bool(given) != is_reference_free(name):
        reads = "never reads" if is_reference_free(name) else "reads"
        raise ConfigError(
            f"algo.reference_free: {name}'s loss {reads} the reference model, so algo.reference_free is "
            f"{is_reference_free(name)} for it, got {given!r}; it is a property of the loss (declared in "
            "alignsweep/train/loss_registry.py), not a setting: remove `algo.reference_free=`"
        )
    for key, owners in ALGO_KNOBS.items():
        value = cfg.algo.get(key)
        if value not in (None, False) and name not in owners:
            verb = "does" if len(owners) == 1 else "do"
            raise ConfigError(
                f"algo.{key}: algo={name} has no {key} parameter (only {', '.join(owners)} {verb}), got "
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
