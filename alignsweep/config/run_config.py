"""A run directory's config file: the job's config resolved, written by whoever prepares the run
(a launcher, or `python -m alignsweep` for one job) and read back by the worker and the collector."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignsweep.results import rundir


def resolved_container(cfg: DictConfig) -> dict:
    """The job's config as plain data, every interpolation resolved (Hydra's own node dropped), with
    one value per concept: the resolved beta/alpha/gamma (`alignsweep.config.resolve.write_resolved`)."""
    from alignsweep.config.resolve import resolve_hyperparameters, write_resolved

    values = resolve_hyperparameters(cfg)
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    container = write_resolved(OmegaConf.to_container(OmegaConf.create(container), resolve=True), values)
    # Absolute paths: the worker may run elsewhere (another directory, a cluster node).
    container["paths"] = {k: os.path.abspath(v) for k, v in container["paths"].items()}
    return container


def write_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """config.yaml for people and the worker, config.json (the same) for fast collection."""
    import json

    container = resolved_container(cfg)
    rundir.atomic_write_text(run_dir / rundir.CONFIG, OmegaConf.to_yaml(container))
    rundir.atomic_write_text(run_dir / rundir.CONFIG_JSON, json.dumps(container, sort_keys=True))
