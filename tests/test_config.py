"""Composition: every option of every group, typed schemas, and the checks of alignsweep.config.resolve."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from alignsweep.errors import ConfigError

from alignsweep.config.resolve import resolve_job
from alignsweep.train.checkpoints import checkpoint_steps
from alignsweep.config.schema import register

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["algo", "model", "data", "judge", "logger", "experiment"]
register()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_groups_have_the_required_options():
    assert set(options("algo")) >= {"dpo", "ipo", "slic", "simpo", "alphapo", "rdpo"}
    assert set(options("model")) >= {
        "embedded_tiny", "pythia_1b", "pythia_2_8b", "pythia_6_9b", "mistral_7b", "llama3_8b"
    }
    assert set(options("data")) >= {"embedded", "tldr", "ultrafeedback"}
    assert options("judge") and options("logger")
    assert (CONF / "hydra" / "launcher" / "local.yaml").exists()


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_cfg(f"{group}={option}")
    if group != "experiment":
        assert cfg[group].name == option


def test_defaults_compose_and_resolve():
    cfg = compose_cfg()
    job = resolve_job(cfg)
    assert (job.algo, job.model, job.data, job.beta) == ("dpo", "embedded_tiny", "embedded", 0.1)
    assert cfg.hydra.launcher._target_.endswith("LocalProcessLauncher")


def test_models_state_resources_and_hub_ids():
    for name in ("pythia_1b", "pythia_2_8b", "pythia_6_9b", "mistral_7b", "llama3_8b"):
        model = compose_cfg(f"model={name}").model
        assert model.hub_id and "/" in model.hub_id
        assert model.resources.gpus >= 1 and model.resources.time_min > 0 and model.resources.mem_gb > 0
        assert model.dtype == "bfloat16"
    assert compose_cfg("model=pythia_1b").model.resources.gpus == 1
    assert compose_cfg("model=mistral_7b").model.resources.gpus > 1


def test_misspelt_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="bta"):
        compose_cfg("algo.bta=0.1")
    with pytest.raises(ConfigCompositionException, match="kl_budjet"):
        compose_cfg("kl_budjet=3")


def test_wrong_type_fails_at_compose():
    with pytest.raises(ConfigCompositionException):
        compose_cfg("beta=high")
    with pytest.raises(ConfigCompositionException):
        compose_cfg("train.checkpoints=many")


def test_top_level_values_override_algorithm_defaults():
    job = resolve_job(compose_cfg("algo=alphapo", "beta=5", "alpha=-0.5", "gamma=0"))
    assert (job.beta, job.alpha, job.gamma) == (5.0, -0.5, 0.0)
    job = resolve_job(compose_cfg("algo=simpo"))
    assert (job.beta, job.alpha, job.gamma) == (2.5, None, 0.25)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["beta=0"], "beta"),
        (["beta=-1"], "beta"),
        (["alpha=0.5"], "alpha"),  # dpo has no alpha
        (["algo=simpo", "alpha=0.5"], "alpha"),
        (["gamma=0.5"], "gamma"),  # dpo has no gamma
        (["algo=simpo", "gamma=-1"], "gamma"),
        (["kl_budget=0"], "kl_budget"),
        (["train.checkpoints=0"], "train.checkpoints"),
        (["eval.prompts=100000"], "eval.prompts"),
        (["model.path=/nonexistent/model"], "model.path"),
        (["data=tldr", "model=pythia_1b"], "judge"),
        (["algo.name=ppo"], "algo.name"),
        (["eval.kl_estimator=exact"], "eval.kl_estimator"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve_job(compose_cfg(*overrides))
    assert str(err.value).startswith(key)


def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_end():
    assert checkpoint_steps(32, 5) == [6, 13, 19, 26, 32]
    assert checkpoint_steps(3, 5) == [1, 2, 3]
    assert checkpoint_steps(100, 1) == [100]
    with pytest.raises(ConfigError):
        checkpoint_steps(0, 5)


def test_the_readme_local_config_example_switches_to_slurm(tmp_path, monkeypatch):
    """The worked example of conf/local/default.yaml in the README composes and takes effect."""
    import re
    import shutil

    readme = (CONF.parent / "README.md").read_text()
    example = re.search(r"```yaml\n(# @package _global_\n# conf/local/default.yaml\n.*?)```", readme, re.S).group(1)
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "local").mkdir(exist_ok=True)
    (conf / "local" / "default.yaml").write_text(example)
    monkeypatch.setenv("USER", "alice")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmArrayLauncher")
    assert (cfg.hydra.launcher.partition, cfg.hydra.launcher.account) == ("gpu", "my-lab")
    assert cfg.paths.output_dir == "/scratch/alice/alignsweep"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        plain = compose(config_name="config", return_hydra_config=True)
    assert plain.hydra.launcher._target_.endswith("LocalProcessLauncher")


@pytest.mark.parametrize(
    "overrides",
    [
        ["algo=ipo", "beta=0.01", "model=pythia_2_8b"],
        ["algo=alphapo", "alpha=-0.5", "gamma=0", "model.resources.gpus=0", "train.lr=1e-3"],
        ["experiment=overopt_tldr", "algo=slic", "beta=1.0", "model=pythia_6_9b"],
        ["recipe=llama3_instruct", "algo=alphapo", "alpha=0.25", "kl_budget=4", "eval.prompts=16"],
        ["algo=dpo", "+hydra.launcher.additional_parameters.hold=true", "model.path=null"],
    ],
)
def test_fast_job_composition_equals_hydras(overrides):
    """JobComposer reuses compositions across value overrides: it must give Hydra's config."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from alignsweep.launch.composer import JobComposer

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        master = compose(config_name="config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        composer = JobComposer(loader, master)
        composer.compose(["algo=ipo", "beta=5"])  # warm the cache with the same groups
        fast = composer.compose(list(overrides))
        full = loader.load_sweep_config(master, list(overrides))

    def plain(cfg):
        container = OmegaConf.to_container(cfg, resolve=False)
        container["hydra"] = {"overrides": container["hydra"]["overrides"], "launcher": container["hydra"]["launcher"]}
        return container

    assert plain(fast) == plain(full)


def test_composer_reads_each_file_once_and_keeps_search_paths_apart(tmp_path):
    """The composer's file memo: a second composition with other group choices reads no file
    again, gives Hydra's config, and a file found only on an extra search path is found there."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from alignsweep.launch.composer import JobComposer

    extra = tmp_path / "extra"
    (extra / "algo").mkdir(parents=True)
    (extra / "algo" / "mine.yaml").write_text("name: dpo\nreference_free: false\nbeta: 0.7\n")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        master = compose(config_name="config", return_hydra_config=True)
        loader = GlobalHydra.instance().config_loader()
        composer = JobComposer(loader, master)
        first = composer.compose(["algo=ipo", "beta=5"])
        files = {path for _, path in composer.files}
        assert len(files) > 10
        second = composer.compose(["algo=slic", "model=pythia_1b"])
        assert {path for _, path in composer.files} - files == {"algo/slic", "model/pythia_1b", "model/family/pythia"}
        first.algo.beta = 123.0  # a composed config is the caller's: the memo's copy is untouched
        again = composer.compose(["algo=ipo", "model=pythia_1b"])
        assert again.algo.beta != 123.0
        searched = composer.compose([f"hydra.searchpath=[file://{extra}]", "algo=mine"])
        full = loader.load_sweep_config(master, ["algo=slic", "model=pythia_1b"])
    assert searched.algo.beta == 0.7
    assert OmegaConf.to_yaml(second) == OmegaConf.to_yaml(full)


def test_composed_jobs_keep_the_sweeps_timestamp():
    """`${now:...}` in the sweep directory resolves as in the sweep's own config, in every job
    composed later (freshly or from a kept composition): one sweep, one folder."""
    import time

    from hydra.core.global_hydra import GlobalHydra

    from alignsweep.launch.composer import JobComposer

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        master = compose(config_name="config", return_hydra_config=True)
        sweep_dir = master.hydra.sweep.dir
        time.sleep(1.1)  # the timestamp has seconds
        composer = JobComposer(GlobalHydra.instance().config_loader(), master)
        jobs = [composer.compose(["algo=ipo", f"beta={beta}"]) for beta in (1, 2)]
    assert [job.hydra.sweep.dir for job in jobs] == [sweep_dir, sweep_dir]
