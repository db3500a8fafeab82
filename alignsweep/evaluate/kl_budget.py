"""The running check of `kl_budget`: has the policy's KL(pi || pi_ref) reached the budget?

Between the evaluation checkpoints, every `train.kl_check_every` optimizer steps, the KL is
estimated on fresh samples and training stops at the first check that finds it over the budget.
A check that stops early (its estimate above the budget by chance) or late (below it by chance)
leaves the policy at the wrong KL, so the rule takes the estimate's error into account:

- the estimator is `kl_exact_token` (`alignsweep.evaluate.evaluator`): unbiased like the Monte
  Carlo one, with a fraction of its variance (the token draw at each position is integrated out);
- a check starts with `train.kl_check_prompts` prompts (a block of the evaluation prompts; the
  blocks rotate from check to check, the draws are seeded by the step);
- while the budget lies within `Z` standard errors of the estimate and the standard error is
  above `TOLERANCE` x budget, the next block of prompts is sampled and pooled with the others
  (one estimate over all the prompts so far), up to every evaluation prompt once;
- the check stops training at the check nearest the budget: when the (pooled) estimate is above
  the budget, or when the KL expected at the next check (the estimate plus the growth since the
  previous check, scaled to `kl_check_every` steps) would overshoot the budget by more than this
  one falls short of it (estimate + growth/2 > budget).

So a check far from the budget costs one block; near it, the decision is taken on an estimate
whose error is at most about `TOLERANCE` x budget (or on every evaluation prompt), and the stop
lands within about half the KL growth of `kl_check_every` steps of the budget, on either side
(check more often for a tighter stop: `train.kl_check_every=1`).
The checkpoint evaluations (all prompts) decide with the same estimator. Measured accuracy on the
embedded task: docs/kl_budget.md.

The policy samples in evaluation mode (`Evaluator.kl` switches it and restores training mode):
in training mode, gradient checkpointing makes transformers drop the KV cache while sampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignsweep.evaluate.sequences import mean_se

Z = 2.0  # the budget within Z standard errors of the estimate: undecided, sample more
TOLERANCE = 0.025  # ... unless the standard error is already at most this fraction of the budget


@dataclass(frozen=True)
class KLCheck:
    """One running check: the exact-token KL estimate (nats), its standard error, the prompts it
    pooled, and whether it is over the budget."""

    step: int
    kl: float
    kl_se: float
    prompts: int
    over: bool

    def as_dict(self) -> dict:
        return {"step": self.step, "kl": self.kl, "kl_se": self.kl_se, "prompts": self.prompts, "over": self.over}


def over_budget(kl_exact_token: float, budget: float) -> bool:
    """The decision of a checkpoint evaluation (every prompt): its exact-token estimate above the budget."""
    return kl_exact_token > budget


class KLBudget:
    """Runs the checks of one job for `evaluator` (an `alignsweep.evaluate.evaluator.Evaluator`).

    `prompts_per_check`: the first block's size (`train.kl_check_prompts`, at most every prompt).
    With a sharded (lockstep) evaluator every rank calls `check` together; whether to pool another
    block is rank 0's decision, shared by all (every forward pass is a collective)."""

    def __init__(self, evaluator: Any, budget: float, prompts_per_check: int, every: int = 1):
        self.evaluator = evaluator
        self.budget = float(budget)
        self.every = int(every)  # steps between checks
        self.previous: tuple[int, float] | None = None  # (step, estimate) of the last check
        self.total = len(evaluator.prompt_ids)
        self.block = max(1, min(int(prompts_per_check), self.total))
        self.blocks_used = 0  # rotates the blocks from check to check

    def _undecided(self, kl: float, se: float) -> bool:
        return abs(kl - self.budget) < Z * se and se > TOLERANCE * self.budget

    def check(self, policy: Any, step: int) -> KLCheck:
        values: list[float] = []
        kl = se = float("nan")
        while len(values) < self.total:
            start = (self.blocks_used * self.block) % self.total
            self.blocks_used += 1
            stop = min(start + self.block, start + self.total - len(values))
            ids = [i % self.total for i in range(start, stop)]
            seed = 10_000 + step + (self.blocks_used << 32)  # fresh draws for every block of every check
            est = self.evaluator.kl(policy, indices=ids, seed=seed)
            values += est["token_kl"].tolist()
            kl, se = mean_se(values)
            more = len(values) < self.total and self._undecided(kl, se)
            if self.evaluator.sync is not None:
                from alignsweep.runtime.distributed import agree

                more = agree(more)
            if not more:
                break
        growth = 0.0  # expected KL growth until the next check, from the last two checks
        if self.previous is not None and step > self.previous[0]:
            growth = max(kl - self.previous[1], 0.0) * self.every / (step - self.previous[0])
        self.previous = (step, kl)
        return KLCheck(step=step, kl=kl, kl_se=se, prompts=len(values), over=kl + growth / 2 > self.budget)

