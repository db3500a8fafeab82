"""KL-spaced checkpoints (`eval.at=sqrt_kl`): which of `eval.sqrt_kl_targets` the policy has crossed.

The papers read the over-optimization curve off checkpoints at fixed fractions of an epoch, so
where the curve rises and peaks is sampled by chance. With `eval.at=sqrt_kl` a checkpoint is
evaluated (every prompt) and saved when the running KL check (`alignsweep.evaluate.kl_budget`,
the estimator and error-aware rule of `kl_budget`) first finds the policy over a target's KL
(target**2 nats, the target being sqrt(KL) in sqrt-nats), plus step 0 and the end:

- a target is crossed once: the first check over it triggers the evaluation, later checks pass it by;
- a check that finds the policy over several targets at once (the KL grew past more than one
  between checks) evaluates once; the row records the largest (`sqrt_kl_target`, the one the
  policy is nearest), the smaller ones are `passed` at that step and have no row of their own;
- the final evaluation records the targets its own exact-token estimate is over, if any;
- a target the run never crosses (training ended, or `kl_budget` stopped it, below it) is
  `not_reached`: listed in status.json (`sqrt_kl_targets`), `collect` and the report, never
  given an invented row.

The state is a function of the run's metric rows (`restore`), so a run resumed from a checkpoint
knows exactly the targets the uninterrupted run had crossed by then. Pure Python: no torch.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

REACHED, PASSED, PENDING, NOT_REACHED = "reached", "passed", "pending", "not_reached"


class SqrtKLTargets:
    """The targets (sqrt(KL), sqrt-nats, strictly increasing: `alignsweep.config.resolve` checks it)
    and, for each crossed one, the step of the row it shares and that row's target."""

    def __init__(self, targets: Sequence[float]):
        self.targets = [float(t) for t in targets]
        self.crossed: dict[float, tuple[int, float]] = {}  # target -> (step, the row's sqrt_kl_target)
        self.ended = False

    def pending(self) -> list[float]:
        return [t for t in self.targets if t not in self.crossed]

    def thresholds(self) -> list[float]:
        """The pending targets as KL thresholds in nats (target**2), for the running check's pooling."""
        return [t * t for t in self.pending()]

    def crossing(self, over: Callable[[float], bool]) -> list[float]:
        """The pending targets whose KL threshold (nats) `over` says the policy is past, in order.
        Crossed targets are never offered again: only the first crossing counts."""
        return [t for t in self.pending() if over(t * t)]

    def record(self, step: int, crossed: Iterable[float]) -> float | None:
        """Mark `crossed` as crossed at `step`; returns the row's `sqrt_kl_target` (the largest), or None."""
        crossed = sorted(crossed)
        if not crossed:
            return None
        for target in crossed:
            self.crossed[target] = (int(step), crossed[-1])
        return crossed[-1]

    def restore(self, rows: Iterable[dict]) -> None:
        """The state after the run's metric rows `rows` (those a resumed run keeps): each row with a
        `sqrt_kl_target` crossed it and every smaller pending target, as `record` did."""
        for row in sorted(rows, key=lambda r: r.get("step", 0)):
            target = row.get("sqrt_kl_target")
            if target is not None and target == target:  # not None, not NaN
                self.record(row["step"], [t for t in self.pending() if t <= float(target)])

    def end(self) -> None:
        """Training is over: the pending targets are not reached."""
        self.ended = True

    def report(self) -> list[dict]:
        """One entry per target for status.json: `{"target", "state", "step"}`; state `reached` (its
        own row at `step`), `passed` (crossed with a larger target: that row at `step`, `row_target`),
        `pending` (training goes on) or `not_reached` (training ended below it)."""
        out = []
        for target in self.targets:
            if target in self.crossed:
                step, row_target = self.crossed[target]
                entry = {"target": target, "state": REACHED if row_target == target else PASSED, "step": step}
                if row_target != target:
                    entry["row_target"] = row_target
            else:
                entry = {"target": target, "state": NOT_REACHED if self.ended else PENDING, "step": None}
            out.append(entry)
        return out

