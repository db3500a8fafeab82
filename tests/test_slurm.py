"""The SLURM launcher against a real single-node SLURM cluster started on this machine
(launchers/slurm/start_cluster.sh): arrays per resource tier, failures, requeue and resume,
a 2-process distributed job, refused requests."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import time
from pathlib import Path

import pytest

from alignsweep.results import rundir

from .wandb_log import history

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
ROOT = Path(__file__).resolve().parents[1]
STATE = os.environ.get("ALIGNSWEEP_SLURM_DIR", "/tmp/alignsweep-slurm")
SLURM = ["hydra/launcher=slurm", "logger=none"]
TINY = ["model.resources.gpus=0", "model.resources.mem_gb=1", "model.resources.cpus=1", "model.resources.tasks_per_node=1"]


@pytest.fixture(scope="session")
def slurm_env():
    """Start the local cluster if it is not running; its environment for the commands under test."""
    if os.environ.get("ALIGNSWEEP_SKIP_SLURM") == "1":
        pytest.skip("ALIGNSWEEP_SKIP_SLURM=1")
    proc = subprocess.run(["bash", str(ROOT / "launchers/slurm/start_cluster.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, f"the local SLURM cluster did not start:\n{proc.stdout}\n{proc.stderr}"
    env = {"SLURM_CONF": f"{STATE}/slurm.conf", "PATH": f"{STATE}/bin:{os.environ['PATH']}"}
    os.environ.update(env)  # for the helpers below (squeue, scontrol)
    return env


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def wait_until(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def states(sweep: Path) -> dict[int, str]:
    from alignsweep.results.status import rows

    return {r["num"]: r["state"] for r in rows(sweep)}


def all_final(sweep: Path) -> bool:
    return all(s in ("completed", "failed", "diverged") for s in states(sweep).values())


def test_users_command_is_one_array_of_nine_and_the_paper_grid_one_array_per_tier(cli, slurm_env):
    users = ["-m", "algo=dpo,ipo,slic", "model=pythia_2_8b", "beta=0.01,0.1,1", *SLURM, *TINY,
             "+hydra.launcher.additional_parameters.hold=true", "hydra.sweep.dir=users"]
    # offline, the preflight refuses it before anything is submitted (pythia-2.8b is not cached here)
    refused = cli(*users, env=slurm_env, check=False)
    assert refused.returncode == 2 and "hf download" in refused.stderr and not (cli.cwd / "users").exists()
    # preflight=false (a login node that cannot see the hub the nodes see): the held array is submitted
    proc = cli(*users, "preflight=false", env=slurm_env)
    arrays = re.findall(r"submitted array (\d+): (\d+) job", proc.stdout)
    try:
        assert [n for _, n in arrays] == ["9"]
        tasks = sh("squeue", "-h", "-r", "-j", arrays[0][0], "-o", "%i %T").split("\n")
        assert len([t for t in tasks if t.strip()]) == 9
        manifest = json.loads((cli.cwd / "users/manifest.json").read_text())["jobs"]
        assert sorted(e["array_index"] for e in manifest.values()) == list(range(9))
        assert {e["array_id"] for e in manifest.values()} == {arrays[0][0]}
        assert manifest["0"]["overrides"][:3] == ["algo=dpo", "model=pythia_2_8b", "beta=0.01"]
        status = cli("status", str(cli.cwd / "users")).stdout
        assert status.count(" pending ") == 9
    finally:
        for array_id, _ in arrays:
            subprocess.run(["scancel", array_id])

    # the 63-job paper grid: one array per resource tier (the models' time limits differ)
    proc = cli("experiment=overopt_tldr", *SLURM, *TINY, "+hydra.launcher.additional_parameters.hold=true",
               "hydra.sweep.dir=grid", "preflight=false", env=slurm_env)
    arrays = re.findall(r"submitted array (\d+): (\d+) job", proc.stdout)
    for array_id, _ in arrays:
        subprocess.run(["scancel", array_id])
    assert sorted(int(n) for _, n in arrays) == [21, 21, 21]  # (how fast: see make bench)


def test_array_with_a_failing_job_blocking_then_collected(cli, slurm_env):
    proc = cli(
        "-m", "algo=dpo,simpo", "train.optimizer=adamw_torch,no_such_optimizer", *SLURM,
        "hydra.launcher.wait=true", "hydra.launcher.poll_s=2", "hydra.sweep.dir=sweep", env=slurm_env, timeout=900,
        check=False,
    )
    # a blocking launch whose jobs did not all complete exits 1 (issue 18: exit codes tell the truth)
    assert proc.returncode == 1 and "2 job(s) did not complete" in proc.stderr, proc.stderr[-2000:]
    sweep = cli.cwd / "sweep"
    final = states(sweep)
    assert sorted(final.values()) == ["completed", "completed", "failed", "failed"]
    out = cli("status", str(sweep)).stdout
    assert "no_such_optimizer" in out and "log: " in out
    log = re.search(r"log: (\S+)", out).group(1)
    assert "no_such_optimizer" in Path(log).read_text()
    assert "plot:" in proc.stdout  # collected when the blocking launch returned
    for num, state in final.items():
        rows = rundir.read_metrics(sweep / str(num))
        assert len(rows) == (6 if state == "completed" else 0)
    # every task ran submitit's entry point through alignsweep.launch.submitit_entry, which saved the
    # result or the error as submitit does (the launcher read them back)
    scripts = list((sweep / ".submitit").rglob("*_submission.sh"))
    assert scripts and all("-m alignsweep.launch.submitit_entry -u -m submitit.core._submit" in p.read_text() for p in scripts)
    outcomes = sorted(pickle.loads(p.read_bytes())[0] for p in (sweep / ".submitit").rglob("*_result.pkl"))
    assert outcomes == ["error", "error", "success", "success"]

    # re-submitting skips the completed jobs and re-submits the failed ones
    again = cli("-m", "algo=dpo,simpo", "train.optimizer=adamw_torch,no_such_optimizer", *SLURM,
                "hydra.sweep.dir=sweep", env=slurm_env)
    assert again.stdout.count("not submitted: completed") == 2
    assert re.search(r"submitted array \d+: 2 job", again.stdout)


def test_a_requeued_job_resumes_and_ends_with_the_rows_of_an_uninterrupted_one(cli, slurm_env, sft_cache):
    # two identical jobs, in two sweeps (one sweep runs a job once): one is requeued mid-training
    for where in ("rq", "twin"):
        cli("-m", *SLURM, "data.embedded.n_train=8192", f"hydra.sweep.dir={where}", env=slurm_env)
    sweep = cli.cwd / "rq"
    manifest = json.loads((sweep / "manifest.json").read_text())["jobs"]
    victim = manifest["0"]["job_id"]
    run = sweep / "0"
    wait_until(lambda: len(rundir.read_metrics(run)) >= 3 and list((run / "trainer").glob("checkpoint-*/trainer_state.json")),
               240, "job 0 to pass its second checkpoint")
    sh("scontrol", "requeue", victim)
    wait_until(lambda: states(sweep)[0] == "requeued", 60, "job 0 to be requeued")

    def release() -> bool:  # a requeued job is held ~2 min (BeginTime) unless released
        subprocess.run(["scontrol", "update", f"jobid={victim}", "StartTime=now"], capture_output=True)
        return states(sweep)[0] != "requeued"

    wait_until(release, 60, "job 0 to restart")
    wait_until(lambda: all_final(sweep) and all_final(cli.cwd / "twin"), 400, "both jobs to finish", every=2)
    assert states(sweep) == {0: "completed"} and states(cli.cwd / "twin") == {0: "completed"}
    status = rundir.read_status(run)
    assert status["attempt"] == 2 and status["resumed_from"].startswith("checkpoint-")
    interrupted, uninterrupted = rundir.read_metrics(run), rundir.read_metrics(cli.cwd / "twin" / "0")
    assert [r["step"] for r in interrupted] == [r["step"] for r in uninterrupted] and len(interrupted) == 6
    assert interrupted == uninterrupted, "resumed rows must equal those of the uninterrupted twin"
    # the SFT cache was built once, before the requeue, and reused after it
    logs = sorted((sweep / ".submitit").glob(f"{victim}/*_log.err"))
    assert logs and "building the SFT model" not in logs[0].read_text().split("requeue")[-1]


def test_a_preempted_job_is_recorded_requeued_with_its_reason_and_resumes(cli, slurm_env):
    cli("-m", *SLURM, "data.embedded.n_train=8192", "hydra.sweep.dir=pre", env=slurm_env)
    sweep, run = cli.cwd / "pre", cli.cwd / "pre" / "0"
    job_id = json.loads((sweep / "manifest.json").read_text())["jobs"]["0"]["job_id"]
    wait_until(lambda: list((run / "trainer").glob("checkpoint-*/trainer_state.json")), 240, "a first checkpoint")
    # the signal SLURM sends before a time limit or a pre-emption (sbatch --signal, submitit's requeue)
    sh("scancel", "--signal=USR2", job_id)
    wait_until(lambda: (rundir.read_status(run) or {}).get("state") == "requeued", 60, "the requeue to be recorded")
    assert rundir.read_status(run)["requeue_reason"].startswith("pre-empted after")
    wait_until(lambda: states(sweep)[0] == "requeued", 60, "SLURM to hold the requeued job")
    out = cli("status", str(sweep)).stdout
    assert "requeued: pre-empted after" in out and "failed" not in out and "SystemExit" not in out

    def release() -> bool:  # a requeued job is held ~2 min (BeginTime) unless released
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
        return states(sweep)[0] != "requeued"

    wait_until(release, 60, "the job to restart")
    wait_until(lambda: all_final(sweep), 400, "the job to finish", every=2)
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["attempt"] == 2 and status["requeues"] == 1


def test_two_process_distributed_job_rank_zero_alone_writes(cli, slurm_env):
    cli("-m", "algo=dpo", "hydra/launcher=slurm", "logger=wandb", "model.resources.tasks_per_node=2",
        "model.resources.cpus=2", "hydra.sweep.dir=dist", env=slurm_env)
    sweep = cli.cwd / "dist"
    wait_until(lambda: all_final(sweep), 300, "the distributed job", every=2)
    run = sweep / "0"
    assert rundir.read_status(run)["state"] == "completed"
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["micro_batches"] > 0 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 16  # 1024 pairs / (32 per rank x 2 ranks)
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"], "gradients were not synchronised"
    rows = rundir.read_metrics(run)
    assert len(rows) == 6  # rank 0 alone evaluated and wrote
    assert len(list(run.glob("wandb/offline-run-*"))) == 1
    assert [h["step"] for h in history(run)] == [r["step"] for r in rows]


def test_an_impossible_request_is_refused_at_submission(cli, slurm_env):
    proc = cli("-m", "algo=dpo", *SLURM, "model.resources.mem_gb=100000", "hydra.sweep.dir=big", env=slurm_env,
               check=False)
    assert proc.returncode == 2
    assert "SLURM refused the job array" in proc.stderr and "100000G" in proc.stderr
    assert "Requested node configuration is not available" in proc.stderr
    assert "Traceback" not in proc.stderr
