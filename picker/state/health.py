"""Passive health: outlier detection on the outcomes of the requests we route, Envoy's way.

Pure logic over a caller's clock (every method takes ``now``, monotonic seconds): no I/O, no timers, no
threads. The owner of the pool state (the datastore) feeds it the outcomes of routed requests and calls
:meth:`OutlierDetector.sweep` often (at every snapshot); it publishes :meth:`OutlierDetector.state` per
endpoint in the snapshot, where the director reads it. The same object serves any group of endpoints
keyed by name (the pool's pods; external endpoints can keep a detector of their own).

Semantics (Envoy's outlier detection, ``arch_overview/upstream/outlier``; differences marked *ours*):

* **What counts as a failure** of an endpoint: an upstream response status ≥ 500 (``:status`` of the
  response headers, including the gateway's own 502/503/504 for a connect failure or a timeout); a stream
  that ends after the request was sent without any response headers (connect failure or reset the gateway
  did not turn into a response, a timeout; only once the gateway is known to send responses at all,
  ``picker.state.outcomes.OutcomeWriter``); being skipped by the gateway's retry (the served endpoint
  reported in ``x-gateway-destination-endpoint-served`` is a later one of our list, so every endpoint
  before it failed). Anything else is a success, 4xx included (Envoy: only 5xx and local-origin errors).
  Envoy's default mode, where locally originated errors share the 5xx bucket.
* **Consecutive failures** (Envoy ``consecutive_5xx``, default 5): that many failures with no success in
  between eject the endpoint at once. Outcomes may arrive in batches (``--workers``: summed per publish
  interval over all workers, 50 ms at the default scraping); a batch with any success resets the run (the
  order inside a batch is unknown, and a partly succeeding endpoint is the failure-percentage rule's case).
* **Failure percentage** (Envoy ``failure_percentage_*``): at every ``interval``, an endpoint with at
  least ``minimumRequests`` outcomes in that interval and at least ``failurePercentage`` % of them failed
  is ejected. *Ours*: on by default (Envoy's ``enforcing_failure_percentage`` defaults to 0), threshold
  50 % and 20 requests by default (Envoy 85 % and 50: LLM endpoints see far fewer requests than RPC
  services), and no ``minimum_hosts`` (the max-ejection share below already protects small pools).
  Envoy's statistical success-rate detector is not implemented.
* **Ejection time** = ``baseEjectionTime`` x the times the endpoint was ejected in a row, capped at
  ``max(maxEjectionTime, baseEjectionTime)``; at every interval a healthy endpoint's multiplier goes down
  by one (Envoy). No jitter (*ours*: one EPP ejects, not a fleet of proxies).
* **At most ``maxEjectionPercent`` of the pool** is ejected at once (ejected or probing endpoints count),
  but one endpoint always can be (Envoy's rule). *Ours*: default 50 % (Envoy 10 %). A refused ejection
  is counted (``ejections_refused``) and retried at the endpoint's next failure.
* **Half-open** (*ours*; Envoy returns the host to the pool when the time is up): when the ejection time
  is over the endpoint is ``PROBING``: the director lets it be primary again as long as none of our
  requests is in flight on it, so exactly one request probes it. The first outcome seen while probing
  decides: a success reinstates it (``HEALTHY``, runs reset), a failure ejects it again at once (the
  multiplier grows; reason ``probe_failed``).
* While ``EJECTED``, outcomes are ignored (they come from requests sent before the ejection, or from the
  endpoint used as a last-resort fallback) and the endpoint is reinstated only through a probe.
* An ejected endpoint is never removed: it is not picked as primary while another candidate is healthy,
  and it may still be a fallback when nothing better is left (the director's rule, not this module's).

``enabled: false`` reinstates every endpoint and ignores outcomes until enabled again.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.config import OutlierDetectorParams


class Health(enum.IntEnum):
    """An endpoint's passive-health state (the value published in the snapshot's ``health`` column)."""

    HEALTHY = 0
    #: ejected: not primary while a healthy candidate exists
    EJECTED = 1
    #: the ejection time is over: eligible as primary for one probe request (while nothing is in flight)
    PROBING = 2
    #: not a passive-health verdict: the scaler drains the pod (``Datastore.set_draining``); the datastore
    #: writes it over the detector's state, and the director treats it like an ejection
    DRAINING = 3


class FailureKind(enum.StrEnum):
    """Why one request counted as a failure of an endpoint (bounded: shown in ``/debug/endpoints``)."""

    #: upstream (or gateway-generated) status >= 500 other than 504
    STATUS_5XX = "5xx"
    #: status 504: the gateway's upstream timeout
    TIMEOUT = "timeout"
    #: the stream ended after the request was sent, without any response headers
    RESET = "reset"
    #: the gateway retried the request on a later endpoint of our list: this one failed first
    RETRIED = "retried"


class EjectionReason(enum.StrEnum):
    """Label values of ``picker_endpoint_ejections_total{reason}`` (a bounded set)."""

    CONSECUTIVE_5XX = "consecutive_5xx"
    FAILURE_PERCENTAGE = "failure_percentage"
    PROBE_FAILED = "probe_failed"


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """The detector's parameters (the ``outlier-detector`` plugin; units: counts, percent, seconds)."""

    enabled: bool = True
    #: failures in a row that eject (0 = this rule is off); Envoy ``consecutive_5xx``
    consecutive_failures: int = 5
    #: failed share of one interval's outcomes, percent, that ejects (0 = this rule is off)
    failure_percentage: float = 50.0
    #: outcomes an endpoint needs within one interval for the failure-percentage rule
    minimum_requests: int = 20
    #: the failure-percentage window and the multiplier's decrement period, s
    interval_s: float = 10.0
    #: ejection time of a first ejection, s
    base_ejection_s: float = 30.0
    #: the cap of the ejection time, s (the base wins if larger, as in Envoy)
    max_ejection_s: float = 300.0
    #: most of the pool that may be ejected at once, percent (one endpoint always may)
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 0 or self.minimum_requests < 0:
            raise ValueError("consecutive_failures and minimum_requests must be >= 0")
        for name in ("failure_percentage", "max_ejection_percent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be within [0, 100], got {value!r}")
        for name in ("interval_s", "base_ejection_s", "max_ejection_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0.0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    @classmethod
    def from_params(cls, params: OutlierDetectorParams) -> OutlierPolicy:
        """The policy of a validated ``outlier-detector`` plugin (or its defaults)."""
        return cls(
            enabled=params.enabled,
            consecutive_failures=params.consecutive_5xx,
            failure_percentage=params.failure_percentage_threshold,
            minimum_requests=params.failure_percentage_request_volume,
            interval_s=params.interval,
            base_ejection_s=params.base_ejection_time,
            max_ejection_s=params.max_ejection_time,
            max_ejection_percent=params.max_ejection_percent,
        )

    def ejection_time(self, times_ejected: int) -> float:
        """Seconds out for the ``times_ejected``-th ejection in a row (≥ 1)."""
        return min(
            self.base_ejection_s * max(1, times_ejected), max(self.max_ejection_s, self.base_ejection_s)
        )


@dataclass(slots=True)
class _Record:
    state: Health = Health.HEALTHY
    #: failures since the last success
    run: int = 0
    #: outcomes in the current interval
    window_ok: int = 0
    window_failed: int = 0
    #: ejections in a row: the ejection-time multiplier, decremented per healthy interval
    multiplier: int = 0
    ejected_at: float = -math.inf
    until: float = -math.inf
    reason: EjectionReason | None = None
    last_failure: FailureKind | None = None
    last_failure_at: float = -math.inf
    ejections: int = 0


@dataclass(frozen=True, slots=True)
class EndpointHealthView:
    """One endpoint's passive health as plain data (``/debug/endpoints``, other consumers)."""

    state: Health
    consecutive_failures: int
    interval_ok: int
    interval_failed: int
    #: the multiplier of the next ejection time (ejections in a row, decaying while healthy)
    multiplier: int
    #: seconds until the probe may start (ejected), else 0
    ejected_for_s: float
    reason: str | None
    last_failure: str | None
    last_failure_age_s: float | None
    ejections: int

    def to_doc(self) -> dict[str, Any]:
        return {
            "state": self.state.name.lower(),
            "consecutive_failures": self.consecutive_failures,
            "interval_ok": self.interval_ok,
            "interval_failed": self.interval_failed,
            "multiplier": self.multiplier,
            "ejected_for_s": self.ejected_for_s,
            "reason": self.reason,
            "last_failure": self.last_failure,
            "last_failure_age_s": self.last_failure_age_s,
            "ejections": self.ejections,
        }


@dataclass(slots=True)
class OutlierDetector:
    """Per-endpoint passive health of one pool. See the module docstring for the rules.

    ``version`` grows with every state change, so an owner republishes its snapshot only when needed.
    ``ejections_total`` (by reason) and ``ejections_refused`` are monotonic counters for metrics.
    """

    policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    version: int = 0
    ejections_total: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((r.value for r in EjectionReason), 0)
    )
    ejections_refused: int = 0
    _records: dict[str, _Record] = field(default_factory=dict)
    _next_interval: float | None = None
    #: endpoints currently EJECTED or PROBING
    _out: int = 0
    #: the earliest time :meth:`sweep` has something to do
    _next_due: float = -math.inf

    # ------------------------------------------------------------------------------------ membership
    def retain(self, names: Iterable[str]) -> None:
        """The pool is exactly ``names``: new endpoints start healthy, removed ones are forgotten."""
        keep = set(names)
        records = self._records
        for name in [n for n in records if n not in keep]:
            if records.pop(name).state is not Health.HEALTHY:
                self._out -= 1
                self.version += 1
        for name in keep:
            if name not in records:
                records[name] = _Record()

    def __len__(self) -> int:
        return len(self._records)

    # ------------------------------------------------------------------------------------ policy
    def set_policy(self, policy: OutlierPolicy) -> None:
        """A reloaded configuration. Disabling reinstates every endpoint; runs and windows are kept."""
        if policy.interval_s != self.policy.interval_s:
            self._next_interval = None
            self._next_due = -math.inf
        self.policy = policy
        if not policy.enabled and self._out:
            for rec in self._records.values():
                if rec.state is not Health.HEALTHY:
                    self._reinstate(rec)

    # ------------------------------------------------------------------------------------ outcomes
    def observe(
        self, name: str, *, ok: int = 0, failed: int = 0, kind: FailureKind | None = None, now: float
    ) -> None:
        """``ok`` successes and ``failed`` failures of requests to ``name`` (one batch, order unknown);
        ``kind`` names the failures' cause for display. Unknown names are ignored."""
        ok, failed = max(ok, 0), max(failed, 0)
        rec = self._records.get(name)
        if rec is None or not self.policy.enabled or ok + failed == 0:
            return
        if failed > 0:
            rec.last_failure = kind
            rec.last_failure_at = now
        state = rec.state
        if state is Health.EJECTED:
            return
        if state is Health.PROBING:
            if failed > 0:
                self._eject(rec, EjectionReason.PROBE_FAILED, now, counted=True)
            else:
                self._reinstate(rec)
            return
        rec.window_ok += ok
        rec.window_failed += failed
        if ok > 0:
            rec.run = 0
            return
        rec.run += failed
        threshold = self.policy.consecutive_failures
        if threshold > 0 and rec.run >= threshold:
            self._try_eject(rec, EjectionReason.CONSECUTIVE_5XX, now)

    # ------------------------------------------------------------------------------------ time
    def sweep(self, now: float) -> None:
        """Time-driven transitions: ejections that ran out become PROBING; at every interval boundary the
        failure-percentage rule runs, windows restart and healthy multipliers decay. Cheap when nothing
        is due: call it as often as convenient (the owner calls it at every snapshot)."""
        if now < self._next_due:
            return
        if self._out:
            for rec in self._records.values():
                if rec.state is Health.EJECTED and rec.until <= now:
                    rec.state = Health.PROBING
                    self.version += 1
        nxt = self._next_interval
        interval = self.policy.interval_s
        if nxt is None:
            nxt = self._next_interval = now + interval
        elif now >= nxt:
            # keep the cadence; after a long pause (no sweeps) start over from now
            nxt = self._next_interval = nxt + interval if now - nxt < interval else now + interval
            self._interval(now)
        expiry = math.inf
        if self._out:
            expiry = min(
                (rec.until for rec in self._records.values() if rec.state is Health.EJECTED), default=math.inf
            )
        self._next_due = min(nxt, expiry)

    def _interval(self, now: float) -> None:
        policy = self.policy
        percentage = policy.failure_percentage
        for rec in self._records.values():
            total = rec.window_ok + rec.window_failed
            if (
                policy.enabled
                and rec.state is Health.HEALTHY
                and percentage > 0.0
                and total >= max(policy.minimum_requests, 1)
                and rec.window_failed * 100.0 >= percentage * total
            ):
                self._try_eject(rec, EjectionReason.FAILURE_PERCENTAGE, now)
            elif rec.state is Health.HEALTHY and rec.multiplier > 0:
                rec.multiplier -= 1
            rec.window_ok = rec.window_failed = 0

    # ------------------------------------------------------------------------------------ transitions
    def _try_eject(self, rec: _Record, reason: EjectionReason, now: float) -> None:
        if self._out and (self._out + 1) * 100.0 > self.policy.max_ejection_percent * len(self._records):
            self.ejections_refused += 1
            return
        self._eject(rec, reason, now, counted=False)

    def _eject(self, rec: _Record, reason: EjectionReason, now: float, *, counted: bool) -> None:
        """``counted``: the endpoint is already among the ejected (a failed probe)."""
        if not counted:
            self._out += 1
        rec.state = Health.EJECTED
        rec.multiplier += 1
        rec.ejected_at = now
        rec.until = now + self.policy.ejection_time(rec.multiplier)
        self._next_due = min(self._next_due, rec.until)
        rec.reason = reason
        rec.run = 0
        rec.window_ok = rec.window_failed = 0
        rec.ejections += 1
        self.ejections_total[reason.value] += 1
        self.version += 1

    def _reinstate(self, rec: _Record) -> None:
        rec.state = Health.HEALTHY
        rec.run = 0
        rec.until = -math.inf
        rec.window_ok = rec.window_failed = 0
        self._out -= 1
        self.version += 1

    # ------------------------------------------------------------------------------------ reads
    def state(self, name: str) -> Health:
        rec = self._records.get(name)
        return rec.state if rec is not None else Health.HEALTHY

    def states(self, names: Sequence[str]) -> list[float]:
        """The ``health`` column for endpoints in this order (unknown names: healthy)."""
        records = self._records
        if not self._out:
            return [0.0] * len(names)
        return [float(rec.state) if (rec := records.get(n)) is not None else 0.0 for n in names]

    @property
    def out(self) -> int:
        """Endpoints currently ejected or probing."""
        return self._out

    def view(self, name: str, now: float) -> EndpointHealthView | None:
        rec = self._records.get(name)
        if rec is None:
            return None
        return EndpointHealthView(
            state=rec.state,
            consecutive_failures=rec.run,
            interval_ok=rec.window_ok,
            interval_failed=rec.window_failed,
            multiplier=rec.multiplier,
            ejected_for_s=max(0.0, rec.until - now) if rec.state is Health.EJECTED else 0.0,
            reason=rec.reason.value if rec.reason is not None and rec.state is not Health.HEALTHY else None,
            last_failure=rec.last_failure.value if rec.last_failure is not None else None,
            last_failure_age_s=now - rec.last_failure_at if math.isfinite(rec.last_failure_at) else None,
            ejections=rec.ejections,
        )

    def views(self, now: float) -> Mapping[str, EndpointHealthView]:
        return {name: v for name in self._records if (v := self.view(name, now)) is not None}
