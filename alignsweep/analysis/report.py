"""`python -m alignsweep report SWEEP_DIR`: the sweep's results and fits in the terminal, and a
self-contained `report.html` (tables and figures inlined) that can be mailed or archived alone."""

from __future__ import annotations

import base64
import html
import sys
from pathlib import Path

from alignsweep.cli_style import tool_parser

FIT_COLUMNS = ["algo", "model", "form", "checkpoints", "n", "alpha", "beta", "baseline", "d_peak", "d_peak_se",
               "extrapolated", "peak", "rmse", "alpha_se", "beta_se", "baseline_se", "error"]


def fit_table(fitted):
    if fitted.empty:
        return fitted
    return fitted[[c for c in FIT_COLUMNS if c in fitted.columns]]


def build(sweep_dir: Path) -> Path:
    import pandas as pd

    from alignsweep.analysis.plots import draw_all
    from alignsweep.analysis.summarize import fits
    from alignsweep.results.collect import collect, summary

    sweep_dir = Path(sweep_dir)
    table = collect(sweep_dir)
    fitted = fits(table)
    runs = summary(table)
    drawn = draw_all(table, sweep_dir / "figures", fits=fitted) if "win_rate" in table.columns else {}
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print("Results (per run)")
        print(runs.to_string(index=False) if not runs.empty else "  no evaluated checkpoints yet")
        print("\nScaling-law fits (R(d) = baseline + d(alpha - beta log d) | d(alpha - beta d), d = sqrt(KL))")
        print(fit_table(fitted).to_string(index=False) if not fitted.empty else "  nothing to fit yet")
    states = table.groupby("run")["status"].first().value_counts().to_dict() if not table.empty else {}
    sections = [
        f"<h1>alignsweep report: {html.escape(sweep_dir.name)}</h1>",
        "<p>" + ", ".join(f"{n} {html.escape(str(s))}" for s, n in sorted(states.items())) + " runs</p>",
        "<h2>Results per run</h2>",
        runs.to_html(index=False, float_format="{:.3f}".format, na_rep="-") if not runs.empty else "<p>none</p>",
        "<h2>Scaling-law fits</h2>",
        "<p>R(d) = baseline + d (alpha - beta log d) (log) or d (alpha - beta d) (quadratic), d = sqrt(KL);"
        " baseline = the step-0 (SFT) win rate, its standard error propagated into every other;"
        " d_peak = the sqrt(KL) beyond which win rate falls, extrapolated = beyond the measured range"
        " (the data do not show that peak).</p>",
        fit_table(fitted).to_html(index=False, float_format="{:.4g}".format, na_rep="-")
        if not fitted.empty else "<p>nothing to fit yet</p>",
    ]
    for name, paths in drawn.items():
        png = next(p for p in paths if p.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode()
        sections.append(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>alignsweep report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} img{max-width:100%}"
        "</style></head><body>" + "\n".join(sections) + "</body></html>"
    )
    out = sweep_dir / "report.html"
    out.write_text(page)
    print(f"\n[alignsweep] report: {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    from alignsweep.results.collect import run_dirs

    parser = tool_parser("python -m alignsweep report", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep directory (or one run directory)")
    sweep_dir = parser.parse_args(argv).sweep_dir
    if not sweep_dir.is_dir() or not run_dirs(sweep_dir):
        print(f"error: {sweep_dir} holds no run directories (no */config.yaml)", file=sys.stderr)
        return 2
    build(sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
