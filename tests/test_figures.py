"""Figures fit for a paper (issue 20): read back from the saved SVGs (text kept as text) of a
synthetic sweep with known over-optimization curves, built as tests/test_fit_calibration.py does."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from alignsweep.analysis.figure_style import MIN_PT, WIDTH, algo_name, fitted_curve

ALPHA, BETA, BASE, SE = 0.30, 0.15, 0.50, 0.03
SVG = "{http://www.w3.org/2000/svg}"


def curve(d):
    d = np.asarray(d, dtype=float)
    return BASE + d * (ALPHA - BETA * np.where(d > 0, np.log(np.where(d > 0, d, 1.0)), 0.0))


def synthetic_table() -> pd.DataFrame:
    """Four algorithms x two models x three betas, six checkpoints each; SimPO's gamma differs
    between its runs (gamma = 0.1 beta), AlphaPO's alpha is the same for all of them."""
    rng = np.random.default_rng(0)
    rows, run = [], 0
    for algo in ("dpo", "ipo_daa", "simpo", "alphapo"):
        for model in ("pythia_1b", "pythia_2_8b"):
            for beta, final in ((0.05, 5.0), (0.2, 3.0), (1.0, 1.0)):
                run += 1
                for k in range(6):
                    d = final * k / 5
                    rows.append(dict(
                        run=str(run), algo=algo, model=model, beta=beta, step=10 * k, progress=k / 5,
                        alpha=0.25 if algo == "alphapo" else None,
                        gamma=0.1 * beta if algo in ("simpo", "alphapo") else None,
                        sqrt_kl=d, kl=d * d, win_rate=float(np.clip(curve(d) + rng.normal(0, SE), 0, 1)),
                        win_rate_se=SE, length_r2=0.5 / (1 + d), chosen_logp=-10 - d, rejected_logp=-12 - 3 * d,
                    ))
    return pd.DataFrame(rows)


def kept_figures(draw, *args, **kwargs) -> list:
    """Run `draw`, keeping the matplotlib figures it saves (it closes them) to read their artists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept, close = [], plt.close
    plt.close = lambda fig=None: kept.append(fig)
    try:
        draw(*args, **kwargs)
    finally:
        plt.close = close
    return kept


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    from alignsweep.analysis.plots import draw_all, plot_winrate_vs_kl
    from alignsweep.analysis.summarize import fits

    out = tmp_path_factory.mktemp("figures")
    table = synthetic_table()
    fitted = fits(table)
    figures = draw_all(table, out, fits=fitted)
    figures["headline"] = [plot_winrate_vs_kl(table, out / "headline.png"), out / "headline.svg"]
    return table, {name: ET.parse(next(p for p in paths if p.suffix == ".svg")) for name, paths in figures.items()}


def _labels(fig) -> list[str]:
    """The raw strings (mathtext source) of every title, axis label, legend entry and suptitle."""
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    for legend in fig.legends:
        out += [t.get_text() for t in legend.get_texts()]
    return [t for t in out if t]


def _texts(tree) -> list[tuple[str, float]]:
    """(text, font size in pt) of every text element (SVG user units are points in matplotlib's SVGs);
    a mathtext label's size is its line's (its largest part: super/subscripts are 70 %, as in LaTeX)."""
    out = []
    for element in tree.iter(f"{SVG}text"):
        sizes = [float(m) for e in element.iter() for m in re.findall(r"font-size:\s*([\d.]+)px", e.get("style", ""))]
        text = "".join(e.text or "" for e in element.iter()).replace("\xa0", " ").strip()  # not the tails' indentation
        if text:
            out.append((text, max(sizes)))
    return out


def test_every_figure_is_at_most_seven_inches_wide_and_its_text_at_least_8_pt(drawn):
    _, trees = drawn
    assert set(trees) == {"fig1_overoptimization", "fig2_length", "fig3_dynamics", "fig4_likelihood", "headline"}
    for name, tree in trees.items():
        width = float(tree.getroot().get("width").removesuffix("pt"))
        assert width <= WIDTH * 72 + 0.5, (name, width)
        texts = _texts(tree)
        assert texts, name
        small = [(t, s) for t, s in texts if s < MIN_PT]
        assert not small, (name, small)


def test_one_legend_per_figure_and_the_algorithms_own_names(drawn):
    _, trees = drawn
    for name, tree in trees.items():
        legends = [g for g in tree.iter(f"{SVG}g") if (g.get("id") or "").startswith("legend_")]
        assert len(legends) == 1, (name, len(legends))
        texts = " ".join(t for t, _ in _texts(tree))
        assert "DPO" in texts and "IPO (DAA)" in texts and "SimPO" in texts and "AlphaPO" in texts, name
        assert "IPO_DAA" not in texts and "ALPHAPO" not in texts and "SIMPO" not in texts, name


def test_labels_are_mathtext_and_alpha_gamma_shown_where_they_differ(drawn, tmp_path):
    from alignsweep.analysis.plots import figure_length, plot_winrate_vs_kl

    table, trees = drawn
    fig1 = " ".join(t for t, _ in _texts(trees["fig1_overoptimization"]))
    assert "√" in fig1 and "±" in fig1 and "sqrt(" not in fig1 and "pi_ref" not in fig1  # rendered mathtext
    (headline,) = kept_figures(plot_winrate_vs_kl, table, tmp_path / "h.png")
    labels = _labels(headline)
    assert r"$\sqrt{\mathrm{KL}}$" in labels
    titles = [ax.get_title() for ax in headline.axes]
    assert titles == ["DPO", "IPO (DAA)", "SimPO", r"AlphaPO ($\alpha$=0.25)"]  # shared alpha: in the title
    legend = [t.get_text() for t in headline.legends[0].get_texts()]
    # SimPO's and AlphaPO's gamma differ between runs: in their runs' labels
    assert r"$\beta$=0.05" in legend and r"$\beta$=0.05, $\gamma$=0.005" in legend and r"$\beta$=1, $\gamma$=0.1" in legend
    (length,) = kept_figures(figure_length, table, tmp_path / "l.png")
    assert any(label.startswith("$R^2$") for label in _labels(length))
    for fig in (headline, length):  # the legend lies within the saved figure
        fig.canvas.draw()
        box, page = fig.legends[0].get_window_extent(), fig.bbox
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y0 >= page.y0 - 1, (box, page)
    assert not [t for f in (headline, length) for t in _labels(f) if "sqrt(" in t or "R^2:" in t.replace("$R^2$", "")]


def test_fitted_curves_stay_in_the_measured_range_and_in_0_1():
    wild = lambda d: 0.5 + 2.0 * d - 0.1 * d * d  # noqa: E731 (a fit that leaves [0, 1] inside the range)
    d, y = fitted_curve(wild, 0.3, 4.0)
    assert d.min() == pytest.approx(0.3) and d.max() == pytest.approx(4.0)
    assert y.min() >= 0.0 and y.max() <= 1.0 and y.max() == 1.0


def test_figure_1_draws_each_fit_over_its_own_points_only(drawn, tmp_path):
    from alignsweep.analysis import plots
    from alignsweep.analysis.summarize import fits

    table, _ = drawn
    table = table[table["algo"] == "dpo"]
    (fig,) = kept_figures(plots.figure_overoptimization, table, tmp_path / "fig1", fits=fits(table))
    finals = plots._finals(plots._evaluated(table))
    for ax, data in zip(fig.axes, (finals, table)):
        dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert len(dotted) == 2  # one fit per model
        for line in dotted:
            x, y = line.get_xdata(), line.get_ydata()
            assert x.min() >= data["sqrt_kl"].min() - 1e-9 and x.max() <= data["sqrt_kl"].max() + 1e-9
            assert ((0 <= y) & (y <= 1)).all()
    assert algo_name("rdpo") == "R-DPO" and algo_name("slic") == "SLiC"
