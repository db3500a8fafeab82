"""Figures across seeds and model sizes, each written as PNG and SVG (beside `alignsweep.analysis.plots`).

- `figure_seeds` (fig5_seeds): win rate against sqrt(KL) averaged over the seeds of each
  configuration (`alignsweep.analysis.seeds.aggregate_seeds`), one panel per algorithm and model,
  the 95% interval across seeds as a band (win rate) and as horizontal bars (sqrt(KL)); the
  length-controlled win rate dashed, with its own lighter band, where the runs have it.
- `figure_scaling` (fig6_scaling): the fitted peak position d*, peak win rate and curvature against
  the model's parameter count, with their 95% intervals, and the regressions on log10(parameters)
  with their bands and the prediction for an unseen size (`alignsweep.analysis.scaling`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from alignsweep.analysis.figure_style import SQRT_KL, figure_legend, figure_size, panel_title, run_label, shape_columns
from alignsweep.analysis.seeds import CHECKPOINT_COLUMNS


def figure_seeds(aggregated: Any, path: Path) -> list[Path]:
    """Means across seeds with their 95% intervals (module docstring)."""
    from alignsweep.analysis.plots import _algos, _colors, _paper, _plt, _save

    @_paper
    def draw() -> list[Path]:
        plt = _plt()
        rows = aggregated.dropna(subset=["win_rate_mean", "sqrt_kl_mean"])
        panels = [(a, m) for a in _algos(rows) for m in sorted(rows.loc[rows["algo"] == a, "model"].unique())]
        fig, axes = plt.subplots(1, len(panels), figsize=figure_size(len(panels), 2.6), sharey=True, squeeze=False,
                                 layout="constrained")
        colors = _colors(sorted(rows["beta"].unique()))
        config = [c for c in rows.columns if c not in CHECKPOINT_COLUMNS
                  and not c.endswith(("_mean", "_sd", "_ci_low", "_ci_high"))]
        for ax, (algo, model) in zip(axes[0], panels):
            sub = rows[(rows["algo"] == algo) & (rows["model"] == model)]
            vary = shape_columns(sub)
            for _, curve in sub.groupby([c for c in config if c not in ("algo", "model")] or ["beta"], dropna=False):
                curve = curve.sort_values("step")
                color = colors[curve["beta"].iloc[0]]
                x = curve["sqrt_kl_mean"].to_numpy(float)
                label = f"{run_label(curve.iloc[0], vary)} ({int(curve['n_seeds'].max())} seeds)"
                ax.plot(x, curve["win_rate_mean"], color=color, marker="o", markersize=3, label=label)
                ax.fill_between(x, curve["win_rate_ci_low"], curve["win_rate_ci_high"], color=color, alpha=0.25,
                                linewidth=0)
                xerr = np.vstack([x - curve["sqrt_kl_ci_low"], curve["sqrt_kl_ci_high"] - x])
                ax.errorbar(x, curve["win_rate_mean"], xerr=np.where(np.isfinite(xerr), xerr, 0), fmt="none",
                            ecolor=color, linewidth=0.8)
                if "lc_win_rate_mean" in curve and curve["lc_win_rate_mean"].notna().any():
                    ax.plot(x, curve["lc_win_rate_mean"], color=color, linestyle="--", linewidth=1)
                    ax.fill_between(x, curve["lc_win_rate_ci_low"], curve["lc_win_rate_ci_high"], color=color,
                                    alpha=0.1, linewidth=0)
            ax.set_title(panel_title(algo, rows, suffix=f" / {model}"))
            ax.set_xlabel(SQRT_KL + " (mean over seeds)")
        axes[0][0].set_ylabel("win rate vs reference")
        fig.suptitle("Across seeds: mean win rate (solid), length-controlled (dashed)\n"
                     "bands: 95% CI of the mean over seeds; bars: that of sqrt(KL)")
        figure_legend(fig)
        return _save(fig, path)

    return draw()


def figure_scaling(scaling: Any, fits: Any, sizes: dict[str, float], path: Path, form: str = "log",
                   checkpoints: str = "all") -> list[Path]:
    """d*, the peak win rate and the curvature against parameters, per algorithm (module docstring)."""
    from alignsweep.analysis.plots import _algos, _colors, _paper, _plt, _save
    from alignsweep.analysis.scaling import QUANTITIES

    @_paper
    def draw() -> list[Path]:
        plt = _plt()
        chosen = fits[(fits["form"] == form) & (fits["checkpoints"] == checkpoints)
                      & fits["model"].astype(str).isin(sizes)]
        algos = _algos(chosen)
        colors = _colors(algos)
        titles = {"d_peak": r"peak position $d^*$ ($\sqrt{\mathrm{KL}}$)", "peak": "peak win rate $R(d^*)$",
                  "curvature": "curvature fit_b (fall past peak)"}
        fig, axes = plt.subplots(1, 3, figsize=figure_size(3, 2.5), squeeze=False, layout="constrained")
        for ax, (quantity, (value, error)) in zip(axes[0], QUANTITIES.items()):
            for algo in algos:
                pts = chosen[chosen["algo"] == algo]
                n = pts["model"].astype(str).map(sizes).to_numpy(float)
                y, se = pts[value].to_numpy(float), pts[error].to_numpy(float)
                ax.errorbar(n, y, yerr=1.96 * np.where(np.isfinite(se), se, 0), fmt="o", capsize=3,
                            color=colors[algo], label=algo)
                row = scaling[(scaling["algo"] == algo) & (scaling["form"] == form)
                              & (scaling["checkpoints"] == checkpoints) & (scaling["quantity"] == quantity)]
                if row.empty or not np.isfinite(row.iloc[0]["slope"]):
                    continue
                row = row.iloc[0]
                grid = np.logspace(np.log10(np.nanmin(n)), np.log10(row["predict_params"]), 50)
                line = row["intercept"] + row["slope"] * np.log10(grid)
                ax.plot(grid, np.exp(line) if quantity == "d_peak" else line, color=colors[algo], linestyle=":")
                ax.errorbar([row["predict_params"]], [row["prediction"]], fmt="s", markerfacecolor="white",
                            yerr=[[row["prediction"] - row["prediction_ci_low"]],
                                  [row["prediction_ci_high"] - row["prediction"]]], capsize=3, color=colors[algo])
            ax.set_xscale("log")
            if quantity == "d_peak":
                ax.set_yscale("log")
            ax.set_xlabel("parameters")
            ax.set_title(titles[quantity])
        fig.suptitle(f"Over-optimization against model size ({form} fit, {checkpoints} checkpoints)\n"
                     "bars: 95% CI; dotted: regression on log10(parameters); hollow square: an unseen size")
        figure_legend(fig, title="algorithm")
        return _save(fig, path)

    return draw()
