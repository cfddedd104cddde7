"""The ``--workers`` worker process: an ext_proc server on the shared port, a router over the supervisor's
shared-memory state (:class:`picker.state.view.SharedView`), its own request metrics shipped to the
supervisor (see :mod:`picker.workers`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from picker.config import default_config, load_config_text
from picker.extproc.health import HealthService, HealthState
from picker.extproc.server import ExtProcServer
from picker.extproc.tls import TLSConfig
from picker.routing.director import Director
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
    body_budget,
    freeze_startup_objects,
    install_uvloop,
    skip_response_rule,
    stream_config_rule,
)
from picker.workers.channel import DRAIN_S, HELD, METRICS_INTERVAL_S, Channel

log = logging.getLogger("picker.workers")


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
        self.tracing = Tracing(settings.tracing) if settings.tracing is not None else None

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
        channel: Channel,
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
            tracer=None
            if self.tracing is None
            else self.tracing.for_pool(lambda: self.view.pool.name if self.view.pool else ""),
        )

    async def run(self, sock: socket.socket) -> None:
        channel = await Channel.open(sock)
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

    async def _listen(self, channel: Channel, store: ConfigStore) -> None:
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
        self, store: ConfigStore, shipped: tuple[Any, ...], tenants: TenantService, channel: Channel
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
