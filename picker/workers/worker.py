"""The ``--workers`` worker process: per pool (one, or each ``--pool``) an ext_proc server on the pool's
shared port, a router over the supervisor's shared-memory state of that pool
(:class:`picker.state.view.SharedView`), its own request metrics shipped to the supervisor's host of that
pool (see :mod:`picker.workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from picker.config import default_config, load_config_text
from picker.extproc.budget import BodyBudget
from picker.extproc.health import HealthState
from picker.extproc.server import ExtProcServer
from picker.routing.external import ExternalCapacity
from picker.routing.external_remote import GRANT, ExternalClient
from picker.routing.hold import EmptyPoolHold
from picker.settings import Settings
from picker.state.config_store import ActiveConfig, ConfigStore, ReloadResult
from picker.state.prefix import PrefixCacheState
from picker.state.segment import SharedSegment
from picker.state.view import SharedView
from picker.telemetry import Telemetry, export_families
from picker.tenants.flow import FlowController, flow_limits
from picker.tenants.remote import USAGE, VERDICT, SupervisorBackend
from picker.tenants.service import TenantService
from picker.tracing import Tracing
from picker.wiring import (
    extproc_server,
    freeze_startup_objects,
    install_uvloop,
    pool_director,
    shared_body_budget,
)
from picker.workers.channel import DRAIN_S, HELD, METRICS_INTERVAL_S, POOL, PREFIX_ENTRIES, Channel

log = logging.getLogger("picker.workers")


def worker_main(
    settings: Settings,
    segment_names: Sequence[str],
    index: int,
    sock: socket.socket,
    key_pair: tuple[bytes, bytes] | None,
) -> None:
    """Entry point of a worker process (spawned by :class:`WorkerPool`): ``segment_names`` are each pool's
    shared memory, in the order of ``settings.pool_settings()``."""
    from picker.logs import configure_logging

    configure_logging(verbosity=settings.verbosity, as_json=settings.log_json)
    install_uvloop()
    try:
        asyncio.run(_Worker(settings, segment_names, index, key_pair).run(sock))
    except Exception:
        log.exception("worker %d failed", index)
        raise SystemExit(1) from None


class _PoolWorker:
    """One pool in a worker: its shared view, prefix replica, config store, router and ext_proc server on
    the pool's port (``SO_REUSEPORT``), metrics, tenants and flow control; what it sends the supervisor
    goes to that pool's host (``send``)."""

    def __init__(
        self,
        settings: Settings,
        segment_name: str,
        index: int,
        pool: int,
        send: Callable[[list[Any]], None],
    ) -> None:
        """``settings``: this pool's (its ext_proc port, name); ``index``: the worker's (its counter row);
        ``pool``: the pool's index in ``--pool`` order."""
        self.settings = settings
        self.index = index
        self.pool = pool
        self.send = send
        self.segment = SharedSegment.attach(segment_name)
        self.view = SharedView(self.segment, index)
        #: this worker's replica of the prefix index; its own records are queued for the supervisor
        self.prefix = PrefixCacheState(replicate=True)
        #: the replica's entries as last sent to the supervisor (-1: not yet sent)
        self._entries_sent = -1
        #: the supervisor's tenant budget and external endpoints' budgets, reached over the pipe
        self.budget = SupervisorBackend(send)
        self.external = ExternalClient(send)
        #: requests waiting for a first replica (set in build())
        self.hold: EmptyPoolHold | None = None
        self.store: ConfigStore | None = None
        self.telemetry: Telemetry | None = None
        self.tenants: TenantService | None = None
        self.flow: FlowController | None = None
        self.server: ExtProcServer | None = None

    def pool_name(self) -> str:
        return self.view.pool.name if self.view.pool else ""

    def build(
        self,
        key_pair: tuple[bytes, bytes] | None,
        tracing: Tracing | None,
        shared_budget: BodyBudget | None = None,
    ) -> ExtProcServer:
        """Every part, from the supervisor's first published state (which :meth:`_Worker.run` awaited);
        ``shared_budget``: the worker's body budget when it serves several pools."""
        s = self.settings
        several = shared_budget is not None
        static = self.view.static
        assert static is not None
        header = s.model_header
        config = (
            load_config_text(static.config_text, model_header=header)
            if static.config_text
            else default_config(model_header=header)
        )
        store = self.store = ConfigStore(
            config, source=static.config_source, text=static.config_text, model_header=header
        )
        telemetry = self.telemetry = Telemetry(
            self.view,
            registry=CollectorRegistry(),
            label_values=s.metrics_label_max_values,
            label_length=s.metrics_label_max_length,
        )
        # Tenants: the memory backend's budget is the supervisor's, asked over the pipe (one budget for all
        # workers), Redis is shared as ever. Flow-control queues are per worker.
        label_values, label_length = s.metrics_label_max_values, s.metrics_label_max_length
        tenants = self.tenants = TenantService(
            telemetry.registry,
            shared=self.budget,
            label_values=label_values,
            label_length=label_length,
            # the supervisor's pool uses the same scope (picker.pool.ServedPool): one budget per pool
            redis_scope=s.effective_pool_name if several else "",
        )
        tenants.apply(config.settings.tenants)
        flow = self.flow = FlowController(
            lambda: store.active.scheduler.saturation(self.view.snapshot(), now=time.monotonic()),
            registry=telemetry.registry,
            pool=self.pool_name,
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
        # scale from zero: the supervisor's scaler counts this worker's held requests and wakes on a new one
        self.hold = EmptyPoolHold(self.view.snapshot, on_change=lambda n: self.send([HELD, n]))
        director = pool_director(
            self.view,
            store,
            s,
            stream=1 + self.index,
            observer=telemetry,
            tenancy=tenants.tenancy,
            flow=flow,
            hold=self.hold,
            prefix=self.prefix,
            # external endpoints' budgets and health are the supervisor's, asked over the pipe
            external=ExternalCapacity(remote=self.external),
        )
        server = self.server = extproc_server(
            director,
            telemetry,
            s,
            store,
            health=self._health,
            reuse_port=True,
            several_pools=several,
            shared_budget=shared_budget,
            tracer=None if tracing is None else tracing.for_pool(self.pool_name),
            key_pair=key_pair,
        )
        return server

    def shipped(self) -> tuple[Any, ...]:
        """The request-path metrics sent to the supervisor."""
        assert self.telemetry is not None
        assert self.flow is not None
        return (*self.telemetry.request_metrics(), *self.flow.request_metrics())

    def _health(self) -> HealthState:
        h = self.view.health
        return HealthState(h.synced, h.leader, h.protocol_ok, h.leader_election)

    def deliver(self, message: list[Any]) -> None:
        """A message from this pool's host: budget verdicts, grants, other workers' prefix records."""
        if message[0] == VERDICT:
            self.budget.deliver(message)
        elif message[0] == GRANT:
            self.external.deliver(message)
        elif message[0] == "prefix" and len(message) == 2 and self.store is not None:
            now = time.monotonic()
            self.prefix.receive(message[1], self.store.active.profiles, self.view.snapshot(), now)

    async def follow(self, metrics_due: bool) -> None:
        """Apply a config document the supervisor published; send prefix records and the replica's
        entries when they changed, and when ``metrics_due`` the metrics and what the tenants' Redis
        backend counted."""
        assert self.store is not None
        assert self.tenants is not None
        store = self.store
        self.view.refresh()
        static = self.view.static
        if static is not None and static.config_text and static.config_digest != store.active.digest:
            # parsed in a thread: a 1 MiB document must not stall this worker's streams
            result = await store.apply_text_off_loop(static.config_text, source=static.config_source)
            if not result.ok:  # the supervisor applied it, so this is a bug worth a loud line
                log.error(
                    "worker %d could not apply pool %s's config: %s",
                    self.index,
                    self.pool_name(),
                    result.message,
                )
        if (records := self.prefix.outgoing()) is not None:
            self.send(["prefix", records])
        if (entries := self.prefix.size()) != self._entries_sent:
            self.send([PREFIX_ENTRIES, entries])
            self._entries_sent = entries
        if metrics_due:
            self.send(["metrics", export_families(self.shipped())])
            if (usage := self.tenants.export()) is not None:
                self.send([USAGE, *usage])

    def abandon(self) -> None:
        self.budget.abandon()
        self.external.abandon()

    def final_report(self) -> None:
        """The last metrics and tenant usage, at the worker's exit."""
        if self.telemetry is None or self.tenants is None:
            return
        self.send(["metrics", export_families(self.shipped())])
        if (usage := self.tenants.export()) is not None:
            self.send([USAGE, *usage])

    def close(self) -> None:
        if self.hold is not None:
            self.hold.close()
        del self.view
        self.segment.close()


class _Worker:
    """The worker process: one :class:`_PoolWorker` per pool, every pool's ext_proc port served, one
    tracer provider (``--tracing``) for all of them, one pipe to the supervisor."""

    def __init__(
        self,
        settings: Settings,
        segment_names: Sequence[str],
        index: int,
        key_pair: tuple[bytes, bytes] | None,
    ) -> None:
        self.settings = settings
        self.index = index
        self._segment_names = tuple(segment_names)
        self._key_pair = key_pair
        self._stop = asyncio.Event()
        self.pools: list[_PoolWorker] = []
        #: ``--tracing``: each worker records and exports the spans of its own streams, every pool's
        self.tracing = Tracing(settings.tracing) if settings.tracing is not None else None

    async def _first_state(self) -> None:
        deadline = time.monotonic() + 30.0
        for pool in self.pools:
            while not pool.view.refresh():
                if time.monotonic() > deadline:
                    raise RuntimeError("the supervisor published no state within 30 s")
                await asyncio.sleep(0.01)

    async def run(self, sock: socket.socket) -> None:
        channel = await Channel.open(sock)
        pool_settings = self.settings.pool_settings()
        if len(pool_settings) != len(self._segment_names):
            raise RuntimeError(f"{len(pool_settings)} pools but {len(self._segment_names)} segments")
        self.pools = [
            _PoolWorker(ps, name, self.index, i, channel.for_pool(i))
            for i, (ps, name) in enumerate(zip(pool_settings, self._segment_names, strict=True))
        ]
        servers: list[ExtProcServer] = []
        try:
            await self._first_state()
            shared = shared_body_budget(self.settings, len(self.pools))
            servers = [pool.build(self._key_pair, self.tracing, shared) for pool in self.pools]
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            if self.tracing is not None:
                self.tracing.start()
            for server in servers:
                await server.start()
            freeze_startup_objects()
            channel.send(["serving", os.getpid()])
            log.info(
                "worker %d serving ext_proc on port%s %s (pid %d)",
                self.index,
                "s" if len(servers) > 1 else "",
                ", ".join(str(server.bound_port) for server in servers),
                os.getpid(),
            )
            await self._serve(channel)
        finally:
            for server in servers:
                await server.stop(grace=DRAIN_S)
            if self.tracing is not None:
                await self.tracing.close()
            for pool in self.pools:
                pool.final_report()
            await channel.drain()
            channel.close()
            for pool in self.pools:
                pool.close()

    async def _serve(self, channel: Channel) -> None:
        tasks = [
            asyncio.create_task(self._listen(channel), name="supervisor"),
            asyncio.create_task(self._follow(channel), name="follow"),
        ]
        for pool in self.pools:
            assert pool.tenants is not None
            assert pool.flow is not None
            tasks.append(asyncio.create_task(pool.tenants.run(), name=f"tenants-{pool.pool}"))
            tasks.append(asyncio.create_task(pool.flow.run(), name=f"flow-control-{pool.pool}"))
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _listen(self, channel: Channel) -> None:
        """Each pool's messages to its pool; stop on "stop" or when the supervisor is gone."""
        while True:
            message = await channel.recv()
            if message is None:
                log.warning("worker %d: the supervisor is gone, stopping", self.index)
                for pool in self.pools:
                    pool.abandon()
                self._stop.set()
                return
            if message[0] == POOL and len(message) == 3 and 0 <= message[1] < len(self.pools):
                self.pools[message[1]].deliver(message[2])
            elif message[0] == "stop":
                self._stop.set()
                return

    async def _follow(self, channel: Channel) -> None:
        """Every pool's config documents, prefix records and (about every second) metrics."""
        next_metrics = time.monotonic()
        while True:
            now = time.monotonic()
            due = now >= next_metrics
            if due:
                next_metrics = now + METRICS_INTERVAL_S
            for pool in self.pools:
                await pool.follow(due)
            if due:
                await channel.drain()
            await asyncio.sleep(0.05)
