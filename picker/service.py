"""Everything one ``picker serve`` process runs (:class:`Service`), built once and run until stopped.

:meth:`Service.load` reads what a process starts from (the config file or flag, the build identity from
the environment); the constructor reads no file and no environment and starts nothing. What is per pool
(datastore, scoring document, router, ext_proc listener, scrape loop, Kubernetes sources, scaler) is a
:class:`picker.pool.ServedPool`; the service holds what the process has once: the gRPC health port, the
metrics and admin servers, the Kubernetes API client, the tracer provider (``--tracing``: one OTLP exporter
per process, each pool's spans naming it), and the start and shutdown order. Long-running parts
are named tasks in one ``asyncio.TaskGroup``: if one crashes or returns, the group cancels the rest and the
process exits non-zero, so Kubernetes restarts it loudly instead of it limping on with a dead scraper.

Several pools (``--pool``): a :class:`~picker.pool.ServedPool` each, on its own ext_proc port (the port a
gateway dials is the pool's ``endpointPickerRef.port``, the only pool identity every gateway carries; see
``manifests/README.md``), with its own metric registry merged into ``/metrics`` under a ``pool`` label
(:mod:`picker.telemetry.pools`) and its admin API under ``/pools/<name>/`` (:mod:`picker.admin.pools`).

Why one module: it is the process's composition (the pools next to the servers they share) and the start
and shutdown order across them; the properties at the top keep the one-pool surface (``service.datastore``
and the like, the first pool's) that tests and the ``--workers`` supervisor use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from picker.admin.app import build_admin_app
from picker.admin.auth import MetricsAuth
from picker.admin.metrics import build_metrics_app
from picker.admin.pools import build_pools_admin_app
from picker.admin.server import HttpServer
from picker.config import PickerConfig
from picker.errors import PickerError, StartupError
from picker.extproc.health import HealthServer, HealthService, HealthState
from picker.extproc.protocol import ResponseSkip
from picker.extproc.server import ExtProcServer
from picker.pool import ServedPool
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity
from picker.routing.hold import EmptyPoolHold
from picker.routing.types import Dispatch
from picker.settings import Settings
from picker.state.config_store import ConfigStore
from picker.state.datastore import Datastore
from picker.state.prefix import PrefixCacheState
from picker.telemetry import PoolLabelled, ProcessMetrics, Telemetry
from picker.tenants.flow import FlowController
from picker.tenants.ledger import now_wall
from picker.tenants.service import TenantService
from picker.tracing import Tracing
from picker.wiring import BuildInfo, bind_server, listen_server, shared_body_budget, start_documents

log = logging.getLogger("picker")


@dataclass(frozen=True, slots=True)
class Ports:
    """Ports actually bound (useful with port 0 in tests)."""

    grpc: int
    health: int
    metrics: int
    admin: int
    #: each pool's ext_proc port by pool name (``grpc`` is the first pool's)
    pools: Mapping[str, int] = field(default_factory=dict)


class Service:
    """Everything one EPP process runs. Constructing it starts nothing; :meth:`run` until stopped."""

    def __init__(
        self,
        settings: Settings,
        config: PickerConfig,
        *,
        config_text: str = "",
        config_source: str = "default",
        build: BuildInfo | None = None,
        registry: CollectorRegistry | None = None,
        datastores: Sequence[Datastore] = (),
        serve_extproc: bool = True,
        debug_workers: Callable[[int], list[dict[str, Any]]] | None = None,
        documents: Sequence[tuple[PickerConfig, str, str]] = (),
        wall_clock: Callable[[], float] = now_wall,
    ) -> None:
        """Builds every part from what it is given; reads no file and no environment (see :meth:`load`).
        ``config_text``/``config_source``: the document ``config`` was loaded from and where (``/config``,
        the file watcher's baseline); ``build``: what ``inference_extension_info`` reports. With several
        pools (``--pool``), ``config``/``config_text``/``config_source`` are the first pool's start
        document and ``documents`` the others', in ``--pool`` order. ``datastores`` (one per pool, in
        order), ``serve_extproc`` and ``debug_workers`` are for the ``--workers`` supervisor
        (:mod:`picker.workers`): each pool's datastore publishes to its shared memory, the supervisor
        serves no ext_proc itself, keeps its own (unused) request-path metrics out of ``/metrics``
        (a throwaway registry per pool), and answers each pool's ``/debug/workers``
        (``debug_workers(pool index)``). ``wall_clock``: what every pool's budget windows are measured on
        (:class:`picker.pool.ServedPool`)."""
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        pool_settings = settings.pool_settings()
        starts = [(config, config_text, config_source), *documents]
        if len(starts) != len(pool_settings):
            raise ValueError(f"{len(pool_settings)} pools but {len(starts)} start documents")
        if datastores and len(datastores) != len(pool_settings):
            raise ValueError(f"{len(pool_settings)} pools but {len(datastores)} datastores")
        several = len(pool_settings) > 1
        #: ``--tracing``: one tracer provider and OTLP exporter for the process, whatever the pools (the
        #: ``--workers`` supervisor serves no ext_proc and traces nothing)
        self.tracing = Tracing(settings.tracing) if settings.tracing is not None and serve_extproc else None
        #: several pools: one budget of buffered bodies for the process, each pool's drawing from it
        shared_budget = shared_body_budget(settings, len(pool_settings)) if serve_extproc else None
        #: the pools this process serves: one (``--pool-name``, ``--endpoint-selector``,
        #: ``--static-endpoints``), or one per ``--pool``, each on its own ext_proc port
        self.pools: tuple[ServedPool, ...] = tuple(
            ServedPool(
                ps,
                cfg,
                # several pools: a registry each, one /metrics with a ``pool`` label (picker.telemetry.pools)
                registry=CollectorRegistry() if several else self.registry,
                config_text=text,
                config_source=source,
                build=build,
                datastore=datastores[i] if datastores else None,
                serve_extproc=serve_extproc,
                request_registry=None if serve_extproc else CollectorRegistry(),
                tracing=self.tracing,
                shared_budget=shared_budget,
                several_pools=several,
                wall_clock=wall_clock,
            )
            for i, (ps, (cfg, text, source)) in enumerate(zip(pool_settings, starts, strict=True))
        )
        if several:
            self.registry.register(PoolLabelled([(p.name, p.telemetry.registry) for p in self.pools]))
        #: extra conditions for readiness and gRPC health (the supervisor adds "all workers serving")
        self.readiness_checks: list[Callable[[], bool]] = []
        # Standard process_* series (RSS, CPU seconds, open fds, start time) of this process, as every
        # Prometheus client exports by default; the injected registry has none unless registered here.
        # /proc is read at the first scrape, not here.
        ProcessMetrics(self.registry)
        self._api_client: Any = None
        self.health_service = HealthService(self.health_state)
        self.health_server = HealthServer(
            self.health_service, port=settings.grpc_health_port, host=settings.host
        )
        #: ``--metrics-endpoint-auth``: TokenReview + SubjectAccessReview through the API client that
        #: :meth:`start` loads (the reviewer asks for it per review, so nothing is read here)
        self.metrics_auth = MetricsAuth(self._reviewer()) if settings.metrics_auth else None
        #: /metrics, /healthz, /readyz: the port the Service exposes
        self.metrics_server = HttpServer(
            build_metrics_app(
                registry=self.registry,
                ready=self.ready,
                endpoints=lambda: sum(len(p.datastore) for p in self.pools),
                metrics_auth=self.metrics_auth,
            ),
            host=settings.host,
            port=settings.metrics_port,
            name="metrics",
        )
        apps = {
            p.name: self._pool_admin_app(
                p, None if debug_workers is None else functools.partial(debug_workers, i)
            )
            for i, p in enumerate(self.pools)
        }
        #: /config, /debug/*: its own port, on loopback unless --admin-bind says otherwise
        self.admin_server = HttpServer(
            build_pools_admin_app(apps, self.describe_pools, max_body_bytes=settings.admin_max_body_bytes)
            if several
            else apps[self.pool.name],
            host=settings.admin_bind,
            port=settings.admin_port,
            name="admin",
        )
        self.ports: Ports | None = None
        self._stop = asyncio.Event()

    @classmethod
    def load(cls, settings: Settings, **options: Any) -> Service:
        """The service of a process that starts from ``settings``: each pool's config from its
        ``--config-file``, ``--config-text`` or the built-in default (:class:`~picker.errors.ConfigError`
        when it is invalid, naming the pool when there are several), the build identity from the
        environment; ``options`` as for the constructor."""
        (config, text, source), *others = start_documents(settings)
        build = BuildInfo.from_environment()
        return cls(
            settings, config, config_text=text, config_source=source, build=build, documents=others, **options
        )

    def _pool_admin_app(self, pool: ServedPool, workers: Callable[[], list[dict[str, Any]]] | None) -> Any:
        """One pool's admin API (the whole admin API of a one-pool process)."""
        return build_admin_app(
            datastore=pool.datastore,
            router=pool.director,
            config=pool.config_store,
            staleness_s=lambda: pool.telemetry.staleness_s,
            workers=workers,
            tenants=pool.tenants.describe,
            scaler=lambda: pool.scaler.debug() if pool.scaler is not None else None,
            max_body_bytes=self.settings.admin_max_body_bytes,
            prefix=pool.prefix,
            # with --workers the budgets are the supervisor's too (picker.routing.external_remote)
            external=pool.external.stats,
        )

    def describe_pools(self) -> list[dict[str, Any]]:
        """``/debug/pools``: per pool its name, ext_proc port, endpoints, readiness and config."""
        rows = []
        for p in self.pools:
            state = p.health_state()
            active = p.config_store.active
            rows.append(
                {
                    "name": p.name,
                    "namespace": p.settings.pool_namespace,
                    "grpc_port": p.extproc.bound_port if p.extproc is not None else p.settings.grpc_port,
                    "endpoints": len(p.datastore),
                    "synced": state.synced,
                    "leader": state.leader,
                    "config": {"source": active.source, "digest": active.digest},
                }
            )
        return rows

    # ------------------------------------------------------------------- the first (only) pool's parts
    @property
    def pool(self) -> ServedPool:
        """The first pool (the only one unless several are served)."""
        return self.pools[0]

    @property
    def datastore(self) -> Datastore:
        return self.pool.datastore

    @property
    def config_store(self) -> ConfigStore:
        return self.pool.config_store

    @property
    def telemetry(self) -> Telemetry:
        return self.pool.telemetry

    @property
    def director(self) -> Director:
        return self.pool.director

    @property
    def tenants(self) -> TenantService:
        return self.pool.tenants

    @property
    def flow(self) -> FlowController:
        return self.pool.flow

    @property
    def hold(self) -> EmptyPoolHold:
        return self.pool.hold

    @property
    def prefix(self) -> PrefixCacheState:
        return self.pool.prefix

    @property
    def external(self) -> ExternalCapacity:
        return self.pool.external

    @property
    def extproc(self) -> ExtProcServer | None:
        return self.pool.extproc

    def held_elsewhere(self, source: object, count: int) -> None:
        self.pool.held_elsewhere(source, count)

    def held_requests(self) -> int:
        return self.pool.held_requests()

    def skip_response(self, dispatch: Dispatch) -> ResponseSkip:
        return self.pool.skip_response(dispatch)

    # ------------------------------------------------------------------------------------- health
    def health_state(self) -> HealthState:
        """The process's health: every pool's, and the readiness checks (the supervisor's workers)."""
        states = [p.health_state() for p in self.pools]
        return HealthState(
            synced=all(s.synced for s in states) and all(check() for check in self.readiness_checks),
            leader=all(s.leader for s in states),
            protocol_ok=all(s.protocol_ok for s in states),
            leader_election=self.settings.ha_enable_leader_election,
        )

    def ready(self) -> bool:
        s = self.health_state()
        return s.synced and s.protocol_ok and (s.leader or not s.leader_election)

    def _api(self) -> Any:
        """The process's Kubernetes API client, loaded at its first use (once for every pool)."""
        if self._api_client is None:
            from picker.kube.client import load_api_client

            try:
                self._api_client = load_api_client(self.settings.kubeconfig or None)
            except PickerError as exc:
                raise StartupError(f"--kubeconfig: {exc.message}") from exc
        return self._api_client

    def _reviewer(self) -> Any:
        from picker.kube.review import AccessReviewer

        def api() -> Any:
            if self._api_client is None:  # start() loads it before the admin port listens
                raise RuntimeError("the Kubernetes API client is not loaded")
            return self._api_client

        return AccessReviewer(api)

    def _log_metrics_auth(self, port: int) -> None:
        s = self.settings
        if s.metrics_auth:
            log.info(
                "metrics endpoint auth on: /metrics on :%d answers bearer tokens whose user may "
                "`get /metrics` (TokenReview + SubjectAccessReview)",
                port,
            )
        elif s.metrics_endpoint_auth is None:
            log.warning(
                "metrics endpoint auth off: --static-endpoints has no Kubernetes API to review tokens, so "
                "/metrics on :%d is open (--metrics-endpoint-auth=true with --kubeconfig turns it on)",
                port,
            )
        else:
            log.info(
                "metrics endpoint auth off (--metrics-endpoint-auth=false): /metrics on :%d is open", port
            )

    # --------------------------------------------------------------------------------------- run
    def stop(self) -> None:
        """Ask :meth:`run` to shut down (thread-unsafe: call on the loop, e.g. from a signal handler)."""
        self._stop.set()

    async def start(self) -> Ports:
        """Start every pool (its source, its ext_proc port), bind the process's ports; returns them."""
        s = self.settings
        grpc_ports = {}
        if self.tracing is not None:
            self.tracing.start()
        for pool in self.pools:
            bound = await pool.start(self._api)
            grpc_ports[pool.name] = bound if bound is not None else pool.settings.grpc_port
        self._share_leadership()
        if self.metrics_auth is not None:
            self._api()
        await bind_server("--grpc-health-port", s.host, s.grpc_health_port, self.health_server.start())
        metrics_port = listen_server("--metrics-port", s.host, s.metrics_port, self.metrics_server)
        admin_port = listen_server("--admin-port", s.admin_bind, s.admin_port, self.admin_server)
        grpc_port = grpc_ports[self.pool.name]
        self.ports = Ports(grpc_port, self.health_server.bound_port, metrics_port, admin_port, grpc_ports)
        return self.ports

    def _share_leadership(self) -> None:
        """With leader election and several pools, the process is one candidate: the first pool's
        sources hold the Lease (``epp-<namespace>-<first pool>``) and every other pool loads and unloads
        with it, so a replica is ready for all its pools or for none (one readiness per Pod)."""
        first = self.pool.kube
        for pool in self.pools[1:]:
            if first is not None and pool.kube is not None:
                pool.kube.follow(first)

    async def run(
        self,
        *,
        on_started: Callable[[Ports], None] | None = None,
        extra_tasks: Mapping[str, Callable[[], Coroutine[Any, Any, None]]] | None = None,
    ) -> None:
        """Start, serve until :meth:`stop` (or a crash), then shut down in order. ``extra_tasks`` join
        the task group (the ``--workers`` supervisor adds its publisher and worker pool)."""
        try:
            ports = await self.start()
        except BaseException:  # a port in use, a bad kubeconfig: release what did start, then fail
            await self._shutdown()
            raise
        if on_started is not None:
            on_started(ports)
        log.info(
            "picker serving: ext_proc :%d (%s), health :%d, metrics :%d, admin %s:%d, %s, %d endpoints",
            ports.grpc,
            "TLS" if self.settings.secure_serving else "plaintext",
            ports.health,
            ports.metrics,
            self.settings.admin_bind,
            ports.admin,
            f"pool {self.pool.name}"
            if len(self.pools) == 1
            else "pools " + " ".join(f"{name}:{port}" for name, port in ports.pools.items()),
            sum(len(p.datastore) for p in self.pools),
        )
        self._log_metrics_auth(ports.metrics)
        tasks: dict[str, Coroutine[Any, Any, None]] = {
            "metrics": self.metrics_server.serve(stopping=self._stop.is_set),
            "admin": self.admin_server.serve(stopping=self._stop.is_set),
        }
        for pool in self.pools:
            for name, coro in pool.tasks().items():
                tasks[name if len(self.pools) == 1 else f"{pool.name}:{name}"] = coro
        for name, factory in (extra_tasks or {}).items():
            tasks[name] = factory()
        group = asyncio.create_task(self._run_group(tasks), name="picker")
        stopper = asyncio.create_task(self._stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({group, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not group.done():
                log.info("shutting down")
                group.cancel()
            # A crashed task surfaces here (as an ExceptionGroup) after the others were cancelled.
            with contextlib.suppress(asyncio.CancelledError):
                await group
        finally:
            stopper.cancel()
            await self._shutdown()

    @staticmethod
    async def _run_group(tasks: dict[str, Coroutine[Any, Any, None]]) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, coro in tasks.items():
                tg.create_task(coro, name=name)
        raise RuntimeError("all service tasks ended")

    async def _shutdown(self) -> None:
        self.metrics_server.stop()
        self.admin_server.stop()
        for pool in self.pools:
            await pool.stop_serving()
        if self.tracing is not None:
            await self.tracing.close()
        await self.health_server.stop(grace=None)
        for pool in self.pools:
            await pool.close()
        if self._api_client is not None:
            self._api_client.close()
        self.metrics_server.close()
        self.admin_server.close()
