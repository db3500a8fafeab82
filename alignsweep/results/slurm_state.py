"""What SLURM says about a sweep's jobs (through `sacct`, or `squeue` where sacct has nothing).

Imports no torch; used by the SLURM launcher and `python -m alignsweep status`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"}


def describe_tier(res: dict) -> str:
    return (
        f"{res['nodes']} node(s) x {res['tasks_per_node']} task(s), {res['gpus']} GPU(s)/node, "
        f"{res['cpus']} CPUs/node, {res['mem_gb']}G/node, {res['time_min']} min"
    )


def manifest(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"jobs": {}}


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job id (`123_4` for array tasks); ids SLURM no longer knows are absent."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    bases = sorted({j.split("_")[0] for j in job_ids})
    cmd = ["sacct", "-o", "JobID,State", "--parsable2", "-n"] + [a for b in bases for a in ("-j", b)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and "." not in parts[0]:
            states[parts[0]] = parts[1].split()[0] if parts[1] else "UNKNOWN"
    return states


def partitions() -> list[str]:
    """The partitions `sinfo` lists (without the default's `*`); [] without SLURM's tools."""
    if shutil.which("sinfo") is None:
        return []
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({line.strip().rstrip("*") for line in out.splitlines() if line.strip()})


def partition_exists(name: str) -> bool:
    """Whether the cluster has partition `name` (True where it cannot be asked: no sinfo here)."""
    found = partitions()
    return not found or name in found


def active_job_ids(sweep_dir: Path) -> dict[str, tuple[str, str]]:
    """Jobs of the sweep's manifest that SLURM still has queued or running: num -> (id, state)."""
    jobs = manifest(sweep_dir)["jobs"]
    ids = {num: entry["job_id"] for num, entry in jobs.items() if entry.get("job_id")}
    states = slurm_states(list(ids.values()))
    return {num: (jid, states[jid]) for num, jid in ids.items() if states.get(jid) in ACTIVE}


def log_paths(entry: dict) -> tuple[str, str] | None:
    """The stdout/stderr files submitit writes for a job (task 0)."""
    if not entry.get("job_id") or not entry.get("submitit_folder"):
        return None
    folder = Path(entry["submitit_folder"].replace("%j", entry["job_id"]))
    stem = f"{entry['job_id']}_0_log"
    return str(folder / f"{stem}.out"), str(folder / f"{stem}.err")


def wait_for(sweep_dir: Path, poll_s: float = 10.0, timeout_s: float | None = None) -> None:
    """Block until no job of the sweep is queued or running, printing a line when counts change."""
    start, last = time.time(), None
    while True:
        active = active_job_ids(sweep_dir)
        if active != last:
            print(f"[alignsweep] {len(active)} job(s) queued or running", flush=True)
            last = active
        if not active:
            return
        if timeout_s is not None and time.time() - start > timeout_s:
            raise TimeoutError(f"jobs still active after {timeout_s:.0f}s: {sorted(active)}")
        time.sleep(poll_s)


def entry_state(entry: dict[str, Any], run_status: dict | None, slurm_state: str | None,
                alive: bool | None = None) -> str:
    """One word for a job, from its run directory, the scheduler and the run directory's lock.

    A completed run is completed. Otherwise a scheduler that still has the job queued or running
    wins (pending / requeued / running: a failed or requeued attempt is being retried); then the
    run directory's last word (failed, diverged, requeued with its reason, interrupted); then what
    the scheduler says of a job that died without a word. A local job recorded as running whose
    process is gone (`alive` False: its run directory's lock is free) was interrupted.
    """
    run_state = (run_status or {}).get("state")
    if run_state == "completed":
        return run_state
    attempt = (run_status or {}).get("attempt", 0)
    if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD"):
        return "requeued" if attempt >= 1 or run_state == "requeued" else "pending"
    if slurm_state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        return "running"
    if run_state in ("failed", "diverged", "requeued", "interrupted"):
        return run_state
    if slurm_state in ("PREEMPTED",):
        return "preempted"
    if slurm_state in ("FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
        return "failed"
    if run_state == "running":
        if slurm_state is None and entry.get("launcher") == "local":
            return "interrupted" if alive is False else "running"
        return "unknown"
    return run_state or ("submitted" if entry.get("job_id") else "pending")
