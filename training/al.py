"""The active-learning protocol: labelled sets, acquisition and the stage loop."""

from __future__ import annotations

import numpy as np


def initial_labeled(pool_size: int, fraction: float, seed: int) -> list[int]:
    """A seeded random `fraction` of the pool (at least one image), sorted indices."""
    if pool_size <= 0:
        raise ValueError("the training pool is empty")
    k = max(1, round(pool_size * fraction))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(pool_size, size=min(k, pool_size), replace=False))
