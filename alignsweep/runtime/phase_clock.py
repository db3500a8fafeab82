"""Where a job's time went: seconds per phase, and seconds spent waiting for other jobs.

The worker writes both into the run's status (`seconds`, `waited_s`), so `alignsweep.results.status` and
the collector show what a job paid for (data, SFT, reference log-probs, step 0, training,
evaluation) and how long it sat idle on a file another job of the sweep was still computing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

_waited = 0.0  # this process's seconds waiting on locks held by other jobs (sweep_cache)


def add_wait(seconds: float) -> None:
    global _waited
    _waited += max(0.0, seconds)


def waited() -> float:
    return _waited


@contextmanager
def waiting() -> Iterator[None]:
    """Count the time inside as waiting for another job."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_wait(time.perf_counter() - start)


class PhaseClock:
    """`with clock("data"): ...` adds the seconds inside to `clock.seconds["data"]`. Phases nest
    and each second is counted once: while an inner phase runs (the tokenisation inside the
    trainer's set-up, an evaluation inside training), the outer one's clock is stopped."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._running: list[str] = []  # the phases entered and not yet left, innermost last
        self._since = 0.0  # when the innermost one was (re)started

    def _charge(self) -> float:
        """Count the time since `_since` to the innermost running phase; returns now."""
        now = time.perf_counter()
        if self._running:
            self.add(self._running[-1], now - self._since)
        return now

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self._since = self._charge()
        self._running.append(phase)
        try:
            yield
        finally:
            self._since = self._charge()
            self._running.pop()

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {phase: round(s, 3) for phase, s in self.seconds.items()}
