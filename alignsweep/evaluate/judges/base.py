"""What every judge shares: the outcome convention and the result of judging a batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

SAMPLE_WINS, REFERENCE_WINS, TIE = 1.0, 0.0, 0.5
NO_VERDICT = float("nan")  # the judge gave no usable verdict (e.g. an unparseable LLM answer)


class JudgeError(RuntimeError):
    """The judge could not be asked (API unreachable after retries, refused request, ...)."""


@dataclass
class JudgeResult:
    """One outcome per comparison (1.0 sample wins, 0.0 reference wins, 0.5 tie, NaN no verdict)
    and judge-specific metrics merged into the checkpoint's metric row."""

    outcomes: list[float]
    metrics: dict[str, float] = field(default_factory=dict)


class Judge(Protocol):
    name: str

    def compare(self, prompts: Sequence[str], samples: Sequence[str], references: Sequence[str]) -> list[float]: ...


def outcome_from_scores(sample_score: float, reference_score: float, tol: float) -> float:
    """1.0 when the sample scores higher than the reference by more than `tol`, 0.0 when lower, else a tie."""
    if sample_score > reference_score + tol:
        return SAMPLE_WINS
    if reference_score > sample_score + tol:
        return REFERENCE_WINS
    return TIE


def is_verdict(outcome: float) -> bool:
    return not math.isnan(outcome)
