"""Evaluation during training: step 0, the evenly spaced checkpoints (`eval.at=steps`) or those where
the policy first crosses each sqrt(KL) target (`eval.at=sqrt_kl`, `alignsweep.train.kl_targets`) and
the end, the running KL check of `kl_budget` and of the targets, divergence, progress in the run's
status, and trainer checkpoints for resuming.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from alignsweep.errors import ConfigError
from alignsweep.results import rundir
from alignsweep.results.tracking import log_samples
from alignsweep.train.kl_targets import SqrtKLTargets
from alignsweep.runtime.distributed import (
    agree,
    any_rank,
    distributed,
    global_mean,
    rank,
)


class CheckpointCallback(TrainerCallback):
    """Evaluates at step 0 and at the checkpoint steps, watches the KL budget, records progress."""

    def __init__(self, trainer: Any, evaluator: Any, cfg: Any, job: Any, run_dir: Path, tracker: Any,
                 clock: Any = None):
        from alignsweep.runtime.phase_clock import PhaseClock

        self.trainer, self.evaluator, self.cfg, self.job = trainer, evaluator, cfg, job
        self.clock = clock if clock is not None else PhaseClock()  # step0, eval: seconds
        self.run_dir, self.tracker = run_dir, tracker
        self.main = rank() == 0
        self.ckpts: list[int] = []
        self.total = 0
        self.last_step = 0
        kept = rundir.read_metrics(run_dir, problems=[])  # a resumed run's rows up to its checkpoint
        self.evaluated: set[int] = {row["step"] for row in kept}
        self.stop_reason = "end_of_training"
        self.diverged_at: int | None = None
        self._loss_mark = 0
        self._last_progress = 0.0
        self.step0_later = False  # another job was measuring step 0: read it before the next row
        self.step0_deferred = False  # whether it was (for the run's status)
        self.targets = None  # eval.at=sqrt_kl: the targets crossed so far, as the kept rows say
        if cfg.eval.at == "sqrt_kl":
            self.targets = SqrtKLTargets(cfg.eval.sqrt_kl_targets)
            self.targets.restore(kept)
        self.checking = job.kl_budget is not None or self.targets is not None
        self.kl_check = None  # the running check of kl_budget and the targets (alignsweep.evaluate.kl_budget)
        if self.checking and evaluator is not None:
            self.kl_check = evaluator.kl_budget(job.kl_budget, cfg.train.kl_check_prompts, cfg.train.kl_check_every)
            for row in kept:  # the growth the next check expects runs from the last evaluation, as uninterrupted
                self._anchor(row)

    def _status(self, **fields: Any) -> None:
        if self.main:
            rundir.write_status(self.run_dir, **fields)

    def _train_loss(self) -> float | None:
        losses = self.trainer.step_losses[self._loss_mark :]
        self._loss_mark = len(self.trainer.step_losses)
        return global_mean(losses)

    def _anchor(self, row: dict | None) -> None:
        if self.kl_check is not None and row is not None and row.get("step", 0) > 0 and "kl_exact_token" in row:
            self.kl_check.anchor(row["step"], row["kl_exact_token"])

    def _evaluate(self, step: int, reason: str | None = None, check: Any = None) -> dict | None:
        """Evaluate the policy at `step` (rank 0; the other ranks only keep count, or, with a
        sharded model, take part in the forward passes and get None). `check`: the running check
        that asked for it (its crossings name the row's sqrt_kl_target)."""
        self._step0_now()  # the rows stay in step order
        return self._row(step, self._train_loss(), reason, check=check)  # _train_loss: every rank takes part

    def _step0_now(self) -> None:
        """The step-0 row left for later (`step0_later`): read from the sweep's cache, where the job
        that measured it stored it by now (or, if that job failed, measured here with the reference
        model, which is the SFT model, the global RNG left as it was for training)."""
        if self.step0_later:
            import torch

            self.step0_later = False
            with torch.random.fork_rng():
                self._row(0, None, None, policy=self.evaluator.ref_model)

    def _row(self, step: int, train_loss: float | None, reason: str | None, policy: Any = None,
             check: Any = None) -> dict | None:
        self.evaluated.add(step)
        if self.evaluator is None or not self.cfg.eval.enabled:
            return None
        trained = max(step, self.last_step)  # the status shows training's step, also while a deferred step 0 is written
        self._status(phase="eval", step=trained)
        with self.clock("step0" if step == 0 else "eval"):
            row = self.evaluator.evaluate(self.trainer.model if policy is None else policy, step)
        if row is None:
            return None
        bad = non_finite_measurements(row)
        if bad:  # the policy's log-probabilities overflowed: a diverged step, not a measurement
            self.diverged_at, self.stop_reason = step, "non_finite_logps"
            self._status(diverged_at=step, diverged_keys=bad)
            return None
        row.update(
            {
                "step": step,
                "epoch": step / self.total * float(self.cfg.train.epochs) if self.total else 0.0,
                "progress": step / self.total if self.total else 0.0,
                "checkpoint": len(self.evaluated) - 1,
                "train_loss": train_loss,
                "algo": self.job.algo,
                "beta": self.job.beta,
                "alpha": self.job.alpha,
                "gamma": self.job.gamma,
                "model": self.job.model,
            }
        )
        row["sqrt_kl_target"] = self._target(step, row, check)
        if reason:
            row["stop_reason"] = reason
        rundir.append_metrics(self.run_dir, row)
        self._anchor(row)
        write_samples(self.run_dir, step, self.evaluator.last_samples)
        log_samples(self.tracker, step, self.evaluator.last_samples)
        self.tracker.log(row, step=step)
        self._status(
            phase="train", step=trained, checkpoints_done=len(self.evaluated), last_win_rate=row["win_rate"],
            eval_batch=self.evaluator.batch_info(),
        )
        return row

    def _target(self, step: int, row: dict, check: Any) -> float | None:
        """The sqrt(KL) target this row is the first crossing of (None: none, or eval.at=steps): the
        running check's decision when one asked for the row, else the row's own exact-token estimate."""
        if self.targets is None or step == 0:
            return None
        over = check.crosses if check is not None else (lambda kl: row["kl_exact_token"] > kl)
        target = self.targets.record(step, self.targets.crossing(over))
        self._status(sqrt_kl_targets=self.targets.report())
        return target

    def _over_budget(self, row: dict | None) -> bool:
        """A checkpoint evaluation (every prompt) decides with the running check's estimator."""
        return self.job.kl_budget is not None and row is not None and row["kl_exact_token"] > self.job.kl_budget

    def on_train_begin(self, args, state, control, **kwargs):
        self.total = state.max_steps
        # eval.at=sqrt_kl: the end only; the others come when the running check crosses a target
        self.ckpts = [self.total] if self.targets is not None else checkpoint_steps(self.total, self.cfg.train.checkpoints)
        self._status(total_steps=self.total, checkpoint_steps=self.ckpts, checkpoints_done=len(self.evaluated),
                     **({} if self.targets is None else {"sqrt_kl_targets": self.targets.report()}))
        if 0 not in self.evaluated:
            if (not distributed() and self.job.kl_budget is None and self.evaluator is not None
                    and self.evaluator.step0_busy()):
                # another job of the sweep is measuring this step 0 (the same for every job): train
                # now and read its measurement before the next row, instead of waiting idle for it
                # (one process alone; with a KL budget, step 0 decides whether to train at all)
                self.step0_later = self.step0_deferred = True
                self._status(step0_eval="left for later: another job is measuring it")
                return
            row = self._evaluate(0)
            if agree(self._over_budget(row)):
                self._stop(0, control)

    def on_train_end(self, args, state, control, **kwargs):
        self._step0_now()  # no checkpoint came after step 0: its row is still written
        if self.targets is not None:  # what is still pending was never reached
            self.targets.end()
            self._status(sqrt_kl_targets=self.targets.report())

    def on_step_end(self, args, state, control, **kwargs):
        step = self.last_step = state.global_step
        recent = self.trainer.step_losses[-1:] or [0.0]
        # checked every step, before anything reads the weights: the step whose update made them
        # non-finite is the diverged one, and no checkpoint of it is evaluated or saved
        loss_ok, weights_ok = math.isfinite(recent[-1]), weights_finite(self.trainer.model)
        if any_rank(not (loss_ok and weights_ok)):
            self._diverged(step, "non_finite_loss" if not loss_ok else "non_finite_weights", control)
            return
        if step in self.ckpts and step not in self.evaluated:
            row = self._evaluate(step)
            if agree(self.diverged_at is not None):
                self._diverged(step, self.stop_reason, control)
                return
            stop = agree(self._over_budget(row))
            control.should_save = bool(self.cfg.train.resumable) and step < self.total and not stop
            if stop:
                self._stop(step, control)
        elif self.checking and step % self.cfg.train.kl_check_every == 0:
            over = crossed = False
            check = None
            if self.kl_check is not None:  # rank 0, or every rank when the model is sharded
                thresholds = self.targets.thresholds() if self.targets is not None else ()
                check = self.kl_check.check(self.trainer.model, step, thresholds)  # in evaluation mode
                over = check.over
                crossed = self.targets is not None and bool(self.targets.crossing(check.crosses))
                self._status(kl_check=check.as_dict())
            over, crossed = agree(over), agree(crossed)
            if over or crossed:  # the budget spent, or a sqrt(KL) target crossed: evaluate, and save
                row = self._evaluate(step, reason="kl_budget" if over else None, check=check)
                if agree(self.diverged_at is not None):
                    self._diverged(step, self.stop_reason, control)
                    return
                stop = over or agree(self._over_budget(row))
                control.should_save = bool(self.cfg.train.resumable) and step < self.total and not stop
                if stop:  # the check found the budget spent, or the evaluation (every prompt) did
                    self._stop(step, control)
        now = time.time()
        if now - self._last_progress > 1.0:
            self._last_progress = now
            self._status(step=step)

    def _diverged(self, step: int, reason: str, control: Any) -> None:
        """Stop at `step` as diverged: no row and no trainer checkpoint for it (the last one saved,
        at an earlier evaluation, holds finite weights and stays the one a resume would use)."""
        self.diverged_at, self.stop_reason = step, reason
        control.should_training_stop = True
        control.should_save = False
        self._status(diverged_at=step, stop_reason=reason)

    def _stop(self, step: int, control: Any) -> None:
        self.stop_reason = "kl_budget"
        self.last_step = step
        control.should_training_stop = True
        self._status(stop_reason="kl_budget", stopped_at=step)


SAMPLES = rundir.SAMPLES  # RUN_DIR/samples/step_000123.jsonl: one line per evaluation prompt


def write_samples(run_dir: Path, step: int, samples: list[dict]) -> Path:
    """The checkpoint's prompts, samples, references, verdicts (1 win, 0.5 tie, 0 loss, NaN none)
    and sample lengths (tokens) as JSON lines, written aside and renamed into place."""
    import json

    folder = Path(run_dir) / SAMPLES
    folder.mkdir(exist_ok=True)
    path = folder / f"step_{step:06d}.jsonl"
    rundir.atomic_write_text(path, "".join(json.dumps(s) + "\n" for s in samples))
    return path


def checkpoint_steps(total_steps: int, checkpoints: int) -> list[int]:
    """Evenly spaced evaluation steps within `total_steps`, the last one at the end (step 0 aside)."""
    if total_steps < 1:
        raise ConfigError(f"training has {total_steps} optimizer steps; the data is smaller than one batch")
    steps = sorted({max(1, round(total_steps * k / checkpoints)) for k in range(1, checkpoints + 1)})
    return steps


def weights_finite(model: Any) -> bool:
    """Whether every parameter of `model` (this rank's shard, when sharded) is finite; one
    synchronisation with the device whatever the number of tensors."""
    import torch

    from alignsweep.runtime.distributed import local_shard

    # sharded: this rank's part (a ZeRO-3 parameter's own data is empty between forwards)
    flags = [torch.isfinite(t).all() for t in map(local_shard, model.parameters()) if t.numel()]
    return bool(torch.stack(flags).all().item()) if flags else True


# Measurements that a finite policy always gives finite values (standard errors may be undefined)
def non_finite_measurements(row: dict) -> list[str]:
    """The row's KL and log-probability values that are NaN or infinite (a diverged policy)."""
    return sorted(
        k for k, v in row.items()
        if (k.startswith("kl") or "logp" in k) and not k.endswith("_se") and isinstance(v, float) and not math.isfinite(v)
    )
