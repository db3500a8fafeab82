"""What `python -m alignsweep` does with one composed job config, as a plain function.

With `dry_run=true` it prints the job line and trains nothing. Otherwise it writes the resolved
config into the job's run directory and runs the worker there, in this process. (Multiruns go
through a launcher, which prepares the run directories and starts the workers itself.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from alignsweep import rundir
from alignsweep.plan import ConfigError, resolve_job


_started = False


def mark_started() -> None:
    """A job or a launcher has begun: from now on a failure is not a configuration error."""
    global _started
    _started = True


def started() -> bool:
    return _started


def resolved_container(cfg: DictConfig) -> dict:
    """The job's config as plain data, every interpolation resolved (Hydra's own node dropped)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    container = OmegaConf.to_container(OmegaConf.create(container), resolve=True)
    # Absolute paths: the worker may run elsewhere (another directory, a cluster node).
    container["paths"] = {k: os.path.abspath(v) for k, v in container["paths"].items()}
    return container


def write_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """config.yaml for people and the worker, config.json (the same) for fast collection."""
    import json

    container = resolved_container(cfg)
    rundir.atomic_write_text(run_dir / rundir.CONFIG, OmegaConf.to_yaml(container))
    rundir.atomic_write_text(run_dir / rundir.CONFIG_JSON, json.dumps(container, sort_keys=True))


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict | None:
    job = resolve_job(cfg)
    if cfg.dry_run:
        print(job.describe(), flush=True)
        return None
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    from alignsweep import worker

    status = worker.run(worker.load_config(run_dir / rundir.CONFIG), run_dir)
    print(f"run directory: {run_dir} ({status['state']})", flush=True)
    return status


def run_or_exit(cfg: DictConfig) -> None:
    """`run`, with user mistakes reported as one line and exit code 2 instead of a traceback."""
    mark_started()
    try:
        status = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if status is not None and status["state"] != "completed":
        sys.exit(1)
