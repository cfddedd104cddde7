"""Per-replica capacity at the SLO, in requests and (optionally) tokens per second: configured, or learned
from observed saturation.

A replica's capacity is really a budget of tokens (prompt tokens to prefill, completion tokens to decode);
requests per second stand for it only as long as the mix of lengths stays the one it was measured on. With
``tokensPerSecond`` configured, a demand (r requests/s, k tokens/s) is worth

    replicas(r, k) = max(r / c_req, k / c_tok)

replicas' work: whichever budget binds. The request term still matters when requests are short (per-request
overhead, TTFT under many small prompts); the token term when they grow. Unset, the token term is absent.

Configured: the values are used as they are.

Learned (``learn: true``), once per tick and only when the pool is steady (every replica ready, metrics
fresh, demand > 0), with ``served = demand / ready replicas`` in each unit:

* the pool is **saturated** → the budget that binds (the larger served / estimate) was estimated too high
  if its ``served`` is below the estimate: move that estimate a fraction ``RATE`` of the way down to
  ``served``. Only the binding one: the other was not what ran out;
* the pool is **not saturated** → every estimate that ``served`` exceeds was too low: move it the same
  fraction up toward ``served``.

Saturation is the configured saturation detector (queue and KV-cache thresholds over fresh metrics), so
the learned values track the saturation point, which sits above the SLO point; ``headroom`` covers the
gap. Each estimate stays within a factor ``BOUND`` of its configured value, so a broken signal (an exporter
that always reports a full queue) cannot walk it to zero or to infinity. With one unit this is exactly the
request-only rule.
"""

from __future__ import annotations

RATE = 0.1
BOUND = 4.0


class CapacityEstimate:
    def __init__(self, configured_rps: float, *, learn: bool, configured_tps: float | None = None) -> None:
        if configured_rps <= 0 or (configured_tps is not None and configured_tps <= 0):
            raise ValueError("capacity must be positive")
        self.configured = configured_rps
        self.configured_tps = configured_tps
        self.learn = learn
        self.rps = configured_rps
        #: tokens per second per replica (prompt + completion); None: sizing on requests only
        self.tps = configured_tps
        self.updates = 0

    def replicas(self, rps: float, tps: float | None = None) -> float:
        """Replicas' worth of work in a demand of ``rps`` requests/s and ``tps`` tokens/s (module doc)."""
        u = max(rps, 0.0) / self.rps
        if self.tps is not None and tps is not None and tps > 0:
            u = max(u, tps / self.tps)
        return u

    def token_bound(self, rps: float, tps: float | None) -> bool:
        """True when the token budget is the one that binds for this demand."""
        return self.tps is not None and tps is not None and tps / self.tps > max(rps, 0.0) / self.rps

    def observe(
        self, *, demand_rps: float, ready: int, saturated: bool, steady: bool, demand_tps: float | None = None
    ) -> float:
        """Fold one tick in (learned mode only); returns the request estimate."""
        if not self.learn or not steady or ready <= 0 or demand_rps <= 0:
            return self.rps
        served_r = demand_rps / ready
        served_t = None if self.tps is None or demand_tps is None or demand_tps <= 0 else demand_tps / ready
        if saturated:
            if served_t is not None and self.tps is not None and served_t / self.tps > served_r / self.rps:
                if served_t < self.tps:
                    self.tps = self._step(self.tps, served_t, self.configured_tps)
            elif served_r < self.rps:
                self.rps = self._step(self.rps, served_r, self.configured)
            return self.rps
        if served_r > self.rps:
            self.rps = self._step(self.rps, served_r, self.configured)
        if served_t is not None and self.tps is not None and served_t > self.tps:
            self.tps = self._step(self.tps, served_t, self.configured_tps)
        return self.rps

    def _step(self, estimate: float, served: float, configured: float | None) -> float:
        assert configured is not None
        self.updates += 1
        moved = estimate + RATE * (served - estimate)
        return min(max(moved, configured / BOUND), configured * BOUND)

    def to_dict(self) -> dict[str, object]:
        return {
            "requestsPerSecond": round(self.rps, 4),
            "configured": self.configured,
            "tokensPerSecond": None if self.tps is None else round(self.tps, 2),
            "configuredTokensPerSecond": self.configured_tps,
            "mode": "learned" if self.learn else "configured",
            "updates": self.updates,
        }
