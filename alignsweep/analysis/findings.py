"""`python -m alignsweep findings [NAME ...]` (`make findings`): the papers' findings at embedded scale.

Each finding is an experiment config (`conf/experiment/NAME.yaml`). For each one named (all by
default) this runs the sweep with the local launcher, `python -m alignsweep -m experiment=NAME`
(completed jobs of an earlier run of the same sweep directory are skipped, so an interrupted run
resumes), collects it, and draws its figures into `--out` (default outputs/findings/figures/;
`make findings`: docs/figures/findings/) together with a `NAME.json` of the headline numbers that
`docs/findings.md` quotes. Nothing is drawn by hand.

    python -m alignsweep findings                       # list the findings
    python -m alignsweep findings --all                 # all five, sweeps under outputs/findings/
    python -m alignsweep findings overopt_embedded      # one
    python -m alignsweep findings --no-run tree_mdp     # redraw from an existing sweep
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from alignsweep.analysis.figure_style import SQRT_KL, algo_name, figure_legend, figure_size
from alignsweep.analysis.plots import (
    _colors,
    _evaluated,
    _paper,
    _plt,
    _save,
    figure_length,
    figure_overoptimization,
)
from alignsweep.analysis.findings_losses import _num, draw_losses, losses_numbers
from alignsweep.cli_style import tool_parser

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# 1. over-optimization


def overopt_numbers(table, fitted) -> dict:
    """Per (algorithm, model): the SFT win rate, the best checkpoint, the checkpoint of largest KL,
    how much was lost from the best to it, and the fitted peak."""
    rows = _evaluated(table)
    out = []
    for (algo, model), group in rows.groupby(["algo", "model"]):
        base = group[group["step"] == 0]["win_rate"].mean()
        best = group.loc[group["win_rate"].idxmax()]
        far = group.loc[group["sqrt_kl"].idxmax()]
        entry = {
            "algo": algo, "model": model, "sft_win_rate": _num(base),
            "best_win_rate": _num(best["win_rate"]), "best_at_sqrt_kl": _num(best["sqrt_kl"]),
            "best_beta": _num(best["beta"]), "best_progress": _num(best["progress"]),
            "max_sqrt_kl": _num(far["sqrt_kl"]), "win_rate_at_max_kl": _num(far["win_rate"]),
            "drop_best_to_max_kl": _num(best["win_rate"] - far["win_rate"]),
        }
        if fitted is not None and not fitted.empty:
            sel = fitted[(fitted["algo"] == algo) & (fitted["model"] == model) & (fitted["form"] == "log")
                         & (fitted["checkpoints"] == "all")]
            if not sel.empty:
                fit = sel.iloc[0]
                entry.update({"fit_log_alpha": _num(fit["alpha"]), "fit_log_beta": _num(fit["beta"]),
                              "fit_peak_sqrt_kl": _num(fit["d_peak"]), "fit_peak_win_rate": _num(fit["peak"]),
                              "fit_peak_sqrt_kl_se": _num(fit.get("d_peak_se", float("nan"))),
                              "fit_peak_extrapolated": bool(fit.get("extrapolated", False)),
                              "fit_rmse": _num(fit["rmse"])})
        out.append(entry)
    return {"groups": out}


def draw_overopt(table, fitted, out: Path) -> list[Path]:
    files = figure_overoptimization(table, out / "overopt_embedded_fig1", fits=fitted, form="log")
    files += _winrate_by_group(table, out / "overopt_embedded_dynamics", by="beta", panel="algo", row="model")
    return files


# ----------------------------------------------------------------------------------------------
# 2. length exploitation


def _length_variants(table):
    """R-DPO swept over its length term `a`: a = 0 is DPO exactly; label the rows by it."""
    column = "cfg.algo.length_coef"
    if column not in table.columns:
        return table
    label = table[column].map(lambda a: "dpo (a=0)" if float(a) == 0 else f"rdpo (a={float(a):g})")
    return table.assign(algo=label.where(table["algo"] == "rdpo", table["algo"]))


def length_numbers(table, fitted) -> dict:
    table = _length_variants(table)
    rows = _evaluated(table).dropna(subset=["length_r2", "kl"])
    rows = rows[rows["step"] > 0]
    out = []
    for (algo, model), group in rows.groupby(["algo", "model"]):
        corr = np.corrcoef(group["kl"], group["length_r2"])[0, 1] if len(group) > 2 else float("nan")
        median = group["kl"].median()
        out.append({
            "algo": algo, "model": model, "checkpoints": int(len(group)),
            "mean_r2": _num(group["length_r2"].mean()),
            "mean_r2_below_median_kl": _num(group[group["kl"] <= median]["length_r2"].mean()),
            "mean_r2_above_median_kl": _num(group[group["kl"] > median]["length_r2"].mean()),
            "corr_kl_r2": _num(corr),
            "best_win_rate": _num(group["win_rate"].max()),
            "mean_response_length_at_max_kl": _num(group.loc[group["kl"].idxmax(), "response_length"]),
        })
    return {"groups": out}


def draw_length(table, fitted, out: Path) -> list[Path]:
    table = _length_variants(table)
    files = figure_length(table, out / "length_embedded_r2")
    files += figure_frontier(table, out / "length_embedded_frontier")
    return files


@_paper
def figure_frontier(table, path: Path) -> list[Path]:
    """Win rate against sqrt(KL) with one colour per algorithm (every checkpoint), one panel per
    model: the KL/win-rate frontier of DPO against R-DPO (the paper's length figure, left)."""
    plt = _plt()
    rows = _evaluated(table)
    models = sorted(rows["model"].unique())
    algos = sorted(rows["algo"].unique())
    colors = _colors(algos)
    fig, axes = plt.subplots(1, len(models), figsize=figure_size(len(models), 2.6), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, model in zip(axes[0], models):
        for algo in algos:
            pts = rows[(rows["model"] == model) & (rows["algo"] == algo)]
            ax.errorbar(pts["sqrt_kl"], pts["win_rate"], yerr=pts["win_rate_se"], fmt="o", markersize=4, capsize=2,
                        color=colors[algo], alpha=0.8, label=algo_name(algo))
            if len(pts) > 2:  # the running best: the frontier
                order = pts.sort_values("sqrt_kl")
                ax.plot(order["sqrt_kl"], order["win_rate"].cummax(), color=colors[algo], linewidth=1, alpha=0.6)
        ax.set_title(model)
        ax.set_xlabel(SQRT_KL)
    axes[0][0].set_ylabel("win rate vs reference")
    fig.suptitle("KL / win-rate frontier (line: best so far at that KL)")
    figure_legend(fig)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# 3. the Tree MDP (alignsweep.analysis.plots.plot_tree_mdp draws it)


def tree_numbers(table, fitted) -> dict:
    rows = table.dropna(subset=["step"])
    out = []
    if "model" not in rows:
        rows = rows.assign(model=None)
    for (model, algo, beta), group in rows.groupby(["model", "algo", "beta"], dropna=False):
        group = group.sort_values("step")
        first, last = group.iloc[0], group.iloc[-1]
        entry = {"model": model, "algo": algo, "beta": _num(beta), "steps": int(last["step"])}
        for key in ("id_mass", "ood_mass", "chosen_logratio", "rejected_logratio", "kl", "kl_ref_pi"):
            if key in group:
                entry[f"{key}_start"], entry[f"{key}_end"] = _num(first[key]), _num(last[key])
        out.append(entry)
    return {"groups": out}


def draw_tree(table, fitted, out: Path) -> list[Path]:
    from alignsweep.analysis.plots import plot_tree_mdp

    return plot_tree_mdp(table, out)


# ----------------------------------------------------------------------------------------------
# 4. reward shape (AlphaPO)


def alpha_numbers(table, fitted) -> dict:
    rows = _evaluated(table)
    out = []
    for alpha, group in rows.groupby(rows["alpha"].fillna(0.0)):
        for beta, sub in group.groupby("beta"):
            sub = sub.sort_values("step")
            first, last = sub.iloc[0], sub.iloc[-1]
            best = sub.loc[sub["win_rate"].idxmax()]
            out.append({
                "alpha": _num(alpha), "beta": _num(beta),
                "chosen_logp_change": _num(last["chosen_logp"] - first["chosen_logp"]),
                "rejected_logp_change": _num(last["rejected_logp"] - first["rejected_logp"]),
                "final_sqrt_kl": _num(last["sqrt_kl"]), "final_win_rate": _num(last["win_rate"]),
                "best_win_rate": _num(best["win_rate"]), "best_progress": _num(best["progress"]),
                "final_response_length": _num(last["response_length"]),
            })
    return {"groups": out}


@_paper
def draw_alpha(table, fitted, out: Path) -> list[Path]:
    """Per alpha: held-out chosen/rejected log-likelihood, sqrt(KL) and win rate over training."""
    plt = _plt()
    rows = _evaluated(table).copy()
    rows["alpha"] = rows["alpha"].fillna(0.0)
    alphas = sorted(rows["alpha"].unique())
    colors = _colors(alphas)
    fig, axes = plt.subplots(1, 4, figsize=figure_size(4, 2.2), squeeze=False, layout="constrained")
    ax_c, ax_r, ax_k, ax_w = axes[0]
    for alpha in alphas:
        for _, run in rows[rows["alpha"] == alpha].groupby("run"):
            run = run.sort_values("step")
            label = rf"$\alpha$={alpha:g}" + (" (SimPO)" if alpha == 0 else "")
            ax_c.plot(run["progress"], run["chosen_logp"], marker="o", markersize=3, color=colors[alpha], label=label)
            ax_r.plot(run["progress"], run["rejected_logp"], marker="o", markersize=3, color=colors[alpha])
            ax_k.plot(run["progress"], run["sqrt_kl"], marker="o", markersize=3, color=colors[alpha])
            ax_w.errorbar(run["sqrt_kl"], run["win_rate"], yerr=run["win_rate_se"], marker="o", markersize=3,
                          capsize=2, color=colors[alpha])
    for ax, title, xlabel in (
        (ax_c, "chosen log-lik. (held out)", "fraction of the epoch"),
        (ax_r, "rejected log-lik. (held out)", "fraction of the epoch"),
        (ax_k, SQRT_KL, "fraction of the epoch"),
        (ax_w, "win rate vs reference", SQRT_KL),
    ):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    fig.suptitle(r"Reward shape: AlphaPO over $\alpha$ ($\alpha$ = 0 is SimPO)")
    figure_legend(fig)
    return _save(fig, out / "alphapo_shape")


# ----------------------------------------------------------------------------------------------


@_paper
def _winrate_by_group(table, path: Path, by: str, panel: str, row: str) -> list[Path]:
    """Win rate against training progress: a panel per (row value, panel value), a line per `by`
    (a Greek-letter hyperparameter: alpha, beta or gamma)."""
    plt = _plt()
    rows = _evaluated(table)
    panels, row_values = sorted(rows[panel].unique()), sorted(rows[row].unique())
    fig, axes = plt.subplots(len(row_values), len(panels), figsize=figure_size(len(panels), 2.0, len(row_values)),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    colors = _colors(sorted(rows[by].unique()))
    for i, rv in enumerate(row_values):
        for j, pv in enumerate(panels):
            ax = axes[i][j]
            sub = rows[(rows[row] == rv) & (rows[panel] == pv)]
            for (value, _run), run in sub.groupby([by, "run"]):
                run = run.sort_values("step")
                ax.errorbar(run["progress"], run["win_rate"], yerr=run["win_rate_se"], marker="o", markersize=3,
                            capsize=2, color=colors[value], label=rf"$\{by}$={value:g}")
            ax.set_title(f"{algo_name(pv) if panel == 'algo' else pv} / {rv}")
            if i == len(row_values) - 1:
                ax.set_xlabel("fraction of the epoch")
            if j == 0:
                ax.set_ylabel("win rate")
    fig.suptitle("Win rate over one epoch")
    figure_legend(fig)
    return _save(fig, path)


FINDINGS: dict[str, tuple[Callable, Callable]] = {
    "overopt_embedded": (draw_overopt, overopt_numbers),
    "length_embedded": (draw_length, length_numbers),
    "tree_mdp": (draw_tree, tree_numbers),
    "alphapo_shape": (draw_alpha, alpha_numbers),
    "losses_embedded": (draw_losses, losses_numbers),
}


def run_sweep(name: str, sweep_dir: Path, overrides: list[str]) -> None:
    cmd = [sys.executable, "-m", "alignsweep", "-m", f"experiment={name}", f"hydra.sweep.dir={sweep_dir}", *overrides]
    print(f"[findings] {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"[findings] experiment={name} exited {proc.returncode}; its sweep: {sweep_dir}")


def draw(name: str, sweep_dir: Path, out: Path) -> dict:
    """Collect `sweep_dir` and draw finding `name` into `out`; returns the headline numbers."""
    from alignsweep.analysis.summarize import fits
    from alignsweep.results.collect import collect, run_dirs

    if not sweep_dir.is_dir() or not run_dirs(sweep_dir):
        raise SystemExit(f"[findings] {sweep_dir} holds no runs: run experiment={name} first")
    table = collect(sweep_dir, quiet=True)
    if table.empty or "step" not in table.columns or table["step"].isna().all():
        raise SystemExit(f"[findings] {sweep_dir} has no evaluated checkpoints: run experiment={name} first")
    fitted = fits(table) if "win_rate" in table.columns else None
    painter, numbers = FINDINGS[name]
    out.mkdir(parents=True, exist_ok=True)
    files = painter(table, fitted, out)
    result = {"experiment": name, "sweep": sweep_dir.name, "runs": int(table["run"].nunique()),
              "figures": sorted(p.name for p in files), **numbers(table, fitted)}
    (out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _about(name: str) -> str:
    """The first comment line of the finding's experiment config."""
    for line in (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines():
        if line.startswith("#") and line.strip("# ") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep findings", __doc__)
    parser.add_argument("names", nargs="*", help=f"findings to produce: {', '.join(FINDINGS)} (none: list them)")
    parser.add_argument("--all", action="store_true", help="produce every finding (about 45 min on 2 CPUs)")
    parser.add_argument("--sweeps", default="outputs/findings", help="folder of the sweeps (one per finding)")
    parser.add_argument("--out", default="outputs/findings/figures",
                        help="folder for the figures and numbers (default: %(default)s; make findings: docs/figures/findings)")
    parser.add_argument("--no-run", action="store_true", help="only collect and draw existing sweeps")
    parser.add_argument("--override", action="append", default=[], help="extra override for every sweep")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in FINDINGS]
    if unknown:
        print(f"error: unknown finding(s) {', '.join(unknown)}; expected some of: {', '.join(FINDINGS)}",
              file=sys.stderr)
        return 2
    if not args.names and not args.all:
        print("The findings (conf/experiment/NAME.yaml); produce one with `python -m alignsweep findings NAME`, "
              "all with --all:")
        for name in FINDINGS:
            print(f"  {name:<18} {_about(name)}")
        return 0
    for name in args.names or list(FINDINGS):
        sweep_dir = Path(args.sweeps).resolve() / name
        if not args.no_run:
            run_sweep(name, sweep_dir, args.override)
        result = draw(name, sweep_dir, Path(args.out))
        print(f"[findings] {name}: {', '.join(result['figures'])} and {name}.json in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
