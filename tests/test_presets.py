"""Training defaults by model and data family (conf/training/): the papers' values reach real runs,
the toy values stay with the toy models, and a preset's value is never blamed on the user."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alignsweep.config.resolve import resolve_job
from alignsweep.errors import ConfigError
from tests.test_config import compose_cfg

TOY = {"sft": {"epochs": 20, "lr": 3e-3, "batch_size": 32}, "train": {"lr": 5e-4, "optimizer": "adamw_torch"}}


def _values(cfg, block):
    return {k: cfg[block][k] for k in TOY[block]}


@pytest.mark.parametrize("model", ["pythia_1b", "pythia_2_8b", "pythia_6_9b"])
def test_tldr_on_pythia_gets_the_papers_values(model):
    """Observed: `data=tldr model=pythia_1b` ran 20 SFT epochs at lr 3e-3 and DPO at lr 5e-4."""
    cfg = compose_cfg("data=tldr", f"model={model}")
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.warmup_steps, cfg.train.epochs) == ("rmsprop", 5e-7, 150, 1)
    assert cfg.sft.enabled and (cfg.sft.epochs, cfg.sft.lr) == (1, 1e-5)
    assert cfg.data.max_length == 640


@pytest.mark.parametrize("overrides", [["data=ultrafeedback", "model=mistral_7b"], ["data=ultrafeedback", "model=llama3_8b"],
                                       ["data=tldr", "model=mistral_7b"], ["model=pythia_1b"]])
def test_no_toy_value_reaches_a_real_model(overrides):
    cfg = compose_cfg(*overrides)
    for block in TOY:
        for key, toy in TOY[block].items():
            if key != "optimizer":
                assert cfg[block][key] != toy, (overrides, block, key)
    assert cfg.train.lr <= 1e-6


def test_ultrafeedback_gets_simpos_setting():
    cfg = compose_cfg("data=ultrafeedback", "model=mistral_7b", "algo=simpo")
    assert not cfg.sft.enabled
    assert (cfg.train.lr, cfg.train.lr_scheduler, cfg.train.warmup_steps) == (5e-7, "cosine", 0.1)


@pytest.mark.parametrize("overrides", [[], ["model=embedded_small"], ["model=embedded_base"], ["experiment=demo", "algo=ipo"]])
def test_the_embedded_defaults_are_unchanged(overrides):
    cfg = compose_cfg(*overrides)
    assert _values(cfg, "sft") == TOY["sft"] and _values(cfg, "train") == TOY["train"]
    assert (cfg.data.max_length, cfg.train.warmup_steps, cfg.train.lr_scheduler) == (40, 0, "constant_with_warmup")


def test_smollm2_on_the_embedded_task_has_room_and_fine_tuning_lrs():
    """Part 1 found data.max_length 40 (word tokens) drops every pair in SmolLM2's tokens."""
    cfg = compose_cfg("model=smollm2_135m")
    assert cfg.data.name == "embedded" and cfg.data.max_length == 160
    assert (cfg.sft.lr, cfg.train.lr) == (1e-5, 1e-6)
    assert compose_cfg("model=smollm2_135m", "data=tldr").data.max_length == 640  # the data's own wins


def test_a_recipes_margin_is_not_blamed_on_the_user():
    """Observed: `recipe=mistral_instruct` (algo=dpo) said to remove a `gamma_beta_ratio=` never typed."""
    with pytest.raises(ConfigError) as err:
        resolve_job(compose_cfg("recipe=mistral_instruct"))
    message = str(err.value)
    assert "recipe=mistral_instruct sets it" in message and "algo=simpo" in message and "remove" not in message
    resolve_job(compose_cfg("recipe=mistral_instruct", "gamma_beta_ratio=null"))  # the advice works
    with pytest.raises(ConfigError, match="remove `gamma_beta_ratio=`"):  # typed by the user: theirs to remove
        resolve_job(compose_cfg("recipe=mistral_instruct", "gamma_beta_ratio=0.2"))


def test_a_recipes_margin_single_run_names_the_recipe():
    proc = subprocess.run([sys.executable, "-m", "alignsweep", "recipe=llama3_instruct", "dry_run=true"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "recipe=llama3_instruct sets it" in proc.stderr, proc.stderr[-500:]
    assert "Traceback" not in proc.stderr


def test_the_alphapo_preset_gives_each_model_its_own_data():
    """Observed (case 13): experiment=alphapo_ultrafeedback fed one data.path to both halves."""
    mistral = compose_cfg("experiment=alphapo_ultrafeedback", "recipe=mistral_instruct", "alpha=0.25")
    llama = compose_cfg("experiment=alphapo_ultrafeedback", "recipe=llama3_instruct", "alpha=0.25")
    assert (mistral.model.name, mistral.data.name, mistral.data.hub_id) == (
        "mistral_7b", "ultrafeedback", "princeton-nlp/mistral-instruct-ultrafeedback")
    assert (llama.model.name, llama.data.name, llama.data.hub_id) == (
        "llama3_8b", "ultrafeedback_llama3", "princeton-nlp/llama3-ultrafeedback-armorm")
    assert resolve_job(mistral).data != resolve_job(llama).data  # told apart in tables and caches


def test_one_local_copy_for_both_halves_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    run = lambda *args: subprocess.run([sys.executable, "-m", "alignsweep", "experiment=alphapo_ultrafeedback",
                                        f"data.path={tmp_path}", "dry_run=true", *args],
                                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    both = run()
    assert both.returncode == 2 and "Traceback" not in both.stderr, both.stderr[-1000:]
    assert both.stderr.count("is given to jobs of 2 different data sets") == 1
    assert "data=ultrafeedback of" in both.stderr and "data=ultrafeedback_llama3 of" in both.stderr
    one = run("hydra.sweeper.params.recipe=mistral_instruct")  # the advice works
    assert one.returncode == 0 and one.stdout.count("data=ultrafeedback ") == 5, one.stderr[-1000:]
