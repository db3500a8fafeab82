"""The SFT policy: trained once per (model, data, SFT settings) and shared by every job of a sweep.

It is both the initial policy and the reference model, as in the paper. Under `model.lora` (with
`model.lora.sft`) SFT trains LoRA adapters and the cached model is the base with them merged in. The cache folder is named
by a hash of everything that determines it. One job builds it under a file lock while the others
wait; it is written to a temporary folder and renamed into place when complete, so a builder that
crashes leaves nothing another job could mistake for a finished model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)
PAIR_ONLY_KEYS = ("n_train", "n_heldout", "n_eval", "length_bias", "label_noise", "label_temperature")


def sft_key(cfg: Any) -> str:
    """Content hash of what determines the SFT model (not the DAA hyperparameters)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("resources", None)
    model.pop("per_device_batch", None)
    model.pop("grad_accum", None)
    # activation checkpointing recomputes the same activations: the same SFT model (bit for bit on
    # CPU in float32, measured), so jobs with and without it share one; hashed as false, the value
    # every cache built before had unless it was set
    model["gradient_checkpointing"] = False
    lora = model.pop("lora", None)
    if lora is not None and lora.get("sft", True):  # SFT trains (and merges) adapters
        model["lora"] = lora  # null or full SFT: the key of full fine-tuning, shared with its jobs
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("max_new_tokens", None)
    data.pop("share_prepared", None)  # where the prepared data comes from, not what it is
    if data.get("embedded"):
        # The SFT split is drawn first from the task's seed: the sizes and labels of the other
        # splits do not change it, so sweeps over them share one SFT model.
        for key in PAIR_ONLY_KEYS:
            data["embedded"].pop(key, None)
    spec = {"model": model, "data": data, "sft": OmegaConf.to_container(cfg.sft, resolve=True)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_sft(
    cfg: Any, task: dict, build_base_model: Any, tokenizer: Any, device_kwargs: dict, report: Any = None
) -> Path:
    """Path of the cached SFT model, building it first if no job has yet (`build_base_model()` is
    called only then, so a cache hit never loads the base weights).

    `report(**fields)` (the job's status) hears `phase="sft"` only when this job trains the model,
    then `sft_step` / `sft_total_steps` as training goes, so a cached model is never announced as SFT."""
    from alignsweep.runtime.distributed import agree, barrier, rank, rank_zero_lock

    root = Path(cfg.paths.cache_dir) / "sft"
    root.mkdir(parents=True, exist_ok=True)
    key = sft_key(cfg)
    final = root / key
    # In a multi-process job every rank trains the SFT model together (its trainer's collectives
    # need them all), so rank 0 alone takes the lock and tells the others whether it is cached.
    with rank_zero_lock(root / f"{key}.lock"):
        if agree((final / "DONE").exists()):
            if rank() == 0:
                from alignsweep.cache.store import mark_used

                mark_used(final)  # for `python -m alignsweep cache --unused-for`
            return final
        main = rank() == 0
        tmp = root / f"{key}.partial"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("building the SFT model %s", key)
        if report is not None and cfg.sft.enabled:
            report(phase="sft")
        model = build_base_model()
        state = None  # None: the model's own weights; under sharding, the gathered ones on rank 0
        if cfg.sft.enabled:
            model, state = _train(cfg, task["sft"], model, tokenizer, root / f"{key}.trainer", device_kwargs, report)
        if main:
            model.save_pretrained(tmp, state_dict=state)
            tokenizer.save_pretrained(tmp)
            (tmp / "DONE").write_text(json.dumps({"key": key}))
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
        barrier()
    return final


def _progress_callback(report: Any) -> Any:
    """A TrainerCallback passing SFT's step and step count to `report` (at most every 2 s)."""
    import time

    from transformers import TrainerCallback

    class SFTProgress(TrainerCallback):
        last = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            now = time.time()
            if now - self.last >= 2.0 or state.global_step == state.max_steps:
                self.last = now
                report(sft_step=state.global_step, sft_total_steps=state.max_steps)

    return SFTProgress()


def sft_lora(cfg: Any) -> Any:
    """`model.lora` when the SFT stage trains adapters (`model.lora.sft`), else None."""
    lora = cfg.model.get("lora")
    return lora if lora is not None and lora.sft else None


def _train(cfg: Any, rows: list, model: Any, tokenizer: Any, out: Path, device_kwargs: dict,
           report: Any = None) -> tuple[Any, dict | None]:
    """(the trained model, its gathered state dict under sharding or None). With `model.lora`
    (and `model.lora.sft`) SFT trains LoRA adapters and returns the model they are merged into:
    the SFT model, pi_ref, is a plain checkpoint (why: `alignsweep.train.lora`)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=cfg.sft.epochs,
        learning_rate=cfg.sft.lr,
        per_device_train_batch_size=cfg.sft.batch_size,
        warmup_steps=cfg.sft.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
        lr_scheduler_type="cosine",
        max_length=cfg.data.max_length,
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        disable_tqdm=True,
        seed=cfg.sft.seed,
        completion_only_loss=True,
        # the model config's setting (TRL defaults the deprecated `gradient_checkpointing` to True,
        # which also made transformers warn at every SFT)
        activation_checkpointing=bool(cfg.model.gradient_checkpointing) and not device_kwargs.get("fsdp"),
        **device_kwargs,
    )
    from alignsweep.train.sharding import CPUFSDPMixin

    trainer_class = type("SFTTrainer", (CPUFSDPMixin, SFTTrainer), {})
    lora = sft_lora(cfg)
    peft = None
    if lora is not None:
        from alignsweep.train.lora import peft_config

        peft = peft_config(lora)
    from alignsweep.train.lora import named_target_errors

    with named_target_errors(cfg.model.name):
        trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                processing_class=tokenizer, peft_config=peft)
    if report is not None:
        trainer.add_callback(_progress_callback(report))
    trainer.train()
    state = None
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        from alignsweep.train.sharding import full_state_dict

        state = full_state_dict(trainer)  # collective: the shards gathered on rank 0
    if trainer.is_deepspeed_enabled:
        # transformers keeps the trainer's ZeRO-3 config as a process-wide setting while the trainer
        # lives: the DAA stage's models, loaded next, would come partitioned (deepspeed.zero.Init)
        # without a DeepSpeed engine to gather them. They are loaded whole, as in a job whose SFT model
        # was cached, and partitioned by their own trainer.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    trainer.accelerator.wait_for_everyone()
    shutil.rmtree(out, ignore_errors=True)
    if lora is not None:  # the adapters merged into the base: the SFT model is a plain checkpoint
        from alignsweep.train.lora import merged, merged_from_state

        if state is not None:  # sharded: merged on rank 0 from the gathered weights
            return merged_from_state(state, model.config, peft)
        if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # not rank 0: rank 0 saves
            return model, None
        return merged(trainer.accelerator.unwrap_model(trainer.model)), None
    return model, state
