"""The algorithms alignsweep trains (one `conf/algo/NAME.yaml` each) and the knobs only some of
them read. Torch-free: checked when a job is composed (`alignsweep.config.resolve`)."""

from __future__ import annotations

from typing import Any

from alignsweep.errors import ConfigError
# declared once, in alignsweep.train.loss_registry (torch-free); re-exported for the checks
from alignsweep.train.loss_registry import ALGO_KNOBS, ALGORITHMS, is_reference_free  # noqa: F401


def refuse_foreign_knobs(cfg: Any) -> None:
    """`algo.KEY` set for an algorithm whose loss never reads it (ALGO_KNOBS), or null for one that
    reads it, would train the same job under another label; `algo.reference_free` must be the
    loss's own; exo's eps must be > 0 (its loss takes log eps)."""
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
    for key, owners in ALGO_KNOBS.items():  # null would train the formula at 0 / False under another fingerprint
        if name in owners and cfg.algo.get(key) is None:
            default = _file_default(name, key)
            raise ConfigError(
                f"algo.{key}: {name} reads it, so it needs a value, got null"
                + (f"; its default is {default!r}: `algo.{key}={default}`" if default is not None else "")
            )
    if name == "exo" and not (cfg.algo.get("label_smoothing") or 0) > 0:
        raise ConfigError(
            f"algo.label_smoothing: exo takes log(eps), so eps must be > 0 (the paper recommends 1e-3), got "
            f"{cfg.algo.get('label_smoothing')!r}; e.g. `algo.label_smoothing=0.001`"
        )
    if name == "kto" and cfg.model.per_device_batch < 2:
        raise ConfigError(
            f"model.per_device_batch: kto estimates its reference point from mismatched pairs within a "
            f"micro-batch, so it needs at least 2 pairs per device (as TRL's KTOTrainer), got "
            f"{cfg.model.per_device_batch}; e.g. `model.per_device_batch=2`"
        )


def _file_default(name: str, key: str) -> Any:
    """`key`'s value in conf/algo/NAME.yaml (None when the file or the key is not there)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "algo" / f"{name}.yaml"
    return OmegaConf.load(path).get(key) if path.exists() else None
