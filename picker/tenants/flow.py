"""Flow control: bounded fair queues in front of scheduling while the pool is saturated (the reference's
``flowControl`` feature gate, gie-epp.md §3.9).

A request may be scheduled at once when nothing is queued and the saturation detector reads below 1.0.
Otherwise it waits in the queue of its flow - (fairness id, priority band): the fairness id is the tenant
(:mod:`picker.tenants.identity`: ``x-tenant-id``, then ``x-gateway-inference-fairness-id``), the band its
InferenceObjective's priority - until the dispatcher lets it through:

* **strict priority** between bands: the highest band with a waiting request goes first;
* **round robin between flows** within a band (the reference's ``round-robin-fairness-policy``): each
  dispatch takes the next flow in turn, so a tenant sending ten times the others gets one turn in
  ``k`` while ``k`` flows wait, not ten;
* **first come, first served** within a flow.

The dispatcher runs every :data:`TICK_S` while anything waits (capacity comes back as requests end; a
gauge-based detector only moves when a scrape lands), when a request arrives, and right after a
dispatched request has been scheduled; it lets one request through per run while the detector reads
below 1.0, so the next run sees that request's load and a burst of wake-ups cannot overshoot the pool.

Bounds: ``maxRequests`` / ``maxBytes`` overall and per band (``priorityBands[].maxRequests``/``maxBytes``).
A request arriving at a full queue pushes out the newest request of the longest flow, if that is another
flow (longest-queue drop: a flood cannot crowd the others out of the queue either), else it is refused
itself; either way the refused one gets 429 (``request evicted by flow control`` / ``queue full``). A
request that waits ``defaultRequestTTL`` (unset: 30 s; ``0``: until the client goes away, as the
reference) gets 503 ``request timed out in queue``. A client that goes away leaves the queue at once.

Metrics (the reference's names, ``inference_extension_flow_control_*``): ``queue_size`` and
``queue_bytes`` gauges per flow, ``request_queue_duration_seconds`` by outcome (dispatched, rejected,
evicted, expired, cancelled), ``pool_saturation``. The ``fairness_id`` label is peer-chosen (without a
tenants section, the raw header), so it is bounded like every such label (:mod:`picker.labels`:
``--metrics-label-max-values`` ids of at most ``--metrics-label-max-length`` characters, then ``other``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from picker.errors import TenantRefused, TenantUnavailable
from picker.labels import MAX_LABEL_LENGTH, MAX_LABEL_VALUES, BoundedLabel

__all__ = ["DEFAULT_TTL_S", "TICK_S", "Band", "FlowController", "FlowLimits", "flow_limits"]

#: how often the dispatcher looks at the pool while requests wait
TICK_S: Final = 0.01
#: queue wait bound when the config sets none
DEFAULT_TTL_S: Final = 30.0
_ALPHA = "[ALPHA] "
_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class Band:
    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """The ``flowControl`` block compiled: overall bounds, per-band bounds, the wait bound."""

    max_requests: int | None = 5000
    max_bytes: int | None = None
    #: seconds; None = wait until the client goes away
    ttl_s: float | None = DEFAULT_TTL_S
    bands: dict[int, Band] = field(default_factory=dict)
    default_band: Band = Band()


def flow_limits(cfg: Any) -> FlowLimits:
    """The reference ``flowControl`` block (``picker.config.reference.FlowControlConfig`` or None) as
    :class:`FlowLimits`; quantities and durations were validated by the config loader."""
    from picker.config.values import parse_quantity
    from scoring.durations import parse_duration

    if cfg is None:
        return FlowLimits()

    def quantity(value: Any) -> int | None:
        return None if value is None else parse_quantity(value)

    def band(b: Any) -> Band:
        return Band(max_requests=b.max_requests, max_bytes=quantity(b.max_bytes))

    ttl = DEFAULT_TTL_S if cfg.default_request_ttl is None else parse_duration(cfg.default_request_ttl)
    return FlowLimits(
        max_requests=quantity(cfg.max_requests) if cfg.max_requests is not None else 5000,
        max_bytes=quantity(cfg.max_bytes),
        ttl_s=ttl if ttl > 0 else None,
        bands={b.priority or 0: band(b) for b in cfg.priority_bands},
        default_band=band(cfg.default_priority_band) if cfg.default_priority_band is not None else Band(),
    )


class _Item:
    __slots__ = ("enqueued", "flow", "future", "size")

    def __init__(
        self, flow: tuple[str, int], size: int, future: asyncio.Future[None], enqueued: float
    ) -> None:
        self.flow = flow
        self.size = size
        self.future = future
        self.enqueued = enqueued


class FlowController:
    """The queues of one process. ``saturated()`` is the pool's saturation detector (>= 1.0: full)."""

    def __init__(
        self,
        saturation: Callable[[], float],
        *,
        registry: CollectorRegistry | None = None,
        queue_registry: CollectorRegistry | None = None,
        pool: Callable[[], str] = lambda: "",
        clock: Callable[[], float] = time.monotonic,
        label_values: int = MAX_LABEL_VALUES,
        label_length: int = MAX_LABEL_LENGTH,
    ) -> None:
        """``label_values`` / ``label_length`` bound the ``fairness_id`` metric label: without a tenants
        section it is the raw ``x-gateway-inference-fairness-id`` header (:mod:`picker.labels`)."""
        self._saturation = saturation
        self.fairness_label = BoundedLabel(max_values=label_values, max_length=label_length)
        self._clock = clock
        self._pool = pool
        self.limits = FlowLimits()
        self.enabled = False
        #: band priority -> flow id -> FIFO of waiting requests
        self._bands: dict[int, dict[str, deque[_Item]]] = {}
        #: round-robin position per band: the flows in turn order
        self._turns: dict[int, deque[str]] = {}
        self._count = 0
        self._bytes = 0
        self._band_count: dict[int, int] = {}
        self._band_bytes: dict[int, int] = {}
        self._scheduled = False
        self._duration: Any = None
        self._queues = _QueueCollector(self)
        if registry is not None:
            # the queues' own metrics may go elsewhere (``queue_registry``): a --workers supervisor queues
            # nothing itself and exports the sum of its workers' instead (picker.telemetry.merge)
            own = queue_registry if queue_registry is not None else registry
            self._duration = Histogram(
                "inference_extension_flow_control_request_queue_duration_seconds",
                _ALPHA + "Distribution of the total time requests spend in the flow control queue.",
                ["fairness_id", "priority", "outcome", "inference_pool"],
                buckets=_QUEUE_BUCKETS,
                registry=own,
            )
            own.register(self._queues)
            registry.register(_SaturationCollector(self))

    def request_metrics(self) -> tuple[Any, ...]:
        """The metrics of this process's queues (the queue-time histogram, queue sizes and bytes): what a
        ``--workers`` worker ships to the supervisor, which sums them over workers. The pool's saturation
        is not among them: it is one value, which the supervisor exports itself."""
        return () if self._duration is None else (self._duration, self._queues)

    def configure(self, *, enabled: bool, limits: FlowLimits) -> None:
        self.enabled = enabled
        self.limits = limits

    @property
    def waiting(self) -> int:
        return self._count

    # ---------------------------------------------------------------------------------------- admission
    def would_queue(self) -> bool:
        """:meth:`admit` would queue a request now (others wait, or the pool is saturated)."""
        return bool(self._count) or self._saturation() >= 1.0

    def admit(self, fairness_id: str, priority: int, size: int) -> asyncio.Future[None] | None:
        """None: go ahead now. Else a future for :meth:`wait`: done when the request may be scheduled, or
        429 (pushed out of a full queue), 503 (waited its bound). 429 at once if its own flow fills it."""
        if not self._count and self._saturation() < 1.0:
            return None
        flow = (fairness_id, priority)
        self._make_room(flow, priority, size)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        item = _Item(flow, size, future, self._clock())
        flows = self._bands.setdefault(priority, {})
        queue = flows.get(fairness_id)
        if queue is None:
            queue = flows[fairness_id] = deque()
            self._turns.setdefault(priority, deque()).append(fairness_id)
        queue.append(item)
        self._count += 1
        self._bytes += size
        self._band_count[priority] = self._band_count.get(priority, 0) + 1
        self._band_bytes[priority] = self._band_bytes.get(priority, 0) + size
        self.poke()
        return future

    async def wait(self, future: asyncio.Future[None], fairness_id: str, priority: int) -> None:
        """Wait for a dispatch within the bound; on timeout or cancel the request leaves the queue."""
        ttl = self.limits.ttl_s
        try:
            if ttl is None or ttl <= 0:
                await future
            else:
                async with asyncio.timeout(ttl):
                    await asyncio.shield(future)
        except TimeoutError:
            if future.done() and not future.cancelled() and future.exception() is None:
                return  # dispatched in the same loop turn as the bound ran out: go
            self._remove(future, "expired")
            raise TenantUnavailable(
                f"request timed out in queue: tenant {fairness_id} waited {ttl:g}s at priority {priority}",
                reason="queue_timeout",
                headers=(("retry-after", "1"),),
            ) from None
        except asyncio.CancelledError:
            self._remove(future, "cancelled")
            raise

    def withdraw(self, future: asyncio.Future[None]) -> None:
        """A request whose stream ended before it waited leaves the queue (or, let through, its turn)."""
        self._remove(future, "cancelled")
        self.poke()

    def _full(self, priority: int, size: int) -> bool:
        limits = self.limits
        band = limits.bands.get(priority, limits.default_band)
        return (
            (limits.max_requests is not None and self._count + 1 > limits.max_requests)
            or (limits.max_bytes is not None and self._bytes + size > limits.max_bytes)
            or (band.max_requests is not None and self._band_count.get(priority, 0) + 1 > band.max_requests)
            or (band.max_bytes is not None and self._band_bytes.get(priority, 0) + size > band.max_bytes)
        )

    def _make_room(self, flow: tuple[str, int], priority: int, size: int) -> None:
        while self._full(priority, size):
            longest = self._longest(priority)
            if (
                longest is None
                or longest == flow[0]
                or len(self._bands[priority][longest]) <= len(self._bands[priority].get(flow[0], ()))
            ):
                raise TenantRefused(
                    f"queue full: tenant {flow[0]} already has the most requests waiting at priority "
                    f"{priority}",
                    reason="queue_full",
                    headers=(("retry-after", "1"),),
                )
            victim = self._bands[priority][longest][-1]
            self._remove(victim.future, "evicted")
            if not victim.future.done():
                victim.future.set_exception(
                    TenantRefused(
                        "request evicted by flow control",
                        reason="queue_evicted",
                        headers=(("retry-after", "1"),),
                    )
                )

    def _longest(self, priority: int) -> str | None:
        flows = self._bands.get(priority)
        if not flows:
            return None
        return max(flows, key=lambda f: len(flows[f]))

    def _remove(self, future: asyncio.Future[None], outcome: str) -> None:
        for priority, flows in self._bands.items():
            for fid, queue in flows.items():
                for item in queue:
                    if item.future is future:
                        queue.remove(item)
                        self._forget(item, outcome)
                        if not queue:
                            del flows[fid]
                            self._turns[priority].remove(fid)
                        return

    def _forget(self, item: _Item, outcome: str) -> None:
        priority = item.flow[1]
        self._count -= 1
        self._bytes -= item.size
        self._band_count[priority] -= 1
        self._band_bytes[priority] -= item.size
        if self._duration is not None:
            self._duration.labels(
                self.fairness_label(item.flow[0]), str(priority), outcome, self._pool()
            ).observe(self._clock() - item.enqueued)

    # ---------------------------------------------------------------------------------------- dispatch
    def poke(self) -> None:
        """Run the dispatcher soon (a request ended, or one arrived): once per loop turn at most."""
        if self._count and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._scheduled = False
        if not self._count or self._saturation() >= 1.0:
            return
        for priority in sorted(self._bands, reverse=True):
            turns = self._turns.get(priority)
            if not turns:
                continue
            fid = turns[0]
            turns.rotate(-1)
            flows = self._bands[priority]
            queue = flows[fid]
            item = queue.popleft()
            if not queue:
                del flows[fid]
                turns.remove(fid)
            self._forget(item, "dispatched")
            if not item.future.done():
                item.future.set_result(None)
            break
        # the next dispatch comes when the woken request has been scheduled (the director pokes then, so
        # its load is counted) or at the next tick

    async def run(self) -> None:
        """The tick: while requests wait, look at the pool every :data:`TICK_S`. Until cancelled."""
        while True:
            await asyncio.sleep(TICK_S)
            if self._count:
                self._dispatch()

    def flows(self) -> Iterator[tuple[str, int, int, int]]:
        """(fairness id, priority, waiting, bytes) of every flow with requests waiting."""
        for priority, flows in list(self._bands.items()):
            for fid, queue in list(flows.items()):
                yield fid, priority, len(queue), sum(i.size for i in list(queue))

    def saturation(self) -> float:
        return self._saturation()


class _QueueCollector(Collector):
    def __init__(self, flow: FlowController) -> None:
        self._flow = flow

    def describe(self) -> list[Any]:
        return list(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size, size_bytes = self._families()
        pool = self._flow._pool()
        label = self._flow.fairness_label
        # flows whose ids share a label (``other``) are summed: one series per label set
        rows: dict[tuple[str, str], list[float]] = {}
        for fid, priority, count, nbytes in self._flow.flows():
            row = rows.setdefault((label(fid), str(priority)), [0.0, 0.0])
            row[0] += count
            row[1] += nbytes
        for (name, band), (waiting, queued_bytes) in rows.items():
            size.add_metric([name, band, pool], waiting)
            size_bytes.add_metric([name, band, pool], queued_bytes)
        yield size
        yield size_bytes

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        labels = ["fairness_id", "priority", "inference_pool"]
        return (
            GaugeMetricFamily(
                "inference_extension_flow_control_queue_size",
                _ALPHA + "Current number of requests being actively managed by the flow control queue.",
                labels=labels,
            ),
            GaugeMetricFamily(
                "inference_extension_flow_control_queue_bytes",
                _ALPHA + "Current number of bytes associated with requests actively managed by the queue.",
                labels=labels,
            ),
        )


class _SaturationCollector(Collector):
    def __init__(self, flow: FlowController) -> None:
        self._flow = flow

    def describe(self) -> list[Any]:
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        if self._flow.enabled:
            family.add_metric([self._flow._pool()], self._flow.saturation())
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "inference_extension_flow_control_pool_saturation",
            _ALPHA + "Current saturation level for an inference pool.",
            labels=["inference_pool"],
        )
