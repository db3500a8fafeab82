"""`python -m alignsweep collect SWEEP_DIR`: collect a sweep, fit it and draw it.

The table comes from `alignsweep.results.collect` (results.csv / results.parquet); this adds both
scaling-law forms per (algorithm, model) in `fits.csv` (`alignsweep.analysis.fits`), the
win-rate-versus-sqrt(KL) plot and the figures in `figures/` (`alignsweep.analysis.plots`), the
per-run summary printed in the terminal and, for wandb sweeps, the summary run. SWEEP_DIR may be a
sweep directory or a single run directory; running it again gives the same files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alignsweep.cli_style import add_sweep_dir, tool_parser
from alignsweep.results import rundir
from alignsweep.results.collect import _atomic, collect, run_dirs, summary


def fits(table):
    """Both scaling-law forms per (algorithm, model), over final checkpoints and over all."""
    import pandas as pd

    from alignsweep.analysis.fits import fit_groups

    if table.empty or "win_rate" not in table.columns:
        return pd.DataFrame()
    parts = [
        fit_groups(table, by=("algo", "model"), form=form, checkpoints=which)
        for form in ("log", "quadratic")
        for which in ("final", "all")
    ]
    return pd.concat(parts, ignore_index=True)


def collect_and_report(sweep_dir: Path, figures: bool = True) -> None:
    """Collect, fit, draw; print the results table and where the files are."""
    import pandas as pd

    from alignsweep.analysis.plots import draw_all, plot_winrate_vs_kl

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    if table.empty or "win_rate" not in table.columns:
        print(f"[alignsweep] no evaluated checkpoints yet in {sweep_dir}")
        return
    fitted = fits(table)
    _atomic(lambda tmp: fitted.to_csv(tmp, index=False), sweep_dir / "fits.csv")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(summary(table).to_string(index=False))
    plot = plot_winrate_vs_kl(table, sweep_dir / "winrate_vs_sqrt_kl.png")
    drawn = draw_all(table, sweep_dir / "figures", fits=fitted) if figures else {}
    logger = _sweep_logger(sweep_dir)
    if logger is not None and logger.name == "wandb":
        from alignsweep.results.tracking import log_sweep_summary

        summary_dir = log_sweep_summary(logger, sweep_dir, table, fitted, drawn, headline=plot)
        if summary_dir is not None:
            print(f"[alignsweep] wandb summary run: {summary_dir}")
    print(f"[alignsweep] table: {sweep_dir / 'results.csv'} (fits: fits.csv, figures: figures/)")
    print(f"[alignsweep] plot:  {plot}")
    unfinished = table[~table["status"].isin(["completed"])]["run"].unique()
    if len(unfinished):
        print(f"[alignsweep] {len(unfinished)} run(s) not completed: {', '.join(map(str, unfinished))}")


def _sweep_logger(sweep_dir: Path):
    """The logger settings the sweep's jobs used (from its first readable run config)."""
    from alignsweep.config.schema import load_run_config

    for run_dir in run_dirs(sweep_dir):
        try:
            return load_run_config(run_dir / rundir.CONFIG).logger
        except Exception:
            continue
    return None


def runs_lacking(sweep_dir: Path) -> str | None:
    """What a directory lacks to be collected: None when it holds run directories."""
    return None if run_dirs(sweep_dir) else f"no run directories (no */{rundir.CONFIG})"


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep collect", __doc__)
    add_sweep_dir(parser, "a sweep directory (or one run directory)", holds=runs_lacking)
    collect_and_report(parser.parse_args(argv).sweep_dir)
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
