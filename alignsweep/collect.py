"""`python -m alignsweep.collect SWEEP_DIR`: one tidy table of a sweep, from its directory alone.

A row per (run, evaluated checkpoint), plus one row for each run that has none yet (pending,
running or failed), so nothing disappears from the table. Written as `results.csv` and
`results.parquet` in the sweep directory; running it again gives the same table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from alignsweep import rundir

ID_COLUMNS = ["run", "status", "algo", "model", "beta", "alpha", "gamma", "kl_budget", "seed", "step", "progress"]


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories of a sweep (or the single run directory given)."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / rundir.CONFIG).exists():
        return [sweep_dir]
    found = [p.parent for p in sweep_dir.glob(f"*/{rundir.CONFIG}")]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def _job_values(run_dir: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from alignsweep.plan import resolve_job

    cfg = OmegaConf.load(run_dir / rundir.CONFIG)
    job = resolve_job(cfg)
    return {
        "algo": job.algo,
        "model": job.model,
        "data": job.data,
        "beta": job.beta,
        "alpha": job.alpha,
        "gamma": job.gamma,
        "kl_budget": job.kl_budget,
        "seed": job.seed,
    }


def collect_rows(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """All rows, and the files that could not be read (reported, never silently dropped)."""
    rows, problems = [], []
    sweep_dir = Path(sweep_dir)
    for run_dir in run_dirs(sweep_dir):
        name = str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name
        try:
            values = _job_values(run_dir)
        except Exception as exc:  # a corrupt config is reported by name
            problems.append(f"{run_dir / rundir.CONFIG}: {exc}")
            continue
        status = rundir.read_status(run_dir) or {}
        base = {"run": name, "status": status.get("state", "pending"), **values}
        try:
            metrics = rundir.read_metrics(run_dir)
        except (ValueError, OSError) as exc:
            problems.append(f"{run_dir / rundir.METRICS}: {exc}")
            metrics = []
        if not metrics:
            rows.append({**base, "error": status.get("error")})
        for row in metrics:
            rows.append({**row, **base})
    return rows, problems


def collect(sweep_dir: Path):
    """Build the sweep's table and write results.csv / results.parquet; returns the DataFrame."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows, problems = collect_rows(sweep_dir)
    for problem in problems:
        print(f"warning: unreadable: {problem}", file=sys.stderr)
    table = pd.DataFrame(rows)
    if not table.empty:
        ordered = [c for c in ID_COLUMNS if c in table.columns]
        table = table[ordered + sorted(c for c in table.columns if c not in ordered)]
        table = table.sort_values(["run", "step"], key=_natural, na_position="last").reset_index(drop=True)
    table.to_csv(sweep_dir / "results.csv", index=False)
    table.to_parquet(sweep_dir / "results.parquet", index=False)
    return table


def _natural(col):
    if col.name == "run":
        return col.map(lambda r: (len(str(r)), str(r)))
    return col


def summary(table) -> "Any":
    """Per run: final sqrt(KL) and win rate, the best win rate and where it occurred."""
    import pandas as pd

    out = []
    for run, group in table.dropna(subset=["step"]).groupby("run", sort=False):
        group = group.sort_values("step")
        final, best = group.iloc[-1], group.loc[group["win_rate"].idxmax()]
        out.append(
            {
                "run": run,
                "algo": final["algo"],
                "beta": final["beta"],
                "alpha": final.get("alpha"),
                "status": final["status"],
                "final_sqrt_kl": final["sqrt_kl"],
                "final_win_rate": final["win_rate"],
                "best_win_rate": best["win_rate"],
                "best_at_step": int(best["step"]),
                "best_at_sqrt_kl": best["sqrt_kl"],
            }
        )
    frame = pd.DataFrame(out)
    if not frame.empty:
        frame = frame.sort_values(["algo", "beta"]).reset_index(drop=True)
        if frame["alpha"].isna().all():
            frame = frame.drop(columns=["alpha"])
    return frame


def collect_and_report(sweep_dir: Path) -> None:
    """Collect, print the results table, draw the win-rate/sqrt(KL) plot and say where it is."""
    from alignsweep.plots import plot_winrate_vs_kl

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    failed = table[table["status"].isin(["failed", "diverged"])]["run"].unique() if not table.empty else []
    if table.empty or "win_rate" not in table.columns:
        print(f"[alignsweep] no evaluated checkpoints yet in {sweep_dir}")
        return
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(summary(table).to_string(index=False))
    plot = plot_winrate_vs_kl(table, sweep_dir / "winrate_vs_sqrt_kl.png")
    print(f"[alignsweep] table: {sweep_dir / 'results.csv'}")
    print(f"[alignsweep] plot:  {plot}")
    if len(failed):
        print(f"[alignsweep] {len(failed)} run(s) did not complete: {', '.join(map(str, failed))}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m alignsweep.collect SWEEP_DIR", file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    if not sweep_dir.is_dir():
        print(f"error: {sweep_dir} is not a directory", file=sys.stderr)
        return 2
    if not run_dirs(sweep_dir):
        print(f"error: {sweep_dir} holds no run directories (no */{rundir.CONFIG})", file=sys.stderr)
        return 2
    collect_and_report(sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
