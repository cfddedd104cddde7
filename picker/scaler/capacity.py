"""Per-replica capacity at the SLO: configured, or learned from observed saturation.

Configured (``replicaCapacity.requestsPerSecond``): the value is used as is.

Learned (``learn: true``), once per tick and only when the pool is steady (every replica ready, metrics
fresh, demand > 0), with ``served = demand / ready replicas``:

* the pool is **saturated** although ``served`` is below the estimate → the estimate was too high: move it a
  fraction ``RATE`` of the way down to ``served``;
* the pool is **not saturated** while ``served`` is above the estimate → the pool handles more than we
  thought: move it the same fraction up toward ``served``.

Saturation is the configured saturation detector (queue and KV-cache thresholds over fresh metrics), so
the learned value tracks the saturation point, which sits above the SLO point; ``headroom`` covers the
gap. The estimate stays within a factor ``BOUND`` of the configured value, so a broken signal (an
exporter that always reports a full queue) cannot walk it to zero or to infinity.
"""

from __future__ import annotations

RATE = 0.1
BOUND = 4.0


class CapacityEstimate:
    def __init__(self, configured_rps: float, *, learn: bool) -> None:
        if configured_rps <= 0:
            raise ValueError("capacity must be positive")
        self.configured = configured_rps
        self.learn = learn
        self.rps = configured_rps
        self.updates = 0

    def observe(self, *, demand_rps: float, ready: int, saturated: bool, steady: bool) -> float:
        """Fold one tick in (learned mode only); returns the estimate."""
        if not self.learn or not steady or ready <= 0 or demand_rps <= 0:
            return self.rps
        served = demand_rps / ready
        if (saturated and served < self.rps) or (not saturated and served > self.rps):
            self.rps += RATE * (served - self.rps)
            self.rps = min(max(self.rps, self.configured / BOUND), self.configured * BOUND)
            self.updates += 1
        return self.rps

    def to_dict(self) -> dict[str, object]:
        return {
            "requestsPerSecond": round(self.rps, 4),
            "configured": self.configured,
            "mode": "learned" if self.learn else "configured",
            "updates": self.updates,
        }
