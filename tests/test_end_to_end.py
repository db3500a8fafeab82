"""Real jobs on the embedded task: SFT, TRL training, evaluation, wandb files, the local launcher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from alignsweep.results import rundir

from .wandb_log import history, run_record

pytestmark = pytest.mark.slow


def single_run_dir(cwd: Path) -> Path:
    runs = list(cwd.glob("outputs/runs/*"))
    assert len(runs) == 1
    return runs[0]


def test_one_job_end_to_end_with_wandb_offline(cli):
    proc = cli("algo=dpo", "beta=0.1")
    run = single_run_dir(cli.cwd)
    assert f"run directory: {run}" in proc.stdout
    # it ends with its results, and without warnings caused by how we pass arguments to libraries
    assert "results: final win rate " in proc.stdout and "best " in proc.stdout
    log = (run / rundir.LOG).read_text() if (run / rundir.LOG).exists() else ""
    assert "is deprecated" not in proc.stderr + proc.stdout + log, (proc.stderr + log)[-3000:]
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["stop_reason"] == "end_of_training"
    rows = rundir.read_metrics(run)
    assert len(rows) == 6, "step 0, four intermediate checkpoints and the final one"
    assert [r["step"] for r in rows] == [0] + status["checkpoint_steps"]
    assert rows[-1]["step"] == status["total_steps"]
    for row in rows:
        assert math.isfinite(row["kl"]) and math.isfinite(row["sqrt_kl"])
        assert 0.0 <= row["win_rate"] <= 1.0
        assert row["n_eval"] == 256
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4), "step 0 is the reference itself"
    assert any(r["kl"] > 0.05 for r in rows[1:]), "training moved the policy"
    assert all(r["train_loss"] is not None for r in rows[1:])
    # the resolved config is in the run directory, with absolute paths
    saved = (run / rundir.CONFIG).read_text()
    assert "beta: 0.1" in saved and "${" not in saved
    # wandb: offline without a key, and it shows the same numbers as the metrics file
    logged = history(run)
    assert [h["step"] for h in logged] == [r["step"] for r in rows]
    for h, r in zip(logged, rows):
        assert h["win_rate"] == pytest.approx(r["win_rate"]) and h["sqrt_kl"] == pytest.approx(r["sqrt_kl"])
    record = run_record(run)
    assert record["job_type"] == "dpo" and record["project"] == "alignsweep"


def test_kl_budget_stops_training_early(cli):
    cli("algo=dpo", "beta=0.01", "kl_budget=0.2", "logger=none", "train.kl_check_every=2")
    run = single_run_dir(cli.cwd)
    status = rundir.read_status(run)
    rows = rundir.read_metrics(run)
    assert status["state"] == "completed" and status["stop_reason"] == "kl_budget"
    assert status["stopped_at"] < status["total_steps"]
    assert rows[-1]["step"] == status["stopped_at"]
    assert rows[-1]["kl"] > 0.1  # the final evaluation sees the spent budget (the running check uses 32 prompts)


def test_local_multirun_with_a_failing_job(cli):
    # small jobs (256 pairs, 32 evaluation prompts), still six rows each
    small = ["data.embedded.n_train=256", "eval.prompts=32"]
    proc = cli(
        "-m", "algo=dpo,simpo", "train.optimizer=adamw_torch,no_such_optimizer", "logger=none", *small,
        "hydra.sweep.dir=sweep", check=False,
    )
    sweep = cli.cwd / "sweep"
    out = proc.stdout
    assert "3 of 4 jobs completed, 1 failed" in out or "2 of 4 jobs completed, 2 failed" in out
    assert "FAILED" in out and "worker.log" in out
    manifest = json.loads((sweep / "manifest.json").read_text())
    assert len(manifest["jobs"]) == 4
    table = pd.read_csv(sweep / "results.csv")
    states = table.groupby("run")["status"].first()
    assert (states == "failed").sum() >= 1 and (states == "completed").sum() >= 2
    completed = table[table["status"] == "completed"]
    assert completed.groupby("run").size().eq(6).all()
    assert (sweep / "winrate_vs_sqrt_kl.png").stat().st_size > 10_000
    assert "plot:" in out and "final_win_rate" in out
    failed_run = table[table["status"] == "failed"]["run"].iloc[0]
    assert "no_such_optimizer" in (sweep / str(failed_run) / rundir.LOG).read_text()

    # re-submitting the same sweep skips what completed and retries what failed
    again = cli(
        "-m", "algo=dpo,simpo", "train.optimizer=adamw_torch,no_such_optimizer", "logger=none", *small,
        "hydra.sweep.dir=sweep", check=False,
    )
    assert again.stdout.count("already completed, skipped") == (states == "completed").sum()
    # collecting twice gives the same table
    cli("collect", str(sweep))
    first = pd.read_csv(sweep / "results.csv")
    cli("collect", str(sweep))
    pd.testing.assert_frame_equal(first, pd.read_csv(sweep / "results.csv"))
