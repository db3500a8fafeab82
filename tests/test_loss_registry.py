"""Which losses are reference-free, and which knobs each reads, is declared once
(`alignsweep.train.loss_registry`): the formulas agree with it, and the config, the run's config.yaml
and identity, the collected table and the findings all read it (a loss marked there is seen
everywhere); `algo.reference_free` is not a setting a user can contradict."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from alignsweep.config.identity import identity
from alignsweep.config.resolve import resolve_job
from alignsweep.config.run_config import resolved_container, write_run_config
from alignsweep.train import loss_registry
from alignsweep.train.loss_registry import ALGORITHMS, is_reference_free
from alignsweep.train.losses import daa_loss
from tests.test_config import CONF, compose_cfg

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def _loss(name: str, ref: tuple | None) -> torch.Tensor:
    refs = {} if ref is None else {"ref_chosen_logps": T(*ref[0]), "ref_rejected_logps": T(*ref[1])}
    return daa_loss(name, policy_chosen_logps=T(-6.0, -4.0, -9.0), policy_rejected_logps=T(-7.0, -3.0, -8.0),
                    chosen_lengths=T(3.0, 2.0, 6.0), rejected_lengths=T(4.0, 2.0, 5.0), beta=0.5, gamma=0.1,
                    alpha=0.2 if name == "alphapo" else None, label_smoothing=0.1, kl_reference_point=torch.zeros(()),
                    **refs)[0]


@pytest.mark.parametrize("name", ALGORITHMS)
def test_each_formula_reads_the_reference_exactly_when_the_registry_says_so(name):
    one = ((-5.0, -4.5, -9.5), (-7.5, -2.0, -8.5))
    other = ((-1.0, -8.0, -3.0), (-2.0, -6.0, -12.0))
    if is_reference_free(name):
        assert torch.equal(_loss(name, None), _loss(name, one))
        assert torch.equal(_loss(name, one), _loss(name, other))
    else:
        with pytest.raises(ValueError, match="needs reference log-probabilities"):
            _loss(name, None)
        assert not torch.allclose(_loss(name, one), _loss(name, other))


def test_no_algo_file_declares_reference_free_a_second_time():
    for path in sorted((CONF / "algo").glob("*.yaml")):
        assert "reference_free" not in OmegaConf.load(path), path.name


@pytest.mark.parametrize("name", ALGORITHMS)
def test_the_run_config_and_identity_carry_the_registrys_flag(name):
    """config.yaml keeps `algo.reference_free` (as when conf/algo declared it), so fingerprints of
    earlier runs stay the same and a run directory says it without the code."""
    cfg = compose_cfg(f"algo={name}")
    container = resolved_container(cfg)
    assert container["algo"]["reference_free"] is is_reference_free(name)
    assert identity(container)["algo.reference_free"] is is_reference_free(name)
    assert resolve_job(cfg).reference_free is is_reference_free(name)
    # the worker validates its own run config again: the filled flag passes
    assert resolve_job(OmegaConf.merge(cfg, {"algo": {"reference_free": is_reference_free(name)}})).algo == name


def test_a_loss_marked_reference_free_in_the_registry_is_seen_everywhere(monkeypatch, tmp_path):
    from alignsweep.analysis.findings_losses import _reference_free
    from alignsweep.results.collect import collect_rows

    monkeypatch.setattr(loss_registry, "REFERENCE_FREE", loss_registry.REFERENCE_FREE | {"nca"})
    cfg = compose_cfg("algo=nca", "logger=none")
    assert resolve_job(cfg).reference_free  # the worker skips the reference log-probs by this
    run = tmp_path / "sweep" / "0"
    run.mkdir(parents=True)
    write_run_config(run, cfg)
    rows, problems = collect_rows(tmp_path / "sweep")
    assert not problems and rows[0]["algo"] == "nca" and rows[0]["reference_free"] is True
    import pandas as pd

    assert _reference_free(pd.DataFrame(rows), "nca")
    assert _reference_free(pd.DataFrame({"algo": ["nca"]}), "nca")  # a table without the column: the registry
    from alignsweep.train import trainer

    assert trainer.is_reference_free("nca")  # what the trainer asks before reading reference log-probs


@pytest.mark.parametrize(("algo", "given"), [("dpo", "true"), ("simpo", "false"), ("kto", "true")])
def test_a_user_cannot_contradict_a_losss_reference_free_flag(cli, algo, given):
    proc = cli(f"algo={algo}", f"algo.reference_free={given}", "dry_run=true", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "algo.reference_free" in proc.stderr and "remove `algo.reference_free=`" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        # Hydra's own advice for a misspelt key ("To append to your config use +KEY=...") was accepted,
        # and the key read by nothing: the job trained with the default under another fingerprint
        (["algo=cdpo", "+algo.label_smothing=0.3"], "algo.label_smothing: no such key, nothing would read it "
                                                    "(did you mean algo.label_smoothing?"),
        (["algo=cdpo", "+label_smoothing=0.3"], "label_smoothing: no such key"),
        (["lora=default", "+model.lora.rank=4"], "model.lora.rank: no such key"),
        (["+train.learning_rate=1e-4"], "train.learning_rate: no such key"),
        # a knob the loss reads, set to null: trained as eps = 0 (DPO) under another fingerprint than eps = 0
        (["algo=cdpo", "algo.label_smoothing=null"], "algo.label_smoothing: cdpo reads it"),
        (["algo=aot", "algo.label_smoothing=null"], "algo.label_smoothing: aot reads it"),
        (["algo=rdpo", "algo.length_coef=null"], "algo.length_coef: rdpo reads it"),
        (["algo=kto", "algo.desirable_weight=null"], "algo.desirable_weight: kto reads it"),
        (["algo=discopop", "algo.discopop_tau=null"], "algo.discopop_tau: discopop reads it"),
    ],
)
def test_keys_nothing_reads_and_null_knobs_are_refused_before_anything_runs(cli, overrides, says):
    proc = cli(*overrides, "dry_run=true", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
