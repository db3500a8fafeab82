"""Evaluation of one policy checkpoint against the reference (SFT) model.

Definitions (the paper's protocol):
- samples: one response per held-out prompt, drawn from the policy at `temperature` with no
  top-k/top-p truncation, ending at the first end-of-sequence token or after `max_new_tokens`
  tokens (a truncated response is a sequence of the sampling distribution like any other);
- KL(pi || pi_ref) of the sequence distribution, estimated on those samples y_1..y_n two ways,
  both always recorded (`eval.kl_estimator` chooses which one is reported as `kl`, the value the
  plots and the KL budget use; default `mc`, the paper's):
  * `kl_mc` (Monte Carlo): the mean over samples of log pi(y|x) - log pi_ref(y|x), with its
    standard error `kl_mc_se`. Unbiased, but its variance includes the variance of the
    log-ratio of the sampled tokens themselves.
  * `kl_exact_token`: the mean over samples of sum_t KL(pi(.|x, y_<t) || pi_ref(.|x, y_<t)), the
    exact KL over the whole vocabulary of each next-token distribution along the sampled
    prefix (every position where a token was sampled: up to and including EOS, or all
    `max_new_tokens` positions of a truncated sample), with its standard error
    `kl_exact_token_se`. By the chain rule its expectation is the same sequence KL (truncation
    included: sampling stops after `max_new_tokens` whatever the models say), and it has lower
    variance (Rao-Blackwellised: the token draw at each position is integrated out). It costs
    no extra forward pass, only the softmax over the vocabulary at the response positions.
  Both are estimates of KL of the models at temperature 1: with `eval.temperature` != 1 the
  samples come from a different distribution and neither is unbiased.
  sqrt_kl = sqrt(max(kl, 0)) and its error by the delta method;
- win rate: the mean judge outcome of sample vs reference response (ties count 1/2) over the
  comparisons with a verdict, with its standard error; `ties` counts ties, `unparseable` the
  comparisons without a verdict (an LLM judge's unreadable answer, never guessed; left out of
  the win rate), `n_eval` all comparisons. Judges add their own metrics (`alignsweep.evaluate.judges`);
- length-controlled win rate `lc_win_rate` (SE `lc_win_rate_se`, NaN with the reason in `lc_note`):
  AlpacaEval 2's logistic regression on the length difference, read at zero
  (`alignsweep.evaluate.length_control`), for every judge;
- length: mean response length and the least-squares line of the algorithm's own implicit
  reward (`alignsweep.train.losses.implicit_reward`: beta log pi/pi_ref for DPO/IPO/SLiC, beta m(y)
  for SimPO, AlphaPO's r_alpha, ...) on response length over the samples (`length_slope`,
  `length_r2`; nan when undefined: every sample cut to one length, or a constant reward), and
  `length_r2_log_ratio`, the R^2 of the policy's part beta log pi/pi_ref alone (DPO's implicit
  reward, comparable across algorithms; for R-DPO without its fixed a|y| term, which makes
  `length_r2` ~1 by construction; `alignsweep.evaluate.metrics.log_ratio_length_r2`);
- on the held-out preference pairs: mean summed log-likelihood of chosen and rejected responses
  (likelihood displacement) and the accuracy of the implicit reward, ties counting 1/2 (0.5 at
  step 0 of a reference-based loss, where every reward is 0).

Sampling is seeded per prompt: prompt i of an evaluation draws from its own generator, seeded by
`prompt_seed(seed, i)`, so the samples (and every metric) are the same whatever the batch size,
and the same when a batch is retried smaller after running out of memory. Generation and scoring
run in batches sized by `eval.batch_size` (`auto`: to the device's free memory; see
`alignsweep.evaluate.batching`); the reference model, the tokenised prompts and the reference's
log-probabilities of the held-out pairs are prepared once per run. With `eval.sampler=vllm` the
samples come from vLLM (`alignsweep.evaluate.vllm_sampler`) and everything else, the log-probabilities of
both models included, from the same transformers code: the metric definitions do not change.
Step 0 evaluates the SFT model itself, identical for every job of a sweep: with a `step0_cache`
file (`eval.share_step0`) the first job measures it and the others read the measurement (samples,
log-probabilities, verdicts, held-out log-likelihoods); each job still computes its own
loss-specific metrics (the implicit-reward length regression, the reward accuracy) from it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from alignsweep.data.tokens import encode_completions, encode_prompt
from alignsweep.evaluate.batching import BatchSizer, generation_bytes, scoring_bytes
from alignsweep.evaluate.metrics import sample_metrics
from alignsweep.evaluate.sequences import (
    eval_mode,
    accepts_logits_to_keep,
    make_batch,
    mean_se,
    model_device,
    prompt_seed,
    sample,
    sequence_logps,
    sequence_stats,
)
from alignsweep.train.losses import daa_loss, reward_accuracy

KL_ESTIMATORS = ("mc", "exact_token")


log = logging.getLogger("alignsweep.evaluate.evaluator")


class Evaluator:
    """Evaluates checkpoints of one run; the reference model, tokenised prompts and the reference's
    log-probs of the held-out pairs are prepared once and reused at every checkpoint (with
    `heldout_ref_cache`, a file shared by the jobs of a sweep, once per sweep).

    `batch_size`: `"auto"` or a maximum number of prompts per batch (`alignsweep.evaluate.batching`);
    `sampler`: None to sample with `sample()` here, or an object with the `generate()` of
    `alignsweep.evaluate.vllm_sampler.VLLMSampler` to take the samples from elsewhere (scoring stays here)."""

    def __init__(
        self,
        *,
        ref_model: Any,
        tokenizer: Any,
        judge: Any,
        eval_rows: Sequence[dict],
        heldout_rows: Sequence[dict],
        loss_name: str,
        loss_params: dict,
        max_new_tokens: int,
        temperature: float,
        batch_size: int | str = "auto",
        seed: int,
        kl_estimator: str = "mc",
        lockstep: bool = False,
        sampler: Any = None,
        step0_cache: Any = None,
        heldout_ref_cache: Any = None,
    ):
        """`lockstep=True`: the models are sharded (FSDP) and every rank of the job runs this
        evaluator on the same prompts at the same time (every forward pass is a collective);
        sampled tokens are rank 0's on every rank. Ranks given `judge=None` only take part in the
        forward passes: `evaluate` returns None there."""
        if kl_estimator not in KL_ESTIMATORS:
            from alignsweep.errors import ConfigError

            raise ConfigError(f"eval.kl_estimator: expected one of {', '.join(KL_ESTIMATORS)}, got {kl_estimator!r}")
        self.kl_estimator = kl_estimator
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self.judge = judge
        self.loss_name = loss_name
        self.loss_params = loss_params
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batching = BatchSizer(batch_size, lockstep=lockstep)
        self.sampler = sampler
        self.seed = seed
        # a file shared by the jobs of a sweep for step 0's measurement (see `_shared_step0`)
        self.step0_cache = None if step0_cache is None or lockstep else Path(step0_cache)
        self.step0_cache_hit: Optional[bool] = None
        self.last_samples: list[dict] = []  # the last evaluation's prompts, samples, references, verdicts, lengths
        self.sync = None
        if lockstep:
            from alignsweep.runtime.distributed import broadcast_tokens

            self.sync = broadcast_tokens
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        # the judge reads plain text; the models read the prompt as training does (chat template and
        # generation prompt for chat messages, the tokenizer's BOS for text: alignsweep.data.tokens)
        self.prompts = [r.get("prompt_text", r["prompt"]) for r in eval_rows]
        self.references = [r["reference"] for r in eval_rows]
        self.prompt_ids = [encode_prompt(tokenizer, r["prompt"]) for r in eval_rows]
        self.heldout = self._encode_pairs(heldout_rows)
        self._heldout_ref: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._heldout_ref_later: Optional[Path] = None  # another job is scoring them: read when needed
        self.heldout_ref_cache_hit: Optional[bool] = None
        if heldout_rows:
            if heldout_ref_cache is None:
                self._heldout_ref = self._heldout_ref_logps()
            else:  # the same for every job of the sweep (`train.share_ref_logps`)
                from alignsweep.cache.store import load_or_compute

                # lockstep: every rank scores (collective forward passes), waiting for another job
                # if need be; rank 0 alone does not wait: it goes on and reads them when needed
                self._heldout_ref, self.heldout_ref_cache_hit = load_or_compute(
                    Path(heldout_ref_cache), self._heldout_ref_logps, all_ranks=lockstep, wait=lockstep
                )
                if self.heldout_ref_cache_hit is None:
                    self._heldout_ref_later = Path(heldout_ref_cache)

    def _heldout_ref_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._logps(self.ref_model, *self.heldout[0]), self._logps(self.ref_model, *self.heldout[1])

    @property
    def heldout_ref(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """The reference's log-probs of the held-out (chosen, rejected) pairs; None without held-out
        pairs. Shared ones another job was still scoring when this job started are read (waited
        for) here, at first use: by then that job has usually finished."""
        if self._heldout_ref_later is not None:
            from alignsweep.cache.store import load_or_compute

            self._heldout_ref, self.heldout_ref_cache_hit = load_or_compute(
                self._heldout_ref_later, self._heldout_ref_logps, all_ranks=False
            )
            self._heldout_ref_later = None
        return self._heldout_ref

    def _encode_pairs(self, rows: Sequence[dict]):
        """The held-out pairs tokenised as TRL's DPOTrainer tokenises training pairs."""
        prompts, chosen, rejected = [], [], []
        for row in rows:
            p, (c, r) = encode_completions(self.tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
            prompts.append(p)
            chosen.append(c)
            rejected.append(r)
        return (prompts, chosen), (prompts, rejected)

    def batch_info(self) -> dict:
        """The last evaluation's batch sizes (`generate`, `score`, `heldout`), OOM retries, sampler."""
        return {**self.batching.info(), "sampler": "transformers" if self.sampler is None else self.sampler.name}

    def _logps(self, model: Any, prompt_ids: Sequence, response_ids: Sequence) -> torch.Tensor:
        if not prompt_ids:
            return torch.zeros(0)
        longest = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
        parts = self.batching.run(
            "heldout",
            len(prompt_ids),
            lambda s: sequence_logps(model, make_batch(prompt_ids[s], response_ids[s], self.pad_id)),
            device=model_device(model),
            bytes_per_sequence=scoring_bytes(model, longest, longest),
        )
        return torch.cat(parts)

    def samples(self, policy: Any, prompt_ids: Sequence, seed: int) -> list[list[int]]:
        """One sample per prompt, seeded `prompt_seed(seed, i)`; the caller sets evaluation mode."""
        if not prompt_ids:
            return []
        if self.sampler is not None:
            return self.sampler.generate(
                policy,
                prompt_ids,
                seeds=[prompt_seed(seed, i) for i in range(len(prompt_ids))],
                eos_id=self.eos_id,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
            )
        parts = self.batching.run(
            "generate",
            len(prompt_ids),
            lambda s: sample(
                policy,
                prompt_ids[s],
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                max_new_tokens=self.max_new_tokens,
                temperature=self.temperature,
                seed=seed,
                first_index=s.start,
                sync=self.sync,
            ),
            device=model_device(policy),
            bytes_per_sequence=generation_bytes(
                policy, max(len(p) for p in prompt_ids), self.max_new_tokens,
                full_prefill_logits=not accepts_logits_to_keep(policy),
            ),
        )
        return [r for part in parts for r in part]

    def kl(
        self, policy: Any, n_prompts: Optional[int] = None, seed: Optional[int] = None,
        indices: Optional[Sequence[int]] = None,
    ) -> dict:
        """KL(pi || pi_ref) on fresh samples (all prompts, the first `n_prompts`, or those at
        `indices`): both estimators (`kl_mc`, `kl_exact_token`, with standard errors), `kl`/`kl_se`,
        the one chosen by `kl_estimator`, and the per-prompt exact-token terms `token_kl` (n,).
        In evaluation mode (training mode restored after): in training mode, gradient checkpointing
        drops the KV cache while sampling (a crash on padded prompts, a context-free decoder on
        equal-length ones) and dropout perturbs the samples."""
        with eval_mode(policy):
            return self._kl(policy, n_prompts, seed, indices)

    def _kl(self, policy: Any, n_prompts: Optional[int], seed: Optional[int], indices: Optional[Sequence[int]]) -> dict:
        if indices is not None:
            prompt_ids = [self.prompt_ids[i] for i in indices]
        else:
            prompt_ids = self.prompt_ids if n_prompts is None else self.prompt_ids[:n_prompts]
        responses = self.samples(policy, prompt_ids, self.seed if seed is None else seed)
        longest = max((len(p) + len(r) for p, r in zip(prompt_ids, responses)), default=1)
        parts = self.batching.run(
            "score",
            len(prompt_ids),
            lambda s: sequence_stats(policy, self.ref_model, make_batch(prompt_ids[s], responses[s], self.pad_id)),
            device=model_device(policy),
            bytes_per_sequence=scoring_bytes(policy, longest, max((len(r) for r in responses), default=1)),
        )
        pol_t, ref_t, tok_t = (torch.cat([part[k] for part in parts]) if parts else torch.zeros(0) for k in range(3))
        est = {"responses": responses, "policy_logps": pol_t, "ref_logps": ref_t, "token_kl": tok_t}
        est["kl_mc"], est["kl_mc_se"] = mean_se((pol_t - ref_t).tolist())
        est["kl_exact_token"], est["kl_exact_token_se"] = mean_se(tok_t.tolist())
        est["kl"], est["kl_se"] = est[f"kl_{self.kl_estimator}"], est[f"kl_{self.kl_estimator}_se"]
        return est

    def kl_budget(self, budget: float | None, prompts_per_check: int, every: int = 1) -> Any:
        """The running KL check on these prompts (`alignsweep.evaluate.kl_budget`): of `kl_budget`
        (nats), and of the sqrt(KL) targets of `eval.at=sqrt_kl` (budget None: the targets only)."""
        from alignsweep.evaluate.kl_budget import KLBudget

        return KLBudget(self, budget, prompts_per_check, every)

    def autocast(self, policy: Any) -> Any:
        """Mixed precision as in training: both models compute in the reference's dtype (model.dtype)
        when it is not float32; the policy's float32 master weights are cast on the fly."""
        import contextlib

        dtype = next(self.ref_model.parameters()).dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(model_device(policy).type, dtype=dtype)

    def evaluate(self, policy: Any, step: int) -> dict | None:
        """One checkpoint's metric row (None on ranks that only take part), in evaluation mode and
        under the training's mixed precision."""
        with eval_mode(policy), self.autocast(policy):
            return self._evaluate(policy, step)

    def _evaluate(self, policy: Any, step: int) -> dict | None:
        shared = step == 0 and self.step0_cache is not None and self.judge is not None
        measured = self._shared_step0(policy) if shared else self._measure(policy, step)
        if measured is None:  # a rank that only takes part in the forward passes
            return None
        return self._summarize(measured, step)

    def _measure(self, policy: Any, step: int) -> dict | None:
        """The expensive part of an evaluation: samples, their log-probabilities under both
        models, the judge's verdicts and the held-out log-likelihoods. Independent of the loss."""
        est = self.kl(policy, seed=self.seed + step)
        heldout = self._heldout_logps(policy) if self.heldout_ref is not None else None
        if self.judge is None:
            return None
        texts = self._texts(est["responses"])
        if hasattr(self.judge, "evaluate"):
            judged = self.judge.evaluate(self.prompts, texts, self.references)
            outcomes, judge_metrics = judged.outcomes, judged.metrics
        else:  # any object with compare() will do
            outcomes, judge_metrics = self.judge.compare(self.prompts, texts, self.references), {}
        return {"est": est, "outcomes": list(outcomes), "judge_metrics": dict(judge_metrics), "heldout": heldout,
                "texts": texts}

    def _texts(self, responses: Sequence[Sequence[int]]) -> list[str]:
        """The samples as the judge reads them: decoded without EOS, one leading space."""
        decoded = (self.tokenizer.decode([t for t in r if t != self.eos_id], skip_special_tokens=True) for r in responses)
        return [" " + t.strip() for t in decoded]

    def step0_busy(self) -> bool:
        """Whether another job is measuring the shared step 0 now (no file yet, its lock held): the
        caller can train first and evaluate step 0 later with the reference (the SFT model)."""
        from alignsweep.cache.store import computing_elsewhere

        return self.step0_cache is not None and self.judge is not None and computing_elsewhere(self.step0_cache)

    def _shared_step0(self, policy: Any) -> dict:
        """Step 0's measurement, shared by every job of a sweep that starts from the same SFT model
        with the same evaluation settings (the policy is the reference there, whatever the loss):
        read from `step0_cache` when a job already made it, else made and stored there."""
        from alignsweep.cache.store import load_or_compute

        # rank 0 alone evaluates here (sharded, lockstep evaluation has no step-0 cache): no collectives
        measured, self.step0_cache_hit = load_or_compute(
            self.step0_cache, lambda: self._measure(policy, 0), all_ranks=False
        )
        return measured

    def _summarize(self, measured: dict, step: int) -> dict:
        """A metric row from a measurement (cheap; the loss-specific parts are computed here)."""
        outcomes = measured["outcomes"]
        responses = measured["est"]["responses"]
        # what the policy wrote at this checkpoint (`samples`), kept in the run directory by the caller
        texts = measured.get("texts") or self._texts(responses)  # a step-0 measurement stored without them
        row, lengths = sample_metrics(measured["est"], outcomes, eos_id=self.eos_id, kl_estimator=self.kl_estimator,
                                      loss_name=self.loss_name, loss_params=self.loss_params, texts=texts,
                                      references=self.references)
        self.last_samples = [
            {"prompt": p, "sample": t, "reference": ref, "verdict": o, "length": n}
            for p, t, ref, o, n in zip(self.prompts, texts, self.references, outcomes, lengths)
        ]
        row.update(measured["judge_metrics"])
        if measured["heldout"] is not None:
            row.update(self._heldout_metrics(*measured["heldout"]))
        log.info("evaluated step %d; batches: %s", step, self.batch_info())
        return row

    def _heldout_logps(self, policy: Any) -> tuple[torch.Tensor, torch.Tensor]:
        (prompts, chosen), (_, rejected) = self.heldout
        return self._logps(policy, prompts, chosen), self._logps(policy, prompts, rejected)

    def _heldout_metrics(self, pc: torch.Tensor, pr: torch.Tensor) -> dict:
        (_, chosen), (_, rejected) = self.heldout
        lc = torch.tensor([len(c) for c in chosen], dtype=pc.dtype)
        lr = torch.tensor([len(r) for r in rejected], dtype=pc.dtype)
        _, chosen_rewards, rejected_rewards = daa_loss(
            self.loss_name,
            policy_chosen_logps=pc,
            policy_rejected_logps=pr,
            ref_chosen_logps=self.heldout_ref[0],
            ref_rejected_logps=self.heldout_ref[1],
            chosen_lengths=lc,
            rejected_lengths=lr,
            kl_reference_point=torch.zeros(()),  # KTO's z: its rewards do not read it
            **self.loss_params,
        )
        return {
            "chosen_logp": pc.mean().item(),
            "rejected_logp": pr.mean().item(),
            "reward_accuracy": reward_accuracy(chosen_rewards, rejected_rewards).float().mean().item(),
        }
