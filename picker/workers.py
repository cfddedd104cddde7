"""``picker serve --workers N``: N ext_proc worker processes on one port, one scraper, one snapshot.

Why processes: one Python process serves ext_proc on one core, and the cost per stream is mostly the
gRPC stack's (see ``benchmarks/RESULTS.md``), so more throughput means more processes. Why one
supervisor: N scrapers would multiply the load on every model server's ``/metrics`` and N Kubernetes
watches the load on the API server, and N separate views of the pool would each believe the endpoints
the others just filled are idle.

Shape:

* The **supervisor** (this process, PID 1 in the container) runs everything but ext_proc: the scrape loop,
  the Kubernetes sources, config reloads, leader election, the admin/metrics server and the health port,
  all through the ordinary :class:`picker.service.Service`, whose :class:`picker.state.datastore.Datastore`
  holds a :class:`picker.state.publisher.SharedPublisher`: it publishes the pool, its metrics,
  objectives, rewrites and the config document into shared memory every few milliseconds.
* Each **worker** (a fresh interpreter, ``multiprocessing`` spawn: no fork after gRPC started) runs an
  :class:`picker.extproc.ExtProcServer` bound with ``SO_REUSEPORT`` to the same port (the kernel spreads
  connections over the workers), a :class:`picker.routing.director.Director` over a
  :class:`picker.state.view.SharedView`, and its own request metrics.

Accounting: the counter-row model of :mod:`picker.state.accounting`, as in one process, with its rows in
shared memory: every worker counts its picks and releases in its own row, the columns a pick reads are
sums over the rows, so every worker sees every other worker's streams at its next pick.

Prefix index: a replica per process (:mod:`picker.state.prefix`); a worker's records go to the
supervisor every 50 ms (``["prefix", records]``), which applies them and forwards them to the others.

Metrics: request-path metrics are recorded in each worker and sent to the supervisor about once a second
over the worker's pipe (:class:`picker.telemetry.MergedRequestMetrics` sums them), so ``/metrics`` lags by
up to a second. Pool gauges, scrape and config metrics come from the supervisor as usual. Tenant metrics:
with the memory backend the budget is the supervisor's and so are its counts; with Redis each worker
sends, with its snapshot, the tenants' usage and backend failures it counted since the last one (added
up by the supervisor) and the meters its Redis replies showed (the newest kept, never added: they are one
shared state), ``picker.tenants.remote``. A worker killed outright loses up to a second of those counts.

Lifecycle: a worker exits when its pipe to the supervisor closes (the supervisor died, however), and
drains for 5 s on SIGTERM/SIGINT or a stop message. The supervisor restarts a worker that dies (its open
streams are settled in the accounting and its counters kept in ``/metrics``) and gives up loudly, exiting
non-zero, after :data:`MAX_RESTARTS` restarts within :data:`RESTART_WINDOW_S`. Readiness (``/readyz``
and the gRPC health port) requires every worker to be serving.

The port: ``--grpc-port 0`` picks a free port, reserved by a socket the supervisor keeps bound with
``SO_REUSEPORT`` (never listening, so it takes no connections); a fixed port is reserved the same way, so a
port held by an unrelated process fails at start.

Why one module: the supervisor's pool and the worker's loop are the two ends of one pipe protocol (every
message one side sends, the other reads here), and the start-up (port reservation, shared segment, key
pair) hands its parts to both; split, neither half reads without the other open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from picker.config import default_config, load_config_text
from picker.extproc.health import HealthService, HealthState
from picker.extproc.server import ExtProcServer
from picker.extproc.tls import TLSConfig, generate_self_signed
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity
from picker.routing.external_remote import GRANT, ExternalClient, ExternalHost
from picker.routing.hold import EmptyPoolHold
from picker.service import Service
from picker.settings import Settings
from picker.state.codec import HealthInputs
from picker.state.config_store import ActiveConfig, ConfigStore, ReloadResult
from picker.state.datastore import Datastore
from picker.state.prefix import PrefixCacheState
from picker.state.publisher import SharedPublisher
from picker.state.segment import SharedLayout, SharedSegment
from picker.state.view import SharedView
from picker.telemetry import MergedRequestMetrics, Telemetry, export_families
from picker.tenants.flow import FlowController, flow_limits
from picker.tenants.remote import USAGE, VERDICT, BudgetHost, SupervisorBackend
from picker.tenants.service import TenantService
from picker.tracing import Tracing
from picker.wiring import (
    BuildInfo,
    body_budget,
    freeze_startup_objects,
    install_uvloop,
    load_initial_config,
    run_main,
    skip_response_rule,
    snapshot_interval,
    stream_config_rule,
)

__all__ = ["WorkerPool", "run_workers", "worker_main"]

log = logging.getLogger("picker.workers")

#: seconds between a worker's metric snapshots to the supervisor
METRICS_INTERVAL_S = 1.0
#: more restarts than this within RESTART_WINDOW_S and the supervisor exits
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: a worker draining on stop gets this long for open streams, then the supervisor kills it
DRAIN_S = 5.0
#: worker → supervisor: ``[HELD, n]``, the worker's requests now held for a first replica (scale from zero)
HELD = "held"


# =============================================================================================== channel
class _Channel:
    """Length-prefixed JSON messages over one end of a socket pair, on asyncio streams.

    JSON rather than pickle: the supervisor never unpickles what another process wrote. Messages are
    lists: ``["serving", pid]``, ``["metrics", families]`` (worker to supervisor), ``["stop"]``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> _Channel:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    def send(self, message: list[Any]) -> None:
        """Queue one message (never blocks; the peer reads continuously)."""
        if self._writer.is_closing():
            return
        data = orjson.dumps(message)
        self._writer.write(len(data).to_bytes(4, "big") + data)

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    async def recv(self) -> list[Any] | None:
        """The next message, or None once the other end is closed."""
        try:
            head = await self._reader.readexactly(4)
            data = await self._reader.readexactly(int.from_bytes(head, "big"))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        message: list[Any] = orjson.loads(data)
        return message

    def close(self) -> None:
        self._writer.close()


# =============================================================================================== worker side
def worker_main(
    settings: Settings,
    segment_name: str,
    index: int,
    sock: socket.socket,
    key_pair: tuple[bytes, bytes] | None,
) -> None:
    """Entry point of a worker process (spawned by :class:`WorkerPool`)."""
    from picker.logs import configure_logging

    configure_logging(verbosity=settings.verbosity, as_json=settings.log_json)
    install_uvloop()
    try:
        asyncio.run(_Worker(settings, segment_name, index, key_pair).run(sock))
    except Exception:
        log.exception("worker %d failed", index)
        raise SystemExit(1) from None


class _Worker:
    def __init__(
        self, settings: Settings, segment_name: str, index: int, key_pair: tuple[bytes, bytes] | None
    ) -> None:
        self.settings = settings
        self.index = index
        self.segment = SharedSegment.attach(segment_name)
        self.view = SharedView(self.segment, index)
        #: this worker's replica of the prefix index; its own records are queued for the supervisor
        self.prefix = PrefixCacheState(replicate=True)
        self._key_pair = key_pair
        self._stop = asyncio.Event()
        #: the supervisor's tenant budget, reached over the pipe (set in run())
        self.budget = SupervisorBackend(lambda _message: None)
        #: the supervisor's external endpoints' budgets, reached over the pipe (set in run())
        self.external = ExternalClient(lambda _message: None)
        #: requests waiting for a first replica (set in run())
        self.hold: EmptyPoolHold | None = None
        #: ``--tracing``: each worker records and exports the spans of its own streams
        self.tracing = (
            Tracing(settings.tracing, pool=lambda: self.view.pool.name if self.view.pool else "")
            if settings.tracing is not None
            else None
        )

    async def _first_state(self) -> None:
        deadline = time.monotonic() + 30.0
        while not self.view.refresh():
            if time.monotonic() > deadline:
                raise RuntimeError("the supervisor published no state within 30 s")
            await asyncio.sleep(0.01)

    def _server(
        self,
        store: ConfigStore,
        telemetry: Telemetry,
        tenants: TenantService,
        flow: FlowController,
        channel: _Channel,
    ) -> ExtProcServer:
        s = self.settings
        config = store.active.config
        # scale from zero: the supervisor's scaler counts this worker's held requests and wakes on a new one
        self.hold = EmptyPoolHold(self.view.snapshot, on_change=lambda n: channel.send([HELD, n]))
        # external endpoints' budgets and health are the supervisor's, asked over the pipe (exact limits)
        external = ExternalCapacity(remote=self.external)
        director = Director(
            self.view,
            store,
            rng=np.random.default_rng(None if s.seed is None else s.seed + 1 + self.index),
            disable_subset_filter=s.disable_endpoint_subset_filter,
            observer=telemetry,
            tenancy=tenants.tenancy,
            flow=flow,
            hold=None if s.static_endpoints else self.hold,
            staleness_s=s.metrics_staleness_threshold,
            prefix=self.prefix,
            external=external,
        )
        tls = None
        if s.secure_serving:
            tls = TLSConfig(
                cert_path=Path(s.cert_path) if s.cert_path else None,
                key_pair=self._key_pair,
                reload=s.enable_cert_reload,
            )
        return ExtProcServer(
            director,
            telemetry,
            port=s.grpc_port,
            host=s.host,
            tls=tls,
            max_body_bytes=config.max_body_bytes,
            served_verifier=config.served_verifier_enabled,
            health=HealthService(self._health) if s.health_checking else None,
            reuse_port=True,
            skip_response=skip_response_rule(store),
            stream_config=stream_config_rule(store),
            keepalive_s=(s.grpc_keepalive_time, s.grpc_keepalive_timeout),
            max_buffered_bytes=body_budget(config, s),
            tracer=self.tracing,
        )

    async def run(self, sock: socket.socket) -> None:
        channel = await _Channel.open(sock)
        await self._first_state()
        static = self.view.static
        assert static is not None
        header = self.settings.model_header
        config = (
            load_config_text(static.config_text, model_header=header)
            if static.config_text
            else default_config(model_header=header)
        )
        store = ConfigStore(config, source=static.config_source, text=static.config_text, model_header=header)
        telemetry = Telemetry(
            self.view,
            registry=CollectorRegistry(),
            label_values=self.settings.metrics_label_max_values,
            label_length=self.settings.metrics_label_max_length,
        )
        # Tenants: the memory backend's budget is the supervisor's, asked over the pipe (one budget for all
        # workers), Redis is shared as ever. Flow-control queues are per worker.
        self.budget = SupervisorBackend(channel.send)
        self.external = ExternalClient(channel.send)
        label_values = self.settings.metrics_label_max_values
        label_length = self.settings.metrics_label_max_length
        tenants = TenantService(
            telemetry.registry, shared=self.budget, label_values=label_values, label_length=label_length
        )
        tenants.apply(config.settings.tenants)
        flow = FlowController(
            lambda: store.active.scheduler.saturation(self.view.snapshot(), now=time.monotonic()),
            registry=telemetry.registry,
            pool=lambda: self.view.pool.name if self.view.pool else "",
            label_values=label_values,
            label_length=label_length,
        )

        def follow_config(result: ReloadResult, active: ActiveConfig) -> None:
            if result.result == "applied":
                tenants.apply_logged(active.config.settings.tenants)
                flow.configure(
                    enabled="flowControl" in active.config.feature_gates,
                    limits=flow_limits(active.config.endpoint_picker.flow_control),
                )

        follow_config(ReloadResult("start", True, "applied", "", "", 0.0), store.active)
        store.add_listener(follow_config)
        server = self._server(store, telemetry, tenants, flow, channel)
        budget = server.body_budget

        def rebudget(_result: ReloadResult, active: ActiveConfig) -> None:
            budget.limit = body_budget(active.config, self.settings)

        store.add_listener(rebudget)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        if self.tracing is not None:
            self.tracing.start()
        await server.start()
        freeze_startup_objects()
        channel.send(["serving", os.getpid()])
        log.info("worker %d serving ext_proc on port %d (pid %d)", self.index, server.bound_port, os.getpid())
        tasks = [
            asyncio.create_task(self._listen(channel, store), name="supervisor"),
            asyncio.create_task(
                self._follow(
                    store, (*telemetry.request_metrics(), *flow.request_metrics()), tenants, channel
                ),
                name="follow",
            ),
            asyncio.create_task(tenants.run(), name="tenants"),
            asyncio.create_task(flow.run(), name="flow-control"),
        ]
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self.hold is not None:
                self.hold.close()
            await server.stop(grace=DRAIN_S)
            if self.tracing is not None:
                await self.tracing.close()
            channel.send(["metrics", export_families(telemetry.request_metrics())])
            if (usage := tenants.export()) is not None:
                channel.send([USAGE, *usage])
            await channel.drain()
            channel.close()
            del self.view
            self.segment.close()

    def _health(self) -> HealthState:
        h = self.view.health
        return HealthState(h.synced, h.leader, h.protocol_ok, h.leader_election)

    async def _listen(self, channel: _Channel, store: ConfigStore) -> None:
        """Budget verdicts, other workers' prefix records; stop on "stop" or when the supervisor is gone."""
        while True:
            message = await channel.recv()
            if message is None:
                log.warning("worker %d: the supervisor is gone, stopping", self.index)
                self.budget.abandon()
                self.external.abandon()
                self._stop.set()
                return
            if message[0] == VERDICT:
                self.budget.deliver(message)
            elif message[0] == GRANT:
                self.external.deliver(message)
            elif message[0] == "prefix" and len(message) == 2:
                now = time.monotonic()
                self.prefix.receive(message[1], store.active.profiles, self.view.snapshot(), now)
            elif message[0] == "stop":
                self._stop.set()
                return

    async def _follow(
        self, store: ConfigStore, shipped: tuple[Any, ...], tenants: TenantService, channel: _Channel
    ) -> None:
        """Apply config documents the supervisor publishes; send prefix records, snapshots of the
        ``shipped`` metrics and what the tenants' Redis backend counted."""
        next_metrics = time.monotonic()
        while True:
            self.view.refresh()
            static = self.view.static
            if static is not None and static.config_text and static.config_digest != store.active.digest:
                # parsed in a thread: a 1 MiB document must not stall this worker's streams
                result = await store.apply_text_off_loop(static.config_text, source=static.config_source)
                if not result.ok:  # the supervisor applied it, so this is a bug worth a loud line
                    log.error("worker %d could not apply the config: %s", self.index, result.message)
            if (records := self.prefix.outgoing()) is not None:
                channel.send(["prefix", records])
            now = time.monotonic()
            if now >= next_metrics:
                next_metrics = now + METRICS_INTERVAL_S
                channel.send(["metrics", export_families(shipped)])
                if (usage := tenants.export()) is not None:
                    channel.send([USAGE, *usage])
                await channel.drain()
            await asyncio.sleep(0.05)


# =============================================================================================== supervisor
class _Slot:
    """One worker index: its current process, channel, and whether it reported serving."""

    __slots__ = ("channel", "pid", "process", "reader", "serving")

    def __init__(self) -> None:
        self.process: BaseProcess | None = None
        self.channel: _Channel | None = None
        self.reader: asyncio.Task[None] | None = None
        self.serving = False
        self.pid = 0


class WorkerPool:
    """Starts, watches and restarts the worker processes. ``run()`` until cancelled."""

    def __init__(
        self,
        settings: Settings,
        segment: SharedSegment,
        datastore: Datastore,
        merged: MergedRequestMetrics,
        *,
        key_pair: tuple[bytes, bytes] | None,
        budget: BudgetHost | None = None,
        external: ExternalHost | None = None,
        held: Callable[[object, int], None] | None = None,
        prefix: Callable[[object], object] | None = None,
    ) -> None:
        """``budget``: answers the workers' tenant reservations from the supervisor's memory backend;
        ``held``: told each worker's count of requests held for a first replica
        (``Service.held_elsewhere``); ``prefix``: applies a batch of a worker's prefix records to the
        supervisor's replica."""
        self.settings = settings
        self.budget = budget
        #: answers the workers' external-endpoint reservations from the supervisor's budgets
        self.external = external
        self._held = held
        self.segment = segment
        self.datastore = datastore
        self.merged = merged
        self._key_pair = key_pair
        self._prefix = prefix
        self._slots = [_Slot() for _ in range(settings.workers)]
        self._restarts: deque[float] = deque()
        self._ctx = multiprocessing.get_context("spawn")
        self._failed: asyncio.Future[None] | None = None
        self._stopping = False
        #: set whenever no worker process is running (what a stop waits for)
        self._none_running = asyncio.Event()

    # ----------------------------------------------------------------------------------- status
    def all_serving(self) -> bool:
        return all(slot.serving for slot in self._slots)

    def stats(self) -> list[dict[str, Any]]:
        """``/debug/workers``: per worker index, its pid, whether it serves, picks and open streams."""
        out = []
        for i, slot in enumerate(self._slots):
            picks, inflight = self.datastore.ledger.row_stats(i)  # worker i writes counter row i
            out.append(
                {
                    "index": i,
                    "pid": slot.pid,
                    "alive": slot.process is not None and slot.process.is_alive(),
                    "serving": slot.serving,
                    "picks": picks,
                    "inflight": inflight,
                }
            )
        return out

    # ----------------------------------------------------------------------------------- lifecycle
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self.datastore.publish()  # workers read their first state right after they start
        try:
            for i in range(len(self._slots)):
                await self._start(i)
            await self._failed  # only a crash loop ends this; cancellation stops the pool
        finally:
            await self._stop_all()

    async def _start(self, index: int) -> None:
        slot = self._slots[index]
        parent, child = socket.socketpair()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.settings, self.segment.name, index, child, self._key_pair),
            name=f"picker-worker-{index}",
            daemon=False,
        )
        try:
            process.start()
        finally:
            child.close()
        self._none_running.clear()
        slot.process, slot.serving, slot.pid = process, False, process.pid or 0
        slot.channel = await _Channel.open(parent)
        slot.reader = asyncio.create_task(self._watch(index, process, slot.channel), name=f"worker-{index}")
        log.info("started ext_proc worker %d (pid %d)", index, slot.pid)

    async def _watch(self, index: int, process: BaseProcess, channel: _Channel) -> None:
        """Read one worker's messages until its end closes, then handle its exit."""
        slot = self._slots[index]
        while (message := await channel.recv()) is not None:
            if message[0] == "metrics":
                self.merged.update(index, [tuple(f) for f in message[1]])
            elif message[0] == "prefix" and len(message) == 2:  # to every other worker, and applied here
                for other in (s for i, s in enumerate(self._slots) if i != index and s.channel is not None):
                    other.channel.send(message)  # type: ignore[union-attr]
                if self._prefix is not None:
                    self._prefix(message[1])
            elif message[0] == "serving":
                slot.serving = True
            elif message[0] == HELD and self._held is not None:
                self._held(index, int(message[1]))
            elif message[0].startswith("tenants.") and self.budget is not None:
                reply = self.budget.handle(index, message)
                if reply is not None:
                    channel.send(reply)
            elif message[0].startswith("external.") and self.external is not None:
                reply = self.external.handle(index, message)
                if reply is not None:
                    channel.send(reply)
        channel.close()
        slot.serving = False
        # the socket closes when the process exits; wait for the exit itself (kill a process that
        # closed its socket and lingers)
        exited = asyncio.get_running_loop().run_in_executor(None, process.join, DRAIN_S + 2.0)
        await exited
        if process.is_alive():
            process.kill()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5.0)
        self._exited(index, process)

    def _exited(self, index: int, process: BaseProcess) -> None:
        slot = self._slots[index]
        slot.process, slot.channel, slot.reader = None, None, None
        released = self.datastore.ledger.settle_row(index)
        if self._held is not None:
            self._held(index, 0)
        self.merged.retire(index)
        if self.budget is not None:
            self.budget.retire(index)
        if self.external is not None:
            self.external.retire(index)
        if all(s.process is None for s in self._slots):
            self._none_running.set()
        if self._stopping:
            return
        log.error(
            "ext_proc worker %d (pid %d) exited with %s; %d open streams released",
            index,
            slot.pid,
            process.exitcode,
            int(released),
        )
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) > MAX_RESTARTS:
            if self._failed is not None and not self._failed.done():
                self._failed.set_exception(
                    RuntimeError(
                        f"ext_proc workers died {len(self._restarts)} times within {RESTART_WINDOW_S:g} s"
                    )
                )
            return
        delay = min(10.0, 0.5 * 2 ** (len(self._restarts) - 1))
        asyncio.get_running_loop().call_later(delay, self._restart, index)

    def _restart(self, index: int) -> None:
        if not self._stopping and self._slots[index].process is None:
            task = asyncio.ensure_future(self._start(index))
            task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Future[None]) -> None:
        exc = task.exception() if not task.cancelled() else None
        if exc is not None and self._failed is not None and not self._failed.done():
            self._failed.set_exception(exc)

    async def _stop_all(self) -> None:
        """Ask every worker to drain and exit; kill those still running after the drain period."""
        self._stopping = True
        for slot in self._slots:
            if slot.channel is not None:
                slot.channel.send(["stop"])
        if any(s.process is not None for s in self._slots):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S + 8.0):
                    await self._none_running.wait()
        for slot in self._slots:
            if slot.process is not None:  # pragma: no cover - _watch kills lingering workers first
                slot.process.kill()
            if slot.reader is not None:
                slot.reader.cancel()


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT so the workers can share it; port 0 → a free
    port, read from the socket."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def _supervise(settings: Settings) -> None:
    config, text, source = load_initial_config(settings)  # ConfigError before anything starts
    reservation = _reserve_port(settings.host, settings.grpc_port)
    port: int = reservation.getsockname()[1]
    settings = settings.model_copy(update={"grpc_port": port})
    key_pair = None
    if settings.secure_serving and not settings.cert_path:
        key_pair = generate_self_signed(("localhost", "127.0.0.1"))
    segment = SharedSegment.create(SharedLayout(workers=settings.workers))
    #: metric updates reach the workers this often, as they reach the snapshot in one process
    interval = snapshot_interval(settings)
    service: Service | None = None

    def health() -> HealthInputs:
        if service is None:
            return HealthInputs()
        h = service.health_state()
        return HealthInputs(h.synced, h.leader, h.protocol_ok, h.leader_election)

    def active_config() -> tuple[str, str, str]:
        if service is None:
            return text, source, ""
        active = service.config_store.active
        return active.text, active.source, active.digest

    try:
        datastore = Datastore(
            min_publish_interval_s=interval,
            publisher=SharedPublisher(segment, health=health, config=active_config),
        )
        pool_ref: list[WorkerPool] = []
        service = Service(
            settings,
            config,
            config_text=text,
            config_source=source,
            build=BuildInfo.from_environment(),
            datastore=datastore,
            serve_extproc=False,
            request_registry=CollectorRegistry(),
            debug_workers=lambda: pool_ref[0].stats() if pool_ref else [],
        )
        merged = MergedRequestMetrics((*service.telemetry.request_metrics(), *service.flow.request_metrics()))
        service.telemetry.merge_workers(merged)
        tenants = service.tenants
        budget = BudgetHost(lambda: tenants.memory, tenants.metrics.rejected, relay=tenants)
        held = service.held_elsewhere
        store, prefix = service.config_store, service.prefix

        def share_prefix(payload: object) -> None:
            prefix.receive(payload, store.active.profiles, datastore.snapshot(), time.monotonic())

        pool = WorkerPool(
            settings,
            segment,
            datastore,
            merged,
            key_pair=key_pair,
            budget=budget,
            external=ExternalHost(service.external),
            held=held,
            prefix=share_prefix,
        )
        pool_ref.append(pool)
        service.readiness_checks.append(pool.all_serving)

        async def publisher() -> None:
            while True:
                datastore.publish()
                await asyncio.sleep(interval)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run(
            on_started=freeze_startup_objects,
            extra_tasks={"shared-publisher": publisher, "workers": pool.run},
        )
    finally:
        reservation.close()
        segment.close()
        segment.unlink()


def run_workers(settings: Settings) -> int:
    """``picker serve --workers N`` (N > 1). Returns the process exit code."""
    return run_main(_supervise(settings))
