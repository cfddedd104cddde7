"""The fast per-window model: a fleet of replicas over time and the share of requests that meet the SLO.

Per tick of ``dt`` seconds with arrival rate lam and ``n`` replicas taking new requests (capacity mu each):

* **Steady part.** rho = (lam x dt + B) / (n x mu x dt), B the backlog carried from earlier ticks. While
  rho <= 1 the tick's arrivals meet the SLO with the probability the discrete-event simulator measured in
  steady state at that (n, rho) (:class:`~benchmarks.scaling.calibration.AttainmentTable`), and B = 0.
* **Overload.** Above 1 the excess becomes backlog: B' = lam dt + B - n mu dt. A request arriving now waits
  about B / (n mu) before its prefill starts; the tick's arrivals count as meeting the SLO only for the part
  of the tick in which that wait stays under the TTFT target (linear between the wait at the tick's start
  and at its end), times the attainment at rho = 1.
* **No replica.** Every arrival is dropped (or held, for a policy that holds requests).
* **Deleting a replica without draining it** (what Kubernetes does on a plain scale-down) drops the requests
  running on it: lam / n x mean end-to-end latency of them (Little's law). vLLM aborts in-flight requests on
  SIGTERM by default (``--shutdown-timeout=0``, vllm-project/vllm#36666); a preStop sleep or a longer
  timeout would save some, which the non-draining policies here are not given.

How far this is from the simulator is measured on sampled windows of the replay (ramps, replicas joining,
drains, kills): :func:`benchmarks.bench_scaling.validate`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from benchmarks.scaling.calibration import AttainmentTable, Slot

INF = math.inf
#: the model's stand-in for the saturation detector: load at which queues build (see the module doc)
SATURATION_RHO = 0.96


@dataclass(slots=True)
class TickOutcome:
    arrivals: float
    met: float
    dropped: float
    rho: float
    saturated: bool


class QueueModel:
    """The per-tick formula of the module docstring, with its one piece of state (the backlog)."""

    def __init__(self, table: AttainmentTable, ttft_slo_s: float) -> None:
        self.table = table
        self.ttft = ttft_slo_s
        self.backlog = 0.0

    def step(self, lam: float, n: int, dt: float) -> TickOutcome:
        arrivals = lam * dt
        if n <= 0:
            self.backlog = 0.0
            return TickOutcome(arrivals, 0.0, arrivals, INF, True)
        mu = self.table.mu * self.table.saturation_rho(n)
        cap = n * mu * dt
        total = arrivals + self.backlog
        rho = total / (n * self.table.mu * dt)
        if total <= cap:
            self.backlog = 0.0
            return TickOutcome(
                arrivals, arrivals * self.table.attain(n, rho), 0.0, rho, rho >= SATURATION_RHO
            )
        w0 = self.backlog / (n * mu)
        self.backlog = total - cap
        w1 = self.backlog / (n * mu)
        if w1 <= self.ttft:
            frac = 1.0
        elif w0 >= self.ttft:
            frac = 0.0
        else:
            frac = (self.ttft - w0) / (w1 - w0)
        return TickOutcome(arrivals, arrivals * frac * self.table.attain(n, 1.0), 0.0, rho, True)


@dataclass(slots=True)
class Pod:
    name: str
    created: float
    ready_at: float
    serve_until: float = INF  #: drain start or deletion: no new requests from here
    gone_at: float = INF
    killed: bool = False  #: deleted without a drain
    drained_at: float = INF  #: when its last request ends (draining pods)

    def alive(self, t: float) -> bool:
        return self.created <= t < self.gone_at

    def ready(self, t: float) -> bool:
        return self.ready_at <= t < self.gone_at

    def serving(self, t: float) -> bool:
        return self.ready_at <= t < min(self.serve_until, self.gone_at)

    def slot(self) -> Slot:
        return Slot(self.ready_at, min(self.serve_until, self.gone_at), self.gone_at if self.killed else None)


@dataclass(slots=True)
class Totals:
    arrivals: float = 0.0
    met: float = 0.0
    dropped: float = 0.0
    gpu_s: float = 0.0
    scale_events: int = 0
    ticks_at_max_saturated: int = 0


@dataclass(slots=True)
class Fleet:
    """Replicas of one policy over time, and the model's verdict per tick."""

    table: AttainmentTable
    ttft_slo_s: float
    warmup_s: float
    drop_on_kill: bool = True
    pods: list[Pod] = field(default_factory=list)  #: every pod ever created (window replays read them)
    live: list[Pod] = field(default_factory=list)  #: pods not deleted yet
    totals: Totals = field(default_factory=Totals)
    log: list[tuple[float, float, int, int, float]] = field(default_factory=list)
    _model: QueueModel | None = None
    _seq: int = 0
    _lam: float = 0.0
    _n: int = 0
    _rho: float = 0.0

    def __post_init__(self) -> None:
        self._model = QueueModel(self.table, self.ttft_slo_s)

    # ----------------------------------------------------------------------------------- views
    def alive(self, t: float) -> list[Pod]:
        return [p for p in self.live if p.alive(t)]

    def replicas(self, t: float) -> int:
        return sum(1 for p in self.live if p.alive(t))

    def ready(self, t: float) -> int:
        return sum(1 for p in self.live if p.ready(t))

    def serving(self, t: float) -> int:
        return sum(1 for p in self.live if p.serving(t))

    def inflight_per_pod(self) -> float:
        """Requests running on one serving replica now (Little's law on the last tick)."""
        if self._n <= 0:
            return 0.0
        mean, _ = self.table.e2e(self._n, min(self._rho, 1.0))
        return self._lam / self._n * mean

    # ----------------------------------------------------------------------------------- actions
    def add(self, t: float, count: int, *, warmup_s: float | None = None) -> None:
        delay = self.warmup_s if warmup_s is None else warmup_s
        for _ in range(count):
            self._seq += 1
            pod = Pod(f"pod-{self._seq}", t, t + delay)
            self.pods.append(pod)
            self.live.append(pod)
        if count:
            self.totals.scale_events += 1

    def scale_to(self, t: float, n: int, *, warmup_s: float | None = None) -> None:
        """Kubernetes semantics without a drain: new pods warm up; a scale-down deletes not-ready pods first
        (newest first), then the most recently ready, and drops what was running on deleted ready pods."""
        alive = self.alive(t)
        if n > len(alive):
            self.add(t, n - len(alive), warmup_s=warmup_s)
            return
        if n == len(alive):
            return
        victims = sorted(alive, key=lambda p: (p.ready(t), -p.ready_at))[: len(alive) - n]
        inflight = self.inflight_per_pod()
        for p in victims:
            if p.serving(t) and self.drop_on_kill:
                self.totals.dropped += inflight
            p.killed = p.ready(t)
            p.gone_at = t
            p.serve_until = min(p.serve_until, t)
        self.live = [p for p in self.live if p.gone_at > t]
        self.totals.scale_events += 1

    def start_drain(self, t: float, name: str) -> None:
        pod = self._pod(name)
        pod.serve_until = t
        _, p99 = self.table.e2e(max(self._n, 1), min(self._rho, 1.0))
        pod.drained_at = t + p99

    def cancel_drain(self, name: str) -> None:
        pod = self._pod(name)
        pod.serve_until = INF
        pod.drained_at = INF

    def remove(self, t: float, name: str) -> None:
        """A drained pod leaves (deletion cost + scale - 1); a request still running would be dropped."""
        pod = self._pod(name)
        if t < pod.drained_at and self.drop_on_kill:
            self.totals.dropped += self.inflight_per_pod()
        pod.gone_at = t
        self.live = [p for p in self.live if p.gone_at > t]
        self.totals.scale_events += 1

    def _pod(self, name: str) -> Pod:
        return next(p for p in self.live if p.name == name)

    # ----------------------------------------------------------------------------------- the tick
    def tick(self, t: float, lam: float, dt: float, *, hi: int) -> TickOutcome:
        """Evaluate ``[t, t + dt)`` with the fleet as it is at ``t``."""
        assert self._model is not None
        n = self.serving(t)
        out = self._model.step(lam, n, dt)
        self._lam, self._n, self._rho = lam, n, out.rho
        tot = self.totals
        tot.arrivals += out.arrivals
        tot.met += out.met
        tot.dropped += out.dropped
        alive = self.replicas(t)
        tot.gpu_s += alive * dt
        if out.saturated and alive >= hi:
            tot.ticks_at_max_saturated += 1
        self.log.append((t, lam, alive, n, out.met / out.arrivals if out.arrivals else 1.0))
        return out
