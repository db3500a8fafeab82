"""Experiment tracking: one wandb run per training job, or nothing.

wandb is offline (files under RUN_DIR/wandb, to `alignsweep sync` later) unless an API key is present
or `logger.mode=online`; a tracker never fails a job for lack of a network. Every run of a sweep, its
summary run included, shares one group (`dashboard_group`: experiment name plus a short sweep id);
its config is the resolved values without local paths (`dashboard_config`); its history is the
per-checkpoint measurements only (hyperparameters are config).
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


def launch_record(sweep_dir: Path) -> dict:
    """The first launch of a sweep (manifest.json) or single run (provenance.json): command,
    overrides, date, commit (`alignsweep.results.provenance`); {} when neither is there."""
    import json

    sweep_dir = Path(sweep_dir)
    try:
        if (sweep_dir / "manifest.json").exists():
            return (json.loads((sweep_dir / "manifest.json").read_text()).get("launches") or [{}])[0]
        if (sweep_dir / "provenance.json").exists():
            return json.loads((sweep_dir / "provenance.json").read_text())
    except (OSError, ValueError):
        pass
    return {}


def sweep_of(run_dir: Path) -> Path:
    """The sweep directory a run directory belongs to (itself for a single run)."""
    run_dir = Path(run_dir)
    parent = run_dir.parent
    return parent if (parent / "manifest.json").exists() or (parent / "multirun.yaml").exists() else run_dir


def dashboard_group(sweep_dir: Path) -> tuple[str, str]:
    """(experiment, group) of a sweep's wandb runs: the experiment named at launch
    (`experiment=NAME`, else "sweep" or "run"), and the group "EXPERIMENT-ID" where ID is 6 hex
    digits of the first launch's record (stable when the sweep is copied or re-collected, distinct
    for two sweeps launched alike at different times)."""
    sweep_dir = Path(sweep_dir)
    record = launch_record(sweep_dir)
    experiment = next((o.split("=", 1)[1] for o in record.get("overrides", [])
                       if o.lstrip("+").split("=", 1)[0] == "experiment"), None)
    if not experiment:
        experiment = "sweep" if (sweep_dir / "manifest.json").exists() else "run"
    identity = f"{sweep_dir.name}:{record.get('date')}:{record.get('command')}" if record else str(sweep_dir.resolve())
    group = f"{experiment}-{hashlib.sha1(identity.encode()).hexdigest()[:6]}"
    return experiment, wandb_label(group, WANDB_LIMITS["group"])


# Not what ran but where it was: left out of the dashboard's config.
_WHERE = ("paths", "dry_run")


def _local_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or (len(value) > 2 and value[1:3] in (":\\", ":/"))


def dashboard_config(config: dict) -> dict:
    """The resolved config as a dashboard shows it: `paths`, `dry_run` and `*_dir` keys left out,
    and every local path (model.path, data.path, a judge's local model ...) replaced by its last
    component (a file or folder name), so no machine's layout is uploaded."""

    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if k not in _WHERE and not str(k).endswith("_dir")}
        if isinstance(node, list):
            return [clean(v) for v in node]
        if isinstance(node, str) and _local_path(node):
            return Path(node.rstrip("/\\")).name
        return node

    return clean(config)


def dashboard_tags(**values: Any) -> list[str]:
    """wandb tags "KEY:VALUE" (at most 64 characters each, W&B's limit) for the given non-null values."""
    return [wandb_label(f"{k}:{v}", 64) for k, v in values.items() if v is not None]


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
                 replay: list[dict] | None = None, tags: list[str] | None = None):
        if wandb_mode(logger_cfg.mode) == "offline":
            import shutil

            for old in Path(run_dir).glob("wandb/offline-run-*"):
                shutil.rmtree(old, ignore_errors=True)
        self.run = _wandb_init(
            logger_cfg, run_dir, str(Path(run_dir).resolve()), group=wandb_label(group, WANDB_LIMITS["group"]),
            job_type=wandb_label(job_type, WANDB_LIMITS["job_type"]), name=wandb_label(name, WANDB_LIMITS["name"]),
            config=config, tags=tags,
        )
        # a row's values that are hyperparameters (beta, alpha, gamma ...) live in the config
        self.constants = {k for k in config if k != "step"}
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        start = self.run.step or 0
        for row in sorted(replay or [], key=lambda r: r["step"]):
            if row["step"] >= start:
                self.log(row, step=row["step"])

    def log(self, row: dict, step: int) -> None:
        self.run.log({k: v for k, v in row.items()
                      if isinstance(v, (int, float)) and k not in self.constants}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def build_tracker(logger_cfg: Any, run_dir: Path, **kwargs: Any):
    if logger_cfg.name == "none":
        return NullTracker()
    if logger_cfg.name == "wandb":
        return WandbTracker(logger_cfg, run_dir, **kwargs)
    raise ValueError(f"logger.name: expected wandb or none, got {logger_cfg.name!r}")


def log_sweep_summary(logger_cfg: Any, sweep_dir: Path, table: Any, fits: Any, figures: dict,
                      headline: Path | None = None, tables: dict | None = None) -> str | None:
    """One wandb run per sweep (job_type "summary", in its jobs' group) holding the collected table,
    the fits, the headline figure (`headline`, win rate vs sqrt(KL)), the figures and, when the runs
    kept samples (RUN_DIR/samples/step_*.jsonl), a samples table; its config names the experiment
    and the values the sweep covers. Re-collecting continues the same run (same id); offline, the
    earlier record is replaced, so a sweep never has more than one summary run to sync. Returns the
    run's directory (None for logger=none and for a single run, whose own run is its dashboard).
    `tables`: more named DataFrames (results_by_seed, scaling), logged when not empty."""
    if logger_cfg.name != "wandb" or (Path(sweep_dir) / "config.yaml").exists():
        return None  # no tracker, or a single run: its own wandb run is its dashboard
    import shutil

    import wandb

    sweep_dir = Path(sweep_dir)
    if wandb_mode(logger_cfg.mode) == "offline":
        for old in sweep_dir.glob("wandb/offline-run-*"):
            shutil.rmtree(old, ignore_errors=True)
    experiment, group = dashboard_group(sweep_dir)
    run = _wandb_init(
        logger_cfg, sweep_dir, f"{sweep_dir.resolve()}:summary", group=group, job_type="summary",
        name=wandb_label(f"{group}-summary", WANDB_LIMITS["name"]), config=summary_config(experiment, sweep_dir, table),
        tags=["summary", *dashboard_tags(experiment=experiment)],
    )
    payload: dict[str, Any] = {"results": wandb.Table(dataframe=_wandb_safe(table))}
    if fits is not None and not fits.empty:
        payload["fits"] = wandb.Table(dataframe=_wandb_safe(fits))
    for name, frame in (tables or {}).items():
        if frame is not None and not frame.empty:
            payload[name] = wandb.Table(dataframe=_wandb_safe(frame))
    if headline is not None and Path(headline).exists():
        payload["winrate_vs_sqrt_kl"] = wandb.Image(str(headline))
    for name, paths in figures.items():
        png = next(p for p in paths if Path(p).suffix == ".png")
        payload[name] = wandb.Image(str(png))
    samples = sweep_samples(sweep_dir, table)
    if samples is not None:
        payload["samples"] = wandb.Table(dataframe=_wandb_safe(samples))
    run.log(payload)
    directory = run.dir
    run.finish()
    return str(Path(directory).parent)


def summary_config(experiment: str, sweep_dir: Path, table: Any) -> dict:
    """The summary run's config: experiment, sweep, number of runs, and for algo, model, data,
    judge and every hyperparameter column of the table the sorted values the sweep covers."""
    config: dict[str, Any] = {"experiment": experiment, "sweep": Path(sweep_dir).name,
                              "runs": int(table["run"].nunique()) if "run" in table else 0}
    record = launch_record(sweep_dir)
    if record.get("command"):
        config["command"] = record["command"]
    for column in ("algo", "model", "data", "judge", "beta", "alpha", "gamma",
                   *[c for c in table.columns if str(c).startswith("cfg.")]):
        if column in table.columns:
            values = sorted({v for v in table[column].tolist() if v is not None and v == v}, key=str)
            config[column.removeprefix("cfg.")] = [v.item() if hasattr(v, "item") else v for v in values]
    return config


def sweep_samples(sweep_dir: Path, table: Any, per_checkpoint: int = 3) -> Any:
    """The first `per_checkpoint` samples of each run's checkpoints (RUN_DIR/samples/step_*.jsonl)
    with the run, algo, beta and step they belong to; None when no run kept samples."""
    import json

    import pandas as pd

    rows = []
    runs = table.drop_duplicates("run") if "run" in table.columns else table.iloc[0:0]
    for _, run in runs.iterrows():
        for path in sorted((Path(sweep_dir) / str(run["run"]) / "samples").glob("step_*.jsonl")):
            lines = [line for line in path.read_text().splitlines() if line.strip()][:per_checkpoint]
            for line in lines:
                try:
                    sample = json.loads(line)
                except ValueError:
                    continue
                rows.append({"run": str(run["run"]), "algo": run.get("algo"), "beta": run.get("beta"),
                             "step": int(path.stem.split("_")[-1]), **sample})
    return pd.DataFrame(rows) if rows else None


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
