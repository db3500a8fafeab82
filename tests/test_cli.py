"""The command line as users type it: dry runs, refusals, exit codes."""

from __future__ import annotations

import re


def test_users_command_dry_runs_nine_jobs(cli):
    proc = cli("-m", "algo=dpo,ipo,slic", "model=pythia_2_8b", "beta=0.01,0.1,1", "dry_run=true")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("#")]
    assert len(lines) == 9
    seen = set()
    for line in lines:
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        assert fields["model"] == "pythia_2_8b"
        assert fields["gpus"] == "1" and fields["mem"] == "96G" and fields["time"] == "480min"
        seen.add((fields["algo"], float(fields["beta"])))
    assert seen == {(a, b) for a in ("dpo", "ipo", "slic") for b in (0.01, 0.1, 1.0)}
    assert not list(cli.cwd.glob("outputs/sweeps/*/0")), "a dry run must not create run directories"


def test_dry_run_of_a_single_job(cli):
    proc = cli("algo=alphapo", "alpha=-0.25", "kl_budget=4", "dry_run=true")
    assert "algo=alphapo" in proc.stdout and "alpha=-0.25" in proc.stdout and "kl_budget=4" in proc.stdout


def test_unused_alpha_is_refused_before_anything_runs(cli):
    proc = cli("-m", "algo=dpo,alphapo", "alpha=0.5", check=False)
    assert proc.returncode == 2
    assert "alpha: algo=dpo has no alpha" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not list(cli.cwd.glob("outputs/sweeps/*/*/config.yaml")), "no job may start"


def test_bad_beta_in_single_run_exits_2_without_traceback(cli):
    proc = cli("beta=-0.1", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: beta: must be > 0")
    assert "Traceback" not in proc.stderr


def test_misspelt_key_fails_before_anything_runs(cli):
    proc = cli("-m", "algo=dpo,ipo", "bta=0.1", check=False)
    assert proc.returncode != 0
    assert "bta" in proc.stderr
    assert not list(cli.cwd.glob("outputs/sweeps/*/*/config.yaml"))


def test_missing_local_model_path_is_named(cli):
    proc = cli("model=pythia_1b", "model.path=/no/such/pythia", check=False)
    assert proc.returncode == 2
    assert "model.path: /no/such/pythia does not exist" in proc.stderr


def test_collect_refuses_a_directory_without_runs(cli):
    proc = cli("collect", str(cli.cwd), check=False)
    assert proc.returncode == 2 and "no run directories" in proc.stderr


def test_paper_presets_dry_run_with_the_right_number_of_jobs(cli):
    tldr = cli("experiment=overopt_tldr", "dry_run=true").stdout
    assert sum(l.startswith("#") for l in tldr.splitlines()) == 63  # 3 algorithms x 7 betas x 3 sizes
    assert "model=pythia_6_9b" in tldr and "gpus=4" in tldr and "data=tldr" in tldr
    alphapo = cli("experiment=alphapo_ultrafeedback", "dry_run=true").stdout
    jobs = [l for l in alphapo.splitlines() if l.startswith("#")]
    assert len(jobs) == 10  # 2 recipes x 5 alphas
    assert sum("model=mistral_7b" in l and "beta=2.5" in l and "gamma=0.25" in l for l in jobs) == 5
    assert sum("model=llama3_8b" in l and "beta=10" in l and "gamma=3" in l for l in jobs) == 5
    assert sum("alpha=0 " in l for l in jobs) == 2  # SimPO, exactly


def test_make_run_sweep_is_fifteen_jobs(cli):
    """`make run` runs experiment=demo: five algorithms x three betas on the embedded task."""
    out = cli("experiment=demo", "dry_run=true").stdout
    jobs = [l for l in out.splitlines() if l.startswith("#")]
    assert len(jobs) == 15 and all("model=embedded_tiny" in l and "data=embedded" in l for l in jobs)
    assert {re.search(r"algo=(\w+)", l).group(1) for l in jobs} == {"dpo", "ipo", "slic", "simpo", "alphapo"}


def test_a_model_the_hub_cannot_give_stops_the_job_with_a_way_out(cli):
    """The job's own check, past preflight (preflight=false: where the launching machine cannot
    see what the job will; preflight's refusal is tests/test_preflight.py's)."""
    proc = cli("model=pythia_1b", "logger=none", "preflight=false", check=False, env={"HF_HUB_OFFLINE": "1"},
               timeout=300)
    assert proc.returncode == 2
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("error: model=pythia_1b: cannot load 'EleutherAI/pythia-1b-deduped'")
    assert "model.path=DIR" in message and "Traceback" not in proc.stderr


def test_dry_run_resolves_hydra_resolver_per_job(cli, tmp_path):
    """`${hydra:job.num}` in an override or in a config file resolves to each job's own number
    (the launcher skips setting Hydra's per-job config only where no `hydra:` resolver occurs)."""
    seeds = lambda out: [int(re.search(r"seed=(\d+)", l).group(1)) for l in out.splitlines() if l.startswith("#")]
    proc = cli("-m", "beta=0.1,0.2,0.3", "seed=${hydra:job.num}", "dry_run=true")
    assert seeds(proc.stdout) == [0, 1, 2]
    extra = tmp_path / "extra" / "experiment"
    extra.mkdir(parents=True)
    (extra / "numbered.yaml").write_text("# @package _global_\nseed: ${hydra:job.num}\n")
    proc = cli("--config-dir", str(tmp_path / "extra"), "-m", "experiment=numbered", "beta=0.1,0.2", "dry_run=true")
    assert seeds(proc.stdout) == [0, 1]
