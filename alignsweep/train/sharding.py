"""How the processes of one job share the model: `model.resources.strategy`.

- `single`: every process holds the whole model; with several processes the gradients are
  all-reduced (DDP). Evaluation runs on rank 0 alone.
- `fsdp`: PyTorch FSDP2 (`fully_shard`, through accelerate): parameters, gradients and optimizer
  state are sharded over the processes, one FSDP unit per transformer layer (the model's own
  `_no_split_modules`: GPTNeoXLayer, MistralDecoderLayer, LlamaDecoderLayer), full sharding
  (parameters re-sharded after each forward), FSDP's own activation checkpointing when
  `model.gradient_checkpointing`, sharded checkpoints (each rank writes its shard, see
  `fsdp_config`). The reference model is sharded too (TRL's `prepare_fsdp`). Every forward pass of
  a sharded model is a collective, so evaluation runs on every rank in lockstep: the same prompts
  in the same batches, rank 0's sampled tokens broadcast to all, rank 0 alone judging and writing
  (`lockstep_evaluation`).
- LoRA under `fsdp` (`model.lora`): base and adapters are sharded alike (FSDP2 needs a uniform
  dtype among the trainable parameters only: the float32 adapters), the reference is the same
  sharded module with its adapters disabled (evaluated in lockstep), checkpoints hold the
  adapters' shards only (transformers' adapter-only FSDP checkpoint), the final model gathers the
  adapters alone, and SFT's adapters are merged on rank 0 from the gathered weights
  (`alignsweep.train.lora.merged_from_state`).
- `deepspeed_zero3`: DeepSpeed ZeRO stage 3 (TRL/transformers' DeepSpeed integration) with the
  config `zero3_config` writes into the run directory, evaluated in lockstep like FSDP. The SFT
  model is trained the same way by all ranks; checkpoints are DeepSpeed's (each rank writes its
  partition of weights and optimizer state, `global_stepN/`), resumed by the Trainer; the SFT and
  final models are gathered by DeepSpeed on rank 0 (`full_state_dict`; under bf16 the float32
  master weights, as under FSDP, not DeepSpeed's 16-bit copies). The policy and reference
  are loaded whole by every rank and partitioned by DeepSpeed when the trainer is built (no
  `zero.Init` loading, as FSDP's `cpu_ram_efficient_loading` is off). TRL's fused log-prob head
  needs `gather_lm_head_with_model`. It needs the `deepspeed` package (`pip install -e
  ".[deepspeed]"`); without it the job stops with a ConfigError. Run here on CPU only (DeepSpeed
  0.19.8, `DS_ACCELERATOR=cpu`, 2 processes, gloo; tests/test_zero3.py): SFT, DPO, lockstep
  evaluation equal to a single-process one, exact resume, the final model, bf16 over float32
  masters, and LoRA as under FSDP (SFT's adapters merged on rank 0 from the gathered weights; the
  reference passes before training run through an inference engine of the policy's, as TRL's own
  precompute, which leaves before the training engine comes: `DAATrainer.train`). Not run:
  GPUs/NCCL, 7B memory.

A sharding strategy needs several processes. A job that asks for one with a single process
(nodes x tasks_per_node = 1, e.g. `model=mistral_7b` on the local launcher) is degraded to
`single`: the dry-run line shows `strategy=fsdp->single`, and the worker logs it and records it
in `status.json` (`strategy`). The worker decides from the processes it actually has
(`WORLD_SIZE`), so `torchrun --nproc_per_node N -m alignsweep.worker RUN_DIR` shards too.

Imports torch lazily; the strategy names and `planned` live in `alignsweep.train.strategy` (torch-free, for the dry run).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from alignsweep.errors import ConfigError
from alignsweep.train.strategy import effective

log = logging.getLogger(__name__)

def layer_classes(cfg: Any) -> list[str]:
    """The model's transformer layer class names (its `_no_split_modules`: GPTNeoXLayer for
    Pythia, MistralDecoderLayer, LlamaDecoderLayer), read from its config without its weights."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPTNeoXForCausalLM

    if cfg.model.arch is not None:  # built from scratch: GPT-NeoX
        return list(GPTNeoXForCausalLM._no_split_modules)
    try:
        config = AutoConfig.from_pretrained(cfg.model.path or cfg.model.hub_id)
        return list(AutoModelForCausalLM._model_mapping[type(config)]._no_split_modules or [])
    except Exception:  # unreadable here: accelerate falls back to the loaded model's own list
        log.warning("cannot read the layer classes of %s; FSDP wraps the model's _no_split_modules", cfg.model.name)
        return []


def fsdp_config(layers: list[str], gradient_checkpointing: bool) -> dict:
    """transformers' `fsdp_config` for FSDP2 full sharding, one unit per transformer layer."""
    config: dict[str, Any] = {
        "version": 2,
        "reshard_after_forward": True,  # full_shard (ZeRO-3-like), not shard_grad_op
        # SHARDED_STATE_DICT: each rank writes its own shard of model and optimizer at a checkpoint
        # (torch.distributed.checkpoint) and reads it back on resume; no rank ever holds the whole
        # 7B state. The final model (train.save_final_model) is gathered separately (save_full_model).
        "state_dict_type": "SHARDED_STATE_DICT",
        "activation_checkpointing": bool(gradient_checkpointing),
        "cpu_ram_efficient_loading": False,
    }
    config["auto_wrap_policy"] = "TRANSFORMER_BASED_WRAP"
    if layers:  # else accelerate takes the loaded model's own `_no_split_modules`
        config["transformer_layer_cls_to_wrap"] = layers
    return config


def zero3_config(cfg: Any) -> dict:
    """A DeepSpeed ZeRO-3 config whose batch sizes and precision come from the trainer ("auto")."""
    return {
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
    }


def training_kwargs(cfg: Any, run_dir: Path) -> dict:
    """The TrainingArguments (DPOConfig, SFTConfig) entries of the job's strategy (empty for
    `single`). Under FSDP, activation checkpointing is FSDP's own (`fsdp_config`): the caller
    leaves the Trainer's `gradient_checkpointing` off, which would all-gather twice."""
    strategy = effective(cfg.model.resources.strategy)
    if strategy == "single":
        return {}
    if strategy == "fsdp":
        # FSDP's own activation checkpointing replaces the Trainer's (which would all-gather twice)
        return {"fsdp": True, "fsdp_config": fsdp_config(layer_classes(cfg), cfg.model.gradient_checkpointing)}
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError(
            "model.resources.strategy=deepspeed_zero3 needs the `deepspeed` package, which is not installed "
            "here (pip install deepspeed, on the GPU nodes); or use model.resources.strategy=fsdp"
        ) from None
    path = Path(run_dir) / "deepspeed_zero3.json"
    if int(os.environ.get("RANK", "0")) == 0:
        from alignsweep.results import rundir

        rundir.atomic_write_text(path, json.dumps(zero3_config(cfg), indent=1))
    return {"deepspeed": str(path)}


def full_state_dict(trainer: Any, keep: Any = None) -> dict | None:
    """The policy's whole state dict on rank 0 (None elsewhere): gathered from the shards under
    FSDP (a collective: every rank must call it), the model's own otherwise. `keep(name)`: under
    FSDP, only the tensors it accepts are gathered (LoRA's adapters, not the frozen base)."""
    main = trainer.accelerator.is_main_process
    if trainer.is_fsdp_enabled:
        # FSDP2: parameters are DTensor shards. Gathered one tensor at a time and copied to host
        # memory on rank 0 only (accelerate's get_state_dict hands back, on CPU, tensors that
        # alias buffers FSDP frees again).
        state = {}
        for name, tensor in trainer.model.state_dict().items():
            if keep is not None and not keep(name):
                continue
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            if main:
                state[name] = full.detach().to("cpu", copy=True)
        return state if main else None
    if trainer.is_deepspeed_enabled:
        # ZeRO-3: accelerate asks the DeepSpeed engine (`model_wrapped`, not the module) for the
        # consolidated weights (`stage3_gather_16bit_weights_on_model_save`: in the model's own
        # dtype, float32 masters stay float32), gathered on rank 0 (a collective)
        engine = trainer.model_wrapped
        state = trainer.accelerator.get_state_dict(engine)
        if engine.bfloat16_enabled() or engine.fp16_enabled():
            # mixed precision: DeepSpeed's module holds 16-bit copies; the weights saved are the
            # optimizer's float32 masters (as under FSDP), gathered one tensor at a time
            from deepspeed.utils import safe_get_full_fp32_param

            for name, param in trainer.model.named_parameters():
                if param.requires_grad:
                    full = safe_get_full_fp32_param(param)  # a collective
                    if main:
                        state[name] = full.detach().to("cpu", copy=True)
        return state if main else None
    return trainer.accelerator.unwrap_model(trainer.model).state_dict()


def gather_lm_head_with_model(model: Any) -> None:
    """For DeepSpeed ZeRO-3: the output layer's parameters registered as external parameters of the
    model (DeepSpeed's `deepspeed.zero.register_external_parameter`), so that DeepSpeed gathers
    them for the model's whole forward and backward. Call it before the model's first forward under
    DeepSpeed (it changes the parameter trace ZeRO-3 records): before the trainer is built.

    Why: TRL's fused log-prob head (`fused_lm_head=True`, trl.trainer.utils.add_fused_lm_head)
    reads `lm_head.weight` without calling the head module and gathers it itself
    (`maybe_gather_lm_head_ctx`). Once an evaluation has run the model with its ordinary head, the
    ZeRO-3 parameter trace has the head in it, the next training forward prefetches the head's
    weight, and TRL's gather of a weight still in flight fails ("Cannot partition a param in
    flight", DeepSpeed 0.19.8, TRL 1.16). Registered, the weight is fetched (and waited for) with
    the model: TRL finds it gathered and leaves it alone. `model`: the Hugging Face model whose
    forward TRL patches (under LoRA the base model, before peft wraps it)."""
    import deepspeed

    head = model.get_output_embeddings()
    for param in (head.weight, getattr(head, "bias", None)):
        if param is not None:
            deepspeed.zero.register_external_parameter(model, param)  # a no-op when registered already


def save_full_model(trainer: Any, folder: Path) -> None:
    """The final policy as an ordinary Hugging Face checkpoint (every rank must call this); under
    LoRA its adapters in peft's format (only they are gathered), on the SFT model as their base."""
    from alignsweep.train.lora import is_peft

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = full_state_dict(trainer, keep=(lambda name: "lora_" in name) if is_peft(model) else None)
    if state is not None:
        model.save_pretrained(str(folder), state_dict=state)
        trainer.processing_class.save_pretrained(str(folder))
    trainer.accelerator.wait_for_everyone()


def enable_fsdp_on_cpu(trainer: Any) -> None:
    """Let FSDP run on CPU processes (gloo), as in this project's tests.

    accelerate enables its FSDP plugin only for accelerator devices: for CPU processes it falls
    back to DDP silently, replicating the model. PyTorch's FSDP2 itself runs on a CPU device mesh,
    so when the trainer asked for FSDP and got plain multi-CPU data parallelism, its accelerator
    state is switched to FSDP with the same plugin. Does nothing on GPUs, where accelerate's own
    path applies.
    """
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if not trainer.args.fsdp or state.distributed_type != DistributedType.MULTI_CPU:
        return
    # AcceleratorState copies PartialState's shared fields whenever it is constructed again
    # (accelerate's utilities do so): both must say FSDP, or a later trainer gets DDP.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    trainer.is_fsdp_enabled = True


class CPUFSDPMixin:
    """Mixed into a Trainer class (before it): `enable_fsdp_on_cpu` right after its accelerator is
    created, before anything reads `is_fsdp_enabled`."""

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()  # type: ignore[misc]
        enable_fsdp_on_cpu(self)
