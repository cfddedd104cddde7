"""The discrete-event loop: arrivals, per-server scrapes, picks, and the endpoint matrix the picker reads.

Events are arrivals (from the trace) and scrapes (one timer per server, every ``scrape_interval_s`` with a
random phase, like the reference EPP's one-poller-per-endpoint). Servers are advanced lazily to each event's
time; each arrival advances all of them so completions (and so ``inflight``) are current at pick time.

The picker's view is maintained exactly as the service will maintain it:

* a scrape that *starts* at ``t`` reads the server's page as of ``t`` and remembers how many requests we had
  dispatched to it since the previous scrape; when it *completes* (``t + scrape_latency_s``) the gauges are
  published, ``scraped_at`` is set, and ``dispatched`` drops by the remembered count (those requests are now
  inside the scraped gauges; newer ones are not);
* a pick adds 1 to ``dispatched`` and ``inflight`` of the chosen row; a finished request subtracts 1 from
  ``inflight``.

Scrape results are published as a new matrix snapshot (new arrays for the scraped columns, the same
``dispatched`` / ``inflight`` arrays), built lazily at the next pick so a burst of scrapes costs one build.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.policies import Policy
from benchmarks.sim.profiles import ServerProfile
from benchmarks.sim.server import RequestTable, SimServer, Snapshot
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix, EndpointRow
from scoring.types import PickRequest

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A pool of identical servers and how the picker observes them."""

    profile: ServerProfile
    n_servers: int = 16
    scrape_interval_s: float = 0.05  # reference EPP --refresh-metrics-interval default
    scrape_latency_s: float = 0.002  # time from the poll starting to its values being published
    prefix_cache: bool = True
    seed: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class SimResult:
    """Per-request outcomes (arrays in trace order) and per-server totals of one simulated run."""

    policy: str
    arrival: F64
    first_token: F64
    finish: F64
    prompt_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]
    cached_tokens: NDArray[np.int64]
    preemptions: NDArray[np.int64]
    server: NDArray[np.int64]
    server_busy_s: F64
    server_prefill_tokens: NDArray[np.int64]
    server_decode_tokens: NDArray[np.int64]
    server_lora_loads: NDArray[np.int64]
    wall_s: float
    picks_s: float


class FleetView:
    """Builds the :class:`EndpointMatrix` the policy reads, one immutable snapshot per change.

    Scrape results are written into private working columns; :meth:`current` publishes them as a new
    matrix whose scraped columns are fresh array objects (the scheduler caches per-snapshot work keyed on
    the identity of those columns, exactly as it will in the service) while ``dispatched`` and ``inflight``
    stay the same mutable arrays across snapshots. Several scrapes between two picks cost one publication.
    """

    def __init__(self, n: int, profile: ServerProfile, adapter_names: tuple[str, ...]) -> None:
        rows = [
            EndpointRow(
                name=f"sim-{i}",
                address=f"10.0.{i // 250}.{i % 250 + 1}:8000",
                engine="vllm",
                max_lora=float(profile.max_lora),
                block_size=float(profile.block_size),
                num_blocks=float(profile.num_blocks),
            )
            for i in range(n)
        ]
        self._base = EndpointMatrix.from_rows(rows)
        a = len(adapter_names)
        self.waiting = np.full(n, np.nan)
        self.running = np.full(n, np.nan)
        self.kv_usage = np.full(n, np.nan)
        self.scraped_at = np.full(n, -np.inf)
        self.lora_active = np.zeros((n, a), dtype=np.bool_)
        self.lora_waiting = np.zeros((n, a), dtype=np.bool_)
        self.lora_count = np.zeros(n)
        self.dispatched = np.zeros(n)
        self.inflight = np.zeros(n)
        self._vocab = MappingProxyType({name: j for j, name in enumerate(adapter_names)})
        self._dirty = True
        self._matrix = self._build()

    def _build(self) -> EndpointMatrix:
        return dataclasses.replace(
            self._base,
            waiting=self.waiting.copy(),
            running=self.running.copy(),
            kv_usage=self.kv_usage.copy(),
            scraped_at=self.scraped_at.copy(),
            dispatched=self.dispatched,
            inflight=self.inflight,
            lora_vocab=self._vocab,
            lora_active=self.lora_active.copy(),
            lora_waiting=self.lora_waiting.copy(),
            lora_count=self.lora_count.copy(),
        )

    def current(self) -> EndpointMatrix:
        """The snapshot to pick on (rebuilt only if a scrape completed since the last call)."""
        if self._dirty:
            self._matrix = self._build()
            self._dirty = False
        return self._matrix

    def publish(self, i: int, snap: Snapshot, at: float) -> None:
        """A scrape of server ``i`` completed at ``at`` with the values in ``snap``."""
        self.waiting[i] = snap.waiting
        self.running[i] = snap.running
        self.kv_usage[i] = snap.kv_usage
        self.scraped_at[i] = at
        if self.lora_active.shape[1]:
            self.lora_active[i] = False
            self.lora_waiting[i] = False
            self.lora_active[i, list(snap.lora_running)] = True
            self.lora_waiting[i, list(snap.lora_waiting)] = True
            self.lora_count[i] = len(snap.lora_running) + len(snap.lora_waiting)
        self._dirty = True


def _requests(workload: Workload, model: str) -> list[PickRequest]:
    names = workload.adapter_names
    out: list[PickRequest] = []
    for k in range(len(workload)):
        a = int(workload.adapter[k])
        target = names[a] if a >= 0 else model
        out.append(
            PickRequest(
                target_model=target,
                incoming_model=target,
                request_id=str(k),
                prefix_hashes=workload.units[k],
                prompt_tokens_estimate=int(workload.prompt_tokens[k]),
            )
        )
    return out


def simulate(
    workload: Workload,
    policy: Policy,
    cfg: FleetConfig,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> SimResult:
    """Replay ``workload`` through ``policy`` onto ``cfg.n_servers`` simulated servers."""
    wall0 = time.perf_counter()
    n = cfg.n_servers
    workload = workload.clipped(cfg.profile.context_limit)
    table = RequestTable(workload)
    finished = np.zeros(n)
    servers = [
        SimServer(i, cfg.profile, table, prefix_cache=cfg.prefix_cache, finished=finished) for i in range(n)
    ]
    view = FleetView(n, cfg.profile, workload.adapter_names)
    dispatched = view.dispatched
    inflight = view.inflight
    routed = np.zeros(n)
    rng = np.random.default_rng(cfg.seed)
    phase_rng = np.random.default_rng([cfg.seed, 1])
    requests = _requests(workload, cfg.profile.model)
    arrivals = table.arrival
    n_req = table.n
    last_arrival = arrivals[-1] if n_req else 0.0
    interval = cfg.scrape_interval_s
    latency = cfg.scrape_latency_s
    # (time, kind, server): kind 0 = a poll starts, 1 = it completes. Start one interval before t=0 so the
    # picker has a first page for every server when traffic begins (an EPP that has been running a while).
    events: list[tuple[float, int, int]] = [
        (float(ph) - interval, 0, i) for i, ph in enumerate(phase_rng.uniform(0.0, interval, size=n))
    ]
    heapq.heapify(events)
    pending: dict[int, tuple[Snapshot, float]] = {}
    picks_s = 0.0
    k = 0
    report_every = max(1, n_req // 100)
    while k < n_req:
        ta = arrivals[k]
        if events and events[0][0] < ta:
            t, kind, i = heapq.heappop(events)
            if kind == 0:
                servers[i].advance(t)
                pending[i] = (servers[i].snapshot(), float(dispatched[i]))
                heapq.heappush(events, (t + latency, 1, i))
                if t + interval <= last_arrival:
                    heapq.heappush(events, (t + interval, 0, i))
            else:
                snap, seen = pending.pop(i)
                view.publish(i, snap, t)
                dispatched[i] -= seen
            continue
        for srv in servers:
            if srv.busy_until <= ta and (srv.running or srv.n_waiting):
                srv.advance(ta)
        np.subtract(routed, finished, out=inflight)
        p0 = time.perf_counter()
        i = policy.pick(view.current(), requests[k], ta, rng)
        picks_s += time.perf_counter() - p0
        dispatched[i] += 1.0
        inflight[i] += 1.0
        routed[i] += 1.0
        servers[i].enqueue(k, ta)
        k += 1
        if on_progress is not None and k % report_every == 0:
            on_progress(report_every)
    for srv in servers:
        srv.advance(float("inf"))
    if on_progress is not None and n_req % report_every:
        on_progress(n_req % report_every)
    return SimResult(
        policy=policy.name,
        arrival=np.asarray(table.arrival),
        first_token=np.asarray(table.first_token),
        finish=np.asarray(table.finish),
        prompt_tokens=np.asarray(table.prompt, dtype=np.int64),
        output_tokens=np.asarray(table.output, dtype=np.int64),
        cached_tokens=np.asarray(table.cached, dtype=np.int64),
        preemptions=np.asarray(table.preemptions, dtype=np.int64),
        server=np.asarray(table.server, dtype=np.int64),
        server_busy_s=np.asarray([s.busy_time for s in servers]),
        server_prefill_tokens=np.asarray([s.prefill_tokens for s in servers], dtype=np.int64),
        server_decode_tokens=np.asarray([s.decode_tokens for s in servers], dtype=np.int64),
        server_lora_loads=np.asarray([s.lora_loads for s in servers], dtype=np.int64),
        wall_s=time.perf_counter() - wall0,
        picks_s=picks_s,
    )


def server_capacity_rps(
    workload: Workload, profile: ServerProfile, *, sample: int = 3000, seed: int = 0
) -> float:
    """Requests per second one server completes on this workload's request mix when never starved.

    This is the denominator of "load": all ``sample`` requests (drawn from the trace) are queued at t = 0
    on one server with the prefix cache and LoRA effects off, and the completion rate between the 10 % and
    90 % completion marks is measured (the ramp-up and the drain are excluded). Defined this way, capacity
    depends only on the trace's length mix and the profile — not on routing — so "90 % load" means the
    same offered traffic for every policy, and caching or LoRA affinity show up as headroom they win back.
    """
    rng = np.random.default_rng(seed)
    n = min(sample, len(workload))
    idx = np.sort(rng.choice(len(workload), size=n, replace=False))
    sub = Workload(
        name=workload.name + "-capacity",
        arrival_s=np.zeros(n),
        prompt_tokens=workload.prompt_tokens[idx],
        output_tokens=workload.output_tokens[idx],
        units=tuple(() for _ in range(n)),
        unit_tokens=0,
        adapter=np.full(n, -1, dtype=np.int64),
    ).clipped(profile.context_limit)
    table = RequestTable(sub)
    srv = SimServer(0, profile, table, prefix_cache=False)
    for r in range(n):
        srv.enqueue(r, 0.0)
    srv.advance(float("inf"))
    done = np.sort(np.asarray(table.finish))
    lo, hi = done[int(0.1 * (n - 1))], done[int(0.9 * (n - 1))]
    return (int(0.9 * (n - 1)) - int(0.1 * (n - 1))) / (hi - lo)
