"""`python -m alignsweep.bench.kl_budget`: how close to `kl_budget` does training stop?

Runs the embedded task with several budgets and seeds (one local sweep, logger off) and reads each
run's stop: the full evaluation written when the running check stopped training (every
evaluation prompt, exact-token estimator) is the KL at the stop, its standard error beside it.
Prints, per budget, the ratio KL at the stop / budget (mean, min, max over seeds) and writes it all
to OUT_DIR/kl_budget.json. The result of a run is recorded in docs/kl_budget.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from alignsweep.cli_style import tool_parser


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep.bench.kl_budget", __doc__)
    parser.add_argument("out_dir", type=Path, help="where the sweep and kl_budget.json go")
    parser.add_argument("--budgets", default="1,2,4", help="comma-separated budgets in nats (default 1,2,4)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--cache-dir", default=None, help="paths.cache_dir (a shared SFT model saves time)")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides, e.g. algo=ipo beta=0.05")
    args = parser.parse_intermixed_args(argv)
    sweep = args.out_dir.absolute() / "sweep"
    cmd = [sys.executable, "-m", "alignsweep", "-m", f"kl_budget={args.budgets}", f"seed={args.seeds}",
           "logger=none", f"hydra.sweep.dir={sweep}", *args.overrides]
    if args.cache_dir:
        cmd.append(f"paths.cache_dir={args.cache_dir}")
    subprocess.run(cmd, check=True)
    return report(sweep, args.out_dir)


def report(sweep: Path, out_dir: Path) -> int:
    from alignsweep.results import rundir

    runs = []
    for config in sorted(sweep.glob(f"*/{rundir.CONFIG}")):
        run = config.parent
        status = rundir.read_status(run) or {}
        rows = rundir.read_metrics(run, problems=[])
        budget = json.loads((run / rundir.CONFIG_JSON).read_text())["kl_budget"]
        last = rows[-1] if rows else {}
        runs.append({
            "run": run.name, "budget": budget, "stop_reason": status.get("stop_reason"), "step": last.get("step"),
            "total_steps": status.get("total_steps"), "kl": last.get("kl_exact_token"),
            "kl_se": last.get("kl_exact_token_se"), "last_check": status.get("kl_check"),
        })
    summary = {}
    for budget in sorted({r["budget"] for r in runs}):
        stopped = [r for r in runs if r["budget"] == budget and r["stop_reason"] == "kl_budget"]
        ratios = [r["kl"] / budget for r in stopped]
        summary[str(budget)] = {
            "stopped": len(stopped), "runs": sum(r["budget"] == budget for r in runs),
            "ratio_mean": sum(ratios) / len(ratios) if ratios else None,
            "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
        }
        print(f"budget {budget:g} nats: {len(stopped)} stopped; KL at the stop / budget: "
              + (", ".join(f"{x:.3f}" for x in ratios) or "-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "kl_budget.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
