"""KL-spaced checkpoints (issue 22): `eval.at=sqrt_kl` evaluates and saves a checkpoint when the
running KL check first crosses each of `eval.sqrt_kl_targets`, plus step 0 and the end.

The trigger logic on its own (first crossing only, several targets in one check, targets never
reached reported), the running check's independence of the checks before it (what makes a resumed
run check as the uninterrupted one), the config checks, and real runs on the embedded task."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from alignsweep.config.identity import fingerprint, identity
from alignsweep.config.resolve import resolve_job
from alignsweep.config.run_config import resolved_container
from alignsweep.errors import ConfigError
from alignsweep.results import rundir
from alignsweep.train.kl_targets import SqrtKLTargets

from .test_config import compose_cfg
from .test_kl_budget import pair, tok  # noqa: F401 (fixtures)


def _checks(targets: SqrtKLTargets, kls: list[tuple[int, float]]) -> dict[int, float | None]:
    """Feed running checks (step, KL in nats) as the callback does; the rows they trigger."""
    rows = {}
    for step, kl in kls:
        crossed = targets.crossing(lambda threshold: kl > threshold)
        if crossed:
            rows[step] = targets.record(step, crossed)
    return rows


def test_each_target_triggers_one_row_at_its_first_crossing_only():
    targets = SqrtKLTargets([0.5, 1.0, 1.5])
    # sqrt(KL) 0.3, 0.6 (crosses 0.5), 0.55 (below 0.6 again: no second row), 0.7, 1.1 (crosses 1.0), 1.05
    rows = _checks(targets, [(1, 0.09), (2, 0.36), (3, 0.3025), (4, 0.49), (5, 1.21), (6, 1.1025)])
    assert rows == {2: 0.5, 5: 1.0}
    assert targets.thresholds() == [2.25]  # only 1.5 (2.25 nats) is still pending


def test_several_targets_crossed_in_one_check_give_one_row_that_records_the_largest():
    targets = SqrtKLTargets([0.5, 1.0, 1.5, 2.0])
    rows = _checks(targets, [(4, 0.1), (8, 2.4)])  # sqrt(KL) 0.32, then 1.55: past 0.5, 1.0 and 1.5 at once
    assert rows == {8: 1.5}
    report = {e["target"]: e for e in targets.report()}
    assert report[1.5] == {"target": 1.5, "state": "reached", "step": 8}
    assert report[0.5] == report[1.0] | {"target": 0.5} == {"target": 0.5, "state": "passed", "step": 8, "row_target": 1.5}
    assert report[2.0] == {"target": 2.0, "state": "pending", "step": None}


def test_targets_never_reached_are_reported_not_invented():
    targets = SqrtKLTargets([0.5, 1.0, 4.0, 8.0])
    rows = _checks(targets, [(4, 0.3), (8, 1.2)])
    targets.end()
    assert rows == {4: 0.5, 8: 1.0}  # no row for 4.0 or 8.0
    assert [(e["target"], e["state"], e["step"]) for e in targets.report()] == [
        (0.5, "reached", 4), (1.0, "reached", 8), (4.0, "not_reached", None), (8.0, "not_reached", None)]


def test_a_resumed_run_knows_the_targets_its_kept_rows_crossed():
    """The state is rebuilt from the metric rows a resumed run keeps (those up to its checkpoint):
    the same crossings, steps and shared rows as the uninterrupted run had at that step."""
    uninterrupted = SqrtKLTargets([0.5, 1.0, 1.5, 2.0])
    rows = _checks(uninterrupted, [(3, 0.4), (6, 2.4)])  # 0.5 at 3; 1.0 and 1.5 together at 6
    kept = [{"step": 0, "sqrt_kl_target": None}, {"step": 3, "sqrt_kl_target": rows[3]},
            {"step": 6, "sqrt_kl_target": rows[6]}, {"step": 5, "sqrt_kl_target": float("nan")}]
    resumed = SqrtKLTargets([0.5, 1.0, 1.5, 2.0])
    resumed.restore(kept)
    assert resumed.report() == uninterrupted.report() and resumed.thresholds() == [4.0]


def test_a_running_check_depends_on_its_step_and_the_last_evaluation_only(pair):  # noqa: F811
    """What makes resume exact: a check's prompt blocks and draws follow from its step, and its
    expected growth from the last check or evaluation (`anchor`, re-applied from the kept rows on
    resume), never from how many checks ran before in this process."""
    through = pair.ev.kl_budget(None, prompts_per_check=16, every=2)
    for step in (2, 4, 6):
        through.check(pair.policy, step, [pair.kl])
    through.anchor(8, pair.kl * 0.9)  # the evaluation at step 8
    uninterrupted = through.check(pair.policy, 10, [pair.kl])
    resumed = pair.ev.kl_budget(None, prompts_per_check=16, every=2)  # a fresh process resumed at step 8
    resumed.anchor(8, pair.kl * 0.9)
    assert resumed.check(pair.policy, 10, [pair.kl]) == uninterrupted
    assert uninterrupted.growth > 0 and uninterrupted.prompts > 16  # near the threshold: pooled


@pytest.mark.parametrize("bad,expected", [
    ("eval.sqrt_kl_targets=[1,0.5]", "eval.sqrt_kl_targets: must be increasing, got [1, 0.5]; type them in "
                                      "increasing order without repeats: `eval.sqrt_kl_targets=[0.5,1]`"),
    ("eval.sqrt_kl_targets=[0.5,0.5,1]", "must be increasing"),
    ("eval.sqrt_kl_targets=[0,1]", "eval.sqrt_kl_targets: must be a list of numbers each > 0"),
    ("eval.sqrt_kl_targets=[-1]", "eval.sqrt_kl_targets: must be a list of numbers each > 0"),
    ("eval.at=kl", "eval.at: expected steps or sqrt_kl, got 'kl'"),
])
def test_bad_targets_are_refused_before_anything_is_queued(cli, bad, expected):
    base = [] if bad.startswith("eval.at=") else ["eval.at=sqrt_kl"]
    proc = cli("-m", *base, bad, "dry_run=true", check=False)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr


def test_the_readme_command_composes_the_kl_spaced_sweep(cli):
    proc = cli("-m", "experiment=overopt_embedded", "eval.at=sqrt_kl", "train.kl_check_every=1", "dry_run=true")
    assert proc.stdout.count("algo=") == 18


def test_sqrt_kl_needs_a_target_and_does_not_apply_to_the_tree_mdp():
    with pytest.raises(ConfigError, match=r"eval.sqrt_kl_targets: empty.*`eval.sqrt_kl_targets=\[0.5,1,1.5\]`"):
        resolve_job(compose_cfg("eval.at=sqrt_kl", "eval.sqrt_kl_targets=[]"))
    with pytest.raises(ConfigError, match="eval.at: the Tree MDP toy"):
        resolve_job(compose_cfg("eval.at=sqrt_kl", "data=tree_mdp", "model=tabular"))
    with pytest.raises(ConfigError, match="eval.enabled=false evaluates nothing"):
        resolve_job(compose_cfg("eval.at=sqrt_kl", "eval.enabled=false"))
    resolve_job(compose_cfg("eval.at=sqrt_kl"))  # the default grid is valid


def test_the_fingerprint_holds_the_targets_with_sqrt_kl_and_train_checkpoints_with_steps():
    def fp(*overrides: str) -> str:
        return fingerprint(identity(resolved_container(compose_cfg(*overrides))))

    steps = fp()
    assert "eval.at" not in identity(resolved_container(compose_cfg()))  # older runs keep their fingerprints
    assert fp("eval.sqrt_kl_targets=[1,2]") == steps  # not used with eval.at=steps
    assert fp("train.checkpoints=3") != steps
    kl = fp("eval.at=sqrt_kl")
    assert kl != steps and fp("eval.at=sqrt_kl", "eval.sqrt_kl_targets=[1,2]") != kl
    assert fp("eval.at=sqrt_kl", "train.checkpoints=3") == kl  # not used with eval.at=sqrt_kl


# --- real runs on the embedded task ------------------------------------------------------------
# beta 0.05, 64 steps of 16 pairs at lr 2.5e-4, a check every step: sqrt(KL) grows by ~0.03-0.08 per
# step, less than the estimate's error at the targets. 3.0 is out of reach (the run ends near 1.4).
KL_SPACED = ["beta=0.05", "eval.at=sqrt_kl", "eval.sqrt_kl_targets=[0.5,1.0,1.5,3.0]", "train.kl_check_every=1",
             "train.lr=2.5e-4", "model.per_device_batch=16", "logger=none"]


@pytest.fixture(scope="module")
def kl_spaced(tmp_path_factory, sft_cache):
    """One uninterrupted KL-spaced run, collected."""
    where = tmp_path_factory.mktemp("kl_spaced")
    env = dict(os.environ, TQDM_DISABLE="1")  # as the `cli` fixture runs it
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        env.pop(var, None)
    for args in ([*KL_SPACED, f"paths.cache_dir={sft_cache}", "hydra.run.dir=run"], ["collect", "run"]):
        proc = subprocess.run([sys.executable, "-m", "alignsweep", *args], cwd=where, env=env, capture_output=True,
                              text=True, timeout=1500)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return where / "run"


@pytest.mark.slow
def test_one_run_lands_a_row_near_each_sqrt_kl_target_and_reports_the_one_it_never_reaches(kl_spaced):
    """Issue 22's acceptance test: targets 0.5, 1.0 and 1.5 at beta 0.05 on the embedded task give
    rows near each target, within the estimate's error (3 standard errors, both estimators), in one run."""
    rows = rundir.read_metrics(kl_spaced)
    targeted = [r for r in rows if r["sqrt_kl_target"] is not None]
    assert [r["sqrt_kl_target"] for r in targeted] == [0.5, 1.0, 1.5]
    assert rows[0]["step"] == 0 and rows[0]["sqrt_kl_target"] is None and rows[-1]["sqrt_kl_target"] is None
    assert rows[-1]["step"] == 64 and len(rows) == 5  # step 0, three targets, the end; no row for 3.0
    for row in targeted:
        target, exact = row["sqrt_kl_target"], row["kl_exact_token"] ** 0.5
        assert abs(exact - target) <= 3 * row["kl_exact_token_se"] / (2 * exact), row  # the estimator of the checks
        assert abs(row["sqrt_kl"] - target) <= 3 * row["sqrt_kl_se"], row  # the reported one (eval.kl_estimator=mc)
    status = rundir.read_status(kl_spaced)
    assert status["checkpoint_steps"] == [64]
    assert [(e["target"], e["state"]) for e in status["sqrt_kl_targets"]] == [
        (0.5, "reached"), (1.0, "reached"), (1.5, "reached"), (3.0, "not_reached")]
    assert [e["step"] for e in status["sqrt_kl_targets"]] == [r["step"] for r in targeted] + [None]
    table = pd.read_csv(kl_spaced / "results.csv")
    assert table["sqrt_kl_target"].tolist()[1:4] == [0.5, 1.0, 1.5] and table["sqrt_kl_target"].isna().sum() == 2
    assert set(table["sqrt_kl_targets_not_reached"].astype(str)) == {"3"} and "sqrt_kl_se" in table.columns


@pytest.mark.slow
def test_a_killed_kl_spaced_run_resumes_to_the_rows_of_the_uninterrupted_one(cli, kl_spaced):
    """Killed (SIGKILL) right after its first target's checkpoint, then launched again: it resumes
    from that checkpoint, knows the target it crossed, checks as the uninterrupted run did and
    ends with exactly its rows and target report."""
    import signal

    from .test_integrity import wait_until

    run = cli.cwd / "run"
    proc = cli.popen(*KL_SPACED, "hydra.run.dir=run")
    wait_until(lambda: list(run.glob("trainer/checkpoint-*/trainer_state.json")), 1200, "the first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = int(next(run.glob("trainer/checkpoint-*")).name.split("-")[1])
    cli(*KL_SPACED, "hydra.run.dir=run", timeout=1500)
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["resumed_from"] == f"checkpoint-{first}"
    resumed, uninterrupted = rundir.read_metrics(run), rundir.read_metrics(kl_spaced)
    assert first < [r["step"] for r in uninterrupted if r["sqrt_kl_target"] == 1.5][0]  # targets crossed after it
    assert resumed == uninterrupted
    assert status["sqrt_kl_targets"] == rundir.read_status(kl_spaced)["sqrt_kl_targets"]
