"""The running KL check: how far has the policy's KL(pi || pi_ref) moved, between evaluations?

Two things read it, at the same checks (every `train.kl_check_every` optimizer steps): `kl_budget`
(training stops at the check nearest the budget) and `eval.at=sqrt_kl` (a full evaluation and a
checkpoint when the policy first crosses each of `eval.sqrt_kl_targets`, `alignsweep.train.kl_targets`).
Both ask the same question of a threshold (a KL in nats: the budget, or a target squared): is the
policy over it? A check that answers early (its estimate above by chance) or late (below by chance)
leaves the policy at the wrong KL, so the rule takes the estimate's error into account:

- the estimator is `kl_exact_token` (`alignsweep.evaluate.evaluator`): unbiased like the Monte
  Carlo one, with a fraction of its variance (the token draw at each position is integrated out);
- a check starts with `train.kl_check_prompts` prompts (a block of the evaluation prompts; the
  blocks rotate with the step, the draws are seeded by the step and the block);
- while a threshold lies within `Z` standard errors of the estimate and the standard error is
  above `TOLERANCE` x that threshold, the next block of prompts is sampled and pooled with the
  others (one estimate over all the prompts so far), up to every evaluation prompt once;
- the check finds the policy over a threshold at the check nearest it: when the (pooled) estimate
  is above it, or when the KL expected at the next check (the estimate plus the growth since the
  previous check or evaluation, scaled to `kl_check_every` steps) would overshoot it by more than
  this one falls short of it (estimate + growth/2 > threshold).

So a check far from every threshold costs one block; near one, the decision is taken on an
estimate whose error is at most about `TOLERANCE` x threshold (or on every evaluation prompt), and
it lands within about half the KL growth of `kl_check_every` steps of the threshold, on either
side (check more often for a tighter landing: `train.kl_check_every=1`). The checkpoint
evaluations (all prompts) decide with the same estimator. Measured accuracy on the embedded task:
docs/kl_budget.md.

A check depends only on the policy, the step and the last evaluation's estimate (`anchor`), never
on the checks before it: a run resumed from a checkpoint checks exactly as the uninterrupted one.
The policy samples in evaluation mode (`Evaluator.kl` switches it and restores training mode):
in training mode, gradient checkpointing makes transformers drop the KV cache while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from alignsweep.evaluate.sequences import mean_se

Z = 2.0  # the budget within Z standard errors of the estimate: undecided, sample more
TOLERANCE = 0.025  # ... unless the standard error is already at most this fraction of the budget


@dataclass(frozen=True)
class KLCheck:
    """One running check: the exact-token KL estimate (nats), its standard error, the prompts it
    pooled, the KL growth expected until the next check (nats), and whether it is over the budget."""

    step: int
    kl: float
    kl_se: float
    prompts: int
    over: bool
    growth: float = 0.0

    def crosses(self, threshold: float) -> bool:
        """Whether this check is the one nearest `threshold` (nats) or past it: estimate + growth/2 above it."""
        return self.kl + self.growth / 2 > threshold

    def as_dict(self) -> dict:
        return {"step": self.step, "kl": self.kl, "kl_se": self.kl_se, "prompts": self.prompts, "over": self.over}


def over_budget(kl_exact_token: float, budget: float) -> bool:
    """The decision of a checkpoint evaluation (every prompt): its exact-token estimate above the budget."""
    return kl_exact_token > budget


class KLBudget:
    """Runs the checks of one job for `evaluator` (an `alignsweep.evaluate.evaluator.Evaluator`).

    `budget`: the KL budget in nats, or None (checks for `eval.at=sqrt_kl` only);
    `prompts_per_check`: the first block's size (`train.kl_check_prompts`, at most every prompt).
    With a sharded (lockstep) evaluator every rank calls `check` together; whether to pool another
    block is rank 0's decision, shared by all (every forward pass is a collective)."""

    def __init__(self, evaluator: Any, budget: float | None, prompts_per_check: int, every: int = 1):
        self.evaluator = evaluator
        self.budget = None if budget is None else float(budget)
        self.every = int(every)  # steps between checks
        self.previous: tuple[int, float] | None = None  # (step, estimate) of the last check or evaluation
        self.total = len(evaluator.prompt_ids)
        self.block = max(1, min(int(prompts_per_check), self.total))

    def anchor(self, step: int, kl: float) -> None:
        """An evaluation at `step` (every prompt) measured `kl` (exact-token, nats): the growth the
        next check expects is measured from it. Called for every row after step 0, also for the
        rows a resumed run keeps, so resumed and uninterrupted runs check alike."""
        self.previous = (int(step), float(kl))

    def _undecided(self, kl: float, se: float, thresholds: Sequence[float]) -> bool:
        return any(abs(kl - t) < Z * se and se > TOLERANCE * t for t in thresholds)

    def check(self, policy: Any, step: int, thresholds: Sequence[float] = ()) -> KLCheck:
        """The check at `step`: pooled until the budget and every one of `thresholds` (nats) is decided."""
        thresholds = [*([] if self.budget is None else [self.budget]), *thresholds]
        values: list[float] = []
        kl = se = float("nan")
        first = (step // self.every) * self.block  # the blocks rotate with the step
        block = 0
        while len(values) < self.total:
            start = (first + block * self.block) % self.total
            block += 1
            stop = min(start + self.block, start + self.total - len(values))
            ids = [i % self.total for i in range(start, stop)]
            seed = 10_000 + step + (block << 32)  # fresh draws for every block of every check
            est = self.evaluator.kl(policy, indices=ids, seed=seed)
            values += est["token_kl"].tolist()
            kl, se = mean_se(values)
            more = len(values) < self.total and self._undecided(kl, se, thresholds)
            if self.evaluator.sync is not None:
                from alignsweep.runtime.distributed import agree

                more = agree(more)
            if not more:
                break
        growth = 0.0  # expected KL growth until the next check, from the last check or evaluation
        if self.previous is not None and step > self.previous[0]:
            growth = max(kl - self.previous[1], 0.0) * self.every / (step - self.previous[0])
        self.previous = (step, kl)
        check = KLCheck(step=step, kl=kl, kl_se=se, prompts=len(values), over=False, growth=growth)
        return replace(check, over=self.budget is not None and check.crosses(self.budget))
