"""Everything one ``picker serve`` process runs (:class:`Service`), built once and run until stopped.

:meth:`Service.load` reads what a process starts from (the config file or flag, the build identity from
the environment); the constructor reads no file and no environment and starts nothing. Long-running parts
are named tasks in one ``asyncio.TaskGroup``: if one crashes or returns, the group cancels the rest and the
process exits non-zero, so Kubernetes restarts it loudly instead of it limping on with a dead scraper.

Why one module: the service is the composition of every part (datastore, config, telemetry, tenants,
flow control, director, servers, scraper, sources, scaler) and their start and shutdown order; split, the
order would be spread over modules that each hold half of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from picker.admin import build_admin_app, build_metrics_app
from picker.admin.auth import MetricsAuth
from picker.admin.server import HttpServer
from picker.config import PickerConfig
from picker.config.scaling import ScalingConfig
from picker.errors import PickerError, StartupError
from picker.extproc.health import HealthServer, HealthService, HealthState
from picker.extproc.protocol import ResponseSkip
from picker.extproc.server import ExtProcServer
from picker.extproc.tls import TLSConfig
from picker.reload import ConfigFileWatcher
from picker.routing.director import Director
from picker.routing.external import ExternalCapacity
from picker.routing.hold import EmptyPoolHold
from picker.routing.types import Dispatch
from picker.scrape.engines import engine_specs_for
from picker.scrape.http import LeanFetcher
from picker.scrape.scraper import Scraper
from picker.settings import Settings
from picker.state.config_store import ActiveConfig, ConfigStore, ReloadResult
from picker.state.datastore import Datastore
from picker.state.endpoints import PoolInfo, parse_static_endpoints
from picker.state.prefix import PrefixCacheState
from picker.state.prices import PriceBook
from picker.telemetry import ExternalCollector, ProcessMetrics, Telemetry
from picker.tenants.flow import FlowController, flow_limits
from picker.tenants.service import TenantService
from picker.tracing import Tracing
from picker.wiring import (
    BuildInfo,
    bind_server,
    body_budget,
    config_objectives,
    config_rewrites,
    configure_health,
    listen_server,
    load_initial_config,
    skip_response_rule,
    snapshot_interval,
    stream_config_rule,
)
from scoring.scorers import PrometheusScorer

log = logging.getLogger("picker")

#: appProtocols each request parser can serve (reference §1.12)
_PARSER_PROTOCOLS: Mapping[str, frozenset[str] | None] = {
    "openai-parser": frozenset({"http", "kubernetes.io/h2c"}),
    "vllmgrpc-parser": frozenset({"kubernetes.io/h2c"}),
    "passthrough-parser": None,
}


@dataclass(frozen=True, slots=True)
class Ports:
    """Ports actually bound (useful with port 0 in tests)."""

    grpc: int
    health: int
    metrics: int
    admin: int


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
        datastore: Datastore | None = None,
        serve_extproc: bool = True,
        request_registry: CollectorRegistry | None = None,
        debug_workers: Callable[[], list[dict[str, Any]]] | None = None,
        prefix: PrefixCacheState | None = None,
    ) -> None:
        """Builds every part from what it is given; reads no file and no environment (see :meth:`load`).
        ``config_text``/``config_source``: the document ``config`` was loaded from and where (``/config``,
        the file watcher's baseline); ``build``: what ``inference_extension_info`` reports. The last five
        are for the ``--workers`` supervisor (:mod:`picker.workers`): its datastore publishes to shared
        memory, it serves no ext_proc itself, keeps its own (unused) request-path metrics out of
        ``/metrics``, answers ``/debug/workers`` and holds the replica of the prefix index its workers'
        records reach."""
        self.settings = settings
        build = build or BuildInfo()
        self.datastore = (
            datastore
            if datastore is not None
            else Datastore(min_publish_interval_s=snapshot_interval(settings))
        )
        self.config_store = ConfigStore(
            config, source=config_source, text=config_text, model_header=settings.model_header
        )
        #: the approximate prefix index (used when the profile has a prefix-cache-scorer)
        self.prefix = prefix if prefix is not None else PrefixCacheState()
        self.prefix.for_profiles(self.config_store.active.profiles)
        self._skip_response = skip_response_rule(self.config_store)
        #: extra conditions for readiness and gRPC health (the supervisor adds "all workers serving")
        self.readiness_checks: list[Callable[[], bool]] = []
        #: the config's external endpoints: budgets and passive health (``picker.routing.external``)
        self.external = ExternalCapacity()
        self.telemetry = Telemetry(
            self.datastore,
            registry=registry or CollectorRegistry(),
            request_registry=request_registry,
            pool_name=lambda: self.datastore.pool.name if self.datastore.pool else "",
            staleness_s=config.staleness_threshold or settings.metrics_staleness_threshold,
            build_ref=build.ref,
            commit=build.commit,
            health=(self.datastore.health, self.external.health),
            label_values=settings.metrics_label_max_values,
            label_length=settings.metrics_label_max_length,
            prefix_size=self.prefix.size,
        )
        configure_health(self.datastore, self.config_store.active, self.external)
        # Standard process_* series (RSS, CPU seconds, open fds, start time) of this process, as every
        # Prometheus client exports by default; the injected registry has none unless registered here.
        # /proc is read at the first scrape, not here.
        ProcessMetrics(self.telemetry.registry)
        #: tenant metering and budgets; off until a config with a ``tenants`` section is applied (start)
        self.tenants = TenantService(
            self.telemetry.registry,
            label_values=settings.metrics_label_max_values,
            label_length=settings.metrics_label_max_length,
        )
        self.config_store.add_check(lambda cfg: self.tenants.prepare(cfg.settings.tenants))
        #: flow control (the ``flowControl`` feature gate): fair queues while the pool is saturated
        self.flow = FlowController(
            self._saturation,
            registry=self.telemetry.registry,
            queue_registry=request_registry,
            pool=self.telemetry.pool_name,
            label_values=settings.metrics_label_max_values,
            label_length=settings.metrics_label_max_length,
        )
        #: requests to an empty pool waiting for a first replica (scale from zero; ``picker.routing.hold``)
        self.hold = EmptyPoolHold(self.datastore.snapshot, wake=self._wake_scaler)
        #: the same count from each ``--workers`` worker (``held_elsewhere``)
        self._held_remote: dict[object, int] = {}
        #: the operator's Prometheus signals (prometheus-scorer), with --prometheus-url (imported only then)
        self.signals: Any = None
        if settings.prometheus_url:
            from picker.scrape.signals import PrometheusSignals

            self.signals = PrometheusSignals(
                self.datastore, url=settings.prometheus_url, namespace=settings.pool_namespace
            )
        self.director = Director(
            self.datastore,
            self.config_store,
            rng=np.random.default_rng(settings.seed),
            disable_subset_filter=settings.disable_endpoint_subset_filter,
            observer=self.telemetry,
            tenancy=self.tenants.tenancy,
            flow=self.flow,
            hold=None if settings.static_endpoints else self.hold,  # a static list has nothing to scale
            staleness_s=settings.metrics_staleness_threshold,
            prefix=self.prefix,
            external=self.external,
        )
        self._kube: Any = None
        self._engine_label = config.metrics_extractor.engine_label_key
        self._api_client: Any = None
        #: the off-peak scaler (``picker.scaler``): built with the Kubernetes sources, idle without a section
        self._scaler: Any = None
        self.health_service = HealthService(self.health_state)
        tls = None
        if settings.secure_serving:
            tls = TLSConfig(
                cert_path=Path(settings.cert_path) if settings.cert_path else None,
                reload=settings.enable_cert_reload,
            )
        #: ``--tracing``: spans of this process's requests (the ``--workers`` supervisor serves none)
        self.tracing = (
            Tracing(settings.tracing, pool=self.telemetry.pool_name)
            if settings.tracing is not None and serve_extproc
            else None
        )
        self.extproc = (
            ExtProcServer(
                self.director,
                self.telemetry,
                port=settings.grpc_port,
                host=settings.host,
                tls=tls,
                max_body_bytes=config.max_body_bytes,
                served_verifier=config.served_verifier_enabled,
                health=self.health_service if settings.health_checking else None,
                reuse_port=settings.workers > 1,
                skip_response=self._skip_response,
                stream_config=stream_config_rule(self.config_store),
                keepalive_s=(settings.grpc_keepalive_time, settings.grpc_keepalive_timeout),
                max_buffered_bytes=body_budget(config, settings),
                tracer=self.tracing,
            )
            if serve_extproc
            else None
        )
        self.health_server = HealthServer(
            self.health_service, port=settings.grpc_health_port, host=settings.host
        )
        src = config.metrics_source
        self.scraper = Scraper(
            self.datastore,
            LeanFetcher(
                max_page_bytes=settings.scrape_max_page_bytes, insecure_skip_verify=src.insecure_skip_verify
            ),
            engines=engine_specs_for(config.metrics_extractor),
            default_engine=config.metrics_extractor.default_engine,
            interval_s=settings.refresh_metrics_interval,
            timeout_s=settings.scrape_timeout,
            max_concurrency=settings.scrape_concurrency,
            scheme=src.scheme,
            path=src.path,
            observer=self.telemetry,
        )
        self.file_watcher = (
            ConfigFileWatcher(
                settings.config_file, self.config_store, interval_s=settings.config_poll_interval
            )
            if settings.config_file
            else None
        )
        if self.file_watcher is not None:
            self.file_watcher.prime(config_text)
        self.config_store.add_listener(self.telemetry.config_reloaded)
        self.config_store.add_listener(self._config_changed)
        #: ``--metrics-endpoint-auth``: TokenReview + SubjectAccessReview through the API client that
        #: :meth:`start` loads (the reviewer asks for it per review, so nothing is read here)
        self.metrics_auth = MetricsAuth(self._reviewer()) if settings.metrics_auth else None
        #: /metrics, /healthz, /readyz: the port the Service exposes
        self.metrics_server = HttpServer(
            build_metrics_app(
                registry=self.telemetry.registry,
                ready=self.ready,
                endpoints=lambda: len(self.datastore),
                metrics_auth=self.metrics_auth,
            ),
            host=settings.host,
            port=settings.metrics_port,
            name="metrics",
        )
        #: /config, /debug/*: its own port, on loopback unless --admin-bind says otherwise
        self.admin_server = HttpServer(
            build_admin_app(
                datastore=self.datastore,
                router=self.director,
                config=self.config_store,
                staleness_s=lambda: self.telemetry.staleness_s,
                workers=debug_workers,
                tenants=self.tenants.describe,
                scaler=lambda: self._scaler.debug() if self._scaler is not None else None,
                max_body_bytes=settings.admin_max_body_bytes,
                prefix=self.prefix,
                # with --workers the budgets are the supervisor's too (picker.routing.external_remote)
                external=self.external.stats,
            ),
            host=settings.admin_bind,
            port=settings.admin_port,
            name="admin",
        )
        self.telemetry.registry.register(ExternalCollector(self.external.stats, self.telemetry.pool_name))
        self.ports: Ports | None = None
        self._stop = asyncio.Event()
        self._configure_flow(config)

    @classmethod
    def load(cls, settings: Settings, **options: Any) -> Service:
        """The service of a process that starts from ``settings``: the config from ``--config-file``,
        ``--config-text`` or the built-in default (:class:`~picker.errors.ConfigError` when it is
        invalid), the build identity from the environment; ``options`` as for the constructor."""
        config, text, source = load_initial_config(settings)
        build = BuildInfo.from_environment()
        return cls(settings, config, config_text=text, config_source=source, build=build, **options)

    # ------------------------------------------------------------------------------------- health
    def health_state(self) -> HealthState:
        pool = self.datastore.pool
        allowed = _PARSER_PROTOCOLS.get(self.config_store.active.config.parser)
        protocol_ok = pool is None or allowed is None or pool.app_protocol in allowed
        kube = self._kube
        return HealthState(
            synced=self.datastore.synced and all(check() for check in self.readiness_checks),
            leader=bool(kube is None or kube.is_leader),
            protocol_ok=protocol_ok,
            leader_election=self.settings.ha_enable_leader_election,
        )

    def ready(self) -> bool:
        s = self.health_state()
        return s.synced and s.protocol_ok and (s.leader or not s.leader_election)

    def skip_response(self, dispatch: Dispatch) -> ResponseSkip:
        """Whether this request's response phases may be skipped; see :func:`skip_response_rule`."""
        return self._skip_response(dispatch)

    def _saturation(self) -> float:
        """The active saturation detector over the whole pool (what flow control dispatches against)."""
        return self.config_store.active.scheduler.saturation(self.datastore.snapshot(), now=time.monotonic())

    def _configure_flow(self, cfg: PickerConfig) -> None:
        enabled = "flowControl" in cfg.feature_gates
        if cfg.endpoint_picker.flow_control is not None and not enabled:
            log.warning(
                "the config has a flowControl block but not the flowControl feature gate: not enforced"
            )
        for caveat in cfg.flow_control_caveats:
            log.warning("%s", caveat)
        self.flow.configure(enabled=enabled, limits=flow_limits(cfg.endpoint_picker.flow_control))

    # -------------------------------------------------------------------------------- config reload
    def _uses_config_objectives(self) -> bool:
        """Objectives/rewrites come from the config document unless the CRD watchers provide them."""
        return not self.settings.pool_name or bool(self.settings.static_endpoints)

    def _apply_objectives(self, cfg: PickerConfig) -> None:
        if self._uses_config_objectives():
            self.datastore.objectives.replace_all(config_objectives(cfg))
            self.datastore.rewrites.replace_all(config_rewrites(cfg))

    def _config_changed(self, result: ReloadResult, active: ActiveConfig) -> None:
        if result.result != "applied":
            return
        cfg = active.config
        if self.extproc is not None:
            self.extproc.body_budget.limit = body_budget(cfg, self.settings)
        if self._kube is not None and cfg.metrics_extractor.engine_label_key != self._engine_label:
            self._engine_label = cfg.metrics_extractor.engine_label_key
            self._kube.engine_label_changed()
        self.telemetry.staleness_s = cfg.staleness_threshold or self.settings.metrics_staleness_threshold
        configure_health(self.datastore, active, self.external)
        try:
            extractor = cfg.metrics_extractor
            self.scraper.set_engines(engine_specs_for(extractor), extractor.default_engine)
        except ValueError as exc:  # validated at load; a mismatch here is a bug worth a loud line
            log.error("engine metric specs not applied: %s", exc)
        self._apply_objectives(cfg)
        self.datastore.set_prices(PriceBook.from_config(cfg.settings.endpoint_prices))
        self.director.external.sync(cfg.settings.external_endpoints, cfg.settings.spillover)
        self._configure_signals(active)
        self.tenants.apply_logged(cfg.settings.tenants)
        self._configure_flow(cfg)
        self._check_scaling(cfg)

    def _check_scaling(self, cfg: PickerConfig) -> None:
        scaling = cfg.scaling
        if scaling is not None and self._scaler is None and self.settings.static_endpoints:
            log.warning(
                "the config has a scaling section, but scaling needs a Kubernetes pool (--pool-name or "
                "--endpoint-selector): ignored with --static-endpoints"
            )

    # ------------------------------------------------------------------------------------ sources
    def _static_pool(self) -> None:
        s = self.settings
        endpoints = parse_static_endpoints(s.static_endpoints)
        self.datastore.set_pool(
            PoolInfo(
                name=s.effective_pool_name,
                namespace=s.pool_namespace,
                target_ports=tuple(sorted({e.port for e in endpoints})),
            )
        )
        self.datastore.replace_endpoints(endpoints)

    def _kube_sources(self) -> Any:
        from picker.kube.client import load_api_client
        from picker.kube.runner import KubeSources

        s = self.settings
        api = load_api_client(s.kubeconfig or None)
        self._api_client = api
        return KubeSources(
            api,
            self.datastore,
            self.config_store if s.config_configmap else None,
            namespace=s.pool_namespace,
            pool_name=s.pool_name if not s.endpoint_selector else "",
            pool_group=s.pool_group,
            endpoint_selector=s.endpoint_selector or None,
            target_ports=s.endpoint_target_ports,
            standalone_name=s.standalone_name,
            metrics_port=s.model_server_metrics_port or None,
            configmap=s.config_configmap or None,
            configmap_key=s.config_configmap_key,
            leader_election=s.ha_enable_leader_election,
            engine_label=lambda: self.config_store.active.config.metrics_extractor.engine_label_key,
            lease_duration=s.leader_lease_duration,
            renew_deadline=s.leader_renew_deadline,
            retry_period=s.leader_retry_period,
        )

    def _wake_scaler(self) -> None:
        if self._scaler is not None:
            self._scaler.wake()

    def held_elsewhere(self, source: object, count: int) -> None:
        """Requests held for a first replica in another process (a ``--workers`` worker, ``source``): counted
        with this process's own, and a new one wakes the scaler."""
        before = self._held_remote.get(source, 0)
        if count > 0:
            self._held_remote[source] = count
        else:
            self._held_remote.pop(source, None)
        if count > before:
            self._wake_scaler()

    def held_requests(self) -> int:
        """Requests waiting for a first replica, in every ext_proc process of this EPP."""
        return self.hold.held + sum(self._held_remote.values())

    def _build_scaler(self, kube: Any) -> Any:
        """The scaler over this process's datastore, acting on the workload through ``kube``'s API client
        (``picker.kube.scale``), leading when ``kube`` leads. Idle until a ``scaling`` section is applied."""
        from picker.kube.configmap import EventRecorder
        from picker.kube.scale import ScaleTargetClient
        from picker.scaler.controller import Scaler
        from picker.scaler.metrics import ScalerMetrics
        from picker.scaler.signals import DatastoreSignals

        api, namespace = self._api_client, self.settings.pool_namespace
        recorder = EventRecorder(api, instance=kube.identity)
        return Scaler(
            section=lambda: self.config_store.active.config.scaling,
            actuator_for=lambda t: ScaleTargetClient(
                api, namespace=t.namespace or namespace, kind=t.kind, name=t.name, recorder=recorder
            ),
            pool=DatastoreSignals(
                self.datastore,
                self.config_store,
                staleness_s=lambda: self.telemetry.staleness_s,
                held=self.held_requests,
                tokens=self.telemetry.tokens_served,
            ),
            marker=self.datastore,
            history_for=self._history_for,
            observer=ScalerMetrics(self.telemetry.registry, held=self.held_requests),
            is_leader=lambda: kube.is_leader,
        )

    @staticmethod
    def _history_for(cfg: ScalingConfig) -> Any:
        """The scaler's demand history: Prometheus, the token rate too when the sizing counts tokens."""
        from picker.scaler.history import PrometheusHistory

        if cfg.forecast is None:
            return None
        return PrometheusHistory(cfg.forecast, tokens=cfg.replica_capacity.tokens_per_second is not None)

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
        """Bind every port and load the static pool; returns the bound ports."""
        s = self.settings
        self._apply_objectives(self.config_store.active.config)
        initial = self.config_store.active.config
        self.datastore.set_prices(PriceBook.from_config(initial.settings.endpoint_prices))
        self.director.external.sync(initial.settings.external_endpoints, initial.settings.spillover)
        self._configure_signals(self.config_store.active)
        self.tenants.apply(self.config_store.active.config.settings.tenants)  # ConfigError: exit 2
        if s.static_endpoints:
            try:
                self._static_pool()
            except ValueError as exc:
                raise StartupError(f"--static-endpoints: {exc}") from exc
        elif s.pool_name or s.endpoint_selector:
            try:
                self._kube = self._kube_sources()
            except PickerError as exc:
                raise StartupError(f"--kubeconfig: {exc.message}") from exc
            self._scaler = self._build_scaler(self._kube)
        self._check_scaling(self.config_store.active.config)
        if self.metrics_auth is not None and self._api_client is None:
            from picker.kube.client import load_api_client

            self._api_client = load_api_client(s.kubeconfig or None)
        if self.tracing is not None:
            self.tracing.start()
        if self.extproc is not None:
            await bind_server("--grpc-port", s.host, s.grpc_port, self.extproc.start())
        await bind_server("--grpc-health-port", s.host, s.grpc_health_port, self.health_server.start())
        metrics_port = listen_server("--metrics-port", s.host, s.metrics_port, self.metrics_server)
        admin_port = listen_server("--admin-port", s.admin_bind, s.admin_port, self.admin_server)
        grpc_port = self.extproc.bound_port if self.extproc is not None else s.grpc_port
        self.ports = Ports(grpc_port, self.health_server.bound_port, metrics_port, admin_port)
        return self.ports

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
            await self._shutdown(None)
            raise
        if on_started is not None:
            on_started(ports)
        log.info(
            "picker serving: ext_proc :%d (%s), health :%d, metrics :%d, admin %s:%d, pool %s, %d endpoints",
            ports.grpc,
            "TLS" if self.settings.secure_serving else "plaintext",
            ports.health,
            ports.metrics,
            self.settings.admin_bind,
            ports.admin,
            self.settings.effective_pool_name,
            len(self.datastore),
        )
        self._log_metrics_auth(ports.metrics)
        tasks: dict[str, Coroutine[Any, Any, None]] = {
            "scraper": self.scraper.run(),
            "metrics": self.metrics_server.serve(stopping=self._stop.is_set),
            "admin": self.admin_server.serve(stopping=self._stop.is_set),
        }
        if self.file_watcher is not None:
            tasks["config-file"] = self.file_watcher.run()
        tasks["tenants"] = self.tenants.run()
        tasks["flow-control"] = self.flow.run()
        if self._kube is not None:
            tasks["kubernetes"] = self._kube.run()
        if self._scaler is not None:
            tasks["scaler"] = self._scaler.run()
        gpu = self._gpu_source()
        if gpu is not None:
            tasks["gpu-signal"] = gpu.run()
        if self.signals is not None:
            tasks["prometheus-signals"] = self.signals.run()
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
            await self._shutdown(gpu)

    @staticmethod
    async def _run_group(tasks: dict[str, Coroutine[Any, Any, None]]) -> None:
        async with asyncio.TaskGroup() as tg:
            for name, coro in tasks.items():
                tg.create_task(coro, name=name)
        raise RuntimeError("all service tasks ended")

    def _gpu_source(self) -> Any:
        if not self.settings.prometheus_url:
            return None
        from picker.scrape.gpu import GpuUtilizationSource

        s = self.settings
        return GpuUtilizationSource(
            self.datastore,
            url=s.prometheus_url,
            namespace=s.pool_namespace,
            query=s.gpu_query or None,
            interval_s=s.gpu_poll_interval,
        )

    def _configure_signals(self, active: ActiveConfig) -> None:
        """The ``prometheus-scorer`` queries of the active config (picker/scrape/signals.py)."""
        scorers = [
            ws.scorer
            for p in active.profiles.by_name.values()
            for ws in p.scorers
            if isinstance(ws.scorer, PrometheusScorer)
        ]
        queries = {s.key for s in scorers}
        if self.signals is not None:
            self.signals.configure_from(scorers)
        elif queries:
            log.warning(
                "prometheus-scorer configured without --prometheus-url: its %d quer%s cannot be evaluated "
                "and it scores every endpoint alike",
                len(queries),
                "y" if len(queries) == 1 else "ies",
            )

    async def _shutdown(self, gpu: Any) -> None:
        self.metrics_server.stop()
        self.admin_server.stop()
        # Streams in progress get a grace period: Envoy retries elsewhere if we vanish mid-request.
        if self.extproc is not None:
            self.hold.close()
            await self.extproc.stop(grace=5.0)
        if self.tracing is not None:
            await self.tracing.close()
        await self.health_server.stop(grace=None)
        if self._scaler is not None:
            await self._scaler.close()
        if self._kube is not None:
            await self._kube.close()
        if self._api_client is not None:
            self._api_client.close()
        if gpu is not None:
            await gpu.close()
        if self.signals is not None:
            await self.signals.close()
        await self.scraper.close()
        self.metrics_server.close()
        self.admin_server.close()
