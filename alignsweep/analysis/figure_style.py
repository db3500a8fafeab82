"""How alignsweep's figures look: sized for a paper page, the algorithms' own names, mathtext labels.

A figure is at most `WIDTH` inches wide (a 7-inch text width) and its text at least 8 pt at that
size (`RC`; mathtext's superscripts, as the 2 of R², are 70 % of their line, as in LaTeX); SVGs keep text as text (`svg.fonttype: none`) so a paper's editor can restyle it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WIDTH = 7.0  # inches: a two-column paper's text width
MIN_PT = 8

RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "legend.title_fontsize": 8, "figure.titlesize": 10, "svg.fonttype": "none",
    "axes.grid": True, "grid.alpha": 0.3, "savefig.dpi": 200,
}

# The papers' names for the algorithms (conf/algo ids as keys).
ALGO_NAMES = {
    "dpo": "DPO", "ipo": "IPO", "ipo_daa": "IPO (DAA)", "slic": "SLiC", "simpo": "SimPO", "alphapo": "AlphaPO",
    "rdpo": "R-DPO", "cdpo": "cDPO", "robust_dpo": "Robust DPO", "exo": "EXO", "nca": "NCA", "bco": "BCO",
    "sppo_hard": "SPPO (hard)", "apo_zero": "APO-zero", "apo_down": "APO-down", "discopop": "DiscoPOP",
    "dpo_norm": "DPO (per token)", "aot": "AOT", "aot_unpaired": "AOT (unpaired)", "orpo": "ORPO", "kto": "KTO",
}

# KL(pi || pi_ref) as the papers write it on their axes (a subscript would print below 8 pt)
SQRT_KL = r"$\sqrt{\mathrm{KL}}$"
KL = r"$\mathrm{KL}$ (nats)"
R2 = r"$R^2$"


def algo_name(algo: str) -> str:
    """The algorithm's name as its paper writes it ("alphapo (a=0.25)" -> "AlphaPO (a=0.25)"; an
    unknown id is shown as it is)."""
    head, _, rest = str(algo).partition(" ")
    return ALGO_NAMES.get(head, head) + (f" {rest}" if rest else "")


def _num(value: Any) -> str:
    return f"{float(value):g}"


def shape_columns(rows: Any) -> list[str]:
    """The reward-shape hyperparameters (alpha, gamma) that take more than one value in `rows`:
    these label each run; a single value goes into the panel's title (`panel_title`)."""
    return [c for c in ("alpha", "gamma") if c in rows and rows[c].dropna().nunique() > 1]


def run_label(run: Any, vary: list[str]) -> str:
    """A run's legend label in mathtext: beta, and the alpha/gamma in `vary` when the run has them."""
    parts = [rf"$\beta$={_num(run['beta'])}"]
    for column in vary:
        value = run.get(column)
        if value is not None and value == value:
            parts.append(rf"$\{column}$={_num(value)}")
    return ", ".join(parts)


def panel_title(algo: str, rows: Any, suffix: str = "") -> str:
    """The algorithm's name plus the alpha/gamma all its runs in `rows` share, e.g. "SimPO (γ=0.2)"."""
    fixed = []
    for column in ("alpha", "gamma"):
        if column in rows:
            values = rows.loc[rows["algo"] == algo, column].dropna().unique()
            if len(values) == 1:
                fixed.append(rf"$\{column}$={_num(values[0])}")
    title = algo_name(algo) + (f" ({', '.join(fixed)})" if fixed else "")
    return f"{title}{suffix}"


def figure_size(columns: int, height_per_row: float, rows: int = 1) -> tuple[float, float]:
    """(width, height) in inches: `WIDTH` wide whatever the number of panels (narrower for one)."""
    width = WIDTH if columns > 1 else WIDTH * 0.62
    return width, height_per_row * rows + 0.9


def figure_legend(fig: Any, title: str | None = None) -> Any:
    """The figure's one legend, below its panels: one entry per label over every axes."""
    seen: dict[str, Any] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if not seen:
        return None
    ncol = min(len(seen), 4 if fig.get_figwidth() > 0.8 * WIDTH else 2)  # within the figure's width
    return fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center", ncol=ncol, title=title,
                      frameon=False)


def fitted_curve(predict: Any, d_low: float, d_high: float, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A fitted win-rate curve over the measured sqrt(KL) range [d_low, d_high] only, its values
    clipped to [0, 1] (a win rate): (d, win rate), each of shape (points,)."""
    d = np.linspace(float(d_low), float(d_high), points)
    return d, np.clip(np.asarray(predict(d), dtype=float), 0.0, 1.0)
