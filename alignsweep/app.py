"""What `python -m alignsweep` does with one composed job config, as a plain function.

With `dry_run=true` it prints the job line and trains nothing. Otherwise it writes the resolved
config into the job's run directory and runs the worker there, in this process. (Multiruns go
through a launcher, which prepares the run directories and starts the workers itself.)

A run directory belongs to one config (`alignsweep.config.identity`): into a directory holding
the same job it resumes (or, completed, does nothing); a directory of another config is refused
(exit 2, naming the keys that differ); a directory another live process runs is left to it (exit
3). Ctrl-C (exit 130) or SIGTERM (143) stop it as `interrupted`, with the command that resumes it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from alignsweep.config.identity import identity, identity_conflict, write_identity
from alignsweep.config.resolve import resolve_job
from alignsweep.config.run_config import resolved_container, write_run_config
from alignsweep.errors import ConfigError, mark_started
from alignsweep.results import rundir
from alignsweep.results.provenance import FILE, provenance


def _hydra_run_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir).absolute() if HydraConfig.initialized() else None


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict | None:
    try:
        job = resolve_job(cfg)
    except ConfigError:
        if run_dir is None and _hydra_run_dir() is not None:
            rundir.discard_if_untouched(_hydra_run_dir())  # refused: leave no empty run directory
        raise
    if cfg.dry_run:
        print(job.describe(), flush=True)
        if run_dir is None and _hydra_run_dir() is not None:
            rundir.discard_if_untouched(_hydra_run_dir())
        return None
    if run_dir is None:
        run_dir = _hydra_run_dir()
    ident = identity(resolved_container(cfg))
    conflict = identity_conflict(run_dir, ident)
    if conflict:
        raise ConfigError(f"hydra.run.dir: {conflict}")
    previous = rundir.read_status(run_dir) or {}
    if previous.get("state") == "completed":
        print(f"run directory: {run_dir} (already completed: nothing to do)", flush=True)
        return previous
    if rundir.lock_held(run_dir):
        raise rundir.RunInUse(f"{run_dir} is being run by another process (pid {previous.get('pid', '?')})")
    _preflight(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    write_identity(run_dir, ident)
    rundir.atomic_write_text(run_dir / FILE, json.dumps(provenance(), indent=1))
    from alignsweep.worker import job as worker

    worker.stop_on_sigterm()
    status = worker.run(worker.load_config(run_dir / rundir.CONFIG), run_dir)
    print(results_line(run_dir), flush=True)
    print(f"run directory: {run_dir} ({status['state']})", flush=True)
    return status


def _preflight(cfg: DictConfig, run_dir: Path) -> None:
    """The sweep's preflight for this one job (`alignsweep.launch.preflight`: its hub model,
    tokenizer, datasets and judge endpoint, checked before anything loads): a ConfigError naming
    each failure, and no run directory left behind. `preflight=false` skips it."""
    if not cfg.get("preflight", True):
        return
    from alignsweep.launch.preflight import preflight

    errors = preflight([cfg], counts=False)
    if errors:
        rundir.discard_if_untouched(run_dir)
        raise ConfigError("the run was not started: " + "; ".join(errors))


def results_line(run_dir: Path) -> str:
    """What a single run ends with: its final and best win rate, sqrt(KL) at each, and the step
    of the best (from its metrics.jsonl, as `collect` reads it)."""
    rows = [r for r in rundir.read_metrics(run_dir, problems=[]) if r.get("win_rate") is not None]
    if not rows:
        return "results: no evaluated checkpoint"
    final, best = rows[-1], max(rows, key=lambda r: r["win_rate"])
    return (
        f"results: final win rate {final['win_rate']:.3f} at sqrt(KL) {final['sqrt_kl']:.2f} (step {final['step']}); "
        f"best {best['win_rate']:.3f} at sqrt(KL) {best['sqrt_kl']:.2f} (step {best['step']}, "
        f"{len(rows)} evaluations)"
    )


def run_or_exit(cfg: DictConfig) -> None:
    """`run`, with user mistakes reported as one line and exit code 2 instead of a traceback."""
    mark_started()
    try:
        status = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except rundir.RunInUse as exc:
        print(f"error: {exc}; not started", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt as exc:
        from hydra.core.hydra_config import HydraConfig

        from alignsweep.launch.progress import resume_command

        terminated = type(exc).__name__ == "Terminated"
        run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
        print(f"\ninterrupted ({'SIGTERM' if terminated else 'Ctrl-C'}); resume with: "
              f"{resume_command(run_dir, key='hydra.run.dir')}", file=sys.stderr, flush=True)
        sys.exit(143 if terminated else 130)
    if status is not None and status["state"] != "completed":
        sys.exit(1)
