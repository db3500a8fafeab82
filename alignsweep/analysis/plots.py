"""Figures of a collected sweep (a `results.parquet` table), each written as PNG and SVG.

1. `figure_overoptimization`: the paper's Figure 1. One column per algorithm, win rate against
   sqrt(KL), one colour per model; top row final checkpoints, bottom row every checkpoint; dotted
   curves are the fitted scaling laws (`alignsweep.analysis.fits`).
2. `figure_length`: R^2 of the implicit reward regressed on response length against KL, per model.
3. `figure_dynamics`: win rate and sqrt(KL) against training progress, one line per beta.
4. `figure_likelihood`: chosen and rejected log-likelihood of held-out pairs against progress.
5. `plot_tree_mdp`: the Tree MDP toy's in- vs out-of-distribution mass and log-ratios (data=tree_mdp).
`plot_winrate_vs_kl` is the quick per-beta view `make run` prints.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from alignsweep.analysis.figure_style import (
    KL, R2, RC, SQRT_KL, algo_name, figure_legend, figure_size, fitted_curve, panel_title, run_label, shape_columns,
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _paper(draw):
    """Draw under the paper style (`alignsweep.analysis.figure_style.RC`), leaving the caller's alone."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with _plt().rc_context(RC):
            return draw(*args, **kwargs)

    return wrapped


def _save(fig: Any, path: Path) -> list[Path]:
    path = Path(path)
    out = []
    for suffix in (".png", ".svg"):
        target = path.with_suffix(suffix)
        fig.savefig(target)
        out.append(target)
    _plt().close(fig)
    return out


def _evaluated(table):
    return table.dropna(subset=["step", "win_rate", "sqrt_kl"])


def _finals(rows):
    return rows.loc[rows.groupby("run")["step"].idxmax()]


def _colors(keys: list) -> dict:
    cmap = _plt().get_cmap("viridis" if len(keys) > 3 else "tab10")
    if len(keys) > 3:
        return {k: cmap(i / max(1, len(keys) - 1)) for i, k in enumerate(keys)}
    return {k: cmap(i) for i, k in enumerate(keys)}


@_paper
def plot_winrate_vs_kl(table, path: Path) -> Path:
    """Win rate against sqrt(KL): one panel per algorithm (a row of at most four), one line per
    beta (its checkpoints in training order), the final checkpoint starred; error bars are one
    standard error, of both. Runs with KL-spaced checkpoints (`eval.at=sqrt_kl`) draw their
    sqrt(KL) targets as faint vertical lines. The headline figure of the report and the wandb summary run."""
    plt = _plt()
    rows = _evaluated(table)
    algos = _algos(rows)
    cols = min(len(algos), 4)
    nrows = -(-len(algos) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=figure_size(cols, 2.4, nrows), sharey=True, squeeze=False,
                             layout="constrained")
    colors = _colors(sorted(rows["beta"].unique()))
    for ax, algo in zip(axes.flat, algos):
        sub = rows[rows["algo"] == algo]
        vary = shape_columns(sub)
        for _, run in sub.groupby("run"):
            run = run.sort_values("step")
            color = colors[run["beta"].iloc[0]]
            xerr = run["sqrt_kl_se"].fillna(0) if "sqrt_kl_se" in run.columns else None
            ax.errorbar(run["sqrt_kl"], run["win_rate"], yerr=run["win_rate_se"], xerr=xerr, color=color, marker="o",
                        markersize=3, linewidth=1, capsize=2, label=run_label(run.iloc[0], vary))
            last = run.iloc[-1]
            ax.plot(last["sqrt_kl"], last["win_rate"], marker="*", markersize=10, color=color)
        _target_lines(ax.axvline, sub)
        ax.set_title(panel_title(algo, rows))
        ax.set_xlabel(SQRT_KL)
    for ax in axes.flat[len(algos):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("win rate vs reference")
    fig.suptitle(r"Win rate against $\sqrt{\mathrm{KL}}$ (star: final checkpoint; bars: $\pm$1 s.e.)")
    figure_legend(fig)
    return _save(fig, path)[0]


def _target_lines(line, rows) -> None:
    """The sqrt(KL) targets the rows were evaluated at (`sqrt_kl_target`), as faint lines."""
    if "sqrt_kl_target" in rows.columns:
        for target in sorted(rows["sqrt_kl_target"].dropna().unique()):
            line(target, color="0.8", linewidth=0.6, linestyle=":", zorder=0)


def _algos(rows) -> list[str]:
    """The algorithms in the papers' order (DPO, IPO, ...), unknown ids last."""
    from alignsweep.analysis.figure_style import ALGO_NAMES

    order = list(ALGO_NAMES)
    return sorted(rows["algo"].unique(), key=lambda a: (order.index(a) if a in order else len(order), str(a)))


@_paper
def figure_overoptimization(table, path: Path, fits=None, form: str = "log") -> list[Path]:
    """The paper's Figure 1 (top: final checkpoints, bottom: all), one colour per model; fitted
    curves dotted, drawn over each group's measured sqrt(KL) range and clipped to [0, 1]; the
    fitted peak as a diamond with its standard error, or an arrow when it is extrapolated."""
    plt = _plt()
    rows = _evaluated(table)
    algos = _algos(rows)
    models = sorted(rows["model"].unique())
    colors = _colors(models)
    fig, axes = plt.subplots(2, len(algos), figsize=figure_size(len(algos), 2.3, 2), sharex="col", sharey=True,
                             squeeze=False, layout="constrained")
    for col, algo in enumerate(algos):
        for row, (which, data) in enumerate((("final", _finals(rows)), ("all", rows))):
            ax = axes[row][col]
            sub = data[data["algo"] == algo]
            for model in models:
                pts = sub[sub["model"] == model]
                if pts.empty:
                    continue
                ax.errorbar(pts["sqrt_kl"], pts["win_rate"], yerr=pts["win_rate_se"], fmt="o", markersize=3,
                            capsize=2, color=colors[model], alpha=0.8, label=model)
                fit = _fit_for(fits, algo, model, which, form)
                if fit is not None:
                    d, y = fitted_curve(lambda x, f=fit: _predict(f, x, form), pts["sqrt_kl"].min(),
                                        pts["sqrt_kl"].max())
                    ax.plot(d, y, linestyle=":", linewidth=2, color=colors[model])
                    _draw_peak(ax, fit, form, colors[model])
            if row == 0:
                ax.set_title(panel_title(algo, rows))
            else:
                ax.set_xlabel(SQRT_KL)
            if col == 0:
                ax.set_ylabel(f"win rate vs reference\n({which} checkpoints)")
    low = max(0.0, float((rows["win_rate"] - rows["win_rate_se"].fillna(0)).min()) - 0.05)
    high = min(1.0, float((rows["win_rate"] + rows["win_rate_se"].fillna(0)).max()) + 0.05)
    axes[0][0].set_ylim(low, high)  # the axes share y; a wild fit must not squash the data
    fig.suptitle(rf"Over-optimization: win rate against $\sqrt{{\mathrm{{KL}}}}$ (dotted: {form} fit; "
                 r"diamond: its peak $\pm$1 s.e.)")
    figure_legend(fig, title="model")
    return _save(fig, path)


def _fit_for(fits, algo: str, model: str, which: str, form: str):
    if fits is None or fits.empty:
        return None
    sel = fits[(fits["algo"] == algo) & (fits["model"] == model) & (fits["checkpoints"] == which)
               & (fits["form"] == form)]
    if sel.empty or sel.iloc[0].get("error") or not np.isfinite(sel.iloc[0]["alpha"]):
        return None
    return sel.iloc[0]


def _draw_peak(ax, fit, form: str, color) -> None:
    """The fitted peak with its standard error (horizontal bar); hollow and labelled when it lies
    beyond the measured sqrt(KL) range (an extrapolation, drawn at the edge with an arrow)."""
    d_peak = float(fit.get("d_peak", np.nan))
    if not np.isfinite(d_peak):
        return
    se = float(fit.get("d_peak_se", np.nan))
    extrapolated = bool(fit.get("extrapolated", False))
    d_max = float(fit.get("d_max", np.nan))
    if extrapolated and np.isfinite(d_max):
        y = float(_predict(fit, np.array([d_max]), form)[0])
        ax.annotate(f"peak {d_peak:.3g} (extrapolated)", xy=(d_max, min(max(y, 0.0), 1.0)), xytext=(-60, 12),
                    textcoords="offset points", fontsize=8, color=color,
                    arrowprops={"arrowstyle": "->", "color": color})
        return
    y = float(_predict(fit, np.array([d_peak]), form)[0])
    ax.errorbar([d_peak], [y], xerr=[se] if np.isfinite(se) else None, fmt="D", markersize=5, capsize=3,
                color=color, markerfacecolor="white")


def _predict(fit, d: np.ndarray, form: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0) if form == "log" else d * d
    return fit["baseline"] + fit["alpha"] * d - fit["beta"] * term


@_paper
def figure_length(table, path: Path) -> list[Path]:
    """R^2 of implicit reward on response length against KL, one colour per model (paper, Fig. 3
    right): smaller models and smaller budgets lean on length more."""
    plt = _plt()
    rows = _evaluated(table).dropna(subset=["length_r2", "kl"])
    rows = rows[rows["step"] > 0]
    models = sorted(rows["model"].unique())
    colors = _colors(models)
    fig, ax = plt.subplots(figsize=figure_size(1, 2.9), layout="constrained")
    markers = dict(zip(_algos(rows), "osD^vPX"))
    for model in models:
        for algo, marker in markers.items():
            pts = rows[(rows["model"] == model) & (rows["algo"] == algo)]
            if not pts.empty:
                ax.scatter(pts["kl"], pts["length_r2"], color=colors[model], marker=marker, s=18, alpha=0.8,
                           label=f"{model} / {algo_name(algo)}")
    ax.set_xlabel(KL)
    ax.set_ylabel(f"{R2}: implicit reward ~ length")
    ax.set_title("Length exploitation against KL")
    figure_legend(fig)
    return _save(fig, path)


@_paper
def figure_dynamics(table, path: Path) -> list[Path]:
    """Win rate (top) and sqrt(KL) (bottom) against training progress, one line per run (colour:
    beta; alpha/gamma in the label where they differ); each row shares its y-axis."""
    plt = _plt()
    rows = _evaluated(table)
    algos = _algos(rows)
    fig, axes = plt.subplots(2, len(algos), figsize=figure_size(len(algos), 2.1, 2), sharex=True, sharey="row",
                             squeeze=False, layout="constrained")
    colors = _colors(sorted(rows["beta"].unique()))
    for col, algo in enumerate(algos):
        sub = rows[rows["algo"] == algo]
        vary = shape_columns(sub)
        for _run, run in sub.groupby("run"):
            run = run.sort_values("step")
            color = colors[run["beta"].iloc[0]]
            axes[0][col].plot(run["progress"], run["win_rate"], marker="o", markersize=3, color=color,
                              label=run_label(run.iloc[0], vary))
            axes[1][col].plot(run["progress"], run["sqrt_kl"], marker="o", markersize=3, color=color)
        _target_lines(axes[1][col].axhline, sub)
        axes[0][col].set_title(panel_title(algo, rows))
        axes[1][col].set_xlabel("fraction of the epoch")
    axes[0][0].set_ylabel("win rate")
    axes[1][0].set_ylabel(r"$\sqrt{\mathrm{KL}}$")
    fig.suptitle("Training dynamics")
    figure_legend(fig)
    return _save(fig, path)


@_paper
def figure_likelihood(table, path: Path) -> list[Path]:
    """Held-out chosen (solid) and rejected (dashed) log-likelihood against progress: likelihood
    displacement, the AlphaPO paper's concern. Colour: beta; one shared y-axis."""
    plt = _plt()
    rows = _evaluated(table).dropna(subset=["chosen_logp", "rejected_logp"])
    algos = _algos(rows)
    fig, axes = plt.subplots(1, len(algos), figsize=figure_size(len(algos), 2.4), sharey=True, squeeze=False,
                             layout="constrained")
    colors = _colors(sorted(rows["beta"].unique()))
    for ax, algo in zip(axes[0], algos):
        sub = rows[rows["algo"] == algo]
        vary = shape_columns(sub)
        for _run, run in sub.groupby("run"):
            run = run.sort_values("step")
            color = colors[run["beta"].iloc[0]]
            ax.plot(run["progress"], run["chosen_logp"], color=color, label=run_label(run.iloc[0], vary))
            ax.plot(run["progress"], run["rejected_logp"], color=color, linestyle="--")
        ax.set_title(panel_title(algo, rows))
        ax.set_xlabel("fraction of the epoch")
    axes[0][0].set_ylabel("mean log-likelihood\n(held-out pairs)")
    fig.suptitle("Likelihood displacement: chosen (solid) and rejected (dashed)")
    figure_legend(fig)
    return _save(fig, path)


@_paper
def plot_tree_mdp(table, out_dir: Path) -> list[Path]:
    """The Tree MDP toy (data=tree_mdp), one column per algorithm, one colour per beta, and a pair of
    rows per tree policy (model=tabular, tree_mlp, ...). Upper row of a pair: exact probability mass
    on in-distribution (solid) and out-of-distribution (dashed) trajectories against the training
    step. Lower row: the mean log-ratio log pi/pi_ref of the data's chosen (solid) and rejected
    (dashed) trajectories, and -KL(pi_ref || pi) (dotted), which the chosen log-ratio would equal if
    the chosen trajectories were drawn from pi_ref."""
    plt = _plt()
    rows = table.dropna(subset=["step", "id_mass"])
    algos = sorted(rows["algo"].unique())
    models = sorted(rows["model"].dropna().unique()) if "model" in rows else []
    models = models or [None]
    n = len(models)
    fig, axes = plt.subplots(2 * n, len(algos), figsize=figure_size(len(algos), 2.0, 2 * n), sharex=True,
                             sharey="row", squeeze=False, layout="constrained")
    all_colors = _colors(sorted(rows["beta"].unique()))
    for m, model in enumerate(models):
        of_model = rows if model is None else rows[rows["model"] == model]
        for col, algo in enumerate(algos):
            sub = of_model[of_model["algo"] == algo]
            colors = all_colors
            top, bottom = axes[2 * m][col], axes[2 * m + 1][col]
            for (beta, _run), run in sub.groupby(["beta", "run"]):
                run = run.sort_values("step")
                color = colors[beta]
                top.plot(run["step"], run["id_mass"], color=color, label=rf"$\beta$={beta:g}")
                top.plot(run["step"], run["ood_mass"], color=color, linestyle="--")
                bottom.plot(run["step"], run["chosen_logratio"], color=color)
                bottom.plot(run["step"], run["rejected_logratio"], color=color, linestyle="--")
                bottom.plot(run["step"], -run["kl_ref_pi"], color=color, linestyle=":", linewidth=2)
            name = "" if model is None else f"model={model}: "
            top.set_title(f"{name}{algo_name(algo)}", fontweight="bold")
            top.set_ylim(-0.02, 1.02)
            # rejected log-ratios run to -30 (or -200) while chosen stay near 0
            bottom.set_yscale("symlog", linthresh=1.0)
            if m == n - 1:
                bottom.set_xlabel("optimizer step (full batch)")
        axes[2 * m][0].set_ylabel("probability mass (exact)" if model is None else f"{model}\nprobability mass (exact)")
        ratio = r"mean $\log \pi/\pi_{\mathrm{ref}}$ (symlog)"
        axes[2 * m + 1][0].set_ylabel(ratio if model is None else f"{model}\n{ratio}")
    fig.suptitle("Tree MDP, exact. Mass rows: in-distribution (solid) and out-of-distribution (dashed)\n"
                 r"trajectories. Log-ratio rows: mean $\log \pi/\pi_{\mathrm{ref}}$ of chosen (solid) and"
                 "\n" r"rejected (dashed) trajectories; $-\mathrm{KL}(\pi_{\mathrm{ref}} \,\|\, \pi)$ dotted")
    figure_legend(fig)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _save(fig, out_dir / "tree_mdp_ood_mass")


FIGURES = {
    "fig1_overoptimization": figure_overoptimization,
    "fig2_length": figure_length,
    "fig3_dynamics": figure_dynamics,
    "fig4_likelihood": figure_likelihood,
}

NEEDS = {"fig2_length": ("length_r2",), "fig4_likelihood": ("chosen_logp", "rejected_logp")}  # columns a figure reads


def draw_all(table, out_dir: Path, fits=None, by_seed=None, scaling=None, sizes=None) -> dict[str, list[Path]]:
    """Every figure of the sweep into `out_dir` (PNG and SVG); with the seed-aggregated table
    (`by_seed`) `fig5_seeds`, with a model-size table (`scaling`, `sizes`) `fig6_scaling`
    (`alignsweep.analysis.seed_plots`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = {}
    for name, draw in FIGURES.items():
        if not set(NEEDS.get(name, ())) <= set(table.columns):
            continue  # e.g. no response lengths in the Tree MDP toy, whose trajectories are all equally long
        if name == "fig1_overoptimization":
            drawn[name] = draw(table, out_dir / name, fits=fits)
        else:
            drawn[name] = draw(table, out_dir / name)
    if "id_mass" in table.columns:
        drawn["tree_mdp_ood_mass"] = plot_tree_mdp(table, out_dir)
    from alignsweep.analysis.seed_plots import figure_scaling, figure_seeds

    if by_seed is not None and not by_seed.empty:
        drawn["fig5_seeds"] = figure_seeds(by_seed, out_dir / "fig5_seeds")
    if scaling is not None and not scaling.empty and fits is not None:
        drawn["fig6_scaling"] = figure_scaling(scaling, fits, sizes or {}, out_dir / "fig6_scaling")
    return drawn
