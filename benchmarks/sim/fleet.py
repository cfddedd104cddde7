"""The discrete-event loop: arrivals, per-server scrapes, picks, and the endpoint matrix the picker reads.

Events are arrivals (from the trace) and scrapes (one timer per server, every ``scrape_interval_s`` with a
random phase, like the reference EPP's one-poller-per-endpoint). Servers are advanced lazily to each event's
time; each arrival advances all of them so completions (and so ``inflight``) are current at pick time.

The picker's view is maintained exactly as the service will maintain it:

* a scrape that *starts* at ``t`` reads the server's page as of ``t`` and remembers how many requests we had
  sent to it so far; it *lands* at ``t + scrape_latency_s``, and the next publish (the first pick at
  least ``publish_interval_s`` after the previous one, as the service's datastore does;
  :mod:`benchmarks.sim.publish`) shows its gauges, sets ``scraped_at`` to the landing time, and drops
  ``dispatched`` by what the scrape saw (those requests are now inside the published gauges; newer ones
  are not);
* a pick charges the chosen row exactly as the service does (:class:`scoring.matrix.LoadCharge`):
  ``dispatched`` and ``inflight`` + 1, ``inflight_tokens`` + the request's prompt-token *estimate*, and
  ``prefill_tokens`` + the same for a streaming request (a non-streaming one charges none: its first body
  byte is its end); the first token of a stream (its first body byte) releases the ``prefill_tokens``
  charge; the end of the response releases ``inflight`` and ``inflight_tokens``. Servers record these
  instants as they compute the steps that produce them; the loop applies each one only once simulated time
  has passed it, so the picker never learns anything before a proxy could.

The estimate is what the service can know: the prompt's length in characters / 4, not its token count. The
simulator has only token counts, so it draws ``estimate = round(tokens x exp(sigma x Z))``, Z standard normal,
``sigma = FleetConfig.prompt_estimate_sigma`` (same draws for every policy of a comparison).

Published scrapes make a new matrix snapshot (new arrays for the scraped columns, the same four
accounting arrays), built lazily at the next pick so a burst of scrapes costs one build.

A request that waits for another's response (``Workload.after``: a session's next round) is held until that
response ends and sent then; its ``arrival`` in the result is when it was sent (:mod:`benchmarks.sim.waits`).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray

from benchmarks.sim.ledger import Ledger
from benchmarks.sim.policies import Policy
from benchmarks.sim.prefix import Picking
from benchmarks.sim.profiles import ServerProfile
from benchmarks.sim.publish import Landings, next_poll
from benchmarks.sim.server import RequestTable, SimServer, Snapshot
from benchmarks.sim.traces import Workload
from benchmarks.sim.waits import Waits, advance_in_order
from scoring.matrix import EndpointMatrix, EndpointRow
from scoring.types import PickRequest

F64 = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """A pool of identical servers and how the picker observes them."""

    profile: ServerProfile
    n_servers: int = 16
    scrape_interval_s: float = 0.05  # reference EPP --refresh-metrics-interval default
    scrape_latency_s: float = 0.002  # time from the poll starting to its page landing
    #: landed pages reach the picks at the first pick this long after the previous publish (sim.publish;
    #: the service's ``snapshot_interval``); ``scrape_rounds``: all servers polled at one phase, each
    #: round published once it has landed (a what-if: the interval does not apply)
    publish_interval_s: float = 0.05
    scrape_rounds: bool = False
    prefix_cache: bool = True
    seed: int = 0
    #: log-normal spread of the picker's prompt-token estimate around the true count. An assumption, not a
    #: measurement: chars/4 is a rule of thumb for English text with GPT-style BPE vocabularies, and the
    #: ratio moves with language, code and markup; 0.25 puts two thirds of the estimates within about
    #: ±25 % of the truth. 0 = exact counts.
    prompt_estimate_sigma: float = 0.25
    #: fraction of requests that stream (SSE); the others charge no prefill tokens (``LoadCharge``)
    streaming_fraction: float = 1.0
    #: what-if, not the service's rule: "until-end" charges a non-streaming request's prompt to
    #: ``prefill_tokens`` as well and releases it when the response ends (the alternative ``LoadCharge``
    #: rejects; kept to measure why). "none" is the service's rule.
    nonstreaming_prefill: str = "none"


@dataclass(frozen=True, slots=True, eq=False)
class SimContext:
    """What a policy that is more than a picker may see (``bind``): baselines that need request text
    (SGLang's tree) or the servers' true state (the oracle). The service's picker never gets this."""

    workload: Workload  # as replayed: clipped to the profile's context limit
    servers: tuple[SimServer, ...]
    table: RequestTable


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
    the identity of those columns, exactly as it will in the service) while the four accounting columns
    (``dispatched``, ``inflight``, ``prefill_tokens``, ``inflight_tokens``) stay the same mutable arrays
    across snapshots. Several scrapes between two picks cost one publication.
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
        self.prefill_tokens = np.zeros(n)
        self.inflight_tokens = np.zeros(n)
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
            prefill_tokens=self.prefill_tokens,
            inflight_tokens=self.inflight_tokens,
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


def prompt_estimates(workload: Workload, cfg: FleetConfig) -> NDArray[np.int64]:
    """The picker's prompt-token estimate per request (see the module docstring); seeded by ``cfg.seed``."""
    tokens = workload.prompt_tokens.astype(np.float64)
    if cfg.prompt_estimate_sigma <= 0:
        return workload.prompt_tokens.astype(np.int64)
    noise = np.random.default_rng([cfg.seed, 2]).standard_normal(len(workload))
    return np.maximum(1, np.rint(tokens * np.exp(cfg.prompt_estimate_sigma * noise))).astype(np.int64)


def streaming_flags(workload: Workload, cfg: FleetConfig) -> NDArray[np.bool_]:
    """Which requests stream (the rest are non-streaming); seeded by ``cfg.seed``."""
    if cfg.streaming_fraction >= 1.0:
        return np.ones(len(workload), dtype=np.bool_)
    return np.random.default_rng([cfg.seed, 3]).random(len(workload)) < cfg.streaming_fraction


def _requests(
    workload: Workload, model: str, estimates: NDArray[np.int64], streaming: NDArray[np.bool_]
) -> list[PickRequest]:
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
                prompt_tokens_estimate=int(estimates[k]),
                stream=bool(streaming[k]),
            )
        )
    return out


def simulate(  # noqa: PLR0915 - one event loop: arrivals, held rounds, scrapes, picks in time order
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
    servers = [SimServer(i, cfg.profile, table, prefix_cache=cfg.prefix_cache) for i in range(n)]
    view = FleetView(n, cfg.profile, workload.adapter_names)
    dispatched = view.dispatched
    rng = np.random.default_rng(cfg.seed)
    phase_rng = np.random.default_rng([cfg.seed, 1])
    streaming = streaming_flags(workload, cfg)
    requests = _requests(workload, cfg.profile.model, prompt_estimates(workload, cfg), streaming)
    ledger = Ledger(view.current(), table, streaming, until_end=cfg.nonstreaming_prefill == "until-end")
    picking = Picking(policy, SimContext(workload, tuple(servers), table), requests)
    arrivals = table.arrival
    n_req = table.n
    last_arrival = arrivals[-1] if n_req else 0.0
    waits = Waits(workload.after, table)
    interval = cfg.scrape_interval_s
    latency = cfg.scrape_latency_s
    landings = Landings(dispatched, interval_s=cfg.publish_interval_s, rounds=cfg.scrape_rounds)
    # (time, kind, server): kind 0 = a poll starts, 1 = it completes. Start one interval before t=0 so the
    # picker has a first page for every server when traffic begins (an EPP that has been running a while).
    phases = phase_rng.uniform(0.0, interval, size=1 if cfg.scrape_rounds else n)
    scrapes: list[tuple[float, int, int]] = [
        (float(phases[0 if cfg.scrape_rounds else i]) - interval, 0, i) for i in range(n)
    ]
    heapq.heapify(scrapes)
    picks_s = 0.0
    k = 0
    report_every = max(1, n_req // 100)
    sent = 0
    while k < n_req or waits.outstanding:
        ta = arrivals[k] if k < n_req else math.inf
        ready = waits.next_due()
        ta = min(ta, ready)
        if waits.held:
            t_event = min(ta, scrapes[0][0]) if scrapes else ta
            if advance_in_order(servers, t_event, waits) < t_event:
                continue  # a response ended and released its follower before that event
        if scrapes and scrapes[0][0] < ta:
            t, kind, i = heapq.heappop(scrapes)
            if kind == 0:
                srv = servers[i]
                srv.advance(t)
                landings.begin(i, srv.snapshot())
                heapq.heappush(scrapes, (t + latency, 1, i))
                nxt = next_poll(srv.has_work() or waits.held, t, ta, interval)
                if nxt <= last_arrival or waits.outstanding:
                    heapq.heappush(scrapes, (nxt, 0, i))
            else:
                landings.land(i, t)
            continue
        for srv in servers:
            if srv.busy_until <= ta and (srv.running or srv.n_waiting):
                srv.advance(ta)
        if ready == ta:
            r = waits.pop()
            arrivals[r] = ta  # sent now: its latency counts from here
        else:
            r = k
            k += 1
            if waits.hold(r):
                continue
        ledger.observe(ta)
        landings.due(ta, view.publish)
        p0 = time.perf_counter()
        i, req = picking.pick(view.current(), r, ta, rng)
        picks_s += time.perf_counter() - p0
        ledger.charge(r, i, req)
        servers[i].enqueue(r, ta)
        sent += 1
        if on_progress is not None and sent % report_every == 0:
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
    lo, hi = float(done[int(0.1 * (n - 1))]), float(done[int(0.9 * (n - 1))])
    return (int(0.9 * (n - 1)) - int(0.1 * (n - 1))) / (hi - lo)
