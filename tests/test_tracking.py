"""What a wandb dashboard is given (issue 20), without training: the config of a composed job with
local paths, the group of a sweep directory, the tags. The runs' record logs are read back in
tests/test_collect.py."""

from __future__ import annotations

import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from alignsweep.config.run_config import resolved_container
from alignsweep.config.schema import register
from alignsweep.results.tracking import dashboard_config, dashboard_group, dashboard_tags

from .wandb_log import strings

CONF = Path(__file__).resolve().parents[1] / "conf"




def test_the_config_holds_what_ran_and_no_local_path(tmp_path):
    model, data = tmp_path / "models" / "my-pythia", tmp_path / "data" / "prefs.jsonl"
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "algo=simpo", "beta=0.5", f"model.path={model}", f"data.path={data}", f"paths.output_dir={tmp_path}/out",
            "dry_run=true"])
    config = dashboard_config(resolved_container(cfg))
    assert "paths" not in config and "dry_run" not in config
    assert config["model"]["path"] == "my-pythia" and config["data"]["path"] == "prefs.jsonl"
    assert config["beta"] == config["algo"]["beta"] == 0.5 and config["algo"]["name"] == "simpo"
    assert not [s for s in strings(config) if s.startswith("/") or str(tmp_path) in s]
    json.dumps(config)  # JSON-able, as wandb stores it


def test_a_sweep_group_is_its_experiment_and_a_short_id_that_survives_a_copy(tmp_path):
    launch = {"command": "python -m alignsweep -m experiment=demo", "overrides": ["experiment=demo"],
              "date": "2026-11-29 10:00:00 UTC"}
    first = tmp_path / "a" / "2026-11-29_10-00-00"
    first.mkdir(parents=True)
    (first / "manifest.json").write_text(json.dumps({"jobs": {}, "launches": [launch]}))
    experiment, group = dashboard_group(first)
    assert experiment == "demo" and group.startswith("demo-") and len(group) == len("demo-") + 6
    copy = tmp_path / "b" / first.name
    copy.mkdir(parents=True)
    (copy / "manifest.json").write_text((first / "manifest.json").read_text())
    assert dashboard_group(copy) == (experiment, group)  # a copied sweep keeps its group
    later = tmp_path / "a" / "2026-11-29_11-00-00"
    later.mkdir()
    (later / "manifest.json").write_text(json.dumps({"jobs": {}, "launches": [dict(launch, date="2026-11-29 11:00:00 UTC")]}))
    assert dashboard_group(later)[1] != group  # the same experiment launched again: another group
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps({"jobs": {}, "launches": [dict(launch, overrides=["algo=dpo,ipo"])]}))
    assert dashboard_group(plain)[0] == "sweep"
    assert dashboard_tags(algo="dpo", model="pythia_2_8b", data="tldr", judge="gold", experiment="demo", gamma=None) == [
        "algo:dpo", "model:pythia_2_8b", "data:tldr", "judge:gold", "experiment:demo"]
    assert all(len(t) <= 64 for t in dashboard_tags(model="x" * 200))
