"""The preference task of one job, end to end in this process: SFT policy (shared cache) -> DAA
training through TRL -> evaluation at step 0, at evenly spaced checkpoints and at the end (or when
the KL budget is spent). `alignsweep.worker.job.run` calls it with the run directory prepared.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from alignsweep.results import rundir
from alignsweep.runtime.distributed import rank, write_rank_record
from alignsweep.train.losses import loss_params
from alignsweep.train.strategy import effective, lockstep_evaluation
from alignsweep.worker.task import (
    base_model_and_tokenizer,
    policy_and_reference,
    device_kwargs,
    heldout_ref_cache_path,
    sampler_for,
    shared_task,
    step0_cache_path,
)

log = logging.getLogger("alignsweep.worker")


def train_and_evaluate(cfg: Any, job: Any, run_dir: Path, tracker: Any, resume_from: Path | None) -> dict:
    """The preference task: SFT (shared) -> reference and policy loaded from it -> DAA training
    through TRL with the checkpoint callback evaluating -> the job's final status fields."""
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from alignsweep.evaluate.evaluator import Evaluator
    from alignsweep.evaluate.judges import build_judge
    from alignsweep.runtime.distributed import init_process_group
    from alignsweep.runtime.phase_clock import PhaseClock, waited
    from alignsweep.train import sft, sharding
    from alignsweep.train.lora import AdaptersDisabled, held_memory, named_target_errors, peft_config
    from alignsweep.train.trainer import DAATrainer

    clock = PhaseClock()  # where this job's time goes, in its status (`seconds`, `waited_s`)
    torch.manual_seed(job.seed)
    init_process_group()
    dev = device_kwargs(cfg)
    main = rank() == 0
    # model.resources.strategy: sharded (fsdp) models are evaluated by all ranks in lockstep
    strategy, asked = effective(cfg.model.resources.strategy), cfg.model.resources.strategy
    shard = sharding.training_kwargs(cfg, run_dir)
    lockstep = lockstep_evaluation(asked)
    # eval.sampler=vllm where vLLM or CUDA is missing stops here, before anything is built (exit 2)
    sampler_name = sampler_for(cfg)
    if main:
        if strategy != asked:
            log.warning("model.resources.strategy=%s needs several processes; this job has one: %s", asked, strategy)
        note = strategy if strategy == asked else f"{strategy} ({asked} asked, but the job has 1 process)"
        rundir.write_status(run_dir, phase="data", strategy=note)
    with clock("data"):
        base, tokenizer = base_model_and_tokenizer(cfg)
        task, task_hit = shared_task(cfg, tokenizer)
    if main:
        rundir.write_status(run_dir, data=task["report"])
    with clock("sft"):
        report = (lambda **fields: rundir.write_status(run_dir, **fields)) if main else None
        sft_dir = sft.ensure_sft(cfg, task, base, tokenizer, {**dev, **shard}, report=report)
    del base
    if main:
        rundir.write_status(run_dir, phase="prepare", sft_model=str(sft_dir))
    lora = cfg.model.get("lora")
    with clock("load_models"):
        policy, ref, tokenizer = policy_and_reference(cfg, sft_dir)
    if main:  # the base model's size, for the regressions across model sizes (alignsweep.analysis.scaling)
        rundir.write_status(run_dir, model_params=sum(getattr(p, "ds_numel", p.numel())  # ZeRO-3: partitioned
                                                          for p in policy.parameters()))

    params = loss_params(cfg, job)
    n_eval = cfg.eval.prompts or len(task["eval"])
    sampler = None
    if main and cfg.eval.enabled and sampler_name == "vllm":
        from alignsweep.evaluate.vllm_sampler import VLLMSampler

        sampler = VLLMSampler(
            sft_dir, dtype=cfg.model.dtype, gpu_memory_utilization=cfg.eval.vllm_gpu_memory_utilization
        )
    def make_evaluator(ref: Any) -> Any:  # it scores the held-out pairs with the reference when made
        return None if not ((main or lockstep) and cfg.eval.enabled) else Evaluator(
            ref_model=ref,
            tokenizer=tokenizer,
            judge=build_judge(cfg.judge, data_name=cfg.data.name, cache_root=cfg.paths.cache_dir) if main else None,
            eval_rows=task["eval"][:n_eval],
            heldout_rows=task["heldout"],
            loss_name=job.algo,
            loss_params=params,
            max_new_tokens=cfg.data.max_new_tokens,
            temperature=cfg.eval.temperature,
            batch_size=cfg.eval.batch_size,
            seed=job.seed,
            kl_estimator=cfg.eval.kl_estimator,
            lockstep=lockstep,
            sampler=sampler,
            step0_cache=step0_cache_path(cfg, job, sft_dir, task, n_eval, sampler_name) if cfg.eval.share_step0 else None,
            heldout_ref_cache=heldout_ref_cache_path(cfg, sft_dir, task) if cfg.train.share_ref_logps else None,
        )

    if lora is None:
        with clock("heldout_ref_logps"):
            evaluator = make_evaluator(ref)
    share_ref = bool(cfg.train.share_ref_logps) and not job.reference_free
    args = DPOConfig(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=cfg.model.per_device_batch,
        gradient_accumulation_steps=cfg.model.grad_accum,
        # transformers 5 renamed it; TRL defaults the old name to True, so name the new one (no warning)
        activation_checkpointing=cfg.model.gradient_checkpointing and not shard,  # fsdp: its own
        learning_rate=cfg.train.lr,
        num_train_epochs=cfg.train.epochs,
        optim=cfg.train.optimizer,
        lr_scheduler_type=cfg.train.lr_scheduler,
        warmup_steps=cfg.train.warmup_steps,
        max_grad_norm=cfg.train.max_grad_norm,
        max_length=cfg.data.max_length,
        beta=job.beta,
        # reference log-probs of the training pairs, computed before training: once per sweep and
        # shared (train.share_ref_logps), or by this job the same way (the same numbers either way)
        precompute_ref_log_probs=not job.reference_free,
        save_strategy="no",  # the callback saves at the evaluation checkpoints (train.resumable)
        save_total_limit=1,
        logging_steps=10,
        report_to=[],
        disable_tqdm=True,
        seed=job.seed,
        **dev,
        **shard,
    )
    with clock("trainer_setup"), named_target_errors(cfg.model.name):  # tokenise, ref_logps counted apart
        trainer = DAATrainer(
            peft_config=None if lora is None else peft_config(lora),  # adapters added by TRL (get_peft_model)
            ref_cache_dir=str(Path(cfg.paths.cache_dir) / "ref_logps") if share_ref else None,
            prepared_cache_dir=str(Path(cfg.paths.cache_dir) / "data") if cfg.data.share_prepared else None,
            model=policy,
            ref_model=ref,
            args=args,
            train_dataset=Dataset.from_list(task["train"]),
            processing_class=tokenizer,
            loss_name=job.algo,
            loss_params=params,
            clock=clock,
        )
    if lora is not None:  # the reference: the policy's own module with its adapters disabled
        with clock("heldout_ref_logps"):
            evaluator = make_evaluator(AdaptersDisabled(trainer.model))
    if main:
        rundir.write_status(run_dir, **shared_status(task_hit, trainer, evaluator))
    from alignsweep.train.checkpoints import CheckpointCallback

    callback = CheckpointCallback(trainer, evaluator, cfg, job, run_dir, tracker, clock=clock)
    trainer.add_callback(callback)
    if main:
        rundir.write_status(run_dir, phase="train")
    with clock("train"):  # step0 and eval inside are counted under their own names
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    timing = {"seconds": clock.rounded(), "waited_s": round(waited(), 3)}
    if main:  # one copy of the weights under LoRA: the reference shares the policy's storages
        rundir.write_status(run_dir, memory=held_memory(trainer.model, trainer.ref_model if lora is None else
                                                         evaluator.ref_model if evaluator is not None else None,
                                                         trainer.optimizer))
    if main:  # again: what was read after training began (step 0, the held-out pairs) is known now
        rundir.write_status(run_dir, **shared_status(task_hit, trainer, evaluator, callback.step0_deferred))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        write_rank_record(run_dir, trainer)
    if callback.diverged_at is not None:
        return {"state": "diverged", "phase": "done", "step": callback.diverged_at, "stop_reason": callback.stop_reason,
                **timing}
    if cfg.train.save_final_model:  # under LoRA: the adapters (peft's format) on the SFT model as base
        if shard:
            sharding.save_full_model(trainer, run_dir / "model")  # gathered from the shards
        else:
            trainer.save_model(str(run_dir / "model"))
    return {"state": "completed", "phase": "done", "step": callback.last_step, "stop_reason": callback.stop_reason,
            **timing}


def shared_status(task_hit: bool | None, trainer: Any, evaluator: Any, step0_deferred: bool = False) -> dict:
    """What this job read from the sweep's cache and what it computed, for status.json."""
    said = {True: "read from the sweep's cache", False: "computed"}
    found = {"data_splits": task_hit, "heldout_ref_logps": None if evaluator is None else evaluator.heldout_ref_cache_hit}
    status = {key: said[hit] for key, hit in found.items() if hit is not None}
    for key, split in (("data_tokenised", trainer.prepared_parts), ("ref_logps", trainer.ref_parts)):
        if split is None:
            continue
        computed, parts = split
        status[key] = said[computed == 0] if computed in (0, parts) else (
            # jobs that started together split the work
            f"computed {computed} of {parts} parts, read the others from the sweep's cache"
        )
    if evaluator is not None and evaluator.step0_cache_hit is not None:
        status["step0_eval"] = "read from the sweep's cache" if evaluator.step0_cache_hit else "measured"
        if step0_deferred:  # another job was measuring it when this one began training
            status["step0_eval"] += " after training began (another job was measuring it)"
    return status
