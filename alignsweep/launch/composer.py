"""What every launcher does before it starts anything: compose, validate and lay out the jobs.

Shared by the local and SLURM launchers so that a sweep directory looks the same wherever it ran:

    SWEEP_DIR/multirun.yaml    Hydra's record of the sweep
    SWEEP_DIR/manifest.json    every job: number, overrides, run directory, resolved values, resources
    SWEEP_DIR/<num>/           one run directory per job (see alignsweep.results.rundir); a job
                               keeps its number when the sweep is relaunched or grown (matched
                               by fingerprint, alignsweep.config.identity)

Imports no torch.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, open_dict

from alignsweep.config.identity import (
    differences, fingerprint, identity, identity_conflict, read_identity, write_identity,
)
from alignsweep.config.resolve import Job, resolve_job
from alignsweep.config.run_config import resolved_container, write_run_config
from alignsweep.errors import ConfigError
from alignsweep.results import rundir

MANIFEST = "manifest.json"


@dataclass
class PreparedJob:
    num: int
    overrides: list[str]
    config: DictConfig
    run_dir: Path
    job: Job
    skip: bool  # completed by an earlier submission of the same sweep
    identity: dict = field(default_factory=dict)  # alignsweep.config.identity
    fingerprint: str = ""
    busy: str | None = None  # why another live process has it (its run directory's lock is held)
    duplicates: list = field(default_factory=list)  # overrides of the same job given again in this launch


def _file_memo_repository(repository: Any, memo: dict) -> Any:
    """Hydra's config repository, reading each config file once per sweep instead of once per
    composition (Hydra parses every file of the defaults tree again for every job composed).

    Each load returns a fresh copy of the first one: Hydra changes what it loads (the defaults
    list's entries learn their parents). The memo is keyed by the search path as well as the file,
    so an override of `hydra.searchpath` reads its own files.
    """
    from hydra._internal.config_repository import ConfigRepository

    class MemoRepository(ConfigRepository):
        def __init__(self) -> None:  # the state is the wrapped repository's
            pass

        def __deepcopy__(self, copy_memo: dict) -> "MemoRepository":
            import copy

            new = copy.copy(self)  # shares the memo
            new.sources = copy.deepcopy(self.sources, copy_memo)
            return new

        def load_config(self, config_path: str) -> Any:
            key = (tuple((s.provider, s.path) for s in self.sources), config_path)
            if key not in memo:
                memo[key] = _Frozen(super().load_config(config_path))
            return memo[key].thaw()

    repo = MemoRepository()
    repo.__dict__.update(repository.__dict__)
    return repo


class JobComposer:
    """Composes the jobs of a sweep, each exactly as Hydra would, but only once per distinct set of
    config-group choices.

    Composing is the slow part of a large grid (every config file read and merged again, about
    0.1 s a job). Jobs that differ only in plain values (beta=0.1 vs beta=1) share their group
    choices, so the composed config is reused and the value overrides set on a copy, with the
    schema's type checks. Overrides Hydra treats specially (+key, ~key, ++key, packages) always go
    through a full composition. Compositions read each config file once (`_file_memo_repository`).
    """

    def __init__(self, config_loader: Any, master: DictConfig):
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self.loader, self.master = config_loader, master
        self.parser = OverridesParser.create(config_loader=config_loader)
        self.cache: dict[tuple, DictConfig] = {}
        self.files: dict = {}

    def _load(self, overrides: list[str]) -> DictConfig:
        """Hydra's composition of the job, with config files read from the memo."""
        plain = self.loader.repository
        self.loader.repository = _file_memo_repository(plain, self.files)
        try:
            return self.loader.load_sweep_config(self.master, overrides)
        finally:
            self.loader.repository = plain

    def _is_group(self, key: str) -> bool:
        return self.loader.repository.group_exists(key)

    def compose(self, overrides: list[str]) -> DictConfig:
        return self.compose_job(overrides)[0]

    def compose_job(self, overrides: list[str]) -> tuple[DictConfig, bool]:
        """The job's config, and whether it may call Hydra's `${hydra:...}` resolver (then
        `HydraConfig` must hold this job's config while its values are resolved)."""
        from omegaconf import OmegaConf

        parsed = self.parser.parse_overrides(overrides)
        groups = [o.input_line for o in parsed if self._is_group(o.key_or_group)]
        values = [o for o in parsed if not self._is_group(o.key_or_group)]
        simple = all(
            not (o.is_add() or o.is_delete() or o.is_force_add()) and o.package is None
            and not o.key_or_group.startswith("hydra.") and not o.is_sweep_override()
            for o in values
        )
        if not simple:
            return self._load(overrides), True
        key = tuple(groups)
        if key not in self.cache:
            self.cache[key] = _Frozen(self._load(groups))
        frozen = self.cache[key]
        cfg = frozen.thaw()
        try:
            for o in values:
                OmegaConf.update(cfg, o.key_or_group, o.value(), merge=False)
        except Exception:
            # an unknown key or a wrong type: let Hydra compose it and report it its own way
            return self._load(overrides), True
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = list(overrides)
        return cfg, frozen.mentions_hydra or any("hydra:" in str(o.value()) for o in values)


class _Frozen:
    """A config (or Hydra's record of a loaded file) kept as its pickle: a fresh copy is several
    times faster to unpickle than to `copy.deepcopy` an OmegaConf tree, and the pickle tells
    whether `hydra:` occurs anywhere in it (if not, no `${hydra:...}` resolver can run)."""

    def __init__(self, obj: Any):
        import pickle

        self.obj = obj
        try:
            self.data: bytes | None = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # something unpicklable in a user's config: the slow way
            self.data = None
        self.mentions_hydra = self.data is None or b"hydra:" in self.data

    def thaw(self) -> Any:
        import copy
        import pickle

        return pickle.loads(self.data) if self.data is not None else copy.deepcopy(self.obj)


def prepare_jobs(
    hydra_context: Any, config: DictConfig, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
    job_errors: Callable[[Any], list[str]] | None = None,
) -> list[PreparedJob]:
    """Compose and validate every job and give it its run directory; with dry_run=false also write
    each run's config and identity.

    Run directories are matched by fingerprint (`alignsweep.config.identity`), never by position:
    a job whose fingerprint a run directory of the sweep already holds gets that directory (and its
    number) back; a new job gets the next free number. Jobs of this launch with equal fingerprints
    run once. With a custom `hydra.sweep.subdir`, a job whose directory holds another config is
    refused. All mistakes are reported together, then the process exits with code 2 before any
    job starts. `job_errors` adds the launcher's own checks of a job (settings that cannot work).
    """
    from hydra.core.hydra_config import HydraConfig

    from alignsweep.errors import mark_started

    jobs: list[PreparedJob] = []
    errors: list[str] = []
    composer = JobComposer(hydra_context.config_loader, config)
    sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
    by_number = config.hydra.sweep._get_node("subdir")._value() == "${hydra.job.num}"
    known, used = existing_runs(sweep_dir)
    first: dict[str, PreparedJob] = {}  # fingerprint -> the first job of this launch with it
    by_dir: dict[Path, PreparedJob] = {}
    for offset, overrides in enumerate(job_overrides):
        index = initial_job_idx + offset
        cfg, uses_hydra_resolver = composer.compose_job(list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = index
            cfg.hydra.job.id = f"{index}"
        if uses_hydra_resolver:
            HydraConfig.instance().set_config(cfg)
        said = f"job #{index} ({' '.join(overrides)})"
        try:
            job = resolve_job(cfg)
            errors.extend(f"{said}: {e}" for e in (job_errors(job) if job_errors else []))
        except ConfigError as exc:
            errors.append(f"{said}: {exc}")
            continue
        ident = identity(resolved_container(cfg))
        print_ = fingerprint(ident)
        if print_ in first:
            twin = first[print_]
            print(f"[alignsweep] job #{index} ({' '.join(overrides)}) is the same job as #{twin.num} "
                  f"({' '.join(twin.overrides)}): it runs once", flush=True)
            twin.duplicates.append(list(overrides))
            continue
        if by_number:
            num = known.get(print_)
            if num is None:
                num = next(n for n in range(len(used) + 1) if n not in used)
                used.add(num)
            run_dir = sweep_dir / str(num)
        else:
            run_dir = (Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)).absolute()
            num = index
            conflict = identity_conflict(run_dir, ident)
            if conflict:
                errors.append(f"{said}: {conflict}")
                continue
            if run_dir in by_dir:
                other = by_dir[run_dir]
                errors.append(f"{said}: hydra.sweep.subdir gives it the run directory of job #{other.num} "
                              f"({run_dir}), which differs in {differences(other.identity, ident)}")
                continue
        status = rundir.read_status(run_dir) or {}
        busy = None
        if status.get("state") != "completed" and rundir.lock_held(run_dir):
            busy = f"still running in another process (pid {status.get('pid', '?')})"
        prepared = PreparedJob(num, list(overrides), cfg, run_dir, job, status.get("state") == "completed",
                               identity=ident, fingerprint=print_, busy=busy)
        first[print_] = by_dir[run_dir] = prepared
        jobs.append(prepared)
    if not errors:  # one local copy for different data; each distinct model, dataset and judge, once
        from alignsweep.launch.preflight import preflight, shared_local_copies

        errors = shared_local_copies(j.config for j in jobs)
        if not errors and not config.dry_run and config.get("preflight", True):
            errors = preflight(j.config for j in jobs if not (j.skip or j.busy))
    if errors:
        print("error: the sweep was not started:\n  " + "\n  ".join(errors), file=sys.stderr)
        sys.exit(2)
    mark_started()
    if not config.dry_run:
        for job in jobs:
            if job.skip or job.busy:
                continue
            job.run_dir.mkdir(parents=True, exist_ok=True)
            HydraConfig.instance().set_config(job.config)
            write_run_config(job.run_dir, job.config)
            write_identity(job.run_dir, job.identity)
            if rundir.read_status(job.run_dir) is None:
                rundir.write_status(job.run_dir, state="pending", phase="queued")
    return sorted(jobs, key=lambda j: j.num)


def existing_runs(sweep_dir: Path) -> tuple[dict[str, int], set[int]]:
    """The run directories a sweep already has: {fingerprint: number}, and every number in use
    (numbered directories, and the manifest's entries)."""
    known: dict[str, int] = {}
    used: set[int] = set()
    if not sweep_dir.is_dir():
        return known, used
    path = sweep_dir / MANIFEST
    if path.exists():
        try:
            used.update(int(n) for n in json.loads(path.read_text()).get("jobs", {}))
        except (ValueError, TypeError):
            pass
    for child in sweep_dir.iterdir():
        if child.is_dir() and child.name.isdigit():
            used.add(int(child.name))
            ident = read_identity(child)
            if ident is not None:
                known.setdefault(fingerprint(ident), int(child.name))
    return known, used


def tier_of(resources: Any) -> tuple:
    """Jobs with equal resource requests share one job array."""
    return tuple(sorted(dict(resources).items()))


def write_manifest(
    sweep_dir: Path, jobs: Sequence[PreparedJob], launcher: str, submitted: dict | None = None
) -> Path:
    """Record every job of the sweep; entries from earlier submissions are kept and updated.

    `submitted` maps a job number to its scheduler ids (job id, array id and index, log folder);
    the ids of earlier submissions are kept under `previous_job_ids`.
    """
    from alignsweep.results.provenance import provenance

    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {"jobs": {}}
    manifest.setdefault("launches", []).append(provenance())  # every launch into this sweep directory
    for job in jobs:
        entry = manifest["jobs"].setdefault(str(job.num), {})
        entry.update(
            {
                "num": job.num,
                "overrides": job.overrides,
                "run_dir": str(job.run_dir.relative_to(sweep_dir)),
                "algo": job.job.algo,
                "model": job.job.model,
                "beta": job.job.beta,
                "alpha": job.job.alpha,
                "gamma": job.job.gamma,
                "kl_budget": job.job.kl_budget,
                "seed": job.job.seed,
                "resources": dict(job.job.resources),
                "launcher": launcher,
                "fingerprint": job.fingerprint,
            }
        )
        if submitted and job.num in submitted:
            if entry.get("job_id"):
                entry.setdefault("previous_job_ids", []).append(entry["job_id"])
            entry.update(submitted[job.num])
            entry["submitted"] = time.time()
    rundir.atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True))
    return path


class SweepLauncher:
    """What alignsweep's Hydra launchers share: setup, dry runs and the JobReturns Hydra expects.
    (Mixed into each launcher class, which Hydra requires to live under `hydra_plugins`.)"""

    config: Any = None
    hydra_context: Any = None
    task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def prepare(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> tuple[list, Path]:
        """Every job composed and validated (see `prepare_jobs`), and the sweep directory."""
        from hydra.core.utils import setup_globals

        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        jobs = prepare_jobs(self.hydra_context, self.config, job_overrides, initial_job_idx, self.job_errors)
        return jobs, Path(str(self.config.hydra.sweep.dir)).absolute()

    def job_errors(self, job: Job) -> list[str]:
        """Launcher settings that cannot work for `job` (each launcher says which); [] if none."""
        return []

    @staticmethod
    def dry_run(jobs: Sequence[PreparedJob]) -> list:
        for job in jobs:
            note = " (completed: skipped)" if job.skip else f" ({job.busy}: skipped)" if job.busy else ""
            print(f"#{job.num} {job.job.describe()}{note}", flush=True)
        return [job_return(job, "dry-run") for job in jobs]


def job_return(job: PreparedJob, value: Any) -> Any:
    """Hydra's record of a launched job (the work itself is reported by its run directory)."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.overrides = list(job.overrides)
    ret.working_dir = str(job.run_dir)
    ret.cfg = job.config
    ret.hydra_cfg = None
    ret.status = JobStatus.COMPLETED
    ret.return_value = value
    return ret
