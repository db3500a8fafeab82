"""The `alignsweep` console script, the help and the shell completion (issue: product surface)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(Path(sys.executable).with_name("alignsweep"))
USERS_GRID = ["-m", "algo=dpo,ipo,slic", "model=pythia_2_8b", "beta=0.01,0.1,1"]


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_the_console_script_runs_the_users_grid_like_python_m(tmp_path):
    """`alignsweep -m ...` composes the same nine jobs as `python -m alignsweep -m ...`, from any folder."""
    args = [*USERS_GRID, "dry_run=true", f"hydra.sweep.dir={tmp_path}/s"]
    script = run([SCRIPT, *args], tmp_path)
    module = run([sys.executable, "-m", "alignsweep", *args], tmp_path)
    assert script.returncode == 0 and module.returncode == 0, script.stderr + module.stderr
    jobs = [line for line in script.stdout.splitlines() if line.startswith("#")]
    assert len(jobs) == 9
    assert jobs == [line for line in module.stdout.splitlines() if line.startswith("#")]


def test_the_console_script_runs_the_tools(tmp_path):
    proc = run([SCRIPT, "collect", "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m alignsweep collect")
    proc = run([SCRIPT, "status", str(tmp_path / "nothing")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_help_lists_every_group_on_one_line_and_no_internal_group(tmp_path):
    proc = run([SCRIPT, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text and "== Config ==" not in text
    assert len(text.splitlines()) < 40
    for group in ("algo", "model", "data", "judge", "logger", "recipe", "experiment", "hydra/launcher"):
        options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
        lines = [line for line in text.splitlines() if line.strip().startswith(f"{group} ")]
        assert len(lines) == 1, (group, text)
        assert lines[0].rstrip().endswith(", ".join(options)), lines[0]
    assert "family" not in text
    from alignsweep.train.loss_registry import ALGO_KNOBS

    for knob, owners in ALGO_KNOBS.items():  # the knobs only some losses read, and which
        assert any(line.split() == [f"algo.{knob}", *(o + "," for o in owners[:-1]), owners[-1]]
                   for line in text.splitlines()), (knob, text)


@pytest.mark.parametrize(
    "line,expected,absent",
    [
        ("alignsweep algo=", {"algo=dpo", "algo=ipo", "algo=slic", "algo=simpo", "algo=alphapo", "algo=rdpo"}, set()),
        ("alignsweep -m algo=dpo,ipo model=pythia_", {"model=pythia_1b", "model=pythia_2_8b", "model=pythia_6_9b"}, set()),
        ("alignsweep model/", set(), {"model/family="}),
        ("python -m alignsweep judge=", {"judge=gold", "judge=llm", "judge=reward_model"}, set()),
    ],
)
def test_shell_completion_offers_the_options_and_hides_internal_groups(tmp_path, line, expected, absent):
    """What bash gets from `eval "$(alignsweep -sc install=bash)"` for the line typed so far."""
    proc = run([SCRIPT, "-sc", "query=bash"], tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert proc.returncode == 0, proc.stderr
    offered = set(proc.stdout.split())
    assert expected <= offered, offered
    assert not absent & offered


def test_completion_installs_for_the_console_script(tmp_path):
    proc = run([SCRIPT, "-sc", "install=bash"], tmp_path)
    assert proc.returncode == 0 and "complete -o nospace -o default -F hydra_bash_completion alignsweep" in proc.stdout


def _manifest_sweep(sweep: Path, n: int) -> Path:
    """A launched local sweep of `n` jobs as the launcher records it (manifest.json), the first
    completed (its status.json written by the run directory's own writer)."""
    import json

    from alignsweep.results import rundir

    jobs = {}
    for num in range(n):
        (sweep / str(num)).mkdir(parents=True)
        jobs[str(num)] = {"num": num, "run_dir": str(num), "algo": "dpo", "model": "embedded_tiny",
                          "beta": 0.01 * (num + 1), "alpha": None, "launcher": "local"}
    (sweep / "manifest.json").write_text(json.dumps({"jobs": jobs}))
    rundir.write_status(sweep / "0", state="completed", step=32, total_steps=32, attempt=1)
    return sweep


def test_status_reads_a_single_run_directory(tmp_path):
    from hydra import compose, initialize_config_dir

    from alignsweep.config.run_config import write_run_config
    from alignsweep.config.schema import register
    from alignsweep.results import rundir

    register()
    run = tmp_path / "runs" / "one"
    run.mkdir(parents=True)
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["algo=ipo", "beta=0.5", f"paths.output_dir={tmp_path}"])
    write_run_config(run, cfg)
    rundir.write_status(run, state="completed", step=32, total_steps=32, attempt=1)
    proc = subprocess.run([SCRIPT, "status", str(run)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ipo embedded_tiny beta=0.5" in proc.stdout and "completed" in proc.stdout and "32/32" in proc.stdout


def test_status_json_has_every_job_and_the_totals(tmp_path):
    import json

    sweep = _manifest_sweep(tmp_path / "s", 3)
    proc = subprocess.run([SCRIPT, "status", str(sweep), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [j["num"] for j in data["jobs"]] == [0, 1, 2]
    assert data["jobs"][0]["state"] == "completed" and data["total"]["completed"] == 1
    assert sum(data["total"].values()) == 3


def test_status_under_head_ends_without_a_traceback(tmp_path):
    """`alignsweep status BIG_SWEEP | head -1`: more output than a pipe holds, the reader gone."""
    sweep = _manifest_sweep(tmp_path / "s", 3000)
    proc = subprocess.run(f"'{SCRIPT}' status '{sweep}' --json | head -1", shell=True, capture_output=True,
                          text=True, timeout=300)
    assert proc.stdout.strip() == "{"
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "args,code",
    [
        (["dry_run=true"], 0),
        (["-m", "beta=0.1,1", "dry_run=true"], 0),
        (["beta=-1"], 2),
        (["-m", "beta=0.1,-1"], 2),
    ],
    ids=["dry-run", "dry-run-sweep", "refused-run", "refused-sweep"],
)
def test_dry_runs_and_refusals_leave_no_timestamped_directory(tmp_path, args, code):
    proc = run([SCRIPT, *args], tmp_path)
    assert proc.returncode == code, proc.stderr
    left = [p for p in (tmp_path / "outputs").rglob("*") if p.parent.name in ("runs", "sweeps")]
    assert left == [], left


def test_a_refused_relaunch_keeps_an_existing_sweep_directory(tmp_path):
    sweep = tmp_path / "s"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "metrics.jsonl").write_text("{}\n")
    proc = run([SCRIPT, "-m", "beta=0.1,-1", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 2
    assert (sweep / "0" / "metrics.jsonl").exists() and (sweep / "multirun.yaml").exists()


def test_the_default_cache_dir_does_not_depend_on_the_folder(tmp_path):
    """paths.cache_dir: the same folder from any working directory (so no SFT model is rebuilt);
    $ALIGNSWEEP_CACHE_DIR wins; the user cache dir (platformdirs) otherwise."""
    import platformdirs

    env = {k: v for k, v in os.environ.items() if k != "ALIGNSWEEP_CACHE_DIR"}

    def cache_dir(cwd: Path, extra: dict | None = None) -> str:
        cwd.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([SCRIPT, "--cfg", "job", "--resolve"], cwd=cwd, capture_output=True, text=True,
                              timeout=120, env={**env, **(extra or {})})
        assert proc.returncode == 0, proc.stderr
        import yaml

        return yaml.safe_load(proc.stdout)["paths"]["cache_dir"]

    first, second = cache_dir(tmp_path / "a"), cache_dir(tmp_path / "b" / "c")
    assert first == second == platformdirs.user_cache_dir("alignsweep")
    assert cache_dir(tmp_path / "a", {"ALIGNSWEEP_CACHE_DIR": str(tmp_path / "shared")}) == str(tmp_path / "shared")
    proc = subprocess.run([SCRIPT, "cache", "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert platformdirs.user_cache_dir("alignsweep") in proc.stdout.replace("\n", " ")


def test_findings_without_arguments_lists_the_experiments(tmp_path):
    proc = run([SCRIPT, "findings"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("overopt_embedded", "length_embedded", "tree_mdp", "alphapo_shape"):
        assert name in proc.stdout
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_findings_and_bench_write_outside_the_checkout_by_default():
    """Their defaults are folders under the working directory's outputs/, not the source tree."""
    for module in ("alignsweep.analysis.findings", "alignsweep.bench.overhead", "alignsweep.bench.gpu"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert "outputs/" in proc.stdout and str(ROOT) not in proc.stdout, (module, proc.stdout)
