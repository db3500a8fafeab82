"""Step 0 is measured once per sweep (`eval.share_step0`): a job that reads the shared measurement
writes exactly the step-0 row it would have computed itself, its loss-specific metrics included."""

from __future__ import annotations

import math

import pytest

from alignsweep import rundir

pytestmark = pytest.mark.slow

SMALL = ["data.embedded.n_train=64", "eval.prompts=48", "logger=none", "train.checkpoints=1"]


def _run(cli, name: str, *args: str) -> tuple[dict, dict]:
    # the session's SFT cache: the SFT model is built once; step-0 files are keyed by seed and data
    cli(*args, *SMALL, f"hydra.run.dir={cli.cwd / name}")
    return rundir.read_metrics(cli.cwd / name)[0], rundir.read_status(cli.cwd / name)


def test_a_job_reading_the_shared_step0_writes_the_row_it_would_have_computed(cli):
    alone, status = _run(cli, "alone", "algo=simpo", "eval.share_step0=false")
    assert "step0_eval" not in status
    _, first = _run(cli, "first", "algo=dpo", "beta=0.1")
    assert first["step0_eval"] == "measured"
    shared, second = _run(cli, "second", "algo=simpo")
    assert second["step0_eval"] == "read from the sweep's cache"
    assert shared["step"] == alone["step"] == 0
    assert set(shared) == set(alone)
    for key, value in alone.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(shared[key]), key
        else:
            assert shared[key] == pytest.approx(value, abs=1e-9), key
    # SimPO's own implicit reward decides its step-0 reward accuracy (DPO's is 0 there)
    assert shared["reward_accuracy"] > 0


def test_a_different_seed_does_not_share_step0(cli):
    _, first = _run(cli, "a", "algo=dpo", "seed=2")
    _, other = _run(cli, "b", "algo=dpo", "seed=3")
    _, again = _run(cli, "c", "algo=ipo", "seed=3")
    assert first["step0_eval"] == other["step0_eval"] == "measured"
    assert again["step0_eval"] == "read from the sweep's cache"
