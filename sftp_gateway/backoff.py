"""One exponential backoff for every retry loop: the outbox, the catalog, SQS receives.

`delay(attempt)` is `base * 2**attempt`, capped at `cap`, then scaled by a random factor
in [1 - jitter, 1]: after an outage, many events (and many gateways) do not all retry
at the same instant, and no wait ever exceeds the cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_EXPONENT = 30  # 2**30 * any sane base is past every cap; avoids float overflow


@dataclass(frozen=True)
class Backoff:
    """Exponential delays from `base` seconds, capped at `cap`, with `jitter` (0..1)."""

    base: float
    cap: float
    jitter: float = 0.25

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap <= 0:
            raise ValueError("backoff base and cap must be positive")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        exact = min(self.cap, self.base * float(1 << min(max(attempt, 0), MAX_EXPONENT)))
        return exact * random.uniform(1.0 - self.jitter, 1.0)


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """`Backoff(base, cap).delay(attempts)`, for callers whose base and cap vary."""
    return Backoff(base, cap).delay(attempts)
