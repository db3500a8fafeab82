"""The findings target: each experiment config composes to the jobs its docs promise, and
`alignsweep.analysis.findings` runs a (reduced) experiment end to end and draws its figures and numbers."""

from __future__ import annotations

import json

import pytest

# the reduced sizes the end-to-end checks train with (the real experiments train 128 steps)
SMALL = ["data.embedded.n_train=256", "data.embedded.n_heldout=64", "eval.prompts=48", "logger=none",
         "train.warmup_steps=0"]


@pytest.mark.parametrize(
    ("experiment", "jobs", "expected"),
    [
        ("overopt_embedded", 18, {"algo=dpo", "algo=ipo", "algo=slic", "model=embedded_small"}),
        ("length_embedded", 8, {"algo=rdpo", "model=embedded_small"}),
        ("alphapo_shape", 6, {"algo=alphapo", "alpha=-1", "alpha=0 ", "alpha=0.25"}),
        ("losses_embedded", 42, {"algo=kto ", "algo=orpo ", "beta=0.02 ", "beta=0.2 ", "model=embedded_tiny"}),
    ],
)
def test_experiment_grids(cli, experiment, jobs, expected):
    out = cli(f"experiment={experiment}", "dry_run=true").stdout
    lines = [line for line in out.splitlines() if line.startswith("#")]
    assert len(lines) == jobs
    for fragment in expected:
        assert any(fragment in line for line in lines), fragment


def test_losses_experiment_runs_every_loss_at_every_beta(cli):
    from alignsweep.config.algorithms import ALGORITHMS

    out = cli("experiment=losses_embedded", "dry_run=true").stdout
    jobs = {tuple(line.split()[i].split("=")[1] for i in (1, 4)) for line in out.splitlines() if line.startswith("#")}
    assert jobs == {(algo, beta) for algo in ALGORITHMS for beta in ("0.02", "0.2")}


def test_length_experiment_sweeps_the_rdpo_length_term_from_plain_dpo(cli, tmp_path):
    out = cli("--cfg", "hydra", "experiment=length_embedded", f"paths.cache_dir={tmp_path}").stdout
    assert "algo.length_coef: 0.0,2.0" in out


@pytest.mark.slow
def test_findings_runs_an_experiment_and_draws_it(cli, tmp_path):
    out = tmp_path / "figures"
    args = ["overopt_embedded", "--sweeps", str(tmp_path / "sweeps"), "--out", str(out)]
    for o in SMALL + ["algo=dpo,ipo", "beta=0.5", "model=embedded_tiny"]:
        args += ["--override", o]
    cli("findings", *args, env={"ALIGNSWEEP_THREADS": "1"})
    numbers = json.loads((out / "overopt_embedded.json").read_text())
    assert numbers["runs"] == 2
    groups = {(g["algo"], g["model"]) for g in numbers["groups"]}
    assert groups == {("dpo", "embedded_tiny"), ("ipo", "embedded_tiny")}
    for g in numbers["groups"]:
        assert 0 <= g["sft_win_rate"] <= 1 and g["best_win_rate"] >= g["sft_win_rate"]
        assert g["max_sqrt_kl"] > 0
    for name in numbers["figures"]:
        assert (out / name).stat().st_size > 1000
    assert {"overopt_embedded_fig1.png", "overopt_embedded_dynamics.png"} <= set(numbers["figures"])
    # redrawing an existing sweep needs no training and gives the same numbers
    again = tmp_path / "again"
    cli("findings", "overopt_embedded", "--no-run", "--sweeps", str(tmp_path / "sweeps"), "--out", str(again))
    assert json.loads((again / "overopt_embedded.json").read_text())["groups"] == numbers["groups"]


@pytest.mark.slow
def test_alpha_shape_finding_on_a_reduced_grid(cli, tmp_path):
    out = tmp_path / "figures"
    args = ["alphapo_shape", "--sweeps", str(tmp_path / "sweeps"), "--out", str(out)]
    for o in SMALL + ["alpha=-0.5,0.0,0.5"]:
        args += ["--override", o]
    cli("findings", *args, env={"ALIGNSWEEP_THREADS": "1"})
    numbers = json.loads((out / "alphapo_shape.json").read_text())
    assert sorted(g["alpha"] for g in numbers["groups"]) == [-0.5, 0.0, 0.5]
    assert (out / "alphapo_shape.png").exists() and (out / "alphapo_shape.svg").exists()


@pytest.mark.slow
def test_losses_finding_on_a_reduced_grid(cli, tmp_path):
    """A reference-based, a reference-free loss and KTO at one beta: one panel and one entry each,
    with the drop from the best checkpoint to the largest KL and its standard error."""
    out = tmp_path / "figures"
    args = ["losses_embedded", "--sweeps", str(tmp_path / "sweeps"), "--out", str(out)]
    for o in SMALL + ["algo=dpo,orpo,kto", "beta=0.2"]:
        args += ["--override", o]
    cli("findings", *args, env={"ALIGNSWEEP_THREADS": "1"})
    numbers = json.loads((out / "losses_embedded.json").read_text())
    assert sorted(g["algo"] for g in numbers["groups"]) == ["dpo", "kto", "orpo"]
    for g in numbers["groups"]:
        assert g["reference_free"] == (g["algo"] == "orpo")
        assert g["drop_best_to_max_kl"] >= 0 and g["drop_best_to_worst_final"] >= 0 and g["max_sqrt_kl"] > 0
        assert g["drop_best_to_worst_final_se"] >= 0 and g["worst_final_beta"] == 0.2
        assert set(g["final"]) == {"0.2"}
    assert (out / "losses_embedded.png").stat().st_size > 1000


def test_unknown_finding_is_refused(cli):
    proc = cli("findings", "overopt_everything", check=False)
    assert proc.returncode == 2
    assert "unknown finding(s) overopt_everything" in proc.stderr and "Traceback" not in proc.stderr


def test_redrawing_a_sweep_that_was_never_run_says_so(cli, tmp_path):
    proc = cli("findings", "alphapo_shape", "--no-run", "--sweeps", str(tmp_path), "--out", str(tmp_path / "f"), check=False)
    assert proc.returncode != 0
    assert "run experiment=alphapo_shape first" in proc.stderr and "Traceback" not in proc.stderr
