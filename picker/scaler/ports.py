"""What the scaler needs from the rest of the service, declared here and satisfied structurally.

* :class:`ReplicaActuator` — the target workload: :class:`picker.kube.scale.ScaleTargetClient` provides it
  (``picker.kube`` does not import this package; the app wires one into the other).
* :class:`PoolSignals` — the pool as the EPP sees it now (:class:`picker.scaler.signals.DatastoreSignals`
  reads the datastore, the saturation detector and the held-request count).
* :class:`DrainMarker` — where the draining mark goes (the datastore: no new picks, last-resort fallback).
* :class:`HistorySource` — demand history for the forecast (:class:`picker.scaler.history.PrometheusHistory`).
* :class:`ScalerObserver` — metrics (:class:`picker.scaler.metrics.ScalerMetrics`): one
  :class:`TickReport` per tick, the decisions, drain durations and failures.

Errors cross as :class:`picker.errors.PickerError` (the actuator's ``KubeError`` is one); ``transient`` says
whether the next tick may succeed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from picker.scaler.decision import Decision
from picker.scaler.forecast import PoolHistory


class HpaView(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def min_replicas(self) -> int: ...

    @property
    def max_replicas(self) -> int: ...


class WorkloadView(Protocol):
    @property
    def replicas(self) -> int: ...

    @property
    def ready(self) -> int: ...

    @property
    def selector(self) -> str: ...

    @property
    def hpa(self) -> HpaView | None: ...

    @property
    def ordered_removal(self) -> bool: ...


class ReplicaActuator(Protocol):
    """The target workload, through the Kubernetes API."""

    @property
    def description(self) -> str: ...

    async def read(self) -> WorkloadView: ...

    async def existing_pods(self, selector: str) -> frozenset[str]: ...

    async def set_replicas(self, replicas: int) -> None: ...

    async def set_hpa_bounds(self, hpa: str, min_replicas: int, max_replicas: int) -> None: ...

    async def mark_victim(self, pod: str) -> None: ...

    async def unmark_victim(self, pod: str) -> None: ...

    async def post_event(self, *, type_: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class PodSignal:
    """One pod of the pool (its endpoints summed) at a sample."""

    name: str
    inflight: float = 0.0
    waiting: float = math.nan
    running: float = math.nan
    adapters: tuple[str, ...] = ()
    waiting_adapters: tuple[str, ...] = ()
    #: prefix-cache value (the prefix index's blocks only this pod holds), None when no index is wired
    cache_value: float | None = None


@dataclass(frozen=True, slots=True)
class PoolSample:
    """The pool at one instant."""

    pods: tuple[PodSignal, ...] = ()
    #: requests ever sent to each endpoint (cumulative, per endpoint name): demand is the growth of the sum
    sent: Mapping[str, float] = field(default_factory=dict)
    saturated: bool = False
    #: some member's metrics are older than the staleness threshold
    stale: bool = False
    #: requests held for scale-from-zero
    held: int = 0
    #: requests waiting in the model servers' queues (sum over the pool)
    queue: float = 0.0
    #: prompt + completion tokens served in all (the model servers' usage reports, every ext_proc process),
    #: None when not metered: the token rate is its growth, like demand from ``sent``
    tokens: float | None = None


class PoolSignals(Protocol):
    def sample(self) -> PoolSample: ...


class DrainMarker(Protocol):
    def set_draining(self, pods: frozenset[str]) -> None: ...


class HistorySource(Protocol):
    async def fetch(self, now: float, *, horizon_s: float) -> PoolHistory: ...


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one tick saw and decided, for the observer (metrics): built once by the controller."""

    current: int  #: the workload's spec.replicas
    desired: int  #: the replica count the scaler wants
    ready: int
    max_replicas: int  #: the maximum in force (schedule window)
    demand_rps: float
    forecast_rps: float | None
    capacity_rps: float  #: per-replica capacity at the SLO in use (configured or learned)
    demand_tps: float | None  #: tokens per second (None: not measured)
    forecast_tps: float | None
    capacity_tps: float | None  #: None: sizing on requests only
    saturated: bool
    held: int
    dry_run: bool
    hpa: bool  #: an HPA targets the workload (its bounds are moved instead of the count)
    gpu_hours_saved: float  #: this tick's estimate against the schedule's maximum


class ScalerObserver(Protocol):
    def tick(self, report: TickReport) -> None: ...

    def inactive(self) -> None: ...

    def decided(self, decision: Decision) -> None: ...

    def drained(self, seconds: float) -> None: ...

    def failed(self, operation: str) -> None: ...
