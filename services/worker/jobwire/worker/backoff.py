"""Reconnect delays: exponential growth with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Delay before reconnect attempt number `failures` (0 for the first retry).

    Full jitter (a uniform draw between zero and the exponential ceiling) spreads a
    fleet that lost the same scheduler over the whole window, instead of having every
    worker knock at the same instants.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.multiplier < 1:
            raise ValueError("backoff multiplier must be at least 1")

    def ceiling(self, failures: int) -> float:
        """The largest delay for this many consecutive failures."""
        # Capping the exponent keeps the power finite for very long outages.
        exponent = min(max(failures, 0), 64)
        return float(min(self.maximum, self.initial * self.multiplier**exponent))

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """A random delay in [0, ceiling(failures)]."""
        draw = (rng or random).random()
        return draw * self.ceiling(failures)
