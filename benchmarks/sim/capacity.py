"""Capacity at SLO: the highest offered rate a routing policy sustains while most requests meet the SLO.

    capacity(policy) = max { rate : attainment(policy, trace time-scaled to rate) >= 0.9 }

``attainment`` is the share of the trace's requests with TTFT <= 1 s and TPOT <= 0.1 s
(:mod:`benchmarks.sim.metrics`). The trace's arrivals are scaled uniformly to each rate
(:meth:`Workload.with_rate`), so every policy and every rate replays the same requests with the same burst
pattern; each evaluation is one full simulation.

Search (:func:`find_capacity`): from a starting rate, step by ``x 1.5`` up (while the SLO is met) or down
(while it is not) until one rate meets it and the next does not, then bisect geometrically until the two
are within ``rel_tol`` (2 %) of each other; the capacity is the higher rate measured to meet it. This
assumes attainment falls as the rate rises, which holds up to the noise of one finite replay; every
evaluated rate and its attainment is kept (:class:`CapacityResult`) so a reader can see the curve.

Why this yardstick (issue 13): at a fixed "90 % of maximum throughput" load every policy was already past
saturation on the Azure trace (4-6 % of requests met the SLO), so ratios there were noise. Capacity at SLO
is what an operator buys: how much traffic the same fleet serves acceptably.

:func:`compare` runs it for several policies on one trace and seed: round-robin first (from the fleet's
nominal capacity), every other policy starting at round-robin's capacity — whose evaluation there doubles
as the "p99 TTFT at the rate where round-robin reaches its capacity" figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.sim.fleet import FleetConfig, server_capacity_rps, simulate
from benchmarks.sim.metrics import Slo, summarize
from benchmarks.sim.policies import Policy
from benchmarks.sim.traces import Workload

#: the share of requests that must meet the SLO
TARGET_ATTAINMENT = 0.9
#: bisection stops when the failing and the passing rate are within this fraction
REL_TOL = 0.02
#: bracket step
STEP = 1.5
#: hard limit on simulations per search (a bracket of 1.5^k plus ~6 bisection steps needs far fewer)
MAX_EVALS = 30
#: summary keys kept per evaluation
KEEP = ("slo_attainment", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s", "prefix_hit_rate")


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One simulated replay at one rate."""

    rate_rps: float
    attainment: float
    summary: dict[str, float]


@dataclass(frozen=True, slots=True)
class CapacityResult:
    """The search's outcome: the capacity, and every evaluation in the order it ran."""

    policy: str
    capacity_rps: float
    evaluations: tuple[Evaluation, ...]
    #: False when even the lowest rate tried missed the SLO (capacity 0: below ``evaluations``' minimum)
    found: bool = True

    def at(self, rate: float) -> Evaluation | None:
        """The evaluation at exactly ``rate``, if the search ran one."""
        for e in self.evaluations:
            if e.rate_rps == rate:
                return e
        return None

    @property
    def at_capacity(self) -> Evaluation | None:
        return self.at(self.capacity_rps) if self.found else None


Evaluate = Callable[[float], Evaluation]


def evaluator(
    workload: Workload, make: Callable[[], Policy], cfg: FleetConfig, slo: Slo | None = None
) -> Evaluate:
    """``rate -> Evaluation``: a fresh policy from ``make`` replays ``workload`` time-scaled to ``rate``."""
    objective = slo or Slo()

    def run(rate: float) -> Evaluation:
        res = simulate(workload.with_rate(rate), make(), cfg)
        row = summarize(res, objective)
        return Evaluation(rate, float(row["slo_attainment"]), {k: float(row[k]) for k in KEEP})

    return run


def find_capacity(
    evaluate: Evaluate,
    start_rps: float,
    *,
    name: str = "",
    target: float = TARGET_ATTAINMENT,
    rel_tol: float = REL_TOL,
    step: float = STEP,
    max_evals: int = MAX_EVALS,
    on_eval: Callable[[Evaluation], None] | None = None,
) -> CapacityResult:
    """Bracket then bisect (module docstring). ``evaluate(rate)`` must be deterministic."""
    if start_rps <= 0 or not math.isfinite(start_rps):
        raise ValueError(f"start_rps must be a positive rate, not {start_rps!r}")
    if not 0 < rel_tol < 1 or step <= 1:
        raise ValueError("rel_tol must be in (0, 1) and step above 1")
    done: list[Evaluation] = []

    def ev(rate: float) -> bool:
        e = evaluate(rate)
        done.append(e)
        if on_eval is not None:
            on_eval(e)
        return e.attainment >= target

    lo: float | None = None
    hi: float | None = None
    rate = start_rps
    if ev(rate):
        lo = rate
        while hi is None and len(done) < max_evals:
            rate *= step
            if ev(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo is None and len(done) < max_evals:
            rate /= step
            if ev(rate):
                lo = rate
            else:
                hi = rate
    if lo is None:
        return CapacityResult(name, 0.0, tuple(done), found=False)
    if hi is None:  # never failed within the budget: the highest rate tried is a lower bound
        return CapacityResult(name, lo, tuple(done))
    while hi / lo > 1 + rel_tol and len(done) < max_evals:
        mid = math.sqrt(lo * hi)
        if ev(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(name, lo, tuple(done))


@dataclass(frozen=True, slots=True)
class Comparison:
    """Capacity per policy on one trace and seed, round-robin's first."""

    results: dict[str, CapacityResult]
    baseline: str
    nominal_rps: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: the baseline's capacity when it was measured earlier and not searched here (0: it had none)
    baseline_rps: float | None = None
    #: simulator wall time per policy searched here (s)
    wall_s: dict[str, float] = field(default_factory=dict)

    def rows(self) -> dict[str, dict[str, float | None]]:
        """The issue's per-policy figures: capacity, ratio to the baseline's, the prefix hit rate at the
        policy's own capacity, and p99 TTFT at the baseline's capacity rate."""
        base = self.results.get(self.baseline)
        if base is not None:
            base_cap = base.capacity_rps if base.found else None
        else:
            base_cap = self.baseline_rps or None
        out: dict[str, dict[str, float | None]] = {}
        for name, res in self.results.items():
            at_cap = res.at_capacity
            at_base = res.at(base_cap) if base_cap else None
            out[name] = {
                "capacity_rps": res.capacity_rps,
                "vs_round_robin": res.capacity_rps / base_cap if base_cap else None,
                "prefix_hit_rate": at_cap.summary["prefix_hit_rate"] if at_cap else None,
                "ttft_p99_s_at_rr_capacity": at_base.summary["ttft_p99_s"] if at_base else None,
            }
        return out


def compare(
    workload: Workload,
    policies: Sequence[str],
    make: Callable[[str], Policy],
    cfg: FleetConfig,
    slo: Slo | None = None,
    *,
    baseline: str = "round-robin",
    rel_tol: float = REL_TOL,
    on_eval: Callable[[str, Evaluation], None] | None = None,
    baseline_rps: float | None = None,
) -> Comparison:
    """:func:`find_capacity` for ``baseline`` and then every other policy, as the module docstring says.

    ``make(name)`` builds a fresh policy. The baseline starts from 60 % of the fleet's nominal capacity
    (:func:`server_capacity_rps` x servers); the others from the baseline's capacity, which they are
    therefore all evaluated at. Policies other than the baseline missing the SLO there still get a
    capacity below it.

    ``baseline_rps``: the baseline's capacity from an earlier search on the same workload, fleet and SLO
    (0 if it had none). The baseline is then not searched again and the others start where they would
    have (the searches are deterministic), so policies measured separately give the figures of one
    comparison of all of them (up to the 5 digits a sweep's JSON keeps of the baseline's capacity).
    """
    nominal = server_capacity_rps(workload, cfg.profile, seed=cfg.seed) * cfg.n_servers
    names = [p for p in policies if p != baseline]
    if baseline_rps is None:
        names.insert(0, baseline)
    results: dict[str, CapacityResult] = {}
    wall: dict[str, float] = {}
    start = baseline_rps or 0.6 * nominal
    for name in names:

        def report(e: Evaluation, _name: str = name) -> None:
            if on_eval is not None:
                on_eval(_name, e)

        ev = evaluator(workload, lambda _n=name: make(_n), cfg, slo)
        t0 = time.perf_counter()
        results[name] = find_capacity(ev, start, name=name, rel_tol=rel_tol, on_eval=report)
        wall[name] = time.perf_counter() - t0
        if name == baseline and results[name].found:
            start = results[name].capacity_rps
    return Comparison(results, baseline, nominal, baseline_rps=baseline_rps, wall_s=wall)
