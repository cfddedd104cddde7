"""One InferencePool served by this process (:class:`ServedPool`): its endpoints, scoring document, router,
ext_proc listener, scrape loop, Kubernetes watchers and scaler.

:class:`picker.service.Service` runs one of these per pool next to what the process has once (the gRPC
health port, the metrics and admin servers, the Kubernetes API client). Everything here is per pool: two
pools share no endpoint, no config document, no accounting and no metric family object. Constructing it
starts nothing and reads nothing; :meth:`ServedPool.start` loads the pool's source and binds its ext_proc
port, :meth:`ServedPool.tasks` are its long-running parts, :meth:`ServedPool.close` undoes both.

Why one module: it is the composition of one pool's parts (datastore, config store, telemetry, tenants,
flow control, director, ext_proc server, scraper, sources, scaler) and what a config reload changes in
each; split, a reload's effects would be spread over modules that each hold half of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from picker.config import PickerConfig
from picker.config.scaling import ScalingConfig
from picker.errors import StartupError
from picker.extproc.budget import BodyBudget
from picker.extproc.health import HealthState
from picker.extproc.protocol import ResponseSkip
from picker.reload import ConfigFileWatcher
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
from picker.telemetry import ExternalCollector, Telemetry
from picker.tenants.flow import FlowController, flow_limits
from picker.tenants.ledger import now_wall
from picker.tenants.service import TenantService
from picker.tracing import Tracing
from picker.wiring import (
    BuildInfo,
    bind_server,
    body_budget_caveat,
    config_objectives,
    config_rewrites,
    configure_health,
    extproc_server,
    pool_director,
    skip_response_rule,
    snapshot_interval,
)
from scoring.scorers import PrometheusScorer

log = logging.getLogger("picker")

#: appProtocols each request parser can serve (reference §1.12)
_PARSER_PROTOCOLS: Mapping[str, frozenset[str] | None] = {
    "openai-parser": frozenset({"http", "kubernetes.io/h2c"}),
    "vllmgrpc-parser": frozenset({"kubernetes.io/h2c"}),
    "passthrough-parser": None,
}


class ServedPool:
    """Everything one pool needs. Constructing it starts nothing; :meth:`start`, then run :meth:`tasks`."""

    def __init__(
        self,
        settings: Settings,
        config: PickerConfig,
        *,
        registry: CollectorRegistry,
        config_text: str = "",
        config_source: str = "default",
        build: BuildInfo | None = None,
        datastore: Datastore | None = None,
        serve_extproc: bool = True,
        request_registry: CollectorRegistry | None = None,
        prefix: PrefixCacheState | None = None,
        tracing: Tracing | None = None,
        shared_budget: BodyBudget | None = None,
        several_pools: bool = False,
        wall_clock: Callable[[], float] = now_wall,
    ) -> None:
        """``settings`` are this pool's (its name, source, ext_proc port, config file); ``registry`` is
        where its metrics register; ``tracing``: the process's (``--tracing``; started and closed by the
        service); ``shared_budget``: the process's body budget when it serves several pools (this pool's
        budget draws from it too); ``several_pools``: this process serves several pools (a ``--workers``
        supervisor too, which has no body budget of its own but says when a document's is capped);
        ``wall_clock``: the UTC epoch seconds the tenants' and external endpoints' budget windows (minute,
        hour, day, month) are measured on (tests stand it still, so that no window ends mid-test).
        ``datastore``, ``serve_extproc``, ``request_registry`` and ``prefix`` are for the ``--workers``
        supervisor, as in :class:`picker.service.Service`."""
        self.settings = settings
        self._several_pools = several_pools
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
        #: the config's external endpoints: budgets and passive health (``picker.routing.external``)
        self.external = ExternalCapacity(clock=wall_clock)
        self.telemetry = Telemetry(
            self.datastore,
            registry=registry,
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
        #: tenant metering and budgets; off until a config with a ``tenants`` section is applied (start)
        self.tenants = TenantService(
            registry,
            label_values=settings.metrics_label_max_values,
            label_length=settings.metrics_label_max_length,
            redis_scope=self.name if several_pools else "",
            clock=wall_clock,
        )
        self.config_store.add_check(lambda cfg: self.tenants.prepare(cfg.settings.tenants))
        #: flow control (the ``flowControl`` feature gate): fair queues while the pool is saturated
        self.flow = FlowController(
            self._saturation,
            registry=registry,
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
        self.director = pool_director(
            self.datastore,
            self.config_store,
            settings,
            observer=self.telemetry,
            tenancy=self.tenants.tenancy,
            flow=self.flow,
            hold=self.hold,
            prefix=self.prefix,
            external=self.external,
        )
        #: the pool's Kubernetes sources and scaler, built by :meth:`start` (None with static endpoints)
        self.kube: Any = None
        self.scaler: Any = None
        self._engine_label = config.metrics_extractor.engine_label_key
        self._gpu: Any = None
        #: ``--tracing``: this pool's tracer over the process's one exporter (the service's ``tracing``)
        self.tracer = tracing.for_pool(self.telemetry.pool_name) if tracing is not None else None
        self.extproc = (
            extproc_server(
                self.director,
                self.telemetry,
                settings,
                self.config_store,
                health=self.health_state,
                reuse_port=settings.workers > 1,
                several_pools=several_pools,
                shared_budget=shared_budget,
                tracer=self.tracer,
            )
            if serve_extproc
            else None
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
        registry.register(ExternalCollector(self.external.stats, self.telemetry.pool_name))
        self._configure_flow(config)

    @property
    def name(self) -> str:
        """The pool's name as the flags give it (its metrics and the admin API use it)."""
        return self.settings.effective_pool_name

    # ------------------------------------------------------------------------------------- health
    def health_state(self) -> HealthState:
        pool = self.datastore.pool
        allowed = _PARSER_PROTOCOLS.get(self.config_store.active.config.parser)
        protocol_ok = pool is None or allowed is None or pool.app_protocol in allowed
        kube = self.kube
        return HealthState(
            synced=self.datastore.synced,
            leader=bool(kube is None or kube.is_leader),
            protocol_ok=protocol_ok,
            leader_election=self.settings.ha_enable_leader_election,
        )

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
        self._check_body_budget(cfg)
        if self.kube is not None and cfg.metrics_extractor.engine_label_key != self._engine_label:
            self._engine_label = cfg.metrics_extractor.engine_label_key
            self.kube.engine_label_changed()
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
        if scaling is not None and self.scaler is None and self.settings.static_endpoints:
            log.warning(
                "the config has a scaling section, but scaling needs a Kubernetes pool (--pool-name or "
                "--endpoint-selector): ignored with --static-endpoints"
            )

    def _check_body_budget(self, cfg: PickerConfig) -> None:
        """Several pools: a document asking for more buffered bodies than the flag gets the flag (see
        :func:`picker.wiring.body_budget`), said at start and at every reload that still asks."""
        if self._several_pools and (caveat := body_budget_caveat(cfg, self.settings, self.name)) is not None:
            log.warning("%s", caveat)

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

    def _kube_sources(self, api: Any) -> Any:
        from picker.kube.runner import KubeSources

        s = self.settings
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
        if self.scaler is not None:
            self.scaler.wake()

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

    def _build_scaler(self, kube: Any, api: Any) -> Any:
        """The scaler over this pool's datastore, acting on the workload through ``api``
        (``picker.kube.scale``), leading when ``kube`` leads. Idle until a ``scaling`` section is applied."""
        from picker.kube.configmap import EventRecorder
        from picker.kube.scale import ScaleTargetClient
        from picker.scaler.controller import Scaler
        from picker.scaler.metrics import ScalerMetrics
        from picker.scaler.signals import DatastoreSignals

        namespace = self.settings.pool_namespace
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

    # --------------------------------------------------------------------------------------- run
    async def start(self, api: Callable[[], Any]) -> int | None:
        """Apply the initial config, load the static pool or build the Kubernetes sources (``api`` gives
        the process's API client, loaded once for every pool), bind the ext_proc port. Returns the port
        bound, None without an ext_proc server (a ``--workers`` supervisor)."""
        s = self.settings
        active = self.config_store.active
        initial = active.config
        self._apply_objectives(initial)
        self.datastore.set_prices(PriceBook.from_config(initial.settings.endpoint_prices))
        self.director.external.sync(initial.settings.external_endpoints, initial.settings.spillover)
        self._configure_signals(active)
        self.tenants.apply(initial.settings.tenants)  # ConfigError: exit 2
        if s.static_endpoints:
            try:
                self._static_pool()
            except ValueError as exc:
                raise StartupError(f"--static-endpoints: {exc}") from exc
        elif s.pool_name or s.endpoint_selector:
            client = api()
            self.kube = self._kube_sources(client)
            self.scaler = self._build_scaler(self.kube, client)
        self._check_scaling(initial)
        self._check_body_budget(initial)
        self._gpu = self._gpu_source()
        if self.extproc is None:
            return None
        await bind_server(s.grpc_port_flag, s.host, s.grpc_port, self.extproc.start())
        return self.extproc.bound_port

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The pool's long-running parts, by task name (call once, after :meth:`start`)."""
        tasks: dict[str, Coroutine[Any, Any, None]] = {"scraper": self.scraper.run()}
        if self.file_watcher is not None:
            tasks["config-file"] = self.file_watcher.run()
        tasks["tenants"] = self.tenants.run()
        tasks["flow-control"] = self.flow.run()
        if self.kube is not None:
            tasks["kubernetes"] = self.kube.run()
        if self.scaler is not None:
            tasks["scaler"] = self.scaler.run()
        if self._gpu is not None:
            tasks["gpu-signal"] = self._gpu.run()
        if self.signals is not None:
            tasks["prometheus-signals"] = self.signals.run()
        return tasks

    async def stop_serving(self) -> None:
        """Stop taking streams; those in progress get a grace period (Envoy retries elsewhere if we vanish
        mid-request)."""
        if self.extproc is not None:
            self.hold.close()
            await self.extproc.stop(grace=5.0)

    async def close(self) -> None:
        """Close the sources and the scraper (after :meth:`stop_serving`)."""
        if self.scaler is not None:
            await self.scaler.close()
        if self.kube is not None:
            await self.kube.close()
        if self._gpu is not None:
            await self._gpu.close()
        if self.signals is not None:
            await self.signals.close()
        await self.scraper.close()
