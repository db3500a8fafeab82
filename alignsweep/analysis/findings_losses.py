"""Finding 5 (`experiment=losses_embedded`): every loss at one shared beta grid, one over-optimization
panel per loss, and per loss the numbers `docs/findings.md` quotes (`alignsweep.analysis.findings`
registers it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from alignsweep.analysis.figure_style import SQRT_KL, algo_name, figure_legend, figure_size
from alignsweep.analysis.plots import _colors, _evaluated, _paper, _plt, _predict, _save
from alignsweep.train.loss_registry import is_reference_free


def _reference_free(rows, algo: str) -> bool:
    """Whether `algo`'s loss never read the reference model (its beta is not a KL strength): the
    `reference_free` column the collector read from the runs' config.yaml, else the loss registry
    (a table collected before that column existed)."""
    if "reference_free" in rows.columns:
        flags = rows.loc[rows["algo"] == algo, "reference_free"].dropna()
        if not flags.empty:
            return bool(flags.iloc[0])
    return is_reference_free(algo)


def _num(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else round(x, 4)


def _fit(fitted, algo: str):
    if fitted is None or fitted.empty:
        return None
    sel = fitted[(fitted["algo"] == algo) & (fitted["form"] == "log") & (fitted["checkpoints"] == "all")]
    return None if sel.empty else sel.iloc[0]


def losses_numbers(table, fitted) -> dict:
    """Per loss (all its betas and checkpoints): the SFT win rate, the best checkpoint, the
    checkpoint of largest KL, the worst final checkpoint (over the betas) and the drop from the
    best to each with its standard error (the two checkpoints' win-rate s.e. combined), each
    beta's final checkpoint, and the log-form fit R(d) = R0 + d(alpha - beta log d) over all
    checkpoints with its standard errors (`alignsweep.analysis.fits`). Sorted by the drop from the
    best to the worst final checkpoint: the losses that over-optimize least first."""
    rows = _evaluated(table)
    out = []
    for algo, group in rows.groupby("algo"):
        base = group[group["step"] == 0]["win_rate"].mean()
        best = group.loc[group["win_rate"].idxmax()]
        far = group.loc[group["sqrt_kl"].idxmax()]
        finals = group.loc[group.groupby("run")["step"].idxmax()]
        worst = finals.loc[finals["win_rate"].idxmin()]

        def drop_se(row):
            return math.hypot(float(best["win_rate_se"]), float(row["win_rate_se"])) if best.name != row.name else 0.0

        entry = {
            "algo": algo, "reference_free": _reference_free(rows, algo), "sft_win_rate": _num(base),
            "best_win_rate": _num(best["win_rate"]), "best_win_rate_se": _num(best["win_rate_se"]),
            "best_beta": _num(best["beta"]), "best_at_sqrt_kl": _num(best["sqrt_kl"]),
            "best_progress": _num(best["progress"]),
            "max_sqrt_kl": _num(far["sqrt_kl"]), "max_kl_beta": _num(far["beta"]),
            "win_rate_at_max_kl": _num(far["win_rate"]), "win_rate_at_max_kl_se": _num(far["win_rate_se"]),
            "drop_best_to_max_kl": _num(best["win_rate"] - far["win_rate"]), "drop_best_to_max_kl_se": _num(drop_se(far)),
            "worst_final_beta": _num(worst["beta"]), "worst_final_sqrt_kl": _num(worst["sqrt_kl"]),
            "worst_final_win_rate": _num(worst["win_rate"]), "worst_final_win_rate_se": _num(worst["win_rate_se"]),
            "drop_best_to_worst_final": _num(best["win_rate"] - worst["win_rate"]),
            "drop_best_to_worst_final_se": _num(drop_se(worst)),
            "final": {f"{float(r['beta']):g}": {"sqrt_kl": _num(r["sqrt_kl"]), "win_rate": _num(r["win_rate"]),
                                                "win_rate_se": _num(r["win_rate_se"])}
                      for _, r in finals.iterrows()},
        }
        fit = _fit(fitted, algo)
        if fit is not None:
            entry.update({
                "fit_log_alpha": _num(fit["alpha"]), "fit_log_alpha_se": _num(fit["alpha_se"]),
                "fit_log_beta": _num(fit["beta"]), "fit_log_beta_se": _num(fit["beta_se"]),
                "fit_peak_sqrt_kl": _num(fit["d_peak"]), "fit_peak_sqrt_kl_se": _num(fit["d_peak_se"]),
                "fit_peak_win_rate": _num(fit["peak"]), "fit_peak_extrapolated": bool(fit["extrapolated"]),
                "fit_rmse": _num(fit["rmse"]), "fit_error": fit["error"],
            })
        out.append(entry)
    out.sort(key=lambda e: (e["drop_best_to_worst_final"] is None, e["drop_best_to_worst_final"]))
    return {"groups": out}


@_paper
def draw_losses(table, fitted, out: Path) -> list[Path]:
    """Win rate against sqrt(KL), one panel per loss (every checkpoint, a line per beta, bars one
    standard error), the log-form fit over all its checkpoints dotted, the SFT win rate dashed; each
    panel its own sqrt(KL) range (the losses' ranges differ ten-fold), reference-free losses starred."""
    import numpy as np

    from alignsweep.analysis.plots import _algos

    plt = _plt()
    rows = _evaluated(table)
    algos = _algos(rows)
    cols = 6
    nrows = -(-len(algos) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=figure_size(cols, 1.45, nrows), sharey=True,
                             squeeze=False, layout="constrained")
    betas = sorted(rows["beta"].unique())
    colors = _colors(betas)
    for ax, algo in zip(axes.flat, algos):
        sub = rows[rows["algo"] == algo]
        base = sub[sub["step"] == 0]["win_rate"].mean()
        ax.axhline(base, color="grey", linestyle="--", linewidth=0.8)
        for beta in betas:
            for _, run in sub[sub["beta"] == beta].groupby("run"):
                run = run.sort_values("step")
                ax.errorbar(run["sqrt_kl"], run["win_rate"], yerr=run["win_rate_se"], color=colors[beta], marker="o",
                            markersize=2.5, linewidth=0.9, capsize=1.5, label=rf"$\beta$={beta:g}")
        fit = _fit(fitted, algo)
        if fit is not None and fit["error"] is None and math.isfinite(fit["alpha"]):
            d = np.linspace(1e-3, float(sub["sqrt_kl"].max()), 60)
            ax.plot(d, np.clip(_predict(fit, d, "log"), 0, 1), color="black", linestyle=":", linewidth=1)
        ax.set_title(algo_name(algo) + ("*" if _reference_free(rows, algo) else ""))
        ax.set_xlabel(SQRT_KL)
    for ax in axes.flat[len(algos):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("win rate")
    fig.suptitle(r"Every loss on the embedded task (dashed: SFT; dotted: log-form fit; bars: $\pm$1 s.e.; "
                 "*: reference-free)")
    figure_legend(fig)
    return _save(fig, out / "losses_embedded")
