"""The embedded task's programmatic gold reward as a judge."""

from __future__ import annotations

from typing import Sequence

from alignsweep.data import embedded
from alignsweep.evaluate.judges.base import JudgeResult, outcome_from_scores


class GoldJudge:
    """The embedded task's gold reward (`alignsweep.data.embedded.gold_reward`): the higher score
    wins, equal scores tie. Its metric: `gold_reward`, the mean gold reward of the samples."""

    name = "gold"

    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]:
        return self.evaluate(prompts, samples, references).outcomes

    def evaluate(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> JudgeResult:
        mine = self.scores(prompts, samples)
        theirs = self.scores(prompts, references)
        outcomes = [outcome_from_scores(a, b, tol=1e-9) for a, b in zip(mine, theirs, strict=True)]
        return JudgeResult(outcomes, {"gold_reward": sum(mine) / len(mine) if mine else float("nan")})

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [embedded.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
