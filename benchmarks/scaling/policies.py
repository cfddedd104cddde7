"""The five policies of the scaling replay. Each acts once per tick on a :class:`~.model.Fleet`.

* ``static``: the peak's replicas all the time (what the pool costs without scaling).
* ``schedule-only``: fixed replicas per six-hour block of the day, set from the previous week's largest
  need in that block (what an operator writes once from last week's dashboard), evaluated by the
  scaler's own :class:`picker.scaler.schedule.Schedule`.
* ``reactive``: an HPA on a utilisation metric (offered load per ready replica / its capacity mu, queue
  included): ``desired = ceil(ready x utilisation / target)`` with the HPA's 10 % tolerance, scale-up at
  once (at most max(4, 100 %) per 15 s, the HPA default), scale-down to the largest recommendation of the
  last 5 minutes, deleting pods the Kubernetes way (no drain: running requests are dropped).
* ``oracle``: knows the demand of the tick, scales instantly (no warm-up, no drops): the smallest replica
  count whose steady-state attainment is >= 99 %. The ceiling of what any scaler can save.
* ``ours``: :class:`picker.scaler.plan.Planner` — the code the EPP runs — on the demand measured over the
  last tick (requests, and tokens when its section sets ``tokensPerSecond``), the forecast from the history
  so far (:mod:`picker.scaler.forecast`; none in week 1, which has no week before it), the model's
  saturation verdict, with its drain protocol.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from benchmarks.scaling.calibration import AttainmentTable
from benchmarks.scaling.demand import DemandSeries
from benchmarks.scaling.model import Fleet
from picker.config.scaling import ScalingConfig
from picker.scaler.forecast import PoolHistory, forecast
from picker.scaler.plan import Action, Observation, Planner
from picker.scaler.schedule import Schedule
from picker.scaler.victim import PodView

DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Signals:
    """What a policy may know at the start of a tick."""

    t: float
    measured_rps: float  #: requests counted over the last tick / its length (Poisson noise included)
    true_rps: float  #: the tick's actual rate (the oracle only)
    saturated: bool  #: the model's saturation verdict on the last tick
    backlog: float  #: requests queued beyond the steady state
    measured_tps: float | None = None  #: tokens of the last tick's requests / its length (None: not metered)


class ScalingPolicy(Protocol):
    name: str

    def start(self, fleet: Fleet, t: float) -> None: ...

    def act(self, fleet: Fleet, s: Signals) -> None: ...


class Static:
    def __init__(self, peak: int) -> None:
        self.name = "static"
        self.peak = peak

    def start(self, fleet: Fleet, t: float) -> None:
        fleet.add(t, self.peak, warmup_s=0.0)

    def act(self, fleet: Fleet, s: Signals) -> None:
        pass


def _block_schedule(
    series: DemandSeries, until: float, cfg_need: float, peak: int, hours: int
) -> ScalingConfig:
    """Six-hour blocks, each at the largest need of the week before ``until`` in that block."""
    mask = (series.start < until) & (series.start >= until - 7 * DAY_S)
    hour = ((series.start[mask] % DAY_S) // 3600).astype(int)
    rates = series.rps[mask]
    windows = []
    for b in range(0, 24, hours):
        inside = (hour >= b) & (hour < b + hours)
        need = min(peak, max(1, math.ceil(float(rates[inside].max()) / cfg_need))) if inside.any() else peak
        windows.append(
            {
                "name": f"h{b:02d}",
                "start": f"0 {b} * * *",
                "duration": f"{hours}h",
                "minReplicas": need,
                "maxReplicas": need,
            }
        )
    return ScalingConfig.model_validate(
        {
            "target": {"kind": "Deployment", "name": "bench"},
            "maxReplicas": peak,
            "replicaCapacity": {"requestsPerSecond": cfg_need},
            "warmup": "0s",
            "schedules": windows,
        }
    )


class ScheduleOnly:
    def __init__(
        self,
        series: DemandSeries,
        *,
        test_start: float,
        capacity_rps: float,
        headroom: float,
        peak: int,
        warmup_s: float,
        hours: int = 6,
    ) -> None:
        self.name = "schedule-only"
        self.cfg = _block_schedule(series, test_start, capacity_rps / (1 + headroom), peak, hours)
        self.schedule = Schedule(self.cfg)
        self.warmup_s = warmup_s
        self._hour = -1
        self._replicas = 0

    def start(self, fleet: Fleet, t: float) -> None:
        fleet.add(t, self.schedule.raw(t)[0], warmup_s=0.0)

    def act(self, fleet: Fleet, s: Signals) -> None:
        # the operator's windows switch warmup_s early so pods are ready at the block boundary; blocks start
        # and end on whole hours, so the cron evaluation is cached per hour
        hour = int((s.t + self.warmup_s) // 3600)
        if hour != self._hour:
            self._hour, self._replicas = hour, self.schedule.raw(hour * 3600.0)[0]
        fleet.scale_to(s.t, self._replicas)


class Reactive:
    def __init__(
        self, table: AttainmentTable, target: float, peak: int, dt: float, stabilization_s: float = 300.0
    ) -> None:
        self.name = "reactive"
        self.mu = table.mu
        self.target = target
        self.peak = peak
        self.dt = dt
        self.window: deque[tuple[float, int]] = deque()
        self.stabilization_s = stabilization_s

    def start(self, fleet: Fleet, t: float) -> None:
        fleet.add(t, self.peak, warmup_s=0.0)

    def act(self, fleet: Fleet, s: Signals) -> None:
        current = fleet.replicas(s.t)
        ready = max(fleet.serving(s.t), 1)
        util = (s.measured_rps + s.backlog / self.dt) / (ready * self.mu)
        ratio = util / self.target
        desired = current if abs(ratio - 1) <= 0.1 else math.ceil(ready * ratio)
        if fleet.ready(s.t) < current:
            desired = max(desired, current)  # pods still starting: the HPA does not shrink on partial data
        desired = min(max(desired, 1), self.peak)
        self.window.append((s.t, desired))
        while self.window[0][0] < s.t - self.stabilization_s:
            self.window.popleft()
        if desired > current:
            fleet.scale_to(s.t, min(desired, current + max(4, current)))
        else:
            fleet.scale_to(s.t, max(d for _, d in self.window))


class Oracle:
    def __init__(self, table: AttainmentTable, peak: int, target: float = 0.99) -> None:
        self.name = "oracle"
        self.table = table
        self.peak = peak
        self.target = target

    def start(self, fleet: Fleet, t: float) -> None:
        pass

    def need(self, rps: float) -> int:
        for n in range(1, self.peak + 1):
            if self.table.attain(n, rps / (n * self.table.mu)) >= self.target:
                return n
        return self.peak

    def act(self, fleet: Fleet, s: Signals) -> None:
        fleet.scale_to(s.t, self.need(s.true_rps), warmup_s=0.0)


#: ours with other settings (keywords of ``bench_scaling.ours_config``, ``tokens``: False for requests
#: only): the section's defaults, and one ingredient changed at a time
OURS_VARIANTS: dict[str, dict[str, Any]] = {
    "section-defaults (headroom 0.2, stabilization 15m)": {"headroom": 0.2, "stabilization_s": 900.0},
    "no forecast": {"forecast": False},
    "forecast with trend": {"trend": True},
    "forecast without the sample window (samples read as instants, as before)": {"sample_window_s": 0.0},
    "requests only (no tokensPerSecond)": {"tokens": False},
}


class Ours:
    def __init__(self, cfg: ScalingConfig, history: PoolHistory) -> None:
        self.name = "ours"
        self.cfg = cfg
        self.planner = Planner(cfg, ordered_removal=False)
        self.history = history
        self.horizon = cfg.warmup + 2 * cfg.interval
        self.decisions: dict[str, int] = {}
        self.forecast_used = 0

    def start(self, fleet: Fleet, t: float) -> None:
        fleet.add(t, self.cfg.max_replicas, warmup_s=0.0)

    def act(self, fleet: Fleet, s: Signals) -> None:
        fc = fc_tokens = None
        if self.cfg.forecast is not None:
            fcfg = self.cfg.forecast
            weeks, trend, lookback = fcfg.weeks, fcfg.trend, fcfg.sample_window
            f = forecast(
                self.history.requests, s.t, self.horizon, weeks=weeks, trend=trend, lookback_s=lookback
            )
            fc = None if f is None else f.rps
            if self.history.tokens is not None and self.cfg.replica_capacity.tokens_per_second is not None:
                ft = forecast(
                    self.history.tokens, s.t, self.horizon, weeks=weeks, trend=trend, lookback_s=lookback
                )
                fc_tokens = None if ft is None else ft.rps
        inflight = fleet.inflight_per_pod()
        pods = tuple(
            PodView(
                name=p.name,
                inflight=(inflight if s.t < p.drained_at else 0.0) if p.serve_until <= s.t else inflight,
                last_busy=s.t,
                recent_load=inflight,
                joined=p.ready_at,
                draining=p.serve_until <= s.t,
            )
            for p in fleet.live
            if p.ready(s.t)
        )
        removal = self.planner.removal is not None
        obs = Observation(
            now=s.t,
            replicas=fleet.replicas(s.t),
            ready=fleet.ready(s.t),
            demand_rps=s.measured_rps,
            pods=pods,
            saturated=s.saturated,
            queue=s.backlog,
            forecast_rps=fc,
            demand_tps=s.measured_tps,
            forecast_tps=fc_tokens,
            existing=frozenset(p.name for p in fleet.live) if removal else None,
        )
        d = self.planner.step(obs)
        if d.action is not Action.HOLD:
            key = f"{d.action}:{d.reason}"
            self.decisions[key] = self.decisions.get(key, 0) + 1
        if self.planner.need(fc, fc_tokens) > self.planner.need(s.measured_rps, s.measured_tps):
            self.forecast_used += 1
        if d.action is Action.SCALE_UP:
            fleet.add(s.t, d.desired - obs.replicas)
        elif d.action is Action.DRAIN and d.victim:
            fleet.start_drain(s.t, d.victim)
        elif d.action is Action.CANCEL_DRAIN and d.victim:
            fleet.cancel_drain(d.victim)
        elif d.action is Action.REMOVE and d.victim:
            fleet.remove(s.t, d.victim)


def iso_cost_reactive(
    target_gpu_hours: float, run: Any, lo: float = 0.3, hi: float = 0.99, steps: int = 9
) -> tuple[float, Fleet]:
    """The highest utilisation target whose GPU-hours are still >= ``target_gpu_hours`` (bisection)."""
    best_u, best = lo, run(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        fleet = run(mid)
        if fleet.totals.gpu_s / 3600 >= target_gpu_hours:
            best_u, best, lo = mid, fleet, mid
        else:
            hi = mid
    return best_u, best


def measured(rng: np.random.Generator, lam: float, dt: float) -> float:
    return float(rng.poisson(lam * dt)) / dt
