"""`python -m alignsweep collect SWEEP_DIR`: collect a sweep, fit it and draw it.

The table comes from `alignsweep.results.collect` (results.csv / results.parquet); this adds both
scaling-law forms per (algorithm, model) in `fits.csv` (`alignsweep.analysis.fits`), the means and
95% intervals across seeds in `results_by_seed.csv` when configurations repeat over seeds
(`alignsweep.analysis.seeds`), the regressions on model size in `scaling.csv` when the sweep has
several model sizes (`alignsweep.analysis.scaling`), the
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


N_BOOTSTRAP = 1000  # resamples of the seeds of each configuration, for the fits of a sweep with seeds


def fits(table):
    """Both scaling-law forms per (algorithm, model), over final checkpoints and over all. When a
    configuration has more than one seed the errors come from a bootstrap over runs within each
    configuration (`N_BOOTSTRAP` resamples of its seeds), else from the residuals."""
    import pandas as pd

    from alignsweep.analysis.seeds import max_seeds, strata_columns
    from alignsweep.analysis.sweep_fits import fit_groups

    if table.empty or "win_rate" not in table.columns:
        return pd.DataFrame()
    seeded = {"n_bootstrap": N_BOOTSTRAP, "strata": strata_columns(table)} if max_seeds(table) > 1 else {}
    parts = [
        fit_groups(table, by=("algo", "model"), form=form, checkpoints=which, **seeded)
        for form in ("log", "quadratic")
        for which in ("final", "all")
    ]
    return pd.concat(parts, ignore_index=True)


def analyse(table, sweep_dir: Path):
    """fits.csv, and when the sweep has them results_by_seed.csv (more than one seed for a
    configuration: `alignsweep.analysis.seeds`) and scaling.csv (more than one model with a
    parameter count: `alignsweep.analysis.scaling`). Returns (fits, by_seed, scaling, sizes); a
    table the sweep does not call for is empty, and a stale file of it is removed."""
    import pandas as pd

    from alignsweep.analysis.scaling import model_sizes, scaling_table
    from alignsweep.analysis.seeds import aggregate_seeds, max_seeds

    fitted = fits(table)
    _atomic(lambda tmp: fitted.to_csv(tmp, index=False), sweep_dir / "fits.csv")
    by_seed = aggregate_seeds(table) if max_seeds(table) > 1 else pd.DataFrame()
    sizes = model_sizes(table)
    scaling = scaling_table(fitted, sizes)
    for frame, name in ((by_seed, "results_by_seed.csv"), (scaling, "scaling.csv")):
        if frame.empty:
            (sweep_dir / name).unlink(missing_ok=True)
        else:
            _atomic(lambda tmp, f=frame: f.to_csv(tmp, index=False), sweep_dir / name)
    return fitted, by_seed, scaling, sizes


def collect_and_report(sweep_dir: Path, figures: bool = True) -> None:
    """Collect, fit, draw; print the results table and where the files are."""
    import pandas as pd

    from alignsweep.analysis.plots import draw_all, plot_winrate_vs_kl

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    if table.empty or "win_rate" not in table.columns:
        print(f"[alignsweep] no evaluated checkpoints yet in {sweep_dir}")
        return
    fitted, by_seed, scaling, sizes = analyse(table, sweep_dir)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(summary(table).to_string(index=False))
    plot = plot_winrate_vs_kl(table, sweep_dir / "winrate_vs_sqrt_kl.png")
    drawn = draw_all(table, sweep_dir / "figures", fits=fitted, by_seed=by_seed, scaling=scaling,
                     sizes=sizes) if figures else {}
    if not by_seed.empty:
        print(f"[alignsweep] across seeds: {sweep_dir / 'results_by_seed.csv'} (mean and 95% CI per configuration "
              "and checkpoint)")
    language = table[table["data"].astype(str) != "tree_mdp"] if "data" in table.columns else table
    unsized = sorted(set(language["model"].dropna().astype(str)) - set(sizes)) if "model" in table.columns else []
    if unsized and language["model"].nunique() > 1:  # Tree MDP policies have no model size to regress on
        print(f"[alignsweep] no parameter count recorded for model(s) {', '.join(unsized)} (runs older than "
              "model_params): left out of the regressions on model size")
    if not scaling.empty:
        from alignsweep.analysis.scaling import headline

        print("[alignsweep] across model sizes (scaling.csv): do larger models degrade less?")
        for line in headline(scaling):
            print(f"  {line}")
    logger = _sweep_logger(sweep_dir)
    if logger is not None and logger.name == "wandb":
        from alignsweep.results.tracking import log_sweep_summary

        summary_dir = log_sweep_summary(logger, sweep_dir, table, fitted, drawn, headline=plot,
                                        tables={"results_by_seed": by_seed, "scaling": scaling})
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
