"""The worker: one job, a pure function of its resolved config, writing only to its run directory.

    SFT policy (shared cache) -> DAA training through TRL -> evaluation at step 0, at evenly
    spaced checkpoints and at the end (or when the KL budget is spent).

Run a prepared run directory with `python -m alignsweep.worker RUN_DIR` (what the launchers do).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignsweep import rundir
from alignsweep.distributed import rank, write_rank_record
from alignsweep.plan import ConfigError, resolve_job

log = logging.getLogger("alignsweep.worker")


def loss_params(cfg: Any, job: Any) -> dict:
    params: dict = {"beta": job.beta, "alpha": job.alpha, "gamma": job.gamma}
    if job.algo == "ipo":
        params["length_normalized"] = bool(cfg.algo.length_normalized)
    if job.algo == "rdpo":
        params["length_coef"] = float(cfg.algo.length_coef or 0.0)
    return params


def load_task(cfg: Any, tokenizer: Any) -> dict:
    """The job's splits (sft, train, heldout, eval) with its bad rows dropped and counted.

    The embedded task is generated; other data is read from `data.path` or the hub. Pairs that
    are empty, identical, not text or longer than `data.max_length` tokens are dropped and
    reported (`report`); mostly bad data stops the job.
    """
    from alignsweep.data import embedded, pairs

    columns = (cfg.data.prompt_column, cfg.data.chosen_column, cfg.data.rejected_column)
    lengths = pairs.token_lengths(tokenizer)

    if cfg.data.embedded is not None:
        task = embedded.generate(cfg.data.embedded)
        reports = {}
        for split in ("train", "heldout"):
            task[split], report = pairs.clean_pairs(task[split], lengths=lengths, max_length=cfg.data.max_length)
            pairs.require_enough(report, cfg.data.max_bad_fraction, f"data={cfg.data.name} ({split})")
            reports[split] = report.as_dict()
        task["report"] = reports
        return task
    where = cfg.data.path or cfg.data.hub_id
    rows = pairs.read_local(cfg.data.path) if cfg.data.path else _hub_rows(cfg.data)
    good, report = pairs.clean_pairs(rows, columns, lengths=lengths, max_length=cfg.data.max_length)
    pairs.require_enough(report, cfg.data.max_bad_fraction, f"data={cfg.data.name} ({where})")
    n_heldout = min(cfg.data.heldout_size, len(good) // 2)
    train, heldout = good[: len(good) - n_heldout], good[len(good) - n_heldout :]
    return {
        "sft": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train],
        "train": train,
        "heldout": heldout,
        "eval": [{"prompt": r["prompt"], "reference": r["chosen"]} for r in heldout],
        "report": {"all": report.as_dict()},
    }


def _hub_rows(data_cfg: Any) -> list:
    try:
        from datasets import load_dataset

        return list(load_dataset(data_cfg.hub_id, split="train"))
    except Exception as exc:  # no network, no such dataset, no access
        raise ConfigError(
            f"data={data_cfg.name}: cannot load {data_cfg.hub_id!r} from the hub: {str(exc).splitlines()[0]} "
            f"Download it elsewhere (datasets.load_dataset(...).save_to_disk(DIR)), copy it here and run with "
            f"data.path=DIR."
        ) from None


def device_kwargs(cfg: Any) -> dict:
    import torch

    if torch.cuda.is_available():
        return {"bf16": cfg.model.dtype == "bfloat16", "fp16": cfg.model.dtype == "float16"}
    extra = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    return {"use_cpu": True, "bf16": False, "fp16": False, **extra}


def sampler_for(cfg: Any) -> str | None:
    """The evaluation sampler this job uses (None when it does not evaluate); `eval.sampler=vllm`
    where vLLM cannot run is a ConfigError."""
    if not cfg.eval.enabled:
        return None
    from alignsweep.sampling_vllm import resolve_sampler  # imports no vLLM

    return resolve_sampler(cfg.eval.sampler, world_size=int(os.environ.get("WORLD_SIZE", "1")))


def base_model_and_tokenizer(cfg: Any):
    """A factory of the model SFT starts from, and its tokenizer (built locally for the embedded
    tiny model). The model is only built or loaded when the SFT cache does not have it yet."""
    from alignsweep import models
    from alignsweep.data import embedded

    if cfg.model.arch is not None:
        vocab = embedded.vocabulary(cfg.data.embedded.n_words, cfg.data.embedded.n_fillers)
        tokenizer = models.build_word_tokenizer(vocab.tokens)
        return (lambda: models.build_tiny_model(cfg.model.arch, tokenizer, cfg.sft.seed)), tokenizer
    return (lambda: models.load_pretrained_model(cfg.model)), models.load_pretrained_tokenizer(cfg.model)


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Train and evaluate one job; returns its final status.

    In a distributed job every rank trains; only rank 0 writes the run directory's status, metrics
    and wandb run, and evaluates (with a sharded model every rank takes part: alignsweep.sharding).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job = resolve_job(cfg)
    start = time.time()
    main = rank() == 0
    previous = rundir.read_status(run_dir) or {}
    if previous.get("state") == "completed":
        # e.g. requeued by the scheduler in the seconds after it finished: nothing is left to do
        log.info("run %s already completed; nothing to do", run_dir)
        return previous
    resume_from = latest_checkpoint(run_dir)
    if main:
        prepare_resume(run_dir, resume_from)
        attempt = (rundir.read_status(run_dir) or {}).get("attempt", 0) + 1
        rundir.write_status(
            run_dir, state="running", phase="setup", error=None, pid=os.getpid(), attempt=attempt,
            resumed_from=None if resume_from is None else resume_from.name,
        )
    tracker = None
    try:
        tracker = _build_tracker(cfg, run_dir, job) if main else _null_tracker()
        train_and_evaluate = _train_and_evaluate
        if cfg.data.tree is not None:  # the Tree MDP toy: a tree policy, no TRL (alignsweep/tree_mdp.py)
            from alignsweep.tree_mdp import train_and_evaluate
        status = train_and_evaluate(cfg, job, run_dir, tracker, resume_from)
        if main:
            status = rundir.write_status(run_dir, wall_s=time.time() - start, **status)
        tracker.finish(0)
        return status
    except BaseException as exc:
        message = f"{type(exc).__name__}: {exc}"
        if main:
            rundir.write_status(
                run_dir, state="failed", phase="failed", error=message, traceback=traceback.format_exc()
            )
        if tracker is not None:
            tracker.finish(1)
        raise


def _null_tracker():
    from alignsweep.tracking import NullTracker

    return NullTracker()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete trainer checkpoint of the run (Trainer writes trainer_state.json last)."""
    found = []
    for path in (Path(run_dir) / "trainer").glob("checkpoint-*"):
        if (path / "trainer_state.json").exists() and path.name.split("-")[-1].isdigit():
            found.append((int(path.name.split("-")[-1]), path))
    return max(found)[1] if found else None


def prepare_resume(run_dir: Path, checkpoint: Path | None) -> None:
    """Make the run directory consistent with the checkpoint the next attempt resumes from.

    Metric rows after the checkpoint's step are dropped: training from the checkpoint recomputes
    them (deterministically), so a resumed run ends with exactly the rows of an uninterrupted one.
    Without a checkpoint the run starts over and earlier rows are set aside, not mixed in.
    """
    rows = rundir.read_metrics(run_dir, problems=[])  # unreadable lines are dropped with the rewrite
    if checkpoint is None:
        if (run_dir / rundir.METRICS).exists():
            os.replace(run_dir / rundir.METRICS, run_dir / f"{rundir.METRICS}.previous")
        return
    step = int(checkpoint.name.split("-")[-1])
    rundir.rewrite_metrics(run_dir, [r for r in rows if r["step"] <= step])


def _build_tracker(cfg: Any, run_dir: Path, job: Any):
    from alignsweep.tracking import build_tracker

    sweep = run_dir.parent.name if (run_dir.parent / "multirun.yaml").exists() else run_dir.name
    return build_tracker(
        cfg.logger,
        run_dir,
        group=sweep,
        job_type=job.algo,
        name=f"{job.algo}-{job.model}-b{job.beta:g}" + (f"-a{job.alpha:g}" if job.alpha is not None else ""),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def _train_and_evaluate(cfg: Any, job: Any, run_dir: Path, tracker: Any, resume_from: Path | None) -> dict:
    import torch
    from datasets import Dataset
    from trl import DPOConfig

    from alignsweep import models, sft, sharding
    from alignsweep.distributed import init_process_group
    from alignsweep.evaluation import Evaluator
    from alignsweep.judges import build_judge
    from alignsweep.phase_clock import PhaseClock, waited
    from alignsweep.trainer import DAATrainer

    clock = PhaseClock()  # where this job's time goes, in its status (`seconds`, `waited_s`)
    torch.manual_seed(job.seed)
    init_process_group()
    dev = device_kwargs(cfg)
    main = rank() == 0
    # model.resources.strategy: sharded (fsdp) models are evaluated by all ranks in lockstep
    strategy, asked = sharding.effective(cfg.model.resources.strategy), cfg.model.resources.strategy
    shard = sharding.training_kwargs(cfg, run_dir)
    lockstep = sharding.lockstep_evaluation(asked)
    # eval.sampler=vllm where vLLM or CUDA is missing stops here, before anything is built (exit 2)
    sampler_name = sampler_for(cfg)
    if main:
        if strategy != asked:
            log.warning("model.resources.strategy=%s needs several processes; this job has one: %s", asked, strategy)
        note = strategy if strategy == asked else f"{strategy} ({asked} asked, but the job has 1 process)"
        rundir.write_status(run_dir, phase="sft", strategy=note)
    with clock("data"):
        base, tokenizer = base_model_and_tokenizer(cfg)
        task, task_hit = shared_task(cfg, tokenizer)
    if main:
        rundir.write_status(run_dir, data=task["report"])
    with clock("sft"):
        sft_dir = sft.ensure_sft(cfg, task, base, tokenizer, {**dev, **shard})
    del base
    if main:
        rundir.write_status(run_dir, sft_model=str(sft_dir))
    with clock("load_models"):
        policy, tokenizer = models.load_saved(sft_dir, cfg.model.dtype)
        ref, _ = models.load_saved(sft_dir, cfg.model.dtype)
        ref.eval().requires_grad_(False)
        if torch.cuda.is_available():
            ref.to("cuda")

    params = loss_params(cfg, job)
    n_eval = cfg.eval.prompts or len(task["eval"])
    sampler = None
    if main and cfg.eval.enabled and sampler_name == "vllm":
        from alignsweep.sampling_vllm import VLLMSampler

        sampler = VLLMSampler(
            sft_dir, dtype=cfg.model.dtype, gpu_memory_utilization=cfg.eval.vllm_gpu_memory_utilization
        )
    with clock("heldout_ref_logps"):  # the evaluator scores the held-out pairs with the reference
        evaluator = None if not ((main or lockstep) and cfg.eval.enabled) else Evaluator(
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
    share_ref = bool(cfg.train.share_ref_logps) and not job.reference_free
    args = DPOConfig(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=cfg.model.per_device_batch,
        gradient_accumulation_steps=cfg.model.grad_accum,
        gradient_checkpointing=cfg.model.gradient_checkpointing and not shard,  # fsdp: its own
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
    with clock("trainer_setup"):  # tokenise and ref_logps inside are counted under their own names
        trainer = DAATrainer(
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
    if main:
        rundir.write_status(run_dir, **shared_status(task_hit, trainer, evaluator))
    from alignsweep.checkpoint_callback import CheckpointCallback

    callback = CheckpointCallback(trainer, evaluator, cfg, job, run_dir, tracker, clock=clock)
    trainer.add_callback(callback)
    if main:
        rundir.write_status(run_dir, phase="train")
    with clock("train"):  # step0 and eval inside are counted under their own names
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    timing = {"seconds": clock.rounded(), "waited_s": round(waited(), 3)}
    if main:  # again: what was read after training began (step 0, the held-out pairs) is known now
        rundir.write_status(run_dir, **shared_status(task_hit, trainer, evaluator, callback.step0_deferred))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        write_rank_record(run_dir, trainer)
    if callback.diverged_at is not None:
        return {"state": "diverged", "phase": "done", "step": callback.diverged_at, "stop_reason": "non_finite_loss",
                **timing}
    if cfg.train.save_final_model:
        if shard:
            sharding.save_full_model(trainer, run_dir / "model")  # gathered from the shards
        else:
            trainer.save_model(str(run_dir / "model"))
    return {"state": "completed", "phase": "done", "step": callback.last_step, "stop_reason": callback.stop_reason,
            **timing}


def shared_task(cfg: Any, tokenizer: Any) -> tuple[dict, bool | None]:
    """(`load_task`, hit): the cleaned splits, read from the sweep's cache when a job already
    stored them (`data.share_prepared`; hit None when sharing is off)."""
    if not cfg.data.share_prepared:
        return load_task(cfg, tokenizer), None
    from alignsweep.shared_data import task_cache_path
    from alignsweep.sweep_cache import load_or_compute

    return load_or_compute(task_cache_path(cfg, tokenizer), lambda: load_task(cfg, tokenizer))


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


def heldout_ref_cache_path(cfg: Any, sft_dir: Path, task: dict) -> Path:
    """Where the reference's log-probs of the held-out pairs are shared (`train.share_ref_logps`)."""
    import hashlib
    import json

    payload = {"sft": _weights_identity(sft_dir), "dtype": cfg.model.dtype, "heldout": task["heldout"]}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "ref_logps" / f"heldout-{key}.pt"


def _weights_identity(sft_dir: Path) -> list:
    """The SFT model's folder and its weights files' sizes and times: a rebuilt model gets a new key."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(sft_dir).glob("*.safetensors"))
    return [str(sft_dir), files]


def step0_cache_path(cfg: Any, job: Any, sft_dir: Path, task: dict, n_eval: int, sampler: str) -> Path:
    """Where step 0's evaluation of this SFT model is shared (`eval.share_step0`): keyed by a hash
    of everything that evaluation depends on, the SFT weights file's size and time included (a
    rebuilt SFT model gets a new key)."""
    import hashlib
    import json

    sft, weights = _weights_identity(sft_dir)
    payload = {
        "sft": sft, "weights": weights, "dtype": cfg.model.dtype, "seed": job.seed, "sampler": sampler,
        "eval": task["eval"][:n_eval], "heldout": task["heldout"], "max_new_tokens": cfg.data.max_new_tokens,
        "temperature": cfg.eval.temperature, "judge": OmegaConf.to_container(cfg.judge, resolve=True),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "step0" / f"{key}.pt"


def load_config(path: Path) -> DictConfig:
    from alignsweep.schema import load_run_config

    return load_run_config(path)


def run_prepared(run_dir: str | Path) -> dict:
    """Run the job prepared in `run_dir` (its config.yaml written by a launcher)."""
    run_dir = Path(run_dir)
    threads = os.environ.get("ALIGNSWEEP_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return run(load_config(run_dir / rundir.CONFIG), run_dir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m alignsweep.worker RUN_DIR", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    config = run_dir / rundir.CONFIG
    if not config.exists():
        print(f"error: {config} does not exist: not a prepared run directory", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        status = run_prepared(run_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if status["state"] == "completed" else 1


if __name__ == "__main__":
    from alignsweep.process_exit import exit_process

    exit_process(main())
