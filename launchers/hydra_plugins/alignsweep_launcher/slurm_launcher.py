"""Hydra launcher: a multirun as SLURM job arrays through submitit, one array per resource tier.

Hydra's stock submitit plugin makes one resource request per multirun and blocks until every job
ends. Here every job asks for what its model needs (`model.resources`): jobs are grouped by
identical requests and each group is submitted as one job array. By default the command returns
as soon as the arrays are queued (`hydra.launcher.wait=true` blocks, then collects).

Jobs are checkpointable: on a time limit or pre-emption submitit requeues them (up to
`max_num_timeout` times) and the worker resumes from the run's last trainer checkpoint.
Re-submitting a sweep skips completed jobs and jobs still queued or running (matched to their run
directories by fingerprint, alignsweep.config.identity). With `wait=true` the command exits 1 when a
job did not complete. Settings that cannot work (a signal delay longer than a job's time limit, a
partition the cluster lacks, ...) are refused before anything is submitted, in a dry run too.

This module imports no torch.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

from alignsweep.launch.composer import SweepLauncher, job_return
from alignsweep.results import slurm_state as cluster

log = logging.getLogger(__name__)


class SlurmArrayLauncher(SweepLauncher, Launcher):
    def __init__(
        self,
        partition: Optional[str] = None,
        account: Optional[str] = None,
        qos: Optional[str] = None,
        constraint: Optional[str] = None,
        additional_parameters: Optional[dict] = None,
        setup: Optional[list] = None,
        array_parallelism: int = 256,
        max_num_timeout: int = 5,
        signal_delay_s: int = 120,
        wait: bool = False,
        poll_s: float = 10.0,
    ) -> None:
        def plain(v: Any) -> Any:
            return OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v

        self.partition, self.account, self.qos, self.constraint = partition, account, qos, constraint
        self.additional_parameters = dict(plain(additional_parameters) or {})
        self.setup_lines = list(plain(setup) or [])
        self.array_parallelism = array_parallelism
        self.max_num_timeout = max_num_timeout
        self.signal_delay_s = signal_delay_s
        self.wait = wait
        self.poll_s = poll_s

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from alignsweep.launch.composer import tier_of, write_manifest

        jobs, sweep_dir = self.prepare(job_overrides, initial_job_idx)
        if self.config.dry_run:
            return self.dry_run(jobs)
        active = cluster.active_job_ids(sweep_dir)
        todo, skipped = [], []
        for job in jobs:
            if job.skip:
                skipped.append((job, "completed"))
            elif job.busy:
                skipped.append((job, job.busy))
            elif str(job.num) in active:
                skipped.append((job, f"still {active[str(job.num)][1].lower()} as {active[str(job.num)][0]}"))
            else:
                todo.append(job)
        for job, why in skipped:
            print(f"[alignsweep] #{job.num} not submitted: {why}", flush=True)
        write_manifest(sweep_dir, jobs, launcher="slurm")

        tiers: dict[tuple, list] = defaultdict(list)
        for job in todo:
            tiers[tier_of(job.job.resources)].append(job)
        submitted: dict[int, dict] = {}
        start = time.time()
        for tier, members in tiers.items():
            executor = self._executor(sweep_dir, dict(tier), len(members))
            from alignsweep.launch.slurm_task import WorkerTask

            try:
                task = WorkerTask(time_min=dict(tier)["time_min"], signal_delay_s=self.signal_delay_s)
                handles = executor.map_array(task, [str(job.run_dir) for job in members])
            except Exception as exc:  # sbatch refused the request: say which and why, submit nothing more
                message = " ".join(str(getattr(exc, "output", b"") or exc).split())
                if isinstance(getattr(exc, "output", None), bytes):
                    message = " ".join(exc.output.decode(errors="replace").split())
                print(
                    f"error: SLURM refused the job array for {len(members)} job(s) requesting "
                    f"{cluster.describe_tier(dict(tier))}: {message}",
                    file=sys.stderr,
                )
                write_manifest(sweep_dir, jobs, launcher="slurm", submitted=submitted)
                sys.exit(2)
            array_id = handles[0].job_id.split("_")[0]
            for index, (job, handle) in enumerate(zip(members, handles)):
                submitted[job.num] = {
                    "job_id": handle.job_id,
                    "array_id": array_id,
                    "array_index": index,
                    "submitit_folder": str(executor.folder),
                }
            print(
                f"[alignsweep] submitted array {array_id}: {len(members)} job(s), {cluster.describe_tier(dict(tier))}",
                flush=True,
            )
        write_manifest(sweep_dir, jobs, launcher="slurm", submitted=submitted)
        print(
            f"[alignsweep] {len(submitted)} job(s) submitted in {time.time() - start:.1f}s, {len(skipped)} skipped; "
            f"sweep directory: {sweep_dir}\n"
            f"[alignsweep] follow it with: python -m alignsweep status {sweep_dir}",
            flush=True,
        )
        if self.wait and submitted:
            cluster.wait_for(sweep_dir, poll_s=self.poll_s)
            from alignsweep.analysis.summarize import collect_and_report

            collect_and_report(sweep_dir)
            from alignsweep.results.status import rows

            unfinished = [r for r in rows(sweep_dir) if r["state"] != "completed"]
            if unfinished:
                print(f"[alignsweep] exit code 1: {len(unfinished)} job(s) did not complete; "
                      f"see python -m alignsweep status {sweep_dir}", file=sys.stderr, flush=True)
                sys.exit(1)
        return [job_return(job, submitted.get(job.num, {}).get("job_id", "skipped")) for job in jobs]

    def job_errors(self, job: Any) -> list[str]:
        """Settings that cannot work, for the whole launch or for this job's resources."""
        errors = []
        for key, low in (("array_parallelism", 1), ("max_num_timeout", 0), ("signal_delay_s", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                errors.append(f"hydra.launcher.{key}: must be an integer >= {low}, got {value!r}")
        if isinstance(self.poll_s, bool) or not isinstance(self.poll_s, (int, float)) or not 0 < self.poll_s < 1e9:
            errors.append(f"hydra.launcher.poll_s: must be a number of seconds > 0, got {self.poll_s!r}")
        limit = job.resources["time_min"] * 60
        if isinstance(self.signal_delay_s, int) and self.signal_delay_s >= limit:
            errors.append(
                f"hydra.launcher.signal_delay_s: {self.signal_delay_s}s warning before a time limit of "
                f"{job.resources['time_min']} min (model.resources.time_min) would requeue the job as it starts; "
                f"use a delay well under {limit}s or a longer time limit"
            )
        if self.partition and not cluster.partition_exists(self.partition):
            errors.append(f"hydra.launcher.partition: this cluster has no partition {self.partition!r} "
                          f"(sinfo lists: {', '.join(cluster.partitions()) or 'none'})")
        return errors

    def _executor(self, sweep_dir: Path, res: dict, n_jobs: int) -> Any:
        import shlex

        import submitit

        executor = submitit.AutoExecutor(
            folder=str(sweep_dir / ".submitit" / "%j"), cluster="slurm", slurm_max_num_timeout=self.max_num_timeout,
            # submitit's entry point, ended without Python's teardown once the result is saved
            slurm_python=f"{shlex.quote(sys.executable)} -u -m alignsweep.launch.submitit_entry",
        )
        tasks = res["tasks_per_node"]
        extra = dict(self.additional_parameters)
        if self.account:
            extra["account"] = self.account
        params: dict[str, Any] = {
            "name": "alignsweep",
            "timeout_min": res["time_min"],
            "nodes": res["nodes"],
            "tasks_per_node": tasks,
            "cpus_per_task": max(1, res["cpus"] // tasks),
            "mem_gb": res["mem_gb"],
            "slurm_array_parallelism": min(self.array_parallelism, n_jobs),
            "slurm_signal_delay_s": self.signal_delay_s,
            "slurm_additional_parameters": extra,
        }
        if res["gpus"]:
            params["gpus_per_node"] = res["gpus"]
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.qos:
            params["slurm_qos"] = self.qos
        if self.constraint:
            params["slurm_constraint"] = self.constraint
        if self.setup_lines:
            params["slurm_setup"] = self.setup_lines
        executor.update_parameters(**params)
        return executor
