"""model.resources.strategy=deepspeed_zero3 (alignsweep/train/sharding.py), proven on CPU as
tests/test_sharding.py proves FSDP: a 2-process DeepSpeed ZeRO-3 job (`torchrun`, gloo,
DS_ACCELERATOR=cpu set for these processes only) that builds its own SFT model under ZeRO-3,
trains, evaluates in lockstep, writes a checkpoint and the final model; its evaluation against a
single-process evaluation of the same weights; and resuming from its checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alignsweep.results import rundir

from .test_sharding import assert_same_row, evaluate_in_one_process

# 128 pairs / (32 per rank x 2 ranks) = 2 optimizer steps, evaluated at steps 0, 1 and 2 on 32
# prompts. The single-process job that composes the run directory builds its SFT model in its own
# cache; the ZeRO-3 job gets an empty one and builds its SFT model under ZeRO-3.
SMALL = [
    "data.embedded.n_train=128", "data.embedded.n_sft=64", "sft.epochs=2", "eval.prompts=32", "logger=none",
    "train.checkpoints=2", "train.save_final_model=true",
]


def deepspeed_or_skip() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        message = "deepspeed is not installed (make install installs it: pip install -c constraints.txt -e '.[dev,deepspeed]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def env() -> dict:
    """The ZeRO-3 processes' environment: DeepSpeed's CPU accelerator (gloo), no wandb key."""
    out = dict(os.environ, TQDM_DISABLE="1", DS_ACCELERATOR="cpu")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        out.pop(var, None)
    return out


def torchrun(run: Path, timeout: int = 400) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "alignsweep.worker", str(run)],
        env=env(), capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert proc.returncode == 0, "\n".join(l for l in proc.stderr.splitlines() if "Warning" not in l)[-6000:]


def variant_of(zero3_run: Path, run: Path, change) -> tuple[Path, dict]:
    """The ZeRO-3 job's config changed by `change(cfg)` (in place), run by `torchrun` in `run`:
    (run, its status), checked completed under ZeRO-3."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(zero3_run / "config.yaml")
    change(cfg)
    run.mkdir()
    OmegaConf.save(cfg, run / "config.yaml")
    torchrun(run)
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["strategy"] == "deepspeed_zero3", status.get("error")
    return run, status


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory) -> Path:
    """One 2-process ZeRO-3 job's run directory (its config composed by a single-process job)."""
    deepspeed_or_skip()
    cwd = tmp_path_factory.mktemp("zero3")
    single_env = {k: v for k, v in env().items() if k != "DS_ACCELERATOR"}
    subprocess.run(
        [sys.executable, "-m", "alignsweep", *SMALL, "hydra.run.dir=one", f"paths.cache_dir={cwd / 'cache1'}"],
        cwd=cwd, env=single_env, check=True, capture_output=True, text=True, timeout=300,
    )
    config = (cwd / "one" / "config.yaml").read_text()
    for old in ("tasks_per_node: null", "strategy: single", str(cwd / "cache1")):
        assert old in config, old
    run = cwd / "zero3"
    run.mkdir()
    (run / "config.yaml").write_text(
        config.replace("tasks_per_node: null", "tasks_per_node: 2").replace("strategy: single", "strategy: deepspeed_zero3")
        .replace(str(cwd / "cache1"), str(cwd / "cache"))
    )
    torchrun(run)
    return run


@pytest.mark.slow
def test_zero3_job_builds_its_sft_model_trains_partitioned_on_both_ranks_and_rank_zero_alone_writes(zero3_run):
    from safetensors.torch import load_file

    run = zero3_run
    status = rundir.read_status(run)
    assert status["state"] == "completed", status.get("error")
    assert status["strategy"] == "deepspeed_zero3"
    assert status["model_params"] == 104_576  # the whole model's, not this rank's partition
    # what rank 0 holds (status `memory`): the whole model's count, half of its float32 weights for
    # the policy and half for the reference, half of the gradients, Adam's two moments of its half
    memory = status["memory"]
    assert memory["parameters"] == memory["trainable"] == 104_576
    assert memory["gradients_bytes"] == 4 * 104_576 // 2
    assert memory["weights_bytes"] == memory["optimizer_bytes"] == 2 * 4 * 104_576 // 2
    # the SFT model was built by this job, under ZeRO-3 (the cache was empty), and gathered whole
    sft = Path(status["sft_model"])
    assert sft.parent == run.parent / "cache" / "sft" and (sft / "DONE").exists()
    assert status["seconds"]["sft"] > 0.5
    sft_weights = load_file(sft / "model.safetensors")
    assert sum(t.numel() for t in sft_weights.values()) == 104_576
    assert (run / "deepspeed_zero3.json").exists()
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["micro_batches"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2
    # partitioned: each rank holds half of every parameter
    assert ranks[0]["numel"] == ranks[1]["numel"] == 104_576
    assert ranks[0]["local_numel"] + ranks[1]["local_numel"] == 104_576
    assert all(0.45 * r["numel"] < r["local_numel"] < 0.55 * r["numel"] for r in ranks)
    assert ranks[0]["local_checksum"] != ranks[1]["local_checksum"]
    # the gathered weights are the same on both ranks, and they are the saved final model (float32)
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    saved = load_file(run / "model" / "model.safetensors")
    assert {str(t.dtype) for t in saved.values()} == {"torch.float32"}
    assert sum(t.double().sum().item() for t in saved.values()) == pytest.approx(ranks[0]["param_checksum"], rel=1e-9)
    assert any(not saved[k].equal(sft_weights[k]) for k in saved)  # trained
    # rank 0 alone evaluated and wrote: one row per evaluation
    assert [r["step"] for r in rundir.read_metrics(run)] == [0, 1, 2]
    # the checkpoint is DeepSpeed's: each rank wrote its partition of the weights and optimizer state
    names = sorted(p.name for p in (run / "trainer" / "checkpoint-1" / "global_step1").iterdir())
    assert names == [f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")]


def single_process_evaluation(run: Path, policy=None) -> tuple[dict, dict]:
    """(the run's final row, the Evaluator run in this one process on its saved weights: the final
    model, or `policy`, against the SFT model as reference)."""
    from alignsweep.train import models

    final = rundir.read_metrics(run)[-1]
    ref, _ = models.load_saved(rundir.read_status(run)["sft_model"])
    if policy is None:
        policy, _ = models.load_saved(run / "model")
    return final, evaluate_in_one_process(run, policy, ref, final["step"])


@pytest.mark.slow
def test_zero3_evaluation_equals_a_single_process_evaluation_of_the_same_weights(zero3_run):
    """The final row, evaluated by both ranks in lockstep on the partitioned policy and reference,
    against the Evaluator run in this one process on the gathered final weights."""
    final, single = single_process_evaluation(zero3_run)
    assert final["step"] == 2
    assert_same_row(single, final)


@pytest.mark.slow
def test_zero3_job_resumes_from_its_checkpoint_with_the_rows_and_weights_of_the_uninterrupted_run(zero3_run, tmp_path):
    """The completed run, set back to its checkpoint at step 1 (as a requeue after that checkpoint
    finds it), resumed by `torchrun`: the same rows, the same final weights on both ranks."""
    from safetensors.torch import load_file

    run = tmp_path / "resumed"
    shutil.copytree(zero3_run, run, ignore=shutil.ignore_patterns("ranks", "model"))
    status = json.loads((run / "status.json").read_text())
    status["state"] = "running"  # killed after its second evaluation
    (run / "status.json").write_text(json.dumps(status))
    torchrun(run)
    status = rundir.read_status(run)
    assert status["state"] == "completed" and status["resumed_from"] == "checkpoint-1" and status["attempt"] == 2
    assert rundir.read_metrics(run) == rundir.read_metrics(zero3_run)
    for r in (0, 1):
        resumed = json.loads((run / "ranks" / f"{r}.json").read_text())
        original = json.loads((zero3_run / "ranks" / f"{r}.json").read_text())
        assert resumed["micro_batches"] == 1  # step 2 only
        assert resumed["param_checksum"] == original["param_checksum"]
        assert resumed["local_checksum"] == original["local_checksum"]
    final, original = load_file(run / "model" / "model.safetensors"), load_file(zero3_run / "model" / "model.safetensors")
    assert all(final[k].equal(original[k]) for k in original)


@pytest.mark.slow
def test_zero3_job_in_bfloat16_saves_the_float32_master_weights_that_a_small_lr_moves(zero3_run, tmp_path):
    """model.dtype=bfloat16 under ZeRO-3: DeepSpeed computes with bf16 copies of float32 master
    weights. The SFT model (built under ZeRO-3 in bf16) and the final model are saved from the
    masters, as under FSDP: at lr 5e-7 nearly all final weights moved from the SFT model, while
    only a few percent of those moves show in bf16 (DeepSpeed's own 16-bit save would lose them)."""
    from safetensors.torch import load_file

    def bf16(cfg):
        cfg.model.dtype, cfg.train.lr, cfg.train.checkpoints, cfg.eval.prompts = "bfloat16", 5e-7, 1, 16

    run, status = variant_of(zero3_run, tmp_path / "bf16", bf16)
    final = load_file(run / "model" / "model.safetensors")
    sft = load_file(Path(status["sft_model"]) / "model.safetensors")
    assert Path(status["sft_model"]).parent == zero3_run.parent / "cache" / "sft"  # built here: bf16 is its own SFT
    assert {str(t.dtype) for t in final.values()} == {str(t.dtype) for t in sft.values()} == {"torch.float32"}
    total = sum(t.numel() for t in final.values())
    moved = sum((final[k] != sft[k]).sum().item() for k in final) / total
    visible_in_bf16 = sum((final[k].bfloat16() != sft[k].bfloat16()).sum().item() for k in final) / total
    print(f"ZeRO-3 bf16 at lr 5e-7: {moved:.4f} of the float32 weights moved, {visible_in_bf16:.4f} visible in bf16")
    assert moved > 0.9
    assert visible_in_bf16 < 0.5 * moved


def test_lora_under_zero3_composes_with_and_without_adapter_sft(cli):
    """LoRA under deepspeed_zero3 composes, with SFT training adapters too (model.lora.sft=true, the
    default: merged on rank 0 from the gathered weights) or not (it was refused before)."""
    zero3 = ["lora=default", "model.resources.strategy=deepspeed_zero3", "model.resources.tasks_per_node=2"]
    for sft in ("true", "false"):
        out = cli(*zero3, f"model.lora.sft={sft}", "dry_run=true").stdout
        assert "strategy=deepspeed_zero3" in out and "lora=r16" in out


@pytest.mark.slow
def test_zero3_lora_job_trains_adapters_evaluates_and_resumes_exactly(zero3_run, tmp_path):
    """LoRA under ZeRO-3 from an empty cache: SFT trains adapters under ZeRO-3 (merged on rank 0),
    the reference log-probs of the training pairs come from the partitioned base with its adapters
    disabled (both failed before: a merge of partitioned weights, TRL's fused head on a model not
    yet partitioned); both ranks train the same adapters; the lockstep
    evaluation equals a single-process one of the SFT model with the saved adapters (so the base
    stayed frozen and the reference is the base with adapters disabled); the job resumed from its
    checkpoint ends with the same rows and adapters."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from alignsweep.train import models

    def lora(cfg):
        cfg.model.lora = {"r": 4, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear", "sft": True}
        cfg.paths.cache_dir = str(tmp_path / "cache")  # empty: SFT with adapters and the reference passes run here

    run, status = variant_of(zero3_run, tmp_path / "lora", lora)
    # SFT trained adapters under ZeRO-3, gathered and merged on rank 0: a plain SFT checkpoint; the
    # training pairs' reference log-probs computed by the base with adapters disabled (partitioned)
    sft_weights = load_file(Path(status["sft_model"]) / "model.safetensors")
    assert sum(t.numel() for t in sft_weights.values()) == 104_576
    assert not any("lora" in k or "base_layer" in k for k in sft_weights)
    assert status["ref_logps"] == "computed" and status["seconds"]["sft"] > 0.5
    ranks = [json.loads((run / "ranks" / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"] and ranks[0]["micro_batches"] == 2
    adapters = load_file(run / "model" / "adapter_model.safetensors")
    assert adapters and all("lora_" in k for k in adapters)
    assert [r["step"] for r in rundir.read_metrics(run)] == [0, 1, 2]
    sft, _ = models.load_saved(status["sft_model"])
    final, single = single_process_evaluation(run, PeftModel.from_pretrained(sft, str(run / "model")))
    assert_same_row(single, final)
    assert final["kl"] != 0.0  # the adapters moved the policy

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed, ignore=shutil.ignore_patterns("ranks", "model"))
    state = json.loads((resumed / "status.json").read_text())
    state["state"] = "running"
    (resumed / "status.json").write_text(json.dumps(state))
    torchrun(resumed)
    status = rundir.read_status(resumed)
    assert status["state"] == "completed" and status["resumed_from"] == "checkpoint-1"
    assert rundir.read_metrics(resumed) == rundir.read_metrics(run)
    again = load_file(resumed / "model" / "adapter_model.safetensors")
    assert set(again) == set(adapters) and all(again[k].equal(adapters[k]) for k in adapters)
