"""The discrete-event simulator as ground truth: steady-state SLO attainment per load, and replays of sampled
windows with a changing fleet to measure how far the fast per-window model is from it.

Ground truth is :func:`benchmarks.sim.simulate` (vLLM-like servers, continuous batching, KV cache) with
Poisson arrivals whose lengths are drawn from the Azure LLM conversation trace (the ServeGen rate file has
no lengths) on the ``llama3-8b-h100`` profile, routed least-in-flight among the replicas that may take new
requests (the EPP's pick is at least that good; the scaling comparison is about capacity, not placement).

Steady state: for each fleet size n and load rho (offered rate / (n x mu), mu = one server's saturated
throughput on this mix), ``duration_s`` of arrivals; requests arriving in the first 20 % are warm-up and not
counted. Measured: SLO attainment (TTFT <= 1 s and TPOT <= 0.1 s), mean and p99 end-to-end latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import Slo
from benchmarks.sim.profiles import ServerProfile
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix
from scoring.types import PickRequest

F64 = NDArray[np.float64]

RHO_GRID = (0.2, 0.4, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 1.0)
N_GRID = (1, 2, 4, 8, 16)
QUICK_RHO_GRID = (0.3, 0.6, 0.8, 0.9, 0.96, 1.0)
QUICK_N_GRID = (1, 4, 16)


@dataclass(frozen=True, slots=True)
class Slot:
    """One replica in a DES window replay: takes new requests in ``[serve_from, serve_until)``; ``kill_at``
    (if set) is when it is deleted without a drain: requests still running then are dropped."""

    serve_from: float
    serve_until: float
    kill_at: float | None = None


class ActiveLeastInFlight:
    """Least in-flight among the slots that take new requests at ``now`` (``simulate``'s Policy protocol)."""

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.name = "least-in-flight-active"
        self._from = np.asarray([s.serve_from for s in slots])
        self._until = np.asarray([s.serve_until for s in slots])
        self.unserved: list[int] = []

    def pick(self, m: EndpointMatrix, req: PickRequest, now: float, rng: np.random.Generator) -> int:
        active = np.flatnonzero((self._from <= now) & (now < self._until))
        if len(active) == 0:
            self.unserved.append(int(req.request_id))
            return 0  # nobody can take it: routed anywhere, counted as dropped by the caller
        load = m.inflight[active]
        best = active[load == load.min()]
        return int(best[0] if len(best) == 1 else best[rng.integers(len(best))])


def poisson_workload(
    lengths: Workload, rate_at: Any, start: float, end: float, *, tick_s: float, rng: np.random.Generator
) -> Workload:
    """Poisson arrivals at the piecewise-constant rate ``rate_at(tick start)`` over ``[start, end)``,
    lengths drawn from ``lengths``; arrival times relative to ``start``."""
    edges = np.arange(start, end, tick_s)
    rates = np.asarray(rate_at(edges), dtype=np.float64)
    counts = rng.poisson(rates * np.minimum(tick_s, end - edges))
    t = np.concatenate(
        [np.sort(rng.uniform(e, min(e + tick_s, end), size=c)) for e, c in zip(edges, counts, strict=True)]
    )
    k = len(t)
    idx = rng.integers(0, len(lengths), size=k)
    return Workload(
        name="scaling-window",
        arrival_s=t - start,
        prompt_tokens=lengths.prompt_tokens[idx],
        output_tokens=lengths.output_tokens[idx],
        units=tuple(() for _ in range(k)),
        unit_tokens=0,
        adapter=np.full(k, -1, dtype=np.int64),
    )


@dataclass(frozen=True, slots=True)
class WindowOutcome:
    """Per-request outcome of a DES replay: arrival (s, relative), met the SLO, dropped."""

    arrival: F64
    met: NDArray[np.bool_]
    dropped: NDArray[np.bool_]
    e2e: F64


def run_window(
    workload: Workload, slots: Sequence[Slot], profile: ServerProfile, slo: Slo, seed: int
) -> WindowOutcome:
    """Replay ``workload`` on ``slots`` (times relative to the workload's start)."""
    policy = ActiveLeastInFlight(slots)
    res = simulate(
        workload, policy, FleetConfig(profile=profile, n_servers=len(slots), prefix_cache=False, seed=seed)
    )
    ttft = res.first_token - res.arrival
    multi = res.output_tokens > 1
    tpot = np.zeros(len(ttft))
    tpot[multi] = (res.finish - res.first_token)[multi] / (res.output_tokens[multi] - 1)
    dropped = np.zeros(len(ttft), dtype=np.bool_)
    if policy.unserved:
        dropped[policy.unserved] = True
    for i, s in enumerate(slots):
        if s.kill_at is not None:
            dropped |= (res.server == i) & (res.finish > s.kill_at) & (res.arrival < s.kill_at)
    met = (ttft <= slo.ttft_s) & (tpot <= slo.tpot_s) & ~dropped
    return WindowOutcome(res.arrival, met, dropped, res.finish - res.arrival)


@dataclass(frozen=True, slots=True)
class AttainmentTable:
    """Steady-state figures on an (n, rho) grid, interpolated linearly in rho and in log2(n)."""

    mu: float  #: one server's saturated throughput on the mix (requests/s)
    n_grid: tuple[int, ...]
    rho_grid: tuple[float, ...]
    attainment: F64  #: [n, rho]
    e2e_mean: F64
    e2e_p99: F64
    _rows: dict[tuple[int, float], F64] = field(default_factory=dict, repr=False, compare=False)

    def _row(self, table: F64, n: float) -> F64:
        """The table's row for fleet size ``n`` (linear in log2 n between grid sizes), cached per n."""
        key = (id(table), n)
        row = self._rows.get(key)
        if row is None:
            x = np.log2(max(n, 1.0))
            xs = np.log2(self.n_grid)
            row = np.asarray([np.interp(x, xs, table[:, j]) for j in range(len(self.rho_grid))])
            self._rows[key] = row
        return row

    def _lookup(self, table: F64, n: float, rho: float) -> float:
        rho = min(max(rho, 0.0), self.rho_grid[-1])
        return float(np.interp(rho, self.rho_grid, self._row(table, n)))

    def attain(self, n: float, rho: float) -> float:
        # below the first grid point the first value holds (lighter load never does worse)
        return self._lookup(self.attainment, n, max(rho, self.rho_grid[0]))

    def e2e(self, n: float, rho: float) -> tuple[float, float]:
        return (
            self._lookup(self.e2e_mean, n, max(rho, self.rho_grid[0])),
            self._lookup(self.e2e_p99, n, max(rho, self.rho_grid[0])),
        )

    def saturation_rho(self, n: float) -> float:
        """Load at which steady-state attainment falls through 50 %: the fleet's effective throughput per
        replica under overload, as a fraction of ``mu`` (``mu`` is measured with a full queue from the
        start; under a growing backlog the batches are larger and slower, see the model's module doc)."""
        row = self._row(self.attainment, n)
        below = np.flatnonzero(row < 0.5)
        if len(below) == 0:
            return self.rho_grid[-1]
        j = int(below[0])
        if j == 0:
            return self.rho_grid[0]
        r0, r1, a0, a1 = self.rho_grid[j - 1], self.rho_grid[j], row[j - 1], row[j]
        return float(r0 + (a0 - 0.5) / (a0 - a1) * (r1 - r0))

    def capacity_at_slo(self, n: float, target: float = 0.99) -> float:
        """Largest per-replica rate (requests/s) at which attainment stays >= ``target``."""
        fine = np.linspace(self.rho_grid[0], self.rho_grid[-1], 400)
        ok = [r for r in fine if self.attain(n, r) >= target]
        return (max(ok) if ok else self.rho_grid[0]) * self.mu

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> AttainmentTable:
        """Inverse of :meth:`to_dict` (``--calibration`` reuses a previous run's steady-state table)."""
        return cls(
            float(doc["mu_rps"]),
            tuple(int(n) for n in doc["n_grid"]),
            tuple(float(r) for r in doc["rho_grid"]),
            np.asarray(doc["attainment"], dtype=np.float64),
            np.asarray(doc["e2e_mean_s"], dtype=np.float64),
            np.asarray(doc["e2e_p99_s"], dtype=np.float64),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mu_rps": self.mu,
            "n_grid": list(self.n_grid),
            "rho_grid": list(self.rho_grid),
            "attainment": np.round(self.attainment, 5).tolist(),
            "e2e_mean_s": np.round(self.e2e_mean, 3).tolist(),
            "e2e_p99_s": np.round(self.e2e_p99, 3).tolist(),
        }


def steady_state(
    lengths: Workload,
    profile: ServerProfile,
    slo: Slo,
    *,
    n_grid: Sequence[int],
    rho_grid: Sequence[float],
    duration_s: float,
    seed: int,
    progress: Any = None,
) -> AttainmentTable:
    mu = server_capacity_rps(lengths, profile)
    att = np.zeros((len(n_grid), len(rho_grid)))
    mean = np.zeros_like(att)
    p99 = np.zeros_like(att)
    rng = np.random.default_rng([seed, 7])
    for i, n in enumerate(n_grid):
        for j, rho in enumerate(rho_grid):
            rate = rho * mu * n
            wl = poisson_workload(
                lengths, lambda e, r=rate: np.full(len(e), r), 0.0, duration_s, tick_s=15.0, rng=rng
            )
            out = run_window(wl, [Slot(0.0, float("inf"))] * n, profile, slo, seed)
            counted = out.arrival >= 0.2 * duration_s
            att[i, j] = float(out.met[counted].mean())
            mean[i, j] = float(out.e2e[counted].mean())
            p99[i, j] = float(np.percentile(out.e2e[counted], 99))
            if progress is not None:
                progress(f"steady n={n} rho={rho}: attainment {att[i, j]:.4f}")
    # more load never helps: sampling noise near the cliff is removed by a running minimum over rho
    att = np.minimum.accumulate(att, axis=1)
    return AttainmentTable(mu, tuple(n_grid), tuple(rho_grid), att, mean, p99)
