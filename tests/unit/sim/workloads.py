"""Workloads the simulator's unit tests share."""

from __future__ import annotations

import numpy as np

from benchmarks.sim.traces import Workload


def prefix_workload(n: int, rate: float, seed: int, groups: int = 4) -> Workload:
    """``n`` requests over ``groups`` system prompts of 32 units (2,048 tokens) plus a private tail."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, groups, n)
    units = tuple((*range(int(x) * 1000, int(x) * 1000 + 32), 100_000 + i) for i, x in enumerate(g))
    return Workload(
        name="groups",
        arrival_s=np.cumsum(rng.exponential(1.0 / rate, n)),
        prompt_tokens=np.full(n, 33 * 64 - 20),
        output_tokens=rng.integers(10, 100, n),
        units=units,
        unit_tokens=64,
        adapter=np.full(n, -1, dtype=np.int64),
    )
