"""Sweep integrity: a run directory belongs to one config, nothing is trained twice, nothing
requested is lost, exit codes and `status` say what happened, out-of-range values never start.

Each test is a case a user met (issue 18); the jobs are tiny real ones (embedded_tiny, 256 pairs,
32 evaluation prompts, two checkpoints), the SFT model shared through the session's cache.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from alignsweep.config import ranges
from alignsweep.config.identity import fingerprint, identity
from alignsweep.config.resolve import resolve_job
from alignsweep.config.run_config import resolved_container
from alignsweep.errors import ConfigError
from alignsweep.results import rundir
from alignsweep.results.tracking import wandb_label

from .test_config import compose_cfg
from .wandb_log import history

FAST = ["logger=none", "data.embedded.n_train=256", "eval.prompts=32", "train.checkpoints=2"]
# long enough to be caught training (a key may be given once per command line)
LONGER = ["logger=none", "data.embedded.n_train=4096", "eval.prompts=32", "train.checkpoints=5"]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def training(run: Path) -> dict | None:
    status = rundir.read_status(run) or {}
    return status if status.get("state") == "running" and status.get("phase") in ("train", "eval") else None


def fp(*overrides: str) -> str:
    return fingerprint(identity(resolved_container(compose_cfg(*overrides))))


# --- run identity ---------------------------------------------------------------------------


def test_the_fingerprint_holds_what_changes_results_and_nothing_else():
    base = fp()
    assert fp("beta=0.001") == fp("beta=1e-3") and fp("beta=0.1") == base  # 0.1 is dpo's default
    for same in ("logger=none", "paths.output_dir=elsewhere", "model.resources.time_min=600",
                 "eval.batch_size=7", "train.resumable=false", "hydra.launcher.max_parallel=3"):
        assert fp(same) == base, same
    for other in ("beta=0.2", "algo=ipo", "train.lr=1e-4", "seed=1", "data.embedded.n_train=512"):
        assert fp(other) != base, other


@pytest.mark.slow
def test_a_grown_grid_reuses_its_runs_and_trains_only_the_new_job(cli):
    cli("-m", "beta=0.1,1", *FAST, "hydra.sweep.dir=s")
    sweep = cli.cwd / "s"
    first = {d.name: (d / rundir.METRICS).read_text() for d in sweep.glob("[0-9]*")}
    proc = cli("-m", "beta=0.05,0.1,1", *FAST, "hydra.sweep.dir=s")
    assert proc.stdout.count("already completed, skipped") == 2
    table = pd.read_csv(sweep / "results.csv")
    assert sorted(table.groupby("run").beta.first()) == [0.05, 0.1, 1.0]
    for name, text in first.items():  # untouched: not trained again
        assert (sweep / name / rundir.METRICS).read_text() == text
        assert rundir.read_status(sweep / name)["attempt"] == 1
    manifest = json.loads((sweep / "manifest.json").read_text())["jobs"]
    assert {n: e["beta"] for n, e in manifest.items()} == {"0": 0.1, "1": 1.0, "2": 0.05}

    # another algorithm into the finished sweep: new runs, never the DPO ones
    cli("-m", "algo=ipo", "beta=0.5,1", *FAST, "hydra.sweep.dir=s")
    manifest = json.loads((sweep / "manifest.json").read_text())["jobs"]
    runs = {(e["algo"], e["beta"]) for e in manifest.values()}
    assert runs == {("dpo", 0.1), ("dpo", 1.0), ("dpo", 0.05), ("ipo", 0.5), ("ipo", 1.0)}
    for entry in manifest.values():
        assert rundir.read_metrics(sweep / entry["run_dir"])[-1]["algo"] == entry["algo"]


@pytest.mark.slow
def test_a_single_run_into_a_directory_of_another_config_is_refused(cli):
    cli("algo=dpo", *FAST, "hydra.run.dir=run")
    run = cli.cwd / "run"
    saved, rows = (run / rundir.CONFIG).read_text(), rundir.read_metrics(run)
    proc = cli("algo=ipo", *FAST, "hydra.run.dir=run", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds another config" in proc.stderr and "algo.name: dpo -> ipo" in proc.stderr
    assert (run / rundir.CONFIG).read_text() == saved and rundir.read_metrics(run) == rows
    again = cli("algo=dpo", *FAST, "hydra.run.dir=run")
    assert "already completed" in again.stdout and rundir.read_metrics(run) == rows


def test_duplicate_jobs_run_once_and_a_key_swept_twice_is_refused(cli):
    proc = cli("-m", "beta=0.001,1e-3,1", "dry_run=true", "hydra.sweep.dir=s")
    assert "is the same job as #0" in proc.stdout
    assert [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("#")] == ["#0", "#1"]
    proc = cli("-m", "beta=0.1,1", "beta=0.01,0.5", "dry_run=true", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "beta: given 2 times (beta=0.1,1 and beta=0.01,0.5)" in proc.stderr


# --- exit codes, liveness, interruption -------------------------------------------------------


@pytest.mark.slow
def test_a_multirun_whose_jobs_fail_exits_non_zero(cli):
    proc = cli("-m", "train.optimizer=no_such_a,no_such_b", *FAST, "hydra.sweep.dir=s", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "0 of 2 jobs completed, 2 failed" in proc.stdout


@pytest.mark.slow
def test_a_killed_job_shows_interrupted_and_a_second_launch_leaves_a_live_one_alone(cli):
    # long enough to outlast a second launch on a busy machine; killed long before its end
    args = ["-m", "beta=0.1", "logger=none", "data.embedded.n_train=32768", "eval.prompts=32", "hydra.sweep.dir=s"]
    first = cli.popen(*args)
    run = cli.cwd / "s" / "0"
    status = wait_until(lambda: training(run), 300, "the job to train")
    second = cli(*args, check=False)
    assert second.returncode == 3 and "not started: still running in another process" in second.stdout
    assert rundir.read_status(run)["attempt"] == 1
    os.kill(status["pid"], signal.SIGKILL)
    first.communicate(timeout=120)
    assert first.returncode == 1
    out = cli("status", str(cli.cwd / "s")).stdout
    assert " interrupted " in out and " running " not in out


@pytest.mark.slow
@pytest.mark.parametrize("multirun", [True, False])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(cli, multirun):
    where = ("hydra.sweep.dir=s" if multirun else "hydra.run.dir=r")
    args = (["-m"] if multirun else []) + ["beta=0.1", *LONGER, where]
    out = cli.cwd / "out.txt"
    proc = cli.popen(*args, stdout=out, session=True)
    run = cli.cwd / ("s/0" if multirun else "r")
    wait_until(lambda: training(run), 300, "the job to train")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at a terminal: the launcher and its jobs get SIGINT
    proc.wait(timeout=120)
    text = out.read_text()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "leaked semaphore" not in text
    lines = [line for line in text.splitlines() if "resume with: " in line]
    assert len(lines) == 1, text
    assert rundir.read_status(run)["state"] == "interrupted"
    resume = lines[0].split("resume with: ", 1)[1]
    assert resume.startswith("python -m alignsweep ") and f"{where.split('=')[0]}={run.parent if multirun else run}" in resume


# --- divergence and wandb ------------------------------------------------------------------


@pytest.mark.slow
def test_divergence_is_caught_before_a_non_finite_checkpoint_is_evaluated_or_kept(cli):
    import torch
    from safetensors.torch import load_file

    proc = cli("train.lr=1e4", *LONGER, "hydra.run.dir=run", check=False)
    run = cli.cwd / "run"
    status = rundir.read_status(run)
    assert proc.returncode == 1 and status["state"] == "diverged", proc.stdout + proc.stderr
    assert status["stop_reason"] in ("non_finite_weights", "non_finite_loss", "non_finite_logps")
    rows = rundir.read_metrics(run)
    assert all(r["step"] < status["diverged_at"] for r in rows)
    assert all(math.isfinite(r["kl"]) and r["response_length"] > 0 for r in rows[1:] or rows)
    for weights in (run / "trainer").glob("checkpoint-*/model.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(weights)).values()), weights


@pytest.mark.slow
def test_a_killed_and_resumed_job_has_one_wandb_run_with_its_whole_history(cli):
    args = ["beta=0.1", *LONGER[1:], "logger=wandb", "logger.mode=offline", "hydra.run.dir=run"]
    run = cli.cwd / "run"
    proc = cli.popen(*args)
    wait_until(lambda: len(rundir.read_metrics(run)) >= 3 and list(run.glob("trainer/checkpoint-*/trainer_state.json")),
               300, "two checkpoints")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    cli(*args)
    rows = rundir.read_metrics(run)
    assert len(list(run.glob("wandb/offline-run-*"))) == 1
    assert [h["step"] for h in history(run)] == [r["step"] for r in rows] == sorted({r["step"] for r in rows})


def test_names_sent_to_wandb_meet_its_limits(cli):
    long = "x" * 300
    assert len(wandb_label(long, 128)) == 128 and wandb_label(long, 128) != wandb_label(long + "y", 128)
    assert wandb_label("short", 128) == "short"
    proc = cli("logger.project=a/b", "dry_run=true", check=False)
    assert proc.returncode == 2 and "logger.project" in proc.stderr


# --- refused before anything starts ---------------------------------------------------------


@pytest.fixture(params=["ro", "size=64k,nr_inodes=1"], ids=["read-only", "no-inode-left"])
def unwritable_dir(tmp_path, request):
    """A filesystem root cannot write to although `os.access` may say it can: mounted read-only,
    or with no inode left (access(2) says yes, creating a file fails)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", request.param, "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)])


def test_unwritable_paths_are_refused_in_one_line_even_as_root(cli, unwritable_dir):
    for args, key in ((["-m", "beta=0.1", f"paths.cache_dir={unwritable_dir}/c"], "paths.cache_dir"),
                      ([f"paths.output_dir={unwritable_dir}/o"], "paths.output_dir"),
                      (["-m", "beta=0.1", f"paths.output_dir={unwritable_dir}/o"], "paths.output_dir")):
        proc = cli(*args, "logger=none", check=False)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith(f"error: {key}: cannot write")
        assert "Read-only file system" in proc.stderr or "No space left on device" in proc.stderr


def bad_value(bounds: dict, kind: type):
    if "gt" in bounds:
        return bounds["gt"]
    if "ge" in bounds:
        return bounds["ge"] - 1
    if "lt" in bounds:
        return bounds["lt"]
    if "le" in bounds:
        return bounds["le"] + 1
    return float("inf")


def test_every_numeric_knob_declares_a_range_and_every_out_of_range_value_is_refused():
    declared = {key for key, _, _ in ranges.knobs()}
    assert set(ranges.numeric_fields()) == declared, set(ranges.numeric_fields()) ^ declared
    bases = {"": compose_cfg(), "data.tree.": compose_cfg("data=tree_mdp", "model=tabular"),
             "model.lora.": compose_cfg("lora=default")}
    tried = 0
    for key, bounds, kind in ranges.knobs():
        base = bases[next((p for p in ("data.tree.", "model.lora.") if key.startswith(p)), "")]
        element = ranges._element(kind)  # a list knob: one bad item in a list
        scalar = element or kind
        values = [bad_value(bounds, scalar)] + ([float("inf"), float("nan")] if scalar is float else [])
        for value in values if element is None else [[v] for v in values]:
            cfg = base.copy()
            OmegaConf.update(cfg, key, value, merge=False)
            with pytest.raises(ConfigError, match=f"{key}: must be"):
                resolve_job(cfg)
            tried += 1
    assert tried > 80
    resolve_job(bases[""]), resolve_job(bases["data.tree."])  # the defaults are in range


@pytest.mark.parametrize("bad", ["model.per_device_batch=0", "train.lr=-1", "beta=inf", "sft.lr=nan",
                                 "data.embedded.label_noise=1.5", "model.resources.gpus=-1"])
def test_out_of_range_values_fail_the_dry_run(cli, bad):
    proc = cli("-m", bad, "dry_run=true", check=False)
    assert proc.returncode == 2 and f"{bad.split('=')[0]}: must be" in proc.stderr and "Traceback" not in proc.stderr


def test_values_that_only_work_together_are_checked_together(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(8)))
    cfg = compose_cfg("data=tldr", f"data.path={data}", "judge=llm", "judge.base_url=http://localhost:1",
                      "data.heldout_size=16", "eval.prompts=32")
    with pytest.raises(ConfigError, match="eval.prompts: 32 evaluation prompts asked for, but data.heldout_size is 16"):
        resolve_job(cfg)
    with pytest.raises(ConfigError, match="min_topics <= max_topics"):
        resolve_job(compose_cfg("data.embedded.min_topics=5", "data.embedded.max_topics=4"))


@pytest.mark.parametrize("bad,key", [
    (["hydra.launcher.max_parallel=0"], "hydra.launcher.max_parallel"),
    (["hydra.launcher.threads_per_job=-2"], "hydra.launcher.threads_per_job"),
    (["hydra/launcher=slurm", "hydra.launcher.signal_delay_s=7200"], "hydra.launcher.signal_delay_s"),
    (["hydra/launcher=slurm", "hydra.launcher.array_parallelism=0"], "hydra.launcher.array_parallelism"),
])
def test_launcher_settings_that_cannot_work_are_refused_in_the_dry_run(cli, bad, key):
    proc = cli("-m", "beta=0.1", *bad, "dry_run=true", check=False)
    assert proc.returncode == 2 and key in proc.stderr and "Traceback" not in proc.stderr
