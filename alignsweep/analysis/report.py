"""`python -m alignsweep report SWEEP_DIR`: the sweep's results and fits in the terminal, and a
self-contained `report.html` (tables and figures inlined) that can be mailed or archived alone.

The page opens with the headline figure (win rate against sqrt(KL)), then the results per run, the
scaling-law fits, the means across seeds and the regressions on model size when the sweep has them,
the figures, a few samples per checkpoint when the runs kept them, and what
an archive needs: the commands and overrides that launched the sweep, the code's commit, the date,
the library versions, the models, data, judge and number of evaluation prompts.
"""

from __future__ import annotations

import base64
import html
import json
import sys
from pathlib import Path

from alignsweep.analysis.seeds import CHECKPOINT_COLUMNS
from alignsweep.cli_style import add_sweep_dir, tool_parser

# The fits' own parameters are not the losses' alpha and beta: they are shown under these names.
FIT_NAMES = {
    "alpha": "fit_a (slope)", "beta": "fit_b (curvature)", "alpha_se": "fit_a SE", "beta_se": "fit_b SE",
    "baseline": "R0 (step 0)", "baseline_se": "R0 SE", "d_peak": "sqrt(KL) at peak",
    "d_peak_se": "sqrt(KL) at peak SE", "peak": "peak win rate", "peak_se": "peak win rate SE",
}
FIT_COLUMNS = ["algo", "model", "form", "checkpoints", "n", "alpha", "beta", "baseline", "d_peak", "d_peak_se",
               "extrapolated", "peak", "peak_se", "rmse", "alpha_se", "beta_se", "baseline_se", "uncertainty", "error"]
FIGURE_TITLES = {
    "fig1_overoptimization": "Over-optimization: win rate against sqrt(KL) with the fitted scaling laws",
    "fig2_length": "Length: how much of the implicit reward response length explains",
    "fig3_dynamics": "Training dynamics: win rate and sqrt(KL) over training",
    "fig4_likelihood": "Likelihood displacement: held-out log-likelihood of chosen and rejected responses",
    "tree_mdp_ood_mass": "Tree MDP: probability mass on trajectories outside the data",
    "fig5_seeds": "Across seeds: mean win rate and length-controlled win rate with 95% bands",
    "fig6_scaling": "Across model sizes: peak position, peak win rate and curvature against parameters",
}
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:12px}"
         "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} img{max-width:100%} pre{white-space:pre-wrap}")


def fit_table(fitted):
    """The fits' columns a reader needs, with the fit parameters named apart from the losses' alpha/beta."""
    if fitted.empty:
        return fitted
    return fitted[[c for c in FIT_COLUMNS if c in fitted.columns]].rename(columns=FIT_NAMES)


SCALING_COLUMNS = ["algo", "form", "checkpoints", "quantity", "n_sizes", "slope", "slope_ci_low", "slope_ci_high",
                   "answer", "predict_params", "prediction", "prediction_ci_low", "prediction_ci_high", "note"]


def seed_table(by_seed):
    """The final checkpoint of each configuration across seeds: mean and 95% interval of the win
    rate, its length-controlled twin and sqrt(KL), and the number of seeds."""
    import pandas as pd

    if by_seed is None or by_seed.empty:
        return pd.DataFrame()
    keys = [c for c in by_seed.columns if c not in CHECKPOINT_COLUMNS
            and not c.endswith(("_mean", "_sd", "_ci_low", "_ci_high"))]
    final = by_seed.loc[by_seed.groupby(keys, dropna=False)["step"].idxmax()]
    metrics = [f"{m}_{s}" for m in ("win_rate", "lc_win_rate", "sqrt_kl") for s in ("mean", "ci_low", "ci_high")]
    return final[[*keys, "step", "n_seeds", *[c for c in metrics if c in final.columns]]].reset_index(drop=True)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _launches(sweep_dir: Path) -> list[dict]:
    """Every launch recorded for the sweep (manifest.json), or the single run's provenance.json."""
    from alignsweep.results.provenance import FILE

    manifest = sweep_dir / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text()).get("launches", [])
    single = sweep_dir / FILE
    return [json.loads(single.read_text())] if single.exists() else []


def _setup(sweep_dir: Path) -> dict[str, set]:
    """The algorithms, models, data and judges of the sweep's runs (their config.json)."""
    from alignsweep.results import rundir
    from alignsweep.results.collect import run_dirs

    found: dict[str, set] = {"algorithms": set(), "models": set(), "data": set(), "judges": set()}
    for run_dir in run_dirs(sweep_dir):
        try:
            config = json.loads((run_dir / rundir.CONFIG_JSON).read_text())
        except (OSError, ValueError):
            continue
        for label, section in (("algorithms", "algo"), ("models", "model"), ("data", "data"), ("judges", "judge")):
            name = (config.get(section) or {}).get("name")
            if name:
                found[label].add(str(name))
    return {label: values for label, values in found.items() if values}


def archive_section(sweep_dir: Path, table) -> str:
    """The provenance of the sweep, as an HTML section."""
    launches = _launches(sweep_dir)
    items = []
    for launch in launches:
        versions = ", ".join(f"{k} {v}" for k, v in launch.get("versions", {}).items())
        items.append(
            f"<li><code>{html.escape(launch.get('command', '?'))}</code><br>on {html.escape(launch.get('date', '?'))}, "
            f"code commit <code>{html.escape(str(launch.get('commit') or 'unknown (not a git checkout)'))}</code>, "
            f"Python {html.escape(launch.get('python', '?'))}; {html.escape(versions)}</li>"
        )
    facts = []
    for label, values in _setup(sweep_dir).items():
        facts.append(f"<li>{label}: {html.escape(', '.join(sorted(values)))}</li>")
    if "n_eval" in table.columns and table["n_eval"].notna().any():
        facts.append(f"<li>evaluation prompts per checkpoint: {int(table['n_eval'].max())}</li>")
    return (
        "<h2 id='archive'>Archive: how this sweep was made</h2>"
        + ("<ul>" + "".join(items) + "</ul>" if items else "<p>no launch recorded (an older sweep)</p>")
        + "<ul>" + "".join(facts) + "</ul>"
    )


def samples_section(sweep_dir: Path, per_checkpoint: int = 2) -> str:
    """A few samples per checkpoint of each run, from the runs' kept samples
    (RUN_DIR/samples/step_NNNNNN.jsonl, read by `alignsweep.results.collect.collect_samples`)."""
    from alignsweep.results.collect import collect_samples

    parts = []
    table = collect_samples(sweep_dir)
    for run, kept in (table.groupby("run", sort=False) if not table.empty else ()):
        rows = kept.sort_values(["step", "index"]).groupby("step").head(per_checkpoint).to_dict("records")
        cells = "".join(
            f"<tr><td>{html.escape(str(r.get('step')))}</td><td><pre>{html.escape(str(r.get('prompt', '')))}</pre></td>"
            f"<td><pre>{html.escape(str(r.get('sample', '')))}</pre></td>"
            f"<td><pre>{html.escape(str(r.get('reference', '')))}</pre></td><td>{html.escape(str(r.get('verdict')))}</td></tr>"
            for r in rows
        )
        parts.append(f"<h3>{html.escape(str(run))}</h3><table><tr><th>step</th><th>prompt</th><th>sample</th>"
                     f"<th>reference</th><th>verdict</th></tr>{cells}</table>")
    body = "".join(parts) or "<p>no samples kept by these runs</p>"
    return f"<h2 id='samples'>Samples</h2>{body}"


def build(sweep_dir: Path) -> Path:
    import pandas as pd

    from alignsweep.analysis.plots import draw_all, plot_winrate_vs_kl
    from alignsweep.analysis.scaling import headline as scaling_headline
    from alignsweep.analysis.summarize import analyse
    from alignsweep.results.collect import collect, summary

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    fitted, by_seed, scaling, sizes = analyse(table, sweep_dir)
    runs = summary(table)
    evaluated = "win_rate" in table.columns
    headline = plot_winrate_vs_kl(table, sweep_dir / "winrate_vs_sqrt_kl.png") if evaluated else None
    drawn = draw_all(table, sweep_dir / "figures", fits=fitted, by_seed=by_seed, scaling=scaling,
                     sizes=sizes) if evaluated else {}
    seeds_view = seed_table(by_seed)
    answers = scaling_headline(scaling)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print("Results (per run)")
        print(runs.to_string(index=False) if not runs.empty else "  no evaluated checkpoints yet")
        print("\nScaling-law fits (R(d) = R0 + d(fit_a - fit_b log d) | d(fit_a - fit_b d), d = sqrt(KL))")
        print(fit_table(fitted).to_string(index=False) if not fitted.empty else "  nothing to fit yet")
        if not seeds_view.empty:
            print("\nAcross seeds (final checkpoints; mean and 95% CI over seeds)")
            print(seeds_view.to_string(index=False))
        if not scaling.empty:
            print("\nAcross model sizes: do larger models degrade less?")
            print("\n".join(answers))
            print(scaling[SCALING_COLUMNS].to_string(index=False))
    states = table.groupby("run")["status"].first().value_counts().to_dict() if not table.empty else {}
    sections = [
        f"<h1>alignsweep report: {html.escape(sweep_dir.name)}</h1>",
        "<p>" + ", ".join(f"{n} {html.escape(str(s))}" for s, n in sorted(states.items())) + " runs</p>",
        "<h2 id='headline'>Win rate against sqrt(KL)</h2>"
        + (_image(headline, "win rate against sqrt(KL)") if headline else "<p>no evaluated checkpoints yet</p>"),
        "<h2 id='results'>Results per run</h2>",
        runs.to_html(index=False, float_format="{:.3f}".format, na_rep="-") if not runs.empty else "<p>none</p>",
        "<h2 id='fits'>Scaling-law fits</h2>",
        "<p>R(d) = R0 + d (fit_a - fit_b log d) (log form) or R0 + d (fit_a - fit_b d) (quadratic form), d = sqrt(KL)"
        " (Rafailov et al. 2024, after Gao et al. 2022); R0 = the step-0 (SFT) win rate, its standard error propagated"
        " into every other; fit_a and fit_b are the fit's own parameters, not the losses' alpha and beta; the peak is"
        " where the fitted win rate is highest, extrapolated = beyond the measured sqrt(KL) range (the data do not"
        " show that peak).</p>",
        fit_table(fitted).to_html(index=False, float_format="{:.4g}".format, na_rep="-")
        if not fitted.empty else "<p>nothing to fit yet</p>",
    ]
    if not seeds_view.empty:
        sections += ["<h2 id='seeds'>Across seeds</h2><p>Final checkpoint of each configuration: the mean over its "
                     "seeds and the 95% t-interval of that mean (all checkpoints: results_by_seed.csv).</p>",
                     seeds_view.to_html(index=False, float_format="{:.4g}".format, na_rep="-")]
    if not scaling.empty:
        sections += ["<h2 id='scaling'>Across model sizes: do larger models degrade less?</h2><p>"
                     + "<br>".join(html.escape(a) for a in answers) + "</p><p>Weighted regressions of the fitted peak "
                     "position (log d*), peak win rate and curvature on log10(parameters); prediction at an unseen "
                     "size with the 95% interval of the regression line (scaling.csv).</p>",
                     scaling[SCALING_COLUMNS].to_html(index=False, float_format="{:.4g}".format, na_rep="-")]
    sections.append("<h2 id='figures'>Figures</h2>")
    for name, paths in drawn.items():
        title = FIGURE_TITLES.get(name, name)
        png = next(p for p in paths if p.suffix == ".png")
        sections.append(f"<h3 id='{html.escape(name)}'>{html.escape(title)}</h3>{_image(png, title)}")
    sections += [samples_section(sweep_dir), archive_section(sweep_dir, table)]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>alignsweep report: {html.escape(sweep_dir.name)}"
        f"</title><style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
    out = sweep_dir / "report.html"
    out.write_text(page)
    print(f"\n[alignsweep] report: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    from alignsweep.analysis.summarize import runs_lacking

    parser = tool_parser("python -m alignsweep report", __doc__)
    add_sweep_dir(parser, "a sweep directory (or one run directory)", holds=runs_lacking)
    build(parser.parse_args(argv).sweep_dir)
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
