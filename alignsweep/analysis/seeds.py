"""Seeds as a dimension of a sweep: one row per (configuration, checkpoint) across its seeds.

A configuration is everything that names a job but its seed: algorithm, model, data, beta, alpha,
gamma, KL budget and every `cfg.<key>` column the sweep varies (`alignsweep.results.collect`); a
checkpoint is its `step` (runs of one configuration evaluate at the same steps), or, for a row of
KL-spaced checkpoints (`eval.at=sqrt_kl`), its `sqrt_kl_target`: seeds cross a target at different
steps, so their rows at one target are one checkpoint (its `step` is then the median over the seeds,
and `step_min`/`step_max` give the range). For each metric
the aggregated row holds the mean over the seeds that reached that checkpoint, their standard
deviation and a two-sided 95% confidence interval of the mean, mean -/+ t(k-1) sd / sqrt(k)
(Student's t over k seeds; NaN with one seed). The spread across seeds is what a reader needs to
trust a difference: it holds the training's randomness (data order, initialisation of what is
trained) and the evaluation's (each job samples with its own seed), not only the latter, which is
all a single run's standard error `win_rate_se` can show. `n_seeds` says how many seeds a row
averages (a failed or unfinished seed lowers it, never silently) and `seeds` which.

Written as `results_by_seed.csv` by `python -m alignsweep collect` when a configuration has more
than one seed; the figure `fig5_seeds` draws the means with their intervals as bands.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from scipy import stats

CONFIG_ID = ("algo", "model", "data", "beta", "alpha", "gamma", "kl_budget")
# the metrics aggregated (those the table has); the rest of a row stays per run in results.csv
METRICS = ("win_rate", "lc_win_rate", "sqrt_kl", "kl", "gold_reward", "rm_reward", "response_length", "length_r2",
           "length_r2_log_ratio", "reward_accuracy", "chosen_logp", "rejected_logp", "train_loss", "progress")


# the columns of an aggregated row that name its checkpoint or count its seeds, not its configuration
CHECKPOINT_COLUMNS = ("step", "sqrt_kl_target", "step_min", "step_max", "n_seeds", "seeds", "runs")


def configuration_columns(table: Any) -> list[str]:
    """The columns that name a configuration (a job but its seed) and that the table fills somewhere."""
    columns = [*CONFIG_ID, *sorted(c for c in table.columns if str(c).startswith("cfg."))]
    return [c for c in columns if c in table.columns and table[c].notna().any()]


def _hashable(table: Any, columns: list[str]) -> Any:
    """`table` with list or dict values of `columns` (a swept list setting) written as text, so
    that they can name a group."""
    out = table.copy()
    for column in columns:
        if out[column].map(lambda v: isinstance(v, (list, dict, tuple))).any():
            out[column] = out[column].map(lambda v: repr(v) if isinstance(v, (list, dict, tuple)) else v)
    return out


def max_seeds(table: Any) -> int:
    """The most seeds any configuration of the table has (0 for a table without runs)."""
    if table.empty or "seed" not in table.columns:
        return 0
    keys = configuration_columns(table)
    if not keys:
        return int(table["seed"].nunique())
    return int(_hashable(table, keys).groupby(keys, dropna=False)["seed"].nunique().max())


def aggregate_seeds(table: Any, level: float = 0.95) -> Any:
    """One row per (configuration, checkpoint: step or sqrt_kl_target): for each metric m of `METRICS` in the table, `m_mean`,
    `m_sd` (across seeds, ddof 1), `m_ci_low`, `m_ci_high` (the `level` t-interval of the mean);
    `n_seeds`, `seeds` (comma-separated), `runs`. Rows without a step (runs never evaluated) and
    NaN values (e.g. an undefined lc_win_rate) are left out of the means, and `n_seeds` counts the
    seeds with a value of the win rate. Returns an empty DataFrame for a table without steps."""
    import pandas as pd

    if table.empty or "step" not in table.columns:
        return pd.DataFrame()
    evaluated = table.dropna(subset=["step"]).copy()
    by_target = "sqrt_kl_target" in evaluated.columns and evaluated["sqrt_kl_target"].notna().any()
    if by_target:  # a target row is named by its target, a step row (step 0, the end) by its step
        target = pd.to_numeric(evaluated["sqrt_kl_target"], errors="coerce")
        evaluated["sqrt_kl_target"] = target
        evaluated["_step_key"] = evaluated["step"].where(target.isna(), -1)
    keys = [*configuration_columns(evaluated), *(["sqrt_kl_target", "_step_key"] if by_target else ["step"])]
    evaluated = _hashable(evaluated, keys)
    metrics = [m for m in METRICS if m in evaluated.columns]
    out = []
    for key, group in evaluated.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        if by_target:
            del row["_step_key"]
            steps = pd.to_numeric(group["step"]).to_numpy(dtype=float)
            row.update(step=float(np.median(steps)), step_min=int(steps.min()), step_max=int(steps.max()))
        for metric in metrics:
            values = pd.to_numeric(group[metric], errors="coerce").dropna().to_numpy(dtype=float)
            row.update(_mean_interval(metric, values, level))
        counted = group.dropna(subset=["win_rate"]) if "win_rate" in group.columns else group
        row["n_seeds"] = int(counted["seed"].nunique())
        row["seeds"] = ",".join(str(s) for s in sorted(counted["seed"].unique(), key=float))
        row["runs"] = ",".join(str(r) for r in group["run"])
        out.append(row)
    frame = pd.DataFrame(out)
    frame["step"] = frame["step"].round().astype(int)
    return frame.sort_values([*keys[:-2], "step"]).reset_index(drop=True) if by_target else frame


def _mean_interval(metric: str, values: Any, level: float) -> dict:
    k = values.size
    nan = math.nan
    if k == 0:
        return {f"{metric}_mean": nan, f"{metric}_sd": nan, f"{metric}_ci_low": nan, f"{metric}_ci_high": nan}
    mean = float(values.mean())
    if k == 1:
        return {f"{metric}_mean": mean, f"{metric}_sd": nan, f"{metric}_ci_low": nan, f"{metric}_ci_high": nan}
    sd = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, k - 1)) * sd / math.sqrt(k)
    return {f"{metric}_mean": mean, f"{metric}_sd": sd, f"{metric}_ci_low": mean - half,
            f"{metric}_ci_high": mean + half}


def strata_columns(table: Any) -> list[str]:
    """The columns within whose values a bootstrap over seeds resamples runs: those of a
    configuration that vary in the table (beta, alpha, ..., the varied cfg.* keys), but algorithm
    and model, which the fits group by."""
    columns = [c for c in configuration_columns(table) if c not in ("algo", "model")]
    named = _hashable(table, columns)
    return [c for c in columns if named[c].nunique(dropna=False) > 1]
