"""What the composition roots share: the config a process starts with, a pool's director and ext_proc server
(:func:`pool_director`, :func:`extproc_server`) with the rules the server reads per request from the active
config, and the process-level set-up (uvloop, the start-up freeze, exit codes).

Used by :mod:`picker.service` (one process) and :mod:`picker.workers` (the ``--workers`` supervisor and
its workers), so neither imports the other's wiring, and nothing imports :mod:`picker.app`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from picker.config import PickerConfig, default_config, load_config_text, read_config_file
from picker.errors import ConfigError, PickerError, StartupError
from picker.extproc.budget import BodyBudget
from picker.extproc.health import HealthService, HealthState
from picker.extproc.observer import StreamObserver
from picker.extproc.protocol import ResponseSkip
from picker.extproc.server import ExtProcServer
from picker.extproc.spans import RequestTracer
from picker.extproc.tls import TLSConfig
from picker.routing.director import Director, DirectorObserver, RoutingState
from picker.routing.external import ExternalCapacity
from picker.routing.hold import EmptyPoolHold
from picker.routing.types import Dispatch, Router
from picker.settings import Settings
from picker.state.config_store import ActiveConfig, ConfigStore, ReloadResult
from picker.state.datastore import Datastore
from picker.state.health import OutlierPolicy
from picker.state.latency import LatencySettings
from picker.state.objectives import ModelRewrite, Objective, RewriteRule, RewriteTarget
from picker.state.prefix import PrefixCacheState
from picker.tenants import Tenancy
from picker.tenants.flow import FlowController
from scoring.scorers import LatencyScorer

if TYPE_CHECKING:
    from picker.admin.server import HttpServer  # the type only: a worker never loads the web server

log = logging.getLogger("picker")


def load_initial_config(settings: Settings) -> tuple[PickerConfig, str, str]:
    """The config at start: ``--config-file``, ``--config-text`` or the built-in default."""
    if settings.config_file:
        text = read_config_file(settings.config_file)  # ConfigError: one line at start, exit 2
        config = load_config_text(text, source=settings.config_file, model_header=settings.model_header)
        return config, text, f"file:{settings.config_file}"
    if settings.config_text:
        config = load_config_text(
            settings.config_text, source="--config-text", model_header=settings.model_header
        )
        return config, settings.config_text, "flag:--config-text"
    return default_config(model_header=settings.model_header), "", "default"


def start_documents(settings: Settings) -> list[tuple[PickerConfig, str, str]]:
    """Each pool's start document (:func:`load_initial_config`), in ``--pool`` order; a ConfigError names
    the pool when there are several."""
    several = len(settings.pools) > 1
    starts = []
    for ps in settings.pool_settings():
        try:
            starts.append(load_initial_config(ps))
        except ConfigError as exc:
            if not several:
                raise
            raise ConfigError(f"pool {ps.pool_name}: {exc.message}") from exc
    return starts


def config_objectives(cfg: PickerConfig) -> list[Objective]:
    return [Objective(o.name, o.priority) for o in cfg.objectives]


def config_rewrites(cfg: PickerConfig) -> list[ModelRewrite]:
    out = []
    for order, r in enumerate(cfg.model_rewrites):
        rules = tuple(
            RewriteRule(
                matches=tuple(m.model.value for m in rule.matches),
                targets=tuple(RewriteTarget(t.model_rewrite, t.weight or 0) for t in rule.targets),
            )
            for rule in r.rules
        )
        out.append(ModelRewrite(r.name, rules, created=float(order)))
    return out


def snapshot_interval(settings: Settings) -> float:
    """How often landed scrapes are folded into a new snapshot: once per scrape period, at most 50 ms.

    So a pick sees the gauges as of the last publish: at the default 50 ms scraping an endpoint's newest page
    is 0-50 ms old (endpoints are scraped on staggered timers, so one lands every few ms) and reaches the
    picks within the next 50 ms: gauges up to about 100 ms old at the pick, about 50 on average. Our own
    accounting (``dispatched``, ``inflight``, the token charges) is live regardless, and a passive-health
    change is published at once. With ``--workers`` the supervisor publishes to the workers on the same
    cadence. Why not fresher: every new snapshot costs a rebuild and the scheduler's per-snapshot preparation,
    and a busy server pays it for every publish (at 20 ms, every 8th request at 400 requests/s), while the
    simulator, which models this publish (``benchmarks.sim.publish``), finds no capacity at SLO lost at 50 ms
    against 20 ms, nor won by phase-aligned scrape rounds (``benchmarks/RESULTS.md``, issue 18). The interval
    never exceeds the scrape period, so faster scraping still reaches the picks as often as it lands.
    """
    return min(0.05, settings.refresh_metrics_interval)


def configure_health(
    datastore: Datastore, active: ActiveConfig, external: ExternalCapacity | None = None
) -> None:
    """Passive health and the latency averages as the active config says: the ``outlier-detector``
    plugin's policy (defaults without one; the external endpoints' detector too) and the first
    ``latency-scorer``'s ``halfLife`` / ``maxAge`` in any profile (defaults without one: the averages are
    kept either way, for ``/debug/endpoints``)."""
    latency = next(
        (
            ws.scorer
            for scheduler in active.profiles.schedulers
            for ws in scheduler.scorers
            if isinstance(ws.scorer, LatencyScorer)
        ),
        None,
    )
    settings = (
        LatencySettings(half_life_s=latency.half_life, max_age_s=latency.max_age)
        if latency is not None
        else LatencySettings()
    )
    policy = OutlierPolicy.from_params(active.config.outlier_detection)
    datastore.configure_health(policy, settings)
    if external is not None:
        external.set_health_policy(policy)


def skip_response_rule(config: ConfigStore) -> Callable[[Dispatch], ResponseSkip]:
    """The "fewer messages" rule: may this request's response phases be skipped (ext_proc
    ``mode_override`` in the request-headers reply)?

    Only when the active config allows it (``responseProcessing: WhenNeeded`` and no feature that reads
    responses: see :attr:`picker.config.PickerConfig.may_skip_responses`) and the model was not
    rewritten (a rewritten model's name must be put back into the response). Then the body and trailers
    are skipped, and the response headers too unless passive health is on (the ``outlier-detector``,
    on by default), which needs their ``:status`` and served endpoint: one message instead of two to four
    either way. Read per request, so a config reload applies at once. A proxy without
    ``allow_mode_override`` ignores the override and sends the response anyway, which is then processed
    as usual.
    """

    def skip(dispatch: Dispatch) -> ResponseSkip:
        active = config.active
        if dispatch.restore is not None or not active.may_skip_responses:
            return ResponseSkip.NONE
        return ResponseSkip.BODY if active.needs_response_status else ResponseSkip.ALL

    return skip


def stream_config_rule(config: ConfigStore) -> Callable[[], tuple[int, bool, bool]]:
    """``(max body bytes, served-endpoint verifier on, header-only mode on)`` of the active config, read by
    the ext_proc server at the start of every stream so that a reload applies to the next request."""

    def current() -> tuple[int, bool, bool]:
        active = config.active
        return active.max_body_bytes, active.served_verifier, bool(active.model_header)

    return current


def shared_body_budget(settings: Settings, pools: int) -> BodyBudget | None:
    """The process-wide body budget the pools' budgets draw from when one process serves several pools
    (``--max-buffered-body-bytes``, divided among ``--workers``); None with one pool, whose own budget is
    the process's (see :mod:`picker.extproc.budget`)."""
    if pools <= 1:
        return None
    return BodyBudget(max(1, settings.max_buffered_body_bytes // settings.workers))


def body_budget(cfg: PickerConfig, settings: Settings, *, several_pools: bool = False) -> int:
    """Bytes of bodies this process's streams (of one pool, with ``several_pools``) may buffer at once:
    the config's ``request.maxBufferedBytes``, else ``--max-buffered-body-bytes``, divided among
    ``--workers``. With several pools the flag bounds the process, so a pool's document may lower its
    share but not raise it: a larger value is capped at the flag (and :func:`body_budget_caveat` says so)."""
    flag = settings.max_buffered_body_bytes
    total = cfg.settings.request.max_buffered_bytes or flag
    if several_pools:
        total = min(total, flag)
    return max(1, total // settings.workers)


def body_budget_caveat(cfg: PickerConfig, settings: Settings, pool: str) -> str | None:
    """Why pool ``pool``'s ``request.maxBufferedBytes`` is not what its document says, for a warning: a
    process serving several pools caps each pool's share at ``--max-buffered-body-bytes`` (the budget of
    all its pools together, :mod:`picker.extproc.budget`); None when the document is within it."""
    asked = cfg.settings.request.max_buffered_bytes
    flag = settings.max_buffered_body_bytes
    if asked is None or asked <= flag:
        return None
    return (
        f"pool {pool}: request.maxBufferedBytes ({asked} bytes) is above --max-buffered-body-bytes "
        f"({flag} bytes), which bounds the buffered bodies of every pool of this process together: "
        f"this pool's share is capped at {flag} bytes (lower the document's value or raise the flag)"
    )


def pool_director(
    state: RoutingState,
    config: ConfigStore,
    settings: Settings,
    *,
    stream: int = 0,
    observer: DirectorObserver,
    tenancy: Tenancy | None,
    flow: FlowController,
    hold: EmptyPoolHold,
    prefix: PrefixCacheState,
    external: ExternalCapacity,
) -> Director:
    """A pool's director, as the service and each ``--workers`` worker route with it: the process flags it
    reads (``--disable-endpoint-subset-filter``, ``--metrics-staleness-threshold``), no hold for a static
    endpoint list (nothing scales it from zero), and its random picks seeded from ``--seed`` plus
    ``stream`` (a worker's own stream, so workers do not pick in lockstep; unseeded without ``--seed``)."""
    seed = None if settings.seed is None else settings.seed + stream
    return Director(
        state,
        config,
        rng=np.random.default_rng(seed),
        disable_subset_filter=settings.disable_endpoint_subset_filter,
        observer=observer,
        tenancy=tenancy,
        flow=flow,
        hold=None if settings.static_endpoints else hold,
        staleness_s=settings.metrics_staleness_threshold,
        prefix=prefix,
        external=external,
    )


def extproc_server(
    router: Router,
    observer: StreamObserver,
    settings: Settings,
    config: ConfigStore,
    *,
    health: Callable[[], HealthState],
    reuse_port: bool,
    several_pools: bool,
    shared_budget: BodyBudget | None,
    tracer: RequestTracer | None,
    key_pair: tuple[bytes, bytes] | None = None,
) -> ExtProcServer:
    """A pool's ext_proc server, as the service and each ``--workers`` worker serve it: its listener, TLS
    and keepalive from the pool's ``settings``, its per-request rules read from the ``config`` store
    (:func:`skip_response_rule`, :func:`stream_config_rule`), the health service with ``health`` (with
    ``--health-checking``), and a body budget (:func:`body_budget`) that follows every applied reload.
    ``key_pair``: the self-signed certificate a ``--workers`` supervisor made once so that every worker
    presents the same one (None: the server makes its own at start, or reads ``--cert-path``)."""
    cfg = config.active.config
    tls = None
    if settings.secure_serving:
        tls = TLSConfig(
            cert_path=Path(settings.cert_path) if settings.cert_path else None,
            key_pair=key_pair,
            reload=settings.enable_cert_reload,
        )
    server = ExtProcServer(
        router,
        observer,
        port=settings.grpc_port,
        host=settings.host,
        tls=tls,
        max_body_bytes=cfg.max_body_bytes,
        served_verifier=cfg.served_verifier_enabled,
        health=HealthService(health) if settings.health_checking else None,
        reuse_port=reuse_port,
        skip_response=skip_response_rule(config),
        stream_config=stream_config_rule(config),
        keepalive_s=(settings.grpc_keepalive_time, settings.grpc_keepalive_timeout),
        max_buffered_bytes=body_budget(cfg, settings, several_pools=several_pools),
        shared_budget=shared_budget,
        tracer=tracer,
        stream_window=settings.grpc_stream_window,
    )
    budget = server.body_budget

    def rebudget(result: ReloadResult, active: ActiveConfig) -> None:
        if result.result == "applied":
            budget.resize(body_budget(active.config, settings, several_pools=several_pools))

    config.add_listener(rebudget)
    return server


def install_uvloop() -> None:
    """Run asyncio on uvloop when it is installed (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional speed-up
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def freeze_startup_objects(_ports: object = None) -> None:
    """Exempt everything built at start (modules, config, scheduler, pages) from garbage collection.

    Called once by the process entry points when serving starts, never by library code. Why: the cyclic
    collector's full passes walk every tracked object, and after start-up that is a few hundred thousand
    (grpc, numpy, pydantic, FastAPI, prometheus_client...) that will never be garbage. Under load each
    stream promotes a few survivors, so full passes keep coming; measured on the ext_proc path with
    ``benchmarks/bench_extproc.py``-style load, freezing cut the server's CPU per stream by about 10 %.
    Objects are still freed by reference counting; only cycles among frozen objects are never found.
    """
    gc.collect()
    gc.freeze()


def run_main(main: Coroutine[Any, Any, None]) -> int:
    """Run a serving coroutine on uvloop; returns the process exit code: 0, or 2 for an operator error
    (invalid configuration, a port in use, no Kubernetes credentials), reported as one log line."""
    install_uvloop()
    try:
        asyncio.run(main)
    except ConfigError as exc:
        log.error("invalid configuration: %s", exc.message)
        return 2
    except PickerError as exc:  # StartupError, the Kubernetes client's configuration error
        log.error("cannot start: %s", exc.message)
        return 2
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """What this build is (``inference_extension_info``): the image sets ``PICKER_BUILD_REF`` and
    ``PICKER_COMMIT``."""

    ref: str = ""
    commit: str = ""

    @classmethod
    def from_environment(cls) -> BuildInfo:
        return cls(ref=os.environ.get("PICKER_BUILD_REF", ""), commit=os.environ.get("PICKER_COMMIT", ""))


async def bind_server(flag: str, host: str, port: int, start: Coroutine[Any, Any, None]) -> None:
    """Start a gRPC server; a port that cannot be bound becomes a :class:`StartupError` naming the flag.

    The port is tried with a plain socket first (as gRPC binds it, with ``SO_REUSEADDR``): gRPC itself
    would log its own multi-line error before saying only "Failed to bind to address".
    """
    if port:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                start.close()
                raise cannot_listen(flag, host, port, exc) from exc
    try:
        await start
    except (RuntimeError, OSError) as exc:
        raise StartupError(f"{flag}: cannot listen on {host}:{port} (in use or not available)") from exc


def listen_server(flag: str, host: str, port: int, server: HttpServer) -> int:
    """Bind an HTTP server's socket; a port that cannot be bound becomes a :class:`StartupError` naming
    the flag. Returns the port bound."""
    try:
        return server.bind()
    except OSError as exc:
        raise cannot_listen(flag, host, port, exc) from exc


def cannot_listen(flag: str, host: str, port: int, exc: OSError) -> StartupError:
    """The error for a port that cannot be bound, in one format for every listener (the ext_proc port of
    each pool, health, metrics, admin, and the ``--workers`` supervisor's reservation of the ext_proc
    ports): ``FLAG: cannot listen on HOST:PORT: REASON``. ``flag`` is what the operator gave the port
    with (``--grpc-port``, ``--pool NAME``...), so the exit line says which setting to change; the reason
    is the system's ("Address already in use"), which scripts that retry on a taken port look for."""
    return StartupError(f"{flag}: cannot listen on {host}:{port}: {exc.strerror or exc}")
