"""Judges decide whether a policy sample beats the reference response for the same prompt.

A judge returns one outcome per comparison: 1.0 (sample wins), 0.0 (reference wins), 0.5 (tie).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from alignsweep.data import embedded
from alignsweep.plan import ConfigError


class Judge(Protocol):
    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]: ...


class GoldJudge:
    """The embedded task's programmatic gold reward: the higher score wins, equal scores tie."""

    name = "gold"

    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]:
        outcomes = []
        for prompt, sample, reference in zip(prompts, samples, references, strict=True):
            a, b = embedded.gold_reward(prompt, sample), embedded.gold_reward(prompt, reference)
            outcomes.append(1.0 if a > b + 1e-9 else 0.0 if b > a + 1e-9 else 0.5)
        return outcomes

    def scores(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [embedded.gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]


def build_judge(judge_cfg: Any) -> Judge:
    if judge_cfg.name == "gold":
        return GoldJudge()
    raise ConfigError(f"judge.name: {judge_cfg.name!r} is not available; expected one of: gold")
