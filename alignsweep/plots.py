"""Figures of a collected sweep."""

from __future__ import annotations

from pathlib import Path


def plot_winrate_vs_kl(table, path: Path) -> Path:
    """Win rate against sqrt(KL): one panel per algorithm, one line per beta (its checkpoints in
    training order), the final checkpoint marked; error bars are one standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.dropna(subset=["step", "win_rate", "sqrt_kl"])
    algos = sorted(rows["algo"].unique())
    fig, axes = plt.subplots(1, len(algos), figsize=(3.6 * len(algos), 3.4), sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, algo in zip(axes[0], algos):
        sub = rows[rows["algo"] == algo]
        betas = sorted(sub["beta"].unique())
        for i, beta in enumerate(betas):
            color = cmap(i / max(1, len(betas) - 1))
            for _, run in sub[sub["beta"] == beta].groupby("run"):
                run = run.sort_values("step")
                ax.errorbar(
                    run["sqrt_kl"], run["win_rate"], yerr=run["win_rate_se"], color=color, marker="o",
                    markersize=3, linewidth=1, capsize=2, label=f"beta={beta:g}",
                )
                last = run.iloc[-1]
                ax.plot(last["sqrt_kl"], last["win_rate"], marker="*", markersize=11, color=color)
        ax.set_title(algo.upper())
        ax.set_xlabel("sqrt(KL(pi || pi_ref))")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    axes[0][0].set_ylabel("win rate vs reference")
    fig.suptitle("Win rate against sqrt(KL); star = final checkpoint", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
