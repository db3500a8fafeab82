"""`python -m alignsweep status SWEEP_DIR`: where every job of a sweep stands.

One line per job: its state (pending, running, requeued, interrupted, completed, failed, diverged, ...), its
progress, the scheduler's job id and, for failures, the error and where the log is. Works for
sweeps of any launcher, on a copy of the sweep directory without a cluster, and on a single run's
directory (`python -m alignsweep` without -m). `--json` prints the same rows as a JSON object
(`{"jobs": [...], "total": {state: count}}`) for scripts.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from alignsweep.cli_style import add_sweep_dir, tool_parser
from alignsweep.results import rundir
from alignsweep.results import slurm_state as cluster


def single_run_jobs(run_dir: Path) -> dict:
    """A manifest's `jobs` for a single run's directory (its config.json / config.yaml)."""
    config = json.loads((run_dir / rundir.CONFIG_JSON).read_text()) if (run_dir / rundir.CONFIG_JSON).exists() else {}
    if not config:
        import yaml

        config = yaml.safe_load((run_dir / rundir.CONFIG).read_text()) or {}
    algo = config.get("algo", {})
    pick = lambda key: config.get(key) if config.get(key) is not None else algo.get(key)  # noqa: E731
    return {"0": {"run_dir": ".", "algo": algo.get("name", "?"), "model": config.get("model", {}).get("name", "?"),
                  "beta": pick("beta"), "alpha": pick("alpha"), "launcher": "local"}}


def rows(sweep_dir: Path) -> list[dict]:
    sweep_dir = Path(sweep_dir)
    single = not (sweep_dir / "manifest.json").exists() and (sweep_dir / rundir.CONFIG).exists()
    jobs = single_run_jobs(sweep_dir) if single else cluster.manifest(sweep_dir)["jobs"]
    states = cluster.slurm_states([e["job_id"] for e in jobs.values() if e.get("job_id")])
    out = []
    for num in sorted(jobs, key=int):
        entry = jobs[num]
        run_dir = sweep_dir / entry["run_dir"]
        status = rundir.read_status(run_dir) or {}
        slurm = states.get(entry.get("job_id", ""))
        alive = rundir.lock_held(run_dir) if status.get("state") == "running" and not slurm else None
        state = cluster.entry_state(entry, status, slurm, alive)
        step, total = status.get("step"), status.get("total_steps")
        row = {
            "num": int(num),
            "job": f"{entry['algo']} {entry['model']} beta={_g(entry['beta'])}"
            + (f" alpha={entry['alpha']:g}" if entry.get("alpha") is not None else ""),
            "state": state,
            "slurm": slurm or "-",
            "job_id": entry.get("job_id", "-"),
            "progress": f"{step}/{total}" if total else "-",
            "attempt": status.get("attempt", 0),
            "error": status.get("error"),
            "log": None,
        }
        if state == "requeued" and status.get("requeue_reason"):
            row["error"] = f"requeued: {status['requeue_reason']}"
        if state == "interrupted" and not row["error"]:
            row["error"] = "its process is gone (killed?) without recording an outcome; relaunch to resume it"
        if state in ("failed", "preempted", "unknown", "diverged", "interrupted"):
            logs = cluster.log_paths(entry)
            row["log"] = logs[1] if logs else str(run_dir / rundir.LOG)
            if not row["error"] and slurm:
                row["error"] = f"SLURM state {slurm} before the worker reported"
        out.append(row)
    return out


def _g(value) -> str:
    return "-" if value is None else f"{value:g}"


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep status", __doc__)
    add_sweep_dir(parser, "a launched sweep directory (manifest.json) or a run directory", holds=lambda d: (
        None if (d / "manifest.json").exists() or (d / rundir.CONFIG).exists()
        else f"neither a launched sweep (no manifest.json) nor a run (no {rundir.CONFIG})"))
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir
    table = rows(sweep_dir)
    counts = Counter(r["state"] for r in table)
    if args.json:
        print(json.dumps({"jobs": table, "total": dict(sorted(counts.items()))}, indent=1))
        return 0
    width = max(len(r["job"]) for r in table)
    print(f"{'#':>3}  {'job':<{width}}  {'state':<10} {'progress':>9}  {'try':>3}  {'slurm id':<12} slurm state")
    for r in table:
        print(
            f"{r['num']:>3}  {r['job']:<{width}}  {r['state']:<10} {r['progress']:>9}  {r['attempt']:>3}  "
            f"{r['job_id']:<12} {r['slurm']}"
        )
        if r["error"] or r["log"]:
            print(f"       {r['error'] or ''}" + (f"\n       log: {r['log']}" if r["log"] else ""))
    print("total: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
