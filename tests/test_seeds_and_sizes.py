"""Seeds and model sizes as dimensions of a sweep: `python -m alignsweep collect` / `report` on run
directories written as the worker writes them (config, status, metrics.jsonl through
alignsweep.results.rundir), with curves, seed noise and size trends known here.

Expected values come from numpy/scipy in this file (means, Student-t intervals), never from the
code under test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from alignsweep.analysis.report import build
from alignsweep.analysis.summarize import collect_and_report
from alignsweep.results import rundir

BETAS = (0.05, 0.1, 0.5)
STEPS = (0, 10, 20, 30, 40)
SIZES = {"m_small": 1_000_000, "m_big": 10_000_000}


def curve(d: float, a: float = 0.3, b: float = 0.15, base: float = 0.3) -> float:
    """The log form R(d) = base + d (a - b log d)."""
    return base + (d * (a - b * math.log(d)) if d > 0 else 0.0)


def write_run(run_dir: Path, *, algo: str, model: str, beta: float, seed: int, rows: list[dict], state: str,
              params: int | None) -> None:
    run_dir.mkdir(parents=True)
    config = {"algo": {"name": algo, "beta": beta}, "model": {"name": model}, "data": {"name": "embedded"},
              "beta": beta, "seed": seed, "kl_budget": None}
    (run_dir / rundir.CONFIG).write_text(yaml.safe_dump(config))
    (run_dir / rundir.CONFIG_JSON).write_text(json.dumps(config))
    rundir.write_status(run_dir, state=state, **({"model_params": params} if params else {}))
    for row in rows:
        rundir.append_metrics(run_dir, row)


def make_sweep(root: Path, seeds=(0, 1, 2), models=("m_small",), fail_last=True) -> dict:
    """dpo over BETAS x seeds x models; each run's d grows with its step (faster for small beta;
    larger models reach a given d later and peak higher), win rate on the curve plus the run's own
    noise. With `fail_last` seed 2 of beta 0.5 fails after step 20. Returns what was written."""
    rng = np.random.default_rng(0)
    written = {}
    i = 0
    for model in models:
        lift = 0.05 if model == "m_big" else 0.0
        for beta in BETAS:
            for seed in seeds:
                rows = []
                failed = fail_last and beta == 0.5 and seed == 2
                for step in STEPS:
                    if failed and step > 20:
                        break
                    d = step / 40 * 3.0 / (1 + 4 * beta)
                    win = curve(d, base=0.3 + lift) + (rng.normal(0, 0.02) if step else 0.0)
                    rows.append({"step": step, "progress": step / 40, "sqrt_kl": d, "kl": d * d, "win_rate": win,
                                 "win_rate_se": 0.02, "lc_win_rate": win - 0.05 + rng.normal(0, 0.01),
                                 "lc_win_rate_se": 0.03})
                written[(model, beta, seed)] = rows
                write_run(root / str(i), algo="dpo", model=model, beta=beta, seed=seed, rows=rows,
                          state="failed" if failed else "completed", params=SIZES[model])
                i += 1
    return written


def test_collect_aggregates_seeds_with_t_intervals_and_bootstraps_the_fits_within_each_beta(tmp_path, capsys):
    written = make_sweep(tmp_path)
    collect_and_report(tmp_path)
    by_seed = pd.read_csv(tmp_path / "results_by_seed.csv")
    assert len(by_seed) == len(BETAS) * len(STEPS)  # one row per (configuration, checkpoint)
    for beta in BETAS:
        for step in STEPS:
            values = np.array([r["win_rate"] for s in (0, 1, 2) for r in written[("m_small", beta, s)]
                               if r["step"] == step])
            row = by_seed[(by_seed["beta"] == beta) & (by_seed["step"] == step)].iloc[0]
            assert row["n_seeds"] == values.size and row["win_rate_mean"] == pytest.approx(values.mean())
            half = stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
            if step:
                assert row["win_rate_ci_low"] == pytest.approx(values.mean() - half)
                assert row["win_rate_ci_high"] == pytest.approx(values.mean() + half)
            assert "lc_win_rate_mean" in row and "sqrt_kl_ci_high" in row
    # the failed seed counts where it was evaluated, and no further: never silently
    late = by_seed[(by_seed["beta"] == 0.5) & (by_seed["step"] == 40)].iloc[0]
    assert late["n_seeds"] == 2 and late["seeds"] == "0,1"
    fits = pd.read_csv(tmp_path / "fits.csv")
    assert set(fits["uncertainty"]) == {"bootstrap: 1000 resamples of runs within beta"}
    log_all = fits[(fits["form"] == "log") & (fits["checkpoints"] == "all")].iloc[0]
    assert np.isfinite(log_all["d_peak_se"]) and np.isfinite(log_all["peak_se"])
    assert (tmp_path / "figures" / "fig5_seeds.png").stat().st_size > 5_000
    assert "across seeds" in capsys.readouterr().out
    assert not (tmp_path / "scaling.csv").exists()  # one model: no regression on size


def test_one_seed_per_configuration_writes_no_seed_table_and_fits_from_residuals(tmp_path):
    make_sweep(tmp_path, seeds=(0,), fail_last=False)
    (tmp_path / "results_by_seed.csv").write_text("stale")
    collect_and_report(tmp_path, figures=False)
    assert not (tmp_path / "results_by_seed.csv").exists()
    assert set(pd.read_csv(tmp_path / "fits.csv")["uncertainty"]) == {"residuals"}


def test_two_model_sizes_give_the_scaling_table_figure_and_report(tmp_path, capsys):
    make_sweep(tmp_path, models=("m_small", "m_big"), fail_last=False)
    build(tmp_path)
    table = pd.read_csv(tmp_path / "results.csv")
    assert dict(table.groupby("model")["model_params"].first()) == SIZES
    scaling = pd.read_csv(tmp_path / "scaling.csv")
    peak = scaling[(scaling["form"] == "log") & (scaling["checkpoints"] == "all") & (scaling["quantity"] == "peak")]
    row = peak.iloc[0]
    assert row["n_sizes"] == 2 and row["predict_params"] == 1e8
    # the big model's curve is the small one's lifted by 0.05: one decade, +0.05 in peak win rate
    assert row["slope"] == pytest.approx(0.05, abs=3 * row["slope_se"])
    out = capsys.readouterr().out
    assert "do larger models degrade less?" in out
    page = (tmp_path / "report.html").read_text()
    assert "id='scaling'" in page and "id='seeds'" in page and "fig6_scaling" in page
    assert (tmp_path / "figures" / "fig6_scaling.png").stat().st_size > 5_000


def test_a_swept_list_setting_names_configurations_too(tmp_path):
    """A list-valued setting that differs between configurations (cfg.<key> holds lists) still
    groups: two target lists x 2 seeds give two configurations of two seeds each."""
    from alignsweep.analysis.seeds import aggregate_seeds, max_seeds, strata_columns

    rows = [{"run": f"{i}", "algo": "dpo", "model": "m", "beta": 0.1, "seed": i % 2, "step": 10, "win_rate": 0.5 + i / 100,
             "sqrt_kl": 1.0, "cfg.eval.targets": [0.5, 1.0] if i < 2 else [1.5]} for i in range(4)]
    table = pd.DataFrame(rows)
    assert max_seeds(table) == 2 and strata_columns(table) == ["cfg.eval.targets"]
    by_seed = aggregate_seeds(table)
    assert sorted(by_seed["n_seeds"]) == [2, 2] and sorted(by_seed["win_rate_mean"]) == pytest.approx([0.505, 0.525])


@pytest.mark.slow
def test_a_real_seed_sweep_is_aggregated_when_it_ends(cli):
    """`python -m alignsweep -m seed=0,1`: the sweep's own collect writes results_by_seed.csv from
    the two real runs, and its fits bootstrap over them."""
    cli("-m", "seed=0,1", "train.checkpoints=1", "hydra.sweep.dir=sweep")
    sweep = cli.cwd / "sweep"
    table = pd.read_csv(sweep / "results.csv")
    by_seed = pd.read_csv(sweep / "results_by_seed.csv")
    assert sorted(table["seed"].unique()) == [0, 1] and len(by_seed) == table["step"].nunique()
    for _, row in by_seed.iterrows():
        at = table[table["step"] == row["step"]]
        assert row["n_seeds"] == 2 and row["seeds"] == "0,1"
        assert row["win_rate_mean"] == pytest.approx(at["win_rate"].mean())
        assert row["lc_win_rate_mean"] == pytest.approx(at["lc_win_rate"].mean(), nan_ok=True)
    assert set(pd.read_csv(sweep / "fits.csv")["uncertainty"]) == {"bootstrap: 1000 resamples of runs"}
    assert (sweep / "figures" / "fig5_seeds.png").exists()


def test_kl_spaced_checkpoints_of_several_seeds_aggregate_by_target_not_by_step():
    """eval.at=sqrt_kl: each seed crosses a target at its own step. Grouped by step (before), each
    target row was a 'checkpoint' of one seed (n_seeds 1, no interval); grouped by target, the
    seeds' rows at one target are one checkpoint; step 0 and the final step stay step rows."""
    from alignsweep.analysis.seeds import aggregate_seeds

    crossing = {0: {0.5: 6, 1.0: 15}, 1: {0.5: 8, 1.0: 14}, 2: {0.5: 7, 1.0: 19}}
    rows = []
    for seed, steps in crossing.items():
        rows.append({"run": str(seed), "algo": "dpo", "model": "m", "beta": 0.1, "seed": seed, "step": 0,
                     "sqrt_kl_target": None, "win_rate": 0.30, "sqrt_kl": 0.0})
        for target, step in steps.items():
            rows.append({"run": str(seed), "algo": "dpo", "model": "m", "beta": 0.1, "seed": seed, "step": step,
                         "sqrt_kl_target": target, "win_rate": 0.3 + target / 10 + seed / 100, "sqrt_kl": target + 0.01})
        rows.append({"run": str(seed), "algo": "dpo", "model": "m", "beta": 0.1, "seed": seed, "step": 32,
                     "sqrt_kl_target": None, "win_rate": 0.25 + seed / 100, "sqrt_kl": 1.8})
    by_seed = aggregate_seeds(pd.DataFrame(rows))
    assert len(by_seed) == 4 and list(by_seed["n_seeds"]) == [3, 3, 3, 3]
    assert list(by_seed["step"]) == [0, 7, 15, 32]
    targets = by_seed.set_index("step")["sqrt_kl_target"]
    assert math.isnan(targets[0]) and targets[7] == 0.5 and targets[15] == 1.0 and math.isnan(targets[32])
    one = by_seed[by_seed["sqrt_kl_target"] == 1.0].iloc[0]
    assert (one["step_min"], one["step_max"]) == (14, 19)
    values = np.array([0.4 + s / 100 for s in range(3)])
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert one["win_rate_mean"] == pytest.approx(values.mean())
    assert one["win_rate_ci_high"] == pytest.approx(values.mean() + half)


def test_a_kl_spaced_seed_sweep_is_collected_drawn_and_reported_per_target(tmp_path):
    """collect + report on KL-spaced runs of 3 seeds x 2 betas: results_by_seed.csv has one row per
    (beta, target) plus step 0 and the end, the seed figure draws one curve per beta (the target
    and step ranges are not configuration columns) and the report's seed table has one final row
    per beta."""
    rng = np.random.default_rng(1)
    i = 0
    for beta in (0.05, 0.5):
        for seed in (0, 1, 2):
            rows = [{"step": 0, "progress": 0.0, "sqrt_kl": 0.0, "kl": 0.0, "win_rate": 0.3, "win_rate_se": 0.02}]
            for j, target in enumerate((0.5, 1.0, 1.5)):
                d = target + rng.normal(0, 0.03)
                rows.append({"step": 5 * (j + 1) + seed, "progress": (5 * (j + 1) + seed) / 40, "sqrt_kl_target": target, "sqrt_kl": d, "kl": d * d,
                             "win_rate": curve(d) + rng.normal(0, 0.02), "win_rate_se": 0.02})
            rows.append({"step": 40, "progress": 1.0, "sqrt_kl": 1.7, "kl": 2.89, "win_rate": curve(1.7), "win_rate_se": 0.02})
            write_run(tmp_path / str(i), algo="dpo", model="m_small", beta=beta, seed=seed, rows=rows,
                      state="completed", params=SIZES["m_small"])
            i += 1
    build(tmp_path)
    by_seed = pd.read_csv(tmp_path / "results_by_seed.csv")
    assert len(by_seed) == 2 * 5 and set(by_seed["n_seeds"]) == {3}
    assert sorted(by_seed["sqrt_kl_target"].dropna().unique()) == [0.5, 1.0, 1.5]
    assert (tmp_path / "figures" / "fig5_seeds.png").stat().st_size > 5_000
    from alignsweep.analysis.report import seed_table

    final = seed_table(by_seed)
    assert len(final) == 2 and list(final["step"]) == [40, 40]


def test_runs_without_a_parameter_count_are_named_and_left_out_of_the_size_regressions(tmp_path, capsys):
    """Runs from before `model_params` (here: every m_big run) are named once in the collect output
    and left out of the regressions (a Tree MDP sweep, whose policies have no size, says nothing:
    tests/test_tree_mdp.py)."""
    make_sweep(tmp_path, models=("m_small", "m_big"), fail_last=False)
    for status in tmp_path.glob("*/status.json"):
        fields = json.loads(status.read_text())
        if fields.get("model_params") == SIZES["m_big"]:
            del fields["model_params"]
            status.write_text(json.dumps(fields))
    collect_and_report(tmp_path, figures=False)
    out = capsys.readouterr().out
    assert "no parameter count recorded for model(s) m_big (runs older than model_params)" in out
    assert "do larger models degrade less?" not in out  # one size left: no regression
