"""Reconnect and retry delays: exponential with full jitter, as Herald's TypeScript client computes them."""

from __future__ import annotations

import random


def backoff(step: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """The delay in seconds before retry number `step + 1`: `min(high, low + uniform(0, min(high, low * 2**step)))`.

    Every delay lies within [low, high], the ceiling doubles with each failure, and clients that lost
    the same server spread their returns over the whole window instead of arriving together.
    """
    ceiling = min(high, low * 2 ** min(step, 31))
    return min(high, low + (rng or random).uniform(0, ceiling))
