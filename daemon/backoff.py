"""How long to wait before retrying something that failed: doubling, capped, jittered."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, first: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before retry number `attempt` (0: the first after a failure): `first` doubling up to `cap`,
    each shortened by up to a quarter at random, so that peers failing together do not retry in step."""
    ceiling = min(cap, first * 2 ** min(attempt, 32))
    return ceiling * (rng or random).uniform(0.75, 1.0)
