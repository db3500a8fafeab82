"""One tidy table of a sweep, from its directory alone (the first half of `python -m alignsweep collect`).

A row per (run, evaluated checkpoint), plus one row for each run that has none yet (pending,
running or failed), so nothing disappears from the table. Besides the job's identity (algorithm,
model, beta, alpha, gamma, KL budget, seed) and whether its loss is `reference_free` (from its
config.yaml: the loss never read pi_ref, so its beta is not a KL strength) every other config value that differs between the
runs of the sweep is a `cfg.<key>` column. `sqrt_kl_target` is the sqrt(KL) target a row was the
first crossing of (`eval.at=sqrt_kl`; null for step checkpoints, step 0 and the end), and
`sqrt_kl_targets_not_reached` (on every row of such a run) the targets the run ended below, from
its status.json: reported, never given a row. Written as `results.csv` and `results.parquet`
(`alignsweep.analysis.summarize` adds the fits and figures). Running it again gives the same
files; running it while jobs still run gives the rows so far. Unreadable files and lines are
reported by name, never silently dropped. Needs no cluster: a copied sweep directory is enough.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from alignsweep.results import rundir

ID_COLUMNS = ["run", "status", "algo", "reference_free", "model", "data", "beta", "alpha", "gamma", "kl_budget",
              "seed", "step", "epoch", "progress"]
IGNORED_PREFIXES = ("paths.", "logger.", "dry_run")


def run_dirs(sweep_dir: Path) -> list[Path]:
    """Run directories of a sweep (or the single run directory given)."""
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / rundir.CONFIG).exists():
        return [sweep_dir]
    found = [p.parent for p in sweep_dir.glob(f"*/{rundir.CONFIG}")]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    """The job's identity and its flattened config.

    Read as plain data (config.json, or the YAML when that is missing or older): the config was
    validated when the job was launched, and a sweep of thousands of runs must collect in seconds.
    """
    fast = run_dir / rundir.CONFIG_JSON
    if fast.exists() and fast.stat().st_mtime >= (run_dir / rundir.CONFIG).stat().st_mtime:
        cfg = json.loads(fast.read_text())
    else:  # older runs, or a config.yaml edited by hand
        import yaml

        cfg = yaml.load((run_dir / rundir.CONFIG).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("algo"), dict):
        raise ValueError("not a run config (no algo section)")
    algo = cfg["algo"]

    def pick(key: str) -> Any:
        return cfg.get(key) if cfg.get(key) is not None else algo.get(key)

    values = {
        "algo": algo.get("name"), "reference_free": algo.get("reference_free"), "model": (cfg.get("model") or {}).get("name"),
        "data": (cfg.get("data") or {}).get("name"), "beta": pick("beta"),
        "alpha": pick("alpha") if algo.get("alpha") is not None else None,
        "gamma": pick("gamma") if algo.get("gamma") is not None else None,
        "kl_budget": cfg.get("kl_budget"), "seed": cfg.get("seed", 0),
    }
    for key in ("beta", "alpha", "gamma", "kl_budget"):
        if values[key] is not None:
            values[key] = float(values[key])
    return values, _flatten(cfg)


def collect_rows(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """All rows, and the files (or lines) that could not be read."""
    rows, problems, configs = [], [], {}
    sweep_dir = Path(sweep_dir)
    runs = []
    for run_dir in run_dirs(sweep_dir):
        name = str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name
        try:
            values, flat = _read_run(run_dir)
        except Exception as exc:  # a corrupt config is reported by name, and its run still listed
            problems.append(f"{run_dir / rundir.CONFIG}: {exc}")
            rows.append({"run": name, "status": "unreadable", "error": f"unreadable config: {exc}"})
            continue
        configs[name] = flat
        runs.append((run_dir, name, values))
    varying = _varying(configs)
    for run_dir, name, values in runs:
        try:
            status = rundir.read_status(run_dir) or {}
        except ValueError as exc:
            problems.append(f"{run_dir / rundir.STATUS}: {exc}")
            status = {"state": "unknown"}
        base = {"run": name, "status": status.get("state", "pending"), **values}
        if status.get("model_params") is not None:  # recorded by the worker when it loads the model
            base["model_params"] = int(status["model_params"])
        if status.get("sqrt_kl_targets") is not None:  # eval.at=sqrt_kl
            base["sqrt_kl_targets_not_reached"] = not_reached(status["sqrt_kl_targets"])
        base.update({f"cfg.{k}": configs[name].get(k) for k in varying})
        metrics = rundir.read_metrics(run_dir, problems)
        if not metrics:
            rows.append({**base, "error": status.get("error")})
        for row in metrics:
            rows.append({**row, **base})
    return rows, problems


def not_reached(report: list[dict]) -> str:
    """The targets of a run's status.json `sqrt_kl_targets` it ended below, as `4 6 8` ('' for none;
    while the run trains, its pending targets are not listed)."""
    return " ".join(f"{e['target']:g}" for e in report if e.get("state") == "not_reached")


def _varying(configs: dict[str, dict]) -> list[str]:
    """Config keys whose values differ between runs (the identity columns and paths aside)."""
    keys = sorted({k for flat in configs.values() for k in flat})
    # the identity columns, and the algorithm's defaults of them (older runs kept both beside each other)
    skip = {"algo.name", "algo.reference_free", "model.name", "data.name", "beta", "alpha", "gamma", "gamma_beta_ratio", "kl_budget", "seed",
            "algo.beta", "algo.alpha", "algo.gamma", "algo.gamma_beta_ratio"}
    out = []
    for key in keys:
        if key in skip or key.startswith(IGNORED_PREFIXES):
            continue
        if len({repr(flat.get(key)) for flat in configs.values()}) > 1:
            out.append(key)
    return out


def collect(sweep_dir: Path, quiet: bool = False):
    """Build the sweep's table and write results.csv / results.parquet; returns the DataFrame."""
    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows, problems = collect_rows(sweep_dir)
    if not quiet:
        for problem in problems:
            print(f"warning: unreadable: {problem}", file=sys.stderr)
    table = pd.DataFrame(rows)
    if "sqrt_kl" in table.columns and "sqrt_kl_target" not in table.columns:  # step checkpoints only, or older runs
        table["sqrt_kl_target"] = float("nan")
    if not table.empty:
        ordered = [c for c in ID_COLUMNS if c in table.columns]
        table = table[ordered + sorted(c for c in table.columns if c not in ordered)]
        by = [c for c in ("run", "step") if c in table.columns]
        table = table.sort_values(by, key=_natural, na_position="last").reset_index(drop=True)
    _atomic(lambda tmp: table.to_csv(tmp, index=False), sweep_dir / "results.csv")
    _atomic(lambda tmp: table.to_parquet(tmp, index=False), sweep_dir / "results.parquet")
    samples = collect_samples(sweep_dir)
    if not samples.empty:
        _atomic(lambda tmp: samples.to_parquet(tmp, index=False), sweep_dir / "samples.parquet")
    return table


def collect_samples(sweep_dir: Path):
    """Every kept sample of the sweep's runs (RUN_DIR/samples/step_NNNNNN.jsonl, written at each
    checkpoint) as one DataFrame: run, step, index (the evaluation prompt's position), prompt,
    sample, reference, verdict (1 win, 0.5 tie, 0 loss, NaN none), length (tokens). An unreadable
    line is skipped with a warning; a run without samples adds no rows."""
    import json

    import pandas as pd

    sweep_dir = Path(sweep_dir)
    rows = []
    for run_dir in run_dirs(sweep_dir):
        name = str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name
        for path in sorted((run_dir / rundir.SAMPLES).glob("step_*.jsonl")):
            step = int(path.stem.split("_")[-1])
            for index, line in enumerate(path.read_text().splitlines()):
                try:
                    rows.append({"run": name, "step": step, "index": index, **json.loads(line)})
                except ValueError:
                    print(f"warning: unreadable: {path} line {index + 1}", file=sys.stderr)
    return pd.DataFrame(rows)


def _atomic(write, path: Path) -> None:
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _natural(col):
    if col.name == "run":
        return col.map(lambda r: (len(str(r)), str(r)))
    return col


def summary(table) -> Any:
    """Per run: final sqrt(KL), win rate and length-controlled win rate, the best win rate and where it occurred."""
    import pandas as pd

    out = []
    evaluated = table.dropna(subset=["step", "win_rate"]) if "win_rate" in table.columns else table.iloc[0:0]
    for run, group in evaluated.groupby("run", sort=False):
        group = group.sort_values("step")
        final, best = group.iloc[-1], group.loc[group["win_rate"].idxmax()]
        out.append(
            {
                "run": run,
                "algo": final["algo"],
                "model": final["model"],
                "beta": final["beta"],
                "alpha": final.get("alpha"),
                "status": final["status"],
                "final_sqrt_kl": final["sqrt_kl"],
                "final_win_rate": final["win_rate"],
                "final_lc_win_rate": final.get("lc_win_rate", float("nan")),
                "best_win_rate": best["win_rate"],
                "best_at_step": int(best["step"]),
                "best_at_sqrt_kl": best["sqrt_kl"],
                **({"targets_not_reached": final["sqrt_kl_targets_not_reached"] or "-"}
                   if isinstance(final.get("sqrt_kl_targets_not_reached"), str) else {}),
            }
        )
    frame = pd.DataFrame(out)
    if not frame.empty:
        frame = frame.sort_values(["algo", "model", "beta"]).reset_index(drop=True)
        for optional in ("alpha", "model"):
            if frame[optional].isna().all() or frame[optional].nunique() == 1 and optional == "model":
                frame = frame.drop(columns=[optional])
    return frame
