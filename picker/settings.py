"""Process settings: ports, pool identity, transport and scrape cadence (flags → one frozen object).

Everything here is fixed for the life of the process. What operators tune at run time (weights,
thresholds, objectives, rewrites, engine metric names) lives in the scoring document instead
(:mod:`picker.config`), which is hot-reloaded.

Why one module: :class:`Settings` is the one list of what the flags set, each field with its unit, default
and reason, read top to bottom; split over modules, the fields of one process would be too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from picker.headers import header_name

#: ``OTEL_TRACES_SAMPLER`` values (the OpenTelemetry specification's built-in samplers)
Sampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_RATIO_SAMPLERS = frozenset({"traceidratio", "parentbased_traceidratio"})


class TracingSettings(BaseModel):
    """``--tracing``: where spans go and which are kept, from the standard OpenTelemetry variables
    (:meth:`from_environment`, read by the CLI). Defaults are the reference EPP's: OTLP over gRPC to
    ``http://localhost:4317``, ``parentbased_traceidratio`` at 0.1. The exporter's other standard
    variables (``OTEL_EXPORTER_OTLP_HEADERS``, ``_CERTIFICATE``, ``_TIMEOUT``, ``_COMPRESSION``), the batch
    processor's (``OTEL_BSP_*``) and ``OTEL_RESOURCE_ATTRIBUTES`` are read by the OpenTelemetry SDK itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``OTEL_SERVICE_NAME``: the ``service.name`` of every span
    service_name: str = Field("picker", min_length=1, max_length=256)
    #: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, else ``OTEL_EXPORTER_OTLP_ENDPOINT``: the collector's OTLP/gRPC
    #: endpoint, ``http://`` (plaintext) or ``https://`` (TLS)
    endpoint: str = "http://localhost:4317"
    #: ``OTEL_TRACES_SAMPLER``
    sampler: Sampler = "parentbased_traceidratio"
    #: ``OTEL_TRACES_SAMPLER_ARG``: the fraction of new traces kept by the ratio samplers
    ratio: float = Field(0.1, ge=0.0, le=1.0)

    @property
    def insecure(self) -> bool:
        """Plaintext gRPC to the collector (an ``http://`` endpoint)."""
        return self.endpoint.startswith("http://")

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> TracingSettings | None:
        """The settings the variables give; None for ``OTEL_TRACES_EXPORTER=none`` (no spans at all).
        Raises ValueError naming the variable for a value that is not supported (never a silent default)."""
        exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
        if exporter == "none":
            return None
        if exporter != "otlp":
            raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: picker exports otlp (over gRPC) or none")
        protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        if protocol and protocol.strip().lower() != "grpc":
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: picker exports over grpc only")
        name = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        endpoint = env.get(name, "").strip()
        if not endpoint:
            name = "OTEL_EXPORTER_OTLP_ENDPOINT"
            endpoint = env.get(name, "").strip() or "http://localhost:4317"
        try:
            url = urlsplit(endpoint)
            url.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
        except ValueError as exc:
            raise ValueError(f"{name}={endpoint!r}: {exc}") from None
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError(f"{name}={endpoint!r}: expected http://host:port or https://host:port")
        sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_traceidratio"
        if sampler not in get_args(Sampler):
            raise ValueError(
                f"OTEL_TRACES_SAMPLER={sampler!r}: one of {', '.join(get_args(Sampler))} (no sampler plugins)"
            )
        ratio = 0.1
        arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
        if arg and sampler in _RATIO_SAMPLERS:
            try:
                ratio = float(arg)
            except ValueError:
                ratio = -1.0
            if not 0.0 <= ratio <= 1.0:  # also NaN
                raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={arg!r}: a ratio from 0 to 1")
        service = env.get("OTEL_SERVICE_NAME", "").strip() or "picker"
        return cls(service_name=service, endpoint=endpoint, sampler=sampler, ratio=ratio)


#: an InferencePool's name: a Kubernetes object name (RFC 1123 subdomain)
_POOL_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
#: pools one process may serve (``--pool``): each has its own ext_proc server, scrape loop and watches
MAX_POOLS = 64


class PoolSpec(BaseModel):
    """One ``--pool NAME=PORT[,config-file=PATH][,config-configmap=NAME][,config-configmap-key=KEY]``: an
    InferencePool (in ``--pool-namespace``) served on its own ext_proc port, with its own scoring document.
    A pool that names no document takes the process's ``--config-file`` / ``--config-text`` /
    ``--config-configmap``; one that names either takes only its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    #: the ext_proc port the pool's ``endpointPickerRef.port`` names (how the EPP tells pools apart)
    port: int = Field(ge=1, le=65535)
    config_file: str = ""
    config_configmap: str = ""
    config_configmap_key: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _POOL_NAME.fullmatch(v):
            raise ValueError(f"pool name {v!r} is not a Kubernetes object name (lowercase RFC 1123)")
        return v

    @property
    def names_a_document(self) -> bool:
        return bool(self.config_file or self.config_configmap)

    @classmethod
    def parse(cls, text: str) -> PoolSpec:
        """``NAME=PORT[,key=value...]`` (keys: ``config-file``, ``config-configmap``,
        ``config-configmap-key``); ValueError with the reason otherwise."""
        head, _, rest = text.partition(",")
        name, sep, port = head.partition("=")
        if not sep or not port.strip().isdigit() or not port.strip().isascii():
            raise ValueError(f"{text!r} is not NAME=PORT[,config-file=PATH|,config-configmap=NAME...]")
        fields: dict[str, object] = {"name": name.strip(), "port": int(port)}
        for item in rest.split(",") if rest else ():
            key, sep, value = item.partition("=")
            key = key.strip()
            if key not in _POOL_KEYS or not sep or not value.strip():
                raise ValueError(
                    f"{text!r}: {key!r} is not KEY=VALUE with a key among {', '.join(sorted(_POOL_KEYS))}"
                )
            if _POOL_KEYS[key] in fields:
                raise ValueError(f"{text!r}: {key} given twice")
            fields[_POOL_KEYS[key]] = value.strip()
        return cls.model_validate(fields)


_POOL_KEYS = {
    "config-file": "config_file",
    "config-configmap": "config_configmap",
    "config-configmap-key": "config_configmap_key",
}


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # --------------------------------------------------------------------------------- ports
    #: ext_proc gRPC port (reference default 9002)
    grpc_port: int = Field(9002, ge=0, le=65535)
    #: what gave ``grpc_port``, named by the error when the port cannot be bound: ``--grpc-port``, or
    #: ``--pool NAME`` in a pool's settings (:meth:`for_pool`); not a flag
    grpc_port_flag: str = "--grpc-port"
    #: gRPC health port, plaintext (reference default 9003)
    grpc_health_port: int = Field(9003, ge=0, le=65535)
    #: HTTP port of /metrics, /healthz and /readyz (reference default 9090)
    metrics_port: int = Field(9090, ge=0, le=65535)
    #: bind address of the ext_proc, health and metrics servers
    host: str = "0.0.0.0"  # noqa: S104 - a server in a pod listens on all interfaces
    #: HTTP port of the admin API (/config, /debug/*, POST /debug/explain); not a reference flag (the
    #: reference has no admin API). Its own port so that the metrics port, which the Service exposes, shows
    #: scrapers nothing but metrics.
    admin_port: int = Field(9091, ge=0, le=65535)
    #: bind address of the admin API: loopback by default, so only someone on the Pod (kubectl
    #: port-forward / exec) reaches it; 0.0.0.0 opens it to the network (restrict it with a NetworkPolicy)
    admin_bind: str = "127.0.0.1"
    #: also register grpc.health.v1 on the ext_proc port
    health_checking: bool = False
    #: distinct values and longest value of each metric label chosen by peers (model names from request
    #: bodies, rewrite names); past either, the value is recorded as ``other`` (:mod:`picker.labels`)
    metrics_label_max_values: int = Field(1000, ge=1, le=100_000)
    metrics_label_max_length: int = Field(256, ge=16, le=4096)
    #: bytes of request/response bodies all streams may buffer at once, and separately of replies handed to
    #: gRPC but not yet written (``--workers N``: 1/N per worker); a request that would exceed it gets 503 at
    #: once, a reply waits for room. The config's ``request.maxBufferedBytes`` overrides.
    max_buffered_body_bytes: int = Field(256 << 20, ge=1 << 20, le=1 << 40)
    #: cap on an admin API request body (``POST /debug/explain``), bytes; larger → 413 while reading
    admin_max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    #: seconds between the ext_proc server's keepalive pings on each connection, and how long a ping may
    #: go unanswered before the connection (and its streams) is closed: a frozen proxy is detected in
    #: time + timeout instead of gRPC's default of two hours
    grpc_keepalive_time: float = Field(30.0, gt=0, le=7200)
    grpc_keepalive_timeout: float = Field(10.0, gt=0, le=3600)
    #: HTTP/2 receive window of each ext_proc stream, bytes: what gRPC holds of a stream before its handler
    #: reads it (README "Limits"); 0: gRPC's automatic window (4 MiB or more a stream, its probe grows it)
    grpc_stream_window: int = Field(256 << 10, ge=0, le=1 << 30)

    @field_validator("grpc_stream_window")
    @classmethod
    def _window_not_tiny(cls, v: int) -> int:
        if 0 < v < 16 << 10:
            raise ValueError("must be 0 (automatic) or at least 16Ki (one HTTP/2 frame)")
        return v

    # ---------------------------------------------------------------------------------- pool
    pool_name: str = ""
    #: ``--pool`` (repeatable): several InferencePools in one process, each on its own ext_proc port; the
    #: other pool flags (namespace, group, scraping, leader election...) apply to every one of them
    pools: tuple[PoolSpec, ...] = ()
    #: "" → env NAMESPACE → "default" (resolved by the CLI)
    pool_namespace: str = "default"
    pool_group: str = "inference.networking.k8s.io"
    #: standalone Kubernetes mode: ``k=v,k2=v2`` pod selector (no InferencePool CRD)
    endpoint_selector: str = ""
    endpoint_target_ports: tuple[int, ...] = ()
    #: pool name in standalone selector mode (the reference derives it from POD_NAME)
    standalone_name: str = "standalone"
    #: fixed pool without Kubernetes: ``host:port[@engine],...``
    static_endpoints: str = ""
    disable_endpoint_subset_filter: bool = False
    #: header-only mode (``--model-header``): the request header carrying the model; "" = off. The
    #: PickerConfig document's ``request.modelHeader`` overrides it (see ``picker.config.document``).
    model_header: str = ""
    ha_enable_leader_election: bool = False
    #: Lease timings in seconds (client-go's defaults 15 s / 10 s / 2 s). Not reference flags: exposed as
    #: hidden flags (``--leader-lease-duration``, ``--leader-renew-deadline``, ``--leader-retry-period``)
    #: for tests and clusters that need a faster failover. A standby takes over at most ``lease_duration``
    #: after the leader's last renewal; the leader steps down when it could not renew for
    #: ``renew_deadline``; every replica retries every ``retry_period``. Must hold:
    #: lease_duration > renew_deadline > 1.2 x retry_period (so two replicas never both lead).
    leader_lease_duration: float = Field(15.0, gt=0, le=3600)
    leader_renew_deadline: float = Field(10.0, gt=0, le=3600)
    leader_retry_period: float = Field(2.0, gt=0, le=3600)
    kubeconfig: str = ""
    #: watch the scoring document in this ConfigMap (pool namespace) through the API
    config_configmap: str = ""
    config_configmap_key: str = "config.yaml"

    # ----------------------------------------------------------------------------- scraping
    #: seconds between scrapes of one endpoint (reference 50ms)
    refresh_metrics_interval: float = Field(0.05, gt=0, le=3600)
    #: per-scrape timeout in seconds, independent of the interval (reference 1s)
    scrape_timeout: float = Field(1.0, gt=0, le=600)
    #: endpoints whose last scrape is older than this are left out of pool gauges (reference 2s)
    metrics_staleness_threshold: float = Field(2.0, gt=0, le=3600)
    #: scrape metrics on this port instead of the serving port (reference flag; one target port only)
    model_server_metrics_port: int = Field(0, ge=0, le=65535)
    #: how many scrapes may be in flight at once
    scrape_concurrency: int = Field(256, ge=1, le=100_000)
    #: cap on one ``/metrics`` page in bytes, on the wire and decoded, enforced while reading (a page
    #: over it is a failed scrape). Memory for scraping is at most this times ``scrape_concurrency``.
    scrape_max_page_bytes: int = Field(8 << 20, ge=1024, le=1 << 30)

    # ------------------------------------------------------------------------------- config
    config_file: str = ""
    config_text: str = ""
    #: seconds between checks of --config-file for changes (ConfigMap volumes swap a symlink)
    config_poll_interval: float = Field(1.0, gt=0, le=3600)

    # ------------------------------------------------------------------------------ security
    secure_serving: bool = True
    #: directory with tls.crt / tls.key; empty → self-signed certificate generated at start
    cert_path: str = ""
    #: re-read tls.crt / tls.key when they change (a rotated Secret), checked at each new connection;
    #: needs ``cert_path`` (the CLI warns otherwise)
    enable_cert_reload: bool = False
    #: ``--metrics-endpoint-auth``: ``/metrics`` answers only bearer tokens the API server authenticates
    #: (TokenReview) whose user RBAC allows ``get`` on the non-resource URL ``/metrics``
    #: (SubjectAccessReview), as the reference does by default. None (flag not given) means on when the EPP
    #: talks to Kubernetes (``--pool-name`` or ``--endpoint-selector``) and off with ``--static-endpoints``,
    #: which has no API server to ask (said once in the log at start); ``True`` with static endpoints uses
    #: ``--kubeconfig`` (or the in-cluster account) for the reviews only. See :attr:`metrics_auth`.
    metrics_endpoint_auth: bool | None = None

    # ------------------------------------------------------------------------------- signals
    #: Prometheus base URL for the optional DCGM GPU-utilization signal
    prometheus_url: str = ""
    #: PromQL override for the GPU signal (must return one series per pod with a ``pod`` label)
    gpu_query: str = ""
    gpu_poll_interval: float = Field(5.0, gt=0, le=3600)

    # ------------------------------------------------------------------------------ process
    #: ext_proc worker processes sharing the port (SO_REUSEPORT)
    workers: int = Field(1, ge=1, le=64)
    #: log verbosity as the reference's -v (2 = default, 4 = debug)
    verbosity: int = 2
    log_json: bool = False
    #: seed for tie-breaks and weighted draws; None = from OS entropy
    seed: int | None = None
    #: ``--tracing``: a span per routed request, exported over OTLP/gRPC (:mod:`picker.tracing`); None = off,
    #: the default (the reference's flag defaults to on, its chart to off: README "Tracing")
    tracing: TracingSettings | None = None

    @field_validator("model_header")
    @classmethod
    def _model_header(cls, v: str) -> str:
        return header_name(v) if v else ""

    @model_validator(mode="after")
    def _one_pool_source(self) -> Settings:
        sources = [bool(self.pool_name), bool(self.endpoint_selector), bool(self.static_endpoints)]
        if self.pools:
            self._check_pools()
        elif sum(sources) > 1 and not (self.pool_name and self.static_endpoints):
            raise ValueError("set only one of --pool-name, --endpoint-selector, --static-endpoints")
        elif not any(sources):
            raise ValueError(
                "one of --pool-name, --pool, --endpoint-selector or --static-endpoints is required"
            )
        if self.endpoint_selector and not self.endpoint_target_ports:
            raise ValueError("--endpoint-selector needs --endpoint-target-ports")
        if not 0 < len(self.endpoint_target_ports) <= 8 and self.endpoint_target_ports:
            raise ValueError("--endpoint-target-ports takes 1 to 8 ports")
        if self.admin_port and self.admin_port == self.metrics_port:
            raise ValueError("--admin-port must differ from --metrics-port")
        if self.config_file and self.config_text:
            raise ValueError("--config-file and --config-text are mutually exclusive")
        if not self.leader_lease_duration > self.leader_renew_deadline > self.leader_retry_period * 1.2:
            raise ValueError(
                "leader election needs --leader-lease-duration > --leader-renew-deadline > "
                "1.2 x --leader-retry-period"
            )
        return self

    def _check_pools(self) -> None:
        """``--pool``: the combinations that cannot mean what they say, each refused with its reason."""
        if self.pool_name or self.endpoint_selector or self.static_endpoints:
            raise ValueError(
                "--pool names every pool this process serves: leave out --pool-name, --endpoint-selector "
                "and --static-endpoints"
            )
        if len(self.pools) > MAX_POOLS:
            raise ValueError(
                f"at most {MAX_POOLS} --pool per process (each has its own ext_proc server, "
                "scrape loop and watches); split the pools over several EPP Deployments"
            )
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"--pool: pool {_first_repeat(names)!r} is named twice")
        ports = [p.port for p in self.pools]
        if len(set(ports)) != len(ports):
            raise ValueError(
                f"--pool: port {_first_repeat(ports)} is given to two pools; the port is how the EPP "
                "tells pools apart (each InferencePool's endpointPickerRef names its own)"
            )
        taken = {self.grpc_health_port: "--grpc-health-port", self.metrics_port: "--metrics-port"}
        taken[self.admin_port] = "--admin-port"
        for p in self.pools:
            if p.port in taken:
                raise ValueError(f"--pool {p.name}: port {p.port} is also {taken[p.port]}")

    def pool_settings(self) -> tuple[Settings, ...]:
        """The settings of each pool this process serves: itself without ``--pool``, else one per
        ``--pool`` (its name, port and scoring document; everything else as given)."""
        if not self.pools:
            return (self,)
        return tuple(self.for_pool(p) for p in self.pools)

    def for_pool(self, spec: PoolSpec) -> Settings:
        """This process's settings for the pool ``spec`` (validated already: a copy, not re-validated)."""
        update: dict[str, object] = {
            "pool_name": spec.name,
            "grpc_port": spec.port,
            "grpc_port_flag": f"--pool {spec.name}",
            "pools": (),
        }
        if spec.names_a_document:
            update |= {
                "config_file": spec.config_file,
                "config_text": "",
                "config_configmap": spec.config_configmap,
                "config_configmap_key": spec.config_configmap_key or self.config_configmap_key,
            }
        return self.model_copy(update=update)

    @property
    def standalone(self) -> bool:
        """No InferencePool CRD: static endpoints or a plain pod selector."""
        return bool(self.static_endpoints or self.endpoint_selector)

    @property
    def kubernetes_mode(self) -> bool:
        """Endpoints come from the API server (an InferencePool or a pod selector)."""
        return not self.static_endpoints and bool(self.pool_name or self.endpoint_selector or self.pools)

    @property
    def metrics_auth(self) -> bool:
        """Whether ``/metrics`` is guarded (see :attr:`metrics_endpoint_auth`)."""
        if self.metrics_endpoint_auth is None:
            return self.kubernetes_mode
        return self.metrics_endpoint_auth

    @property
    def effective_pool_name(self) -> str:
        if self.pools:
            return ",".join(p.name for p in self.pools)
        return self.pool_name or ("static" if self.static_endpoints else self.standalone_name)


def _first_repeat(values: list[str] | list[int]) -> object:
    seen: set[object] = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None
