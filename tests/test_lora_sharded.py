"""LoRA under FSDP (`model.lora` with model.resources.strategy=fsdp), proven on CPU: a 2-process job
through the local SLURM cluster that builds its SFT model with LoRA under FSDP too (the adapters
gathered and merged on rank 0), shards base and adapters, trains only the adapters, evaluates in
lockstep against the base with its adapters disabled, saves adapter-only sharded checkpoints and
resumes from one exactly; the merge of gathered weights against peft's own; composing."""

from __future__ import annotations

import json

import pytest
import torch

from alignsweep.results import rundir

from .test_sharding import (
    FSDP, assert_same_row, evaluate_in_one_process, one_slurm_job, resumed_at_step_2, sharded_ranks,
)
from .test_slurm import slurm_env  # noqa: F401  (a fixture)

# 255 pairs / (32 per rank x 2 ranks) = 4 optimizer steps, evaluations at 0, 2 and 4 on 64 prompts;
# the SFT model (with LoRA: its own cache key) is built by both ranks under FSDP.
SMALL = [
    "data.embedded.n_train=256", "data.embedded.n_sft=64", "eval.prompts=64", "train.checkpoints=2", "sft.epochs=2",
    "train.save_final_model=true", "logger=none",
]
LORA = ["lora=default", "model.lora.r=4", "train.lr=5e-3"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, slurm_env):  # noqa: F811
    """One 2-process FSDP LoRA job through the SLURM launcher; its run directory."""
    return one_slurm_job(tmp_path_factory.mktemp("fsdp_lora"), [*LORA, *FSDP, *SMALL], slurm_env, "the FSDP LoRA job", 360)


def final_policy(run):
    """(the SFT model with the run's saved adapters, loaded by peft in this process; the SFT model)."""
    from peft import PeftModel

    from alignsweep.train import models

    sft = rundir.read_status(run)["sft_model"]
    base, _ = models.load_saved(sft)
    reference, _ = models.load_saved(sft)
    return PeftModel.from_pretrained(base, str(run / "model")), reference


@pytest.mark.slow
@pytest.mark.slurm
def test_a_fsdp_lora_job_shards_base_and_adapters_and_trains_only_the_adapters(lora_run):
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    run = lora_run
    ranks = sharded_ranks(run)  # base and adapters sharded: each rank holds about half
    status = rundir.read_status(run)
    # one copy: the reference (adapters disabled) adds no storage; this rank's half of it in float32
    memory = status["memory"]
    assert 0 < memory["trainable"] < memory["parameters"] / 10
    assert 0.45 < memory["weights_bytes"] / (4 * memory["parameters"]) < 0.55
    assert 0.45 < memory["optimizer_bytes"] / (2 * 4 * memory["trainable"]) < 0.55  # AdamW moments, sharded
    rows = rundir.read_metrics(run)
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert rows[0]["kl"] == pytest.approx(0, abs=1e-6) and rows[-1]["kl"] > 1e-4
    # the sharded checkpoint holds the adapters only (one file per rank), not the frozen base
    folder = run / "trainer" / "checkpoint-2" / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    keys = list(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    assert keys and all("lora_" in k for k in keys)
    # the final adapters in peft's format; with the SFT model as their base they are the trained
    # model: the same parameter sum as both ranks gathered
    adapters = load_file(str(run / "model" / "adapter_model.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    policy, _ = final_policy(run)
    total = sum(p.double().sum().item() for p in policy.parameters())
    assert total == pytest.approx(ranks[0]["param_checksum"], rel=1e-9)
    # SFT under FSDP trained adapters and merged them on rank 0: a plain checkpoint
    sft_weights = load_file(str(rundir.read_status(run)["sft_model"] + "/model.safetensors"))
    assert sft_weights and not any("lora" in k or "base_layer" in k for k in sft_weights)


@pytest.mark.slow
@pytest.mark.slurm
def test_sharded_lora_evaluation_equals_a_single_process_one_of_sft_plus_adapters(lora_run):
    """The final row, evaluated in lockstep on the sharded model (reference: its adapters disabled),
    against this process's evaluation of the SFT model with the saved adapters vs the SFT model:
    the reference under FSDP is exactly the SFT model and the policy exactly base + adapters."""
    final = rundir.read_metrics(lora_run)[-1]
    policy, reference = final_policy(lora_run)
    assert final["step"] == 4
    assert_same_row(evaluate_in_one_process(lora_run, policy.merge_and_unload(), reference, 4), final)


@pytest.mark.slow
@pytest.mark.slurm
def test_a_fsdp_lora_job_resumes_from_its_adapter_checkpoint_exactly(lora_run, tmp_path):
    """The completed run set back to its step-2 checkpoint (as a requeue finds it) and resumed by
    `torchrun`: the same rows and the same final adapters, bit for bit."""
    from safetensors.torch import load_file

    run = resumed_at_step_2(lora_run, tmp_path / "resumed")
    before = load_file(str(lora_run / "model" / "adapter_model.safetensors"))
    after = load_file(str(run / "model" / "adapter_model.safetensors"))
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((run / "ranks" / "0.json").read_text())["micro_batches"] == 2  # steps 3 and 4 only


def test_adapters_gathered_from_shards_merge_as_peft_merges_the_model_itself():
    """`merged_from_state` (SFT under FSDP: the whole PeftModel state gathered on rank 0, merged on
    a meta-device model) against peft's `merge_and_unload` of the live model: the same weights and
    the same logits; a state that is not the model's is refused."""
    from omegaconf import OmegaConf
    from peft import get_peft_model
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from alignsweep.train.lora import merged_from_state, peft_config

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=32)
    lora = peft_config(OmegaConf.create({"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"}))
    model = get_peft_model(GPTNeoXForCausalLM(config), lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a trained adapter (B starts at zero)
            torch.nn.init.normal_(p, std=0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
    base = state["base_model.model." + qkv.replace(".weight", ".base_layer.weight")].clone()
    plain, weights = merged_from_state(state, config, lora)  # merges in place: no second copy
    expected = model.merge_and_unload()
    assert set(weights) == set(expected.state_dict())
    assert all(torch.equal(weights[k], t) for k, t in expected.state_dict().items())
    assert not torch.equal(weights[qkv], base)  # the update was added
    fresh = GPTNeoXForCausalLM(config).eval()  # what a reader of the saved SFT model gets
    fresh.load_state_dict(weights, strict=True)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected.eval()(ids).logits, rtol=0, atol=0)
    assert isinstance(plain, GPTNeoXForCausalLM)
    with pytest.raises(RuntimeError, match="not the model's"):
        merged_from_state({k: v for k, v in model.state_dict().items() if "lora_A" not in k}, config, lora)


@pytest.mark.parametrize("processes", ["model.resources.tasks_per_node=2", "model.resources.gpus=2"])
def test_lora_with_a_sharding_strategy_composes(cli, processes):
    """LoRA with fsdp or deepspeed_zero3 over two processes composes (both were refused before)."""
    for strategy in ("fsdp", "deepspeed_zero3"):
        out = cli("lora=default", f"model.resources.strategy={strategy}", processes, "dry_run=true").stdout
        assert f"strategy={strategy}" in out and f"strategy={strategy}->" not in out
    # a model whose config shards (Mistral-7B: fsdp) keeps its strategy under LoRA
    out = cli("lora=default", "model=mistral_7b", processes, "preflight=false", "dry_run=true").stdout
    assert "strategy=fsdp" in out and "lora=r16" in out
