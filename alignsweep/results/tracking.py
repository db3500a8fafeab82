"""Experiment tracking: one wandb run per training job, or nothing.

wandb is offline (files under RUN_DIR/wandb, to `wandb sync` later) unless an API key is present or
`logger.mode=online`; a tracker never fails a job for lack of a network.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def wandb_mode(requested: str) -> str:
    if requested == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if requested not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode: expected auto, online, offline or disabled, got {requested!r}")
    return requested


# What the W&B server accepts (longer values are refused or cut): run names and groups 128
# characters, job types 64. Projects are checked when the config is composed (config.resolve).
WANDB_LIMITS = {"name": 128, "group": 128, "job_type": 64}


def wandb_label(text: str, limit: int) -> str:
    """`text` within `limit` characters: kept whole when it fits, else cut and ended with 8 hex
    digits of its SHA-1, so that two long labels stay distinct."""
    if len(text) <= limit:
        return text
    return f"{text[:limit - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"


class NullTracker:
    def log(self, row: dict, step: int) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def _wandb_init(logger_cfg: Any, directory: Path, identity: str, **kwargs: Any) -> Any:
    """A wandb run written under `directory`, its staging files too (not the home directory).

    Its id is a hash of `identity`, so a resumed job (or a re-collected sweep) continues its run
    instead of starting another.
    """
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        os.environ.setdefault(var, str(Path(directory) / "wandb" / sub))
    return wandb.init(
        id=hashlib.sha1(identity.encode()).hexdigest()[:12],
        resume="allow",
        project=logger_cfg.project,
        entity=logger_cfg.entity,
        dir=str(directory),
        mode=wandb_mode(logger_cfg.mode),
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        **kwargs,
    )


class WandbTracker:
    """One W&B run per job, its history in step order and complete after any resume.

    `replay`: the rows the run directory already holds (metrics.jsonl, kept up to the checkpoint
    the job resumes from). Offline, the run's earlier segments are removed and the rows logged
    again into one new segment, so the synced run has every row once; online, the server keeps
    the history and only rows past its last step are sent.
    """

    def __init__(self, logger_cfg: Any, run_dir: Path, *, group: str, job_type: str, name: str, config: dict,
                 replay: list[dict] | None = None):
        if wandb_mode(logger_cfg.mode) == "offline":
            import shutil

            for old in Path(run_dir).glob("wandb/offline-run-*"):
                shutil.rmtree(old, ignore_errors=True)
        self.run = _wandb_init(
            logger_cfg, run_dir, str(Path(run_dir).resolve()), group=wandb_label(group, WANDB_LIMITS["group"]),
            job_type=wandb_label(job_type, WANDB_LIMITS["job_type"]), name=wandb_label(name, WANDB_LIMITS["name"]),
            config=config,
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        start = self.run.step or 0
        for row in sorted(replay or [], key=lambda r: r["step"]):
            if row["step"] >= start:
                self.log(row, step=row["step"])

    def log(self, row: dict, step: int) -> None:
        self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def build_tracker(logger_cfg: Any, run_dir: Path, **kwargs: Any):
    if logger_cfg.name == "none":
        return NullTracker()
    if logger_cfg.name == "wandb":
        return WandbTracker(logger_cfg, run_dir, **kwargs)
    raise ValueError(f"logger.name: expected wandb or none, got {logger_cfg.name!r}")


def log_sweep_summary(logger_cfg: Any, sweep_dir: Path, table: Any, fits: Any, figures: dict) -> str | None:
    """One wandb run per sweep (job_type "summary", same group as its jobs) holding the collected
    table, the fits and the figures, so the dashboard shows exactly what `results.csv` holds.
    Re-collecting resumes the same run. Returns the run's directory (None for logger=none)."""
    if logger_cfg.name != "wandb":
        return None
    import wandb

    sweep_dir = Path(sweep_dir)
    run = _wandb_init(
        logger_cfg, sweep_dir, f"{sweep_dir.resolve()}:summary", group=wandb_label(sweep_dir.name, WANDB_LIMITS["group"]),
        job_type="summary", name=wandb_label(f"{sweep_dir.name}-summary", WANDB_LIMITS["name"]),
    )
    payload: dict[str, Any] = {"results": wandb.Table(dataframe=_wandb_safe(table))}
    if fits is not None and not fits.empty:
        payload["fits"] = wandb.Table(dataframe=_wandb_safe(fits))
    for name, paths in figures.items():
        png = next(p for p in paths if Path(p).suffix == ".png")
        payload[name] = wandb.Image(str(png))
    run.log(payload)
    directory = run.dir
    run.finish()
    return str(Path(directory).parent)


def _wandb_safe(frame: Any) -> Any:
    """Object columns as strings (None stays None): wandb.Table wants one type per column."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: None if v is None or v != v else str(v))
    return out


def log_samples(tracker: Any, step: int, samples: list[dict]) -> None:
    """The checkpoint's kept samples (prompt, sample, reference, verdict, length: one row per
    evaluation prompt) as a wandb Table `samples` at `step`; nothing for a tracker without a run."""
    run = getattr(tracker, "run", None)
    if run is None or not samples:
        return
    import pandas as pd
    import wandb

    run.log({"samples": wandb.Table(dataframe=_wandb_safe(pd.DataFrame(samples))), "step": step}, step=step)
