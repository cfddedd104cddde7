"""Command line: ``picker serve`` (the EPP), ``picker fake-server``, ``picker demo``, ``picker tune``.

``serve`` accepts the reference EPP's flags with the same names and defaults, in pflag style:
``--flag=value`` or ``--flag value``; boolean flags also accept ``--flag=false``. Reference flags we do
not implement are accepted and reported with one warning each (a Deployment written for the reference
EPP must start unchanged); truly unknown flags are an error. Three flags of ours are hidden from
``--help`` because the reference has no equivalent: ``--leader-lease-duration``,
``--leader-renew-deadline`` and ``--leader-retry-period`` (durations, see :class:`picker.settings.Settings`).

Why one module: it is the whole command line (the flag table, their parsing into one Settings, and the
one-line operator errors); split, a flag's definition, its conversion and its error would live apart.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from picker.logs import escape_controls
from picker.settings import PoolSpec, Settings, TracingSettings
from scoring.durations import parse_duration

log = logging.getLogger("picker")

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}

#: Reference flags accepted for compatibility but without effect here (value-taking ones first).
IGNORED_VALUE_FLAGS = (
    "--refresh-prometheus-metrics-interval",
    "--model-server-metrics-scheme",
    "--model-server-metrics-path",
    "--total-queued-requests-metric",
    "--total-running-requests-metric",
    "--kv-cache-usage-percentage-metric",
    "--lora-info-metric",
    "--cache-info-metric",
    "--zap-encoder",
    "--zap-log-level",
    "--zap-stacktrace-level",
    "--zap-time-encoding",
)
IGNORED_BOOL_FLAGS = (
    "--model-server-metrics-https-insecure-skip-verify",
    "--enable-pprof",
    "--zap-devel",
)


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    v = text.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (use true/false)")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _quantity(text: str) -> int:
    from picker.config import parse_quantity

    try:
        return parse_quantity(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _ports(text: str) -> tuple[int, ...]:
    try:
        ports = tuple(dict.fromkeys(int(p) for p in text.split(",") if p.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid port list {text!r}") from exc
    if any(not 0 < p < 65536 for p in ports):
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return ports


def _pool(text: str) -> PoolSpec:
    try:
        return PoolSpec.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        ) from exc
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _bool_flag(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: bool, help_text: str
) -> None:
    p.add_argument(
        name,
        nargs="?",
        const=True,
        default=default,
        type=parse_bool,
        metavar="BOOL",
        help=f"{help_text} (default {str(default).lower()})",
    )


def _lease_timing_flags(g: argparse._ArgumentGroup) -> None:
    """Lease timings: not reference flags, so kept out of ``--help`` (documented in picker.settings)."""
    g.add_argument("--leader-lease-duration", type=_duration, default=15.0, help=argparse.SUPPRESS)
    g.add_argument("--leader-renew-deadline", type=_duration, default=10.0, help=argparse.SUPPRESS)
    g.add_argument("--leader-retry-period", type=_duration, default=2.0, help=argparse.SUPPRESS)


def _request_flags(g: Any) -> None:
    """How requests are read: the subset hint, header-only mode."""
    _bool_flag(g, "--disable-endpoint-subset-filter", False, "ignore the gateway's subset hint")
    g.add_argument(
        "--model-header",
        default="",
        help="header-only mode: read the model from this request header (e.g. x-ai-eg-model) and answer "
        "at the request headers, one ext_proc message per request (proxy: request_body_mode NONE)",
    )


def _scraping_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--refresh-metrics-interval",
        type=_duration,
        default=0.05,
        help="model-server scrape interval per endpoint (default 50ms)",
    )
    g.add_argument("--scrape-timeout", type=_duration, default=1.0, help="timeout of one scrape (default 1s)")
    g.add_argument(
        "--metrics-staleness-threshold",
        type=_duration,
        default=2.0,
        help="pool gauges count endpoints scraped within this (default 2s)",
    )
    g.add_argument("--scrape-concurrency", type=int, default=256, help="scrapes in flight at once")
    g.add_argument(
        "--scrape-max-page-bytes",
        type=_quantity,
        default=8 << 20,
        help="cap on one /metrics page, bytes or a quantity such as 8Mi (default 8Mi)",
    )
    g.add_argument(
        "--model-server-metrics-port",
        type=int,
        default=0,
        help="scrape this port instead of the serving port (only with one target port)",
    )
    g.add_argument(
        "--prometheus-url",
        default="",
        help="Prometheus for the DCGM GPU-utilization signal and the prometheus-scorer queries",
    )
    g.add_argument("--gpu-query", default="", help="PromQL override for the GPU signal")


class _Parser(argparse.ArgumentParser):
    """argparse with operator errors as one line (``picker serve: error: <flag>: <reason>``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {escape_controls(message)} (see {self.prog} --help)\n")


def _version() -> str:
    try:
        return f"picker {importlib.metadata.version('picker')}"
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "picker (version unknown)"


def _limit_flags(g: argparse._ArgumentGroup) -> None:
    """Memory bounds on what peers send (README "Limits")."""
    g.add_argument(
        "--max-buffered-body-bytes",
        type=_quantity,
        default=256 << 20,
        help=(
            "bodies all streams may buffer at once (over it a request gets 503), and separately replies "
            "not yet written (over it a reply waits) (default 256Mi)"
        ),
    )
    g.add_argument(
        "--metrics-label-max-values",
        type=int,
        default=1000,
        help="distinct values per request-chosen metric label before 'other' (default 1000)",
    )
    g.add_argument(
        "--metrics-label-max-length",
        type=int,
        default=256,
        help="longest request-chosen metric label value kept; longer is 'other' (default 256)",
    )
    g.add_argument(
        "--admin-max-body-bytes",
        type=_quantity,
        default=1 << 20,
        help="cap on an admin API request body, bytes or a quantity (default 1Mi)",
    )


def _admin_flags(g: argparse._ArgumentGroup) -> None:
    """The admin API's port: ours, not the reference's (which has none)."""
    g.add_argument(
        "--admin-port",
        type=int,
        default=9091,
        help="/config, /debug/* and POST /debug/explain (default 9091)",
    )
    g.add_argument(
        "--admin-bind", default="127.0.0.1", help="admin API bind address (default 127.0.0.1: Pod-local only)"
    )


def _security_flags(g: argparse._ArgumentGroup) -> None:
    _bool_flag(g, "--secure-serving", True, "TLS on the ext_proc port (self-signed unless --cert-path)")
    g.add_argument("--cert-path", default="", help="directory with tls.crt and tls.key")
    _bool_flag(g, "--enable-cert-reload", False, "re-read --cert-path files when they change (rotation)")
    g.add_argument(
        "--metrics-endpoint-auth",
        nargs="?",
        const=True,
        default=None,
        type=parse_bool,
        metavar="BOOL",
        help="/metrics needs a bearer token passing TokenReview + SubjectAccessReview (default true; "
        "off with --static-endpoints unless set)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="picker", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the endpoint picker (ext_proc, health, metrics/admin)")
    g = s.add_argument_group("ports")
    g.add_argument("--grpc-port", type=int, default=None, help="ext_proc gRPC port (default 9002)")
    g.add_argument("--grpc-health-port", type=int, default=9003, help="gRPC health port (default 9003)")
    g.add_argument(
        "--metrics-port", type=int, default=9090, help="/metrics, /healthz, /readyz (default 9090)"
    )
    g.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")  # noqa: S104
    _admin_flags(g)
    _bool_flag(g, "--health-checking", False, "also serve grpc.health.v1 on the ext_proc port")
    g.add_argument(
        "--grpc-keepalive-time",
        type=_duration,
        default=30.0,
        help="ping each ext_proc connection this often (default 30s)",
    )
    g.add_argument(
        "--grpc-keepalive-timeout",
        type=_duration,
        default=10.0,
        help="close a connection whose ping is unanswered this long (default 10s)",
    )
    g.add_argument(
        "--grpc-stream-window",
        type=_quantity,
        default=256 << 10,
        help="HTTP/2 receive window of each ext_proc stream: bytes gRPC holds for a stream before it is "
        "read (0: gRPC's automatic window, 4 MiB or more a stream; default 256Ki)",
    )
    g = s.add_argument_group("pool")
    g.add_argument("--pool-name", default="", help="InferencePool to serve")
    g.add_argument(
        "--pool",
        dest="pools",
        action="append",
        type=_pool,
        default=[],
        metavar="NAME=PORT[,config-file=PATH|,config-configmap=CM[,config-configmap-key=KEY]]",
        help="serve this InferencePool (in --pool-namespace) on its own ext_proc PORT, the port its "
        "endpointPickerRef names; repeatable: one process, several pools (instead of --pool-name and "
        "--grpc-port)",
    )
    g.add_argument("--pool-namespace", default="", help="pool namespace (default: $NAMESPACE, else default)")
    g.add_argument(
        "--pool-group",
        default="inference.networking.k8s.io",
        help="InferencePool API group (inference.networking.x-k8s.io for v1alpha2)",
    )
    g.add_argument("--endpoint-selector", default="", help="standalone: pod selector k=v,k2=v2 (no CRD)")
    g.add_argument(
        "--endpoint-target-ports", type=_ports, default=(), help="standalone: ports, e.g. 8000,8001"
    )
    g.add_argument(
        "--static-endpoints",
        default="",
        help="fixed pool without Kubernetes: host:port[@engine],... (engine auto-detected)",
    )
    _request_flags(g)
    _bool_flag(g, "--ha-enable-leader-election", False, "Lease-based leader election; readiness on leader")
    _lease_timing_flags(g)
    g.add_argument("--kubeconfig", default="", help="kubeconfig path outside a cluster (default $KUBECONFIG)")
    g.add_argument("--config-configmap", default="", help="watch the scoring document in this ConfigMap")
    g.add_argument("--config-configmap-key", default="config.yaml", help="key in that ConfigMap")
    _scraping_flags(s.add_argument_group("scraping"))
    _limit_flags(s.add_argument_group("limits"))
    g = s.add_argument_group("configuration")
    g.add_argument("--config-file", default="", help="EndpointPickerConfig YAML (watched, hot-reloaded)")
    g.add_argument("--config-text", default="", help="EndpointPickerConfig YAML inline")
    _security_flags(s.add_argument_group("security"))
    g = s.add_argument_group("process")
    g.add_argument("--workers", type=int, default=1, help="ext_proc worker processes (SO_REUSEPORT)")
    g.add_argument("-v", "--v", dest="verbosity", type=int, default=2, help="log level: 2 info, 4 debug")
    _bool_flag(g, "--log-json", False, "JSON log lines")
    _bool_flag(
        g,
        "--tracing",
        False,
        "OpenTelemetry span per routed request, OTLP/gRPC as the OTEL_* variables say (the reference's "
        "default is true)",
    )
    g.add_argument("--seed", type=int, default=None, help="seed tie-breaks and weighted draws")
    g = s.add_argument_group("reference flags accepted without effect")
    for flag in IGNORED_VALUE_FLAGS:
        g.add_argument(
            flag, dest="ignored_" + flag[2:].replace("-", "_"), default=None, help=argparse.SUPPRESS
        )
    for flag in IGNORED_BOOL_FLAGS:
        g.add_argument(
            flag,
            dest="ignored_" + flag[2:].replace("-", "_"),
            nargs="?",
            const="true",
            default=None,
            help=argparse.SUPPRESS,
        )

    f = sub.add_parser("fake-server", help="a model-server stand-in with real metric pages")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--host", default="127.0.0.1")
    f.add_argument("--engine", choices=("vllm", "vllm-v0", "sglang", "tgi", "trtllm"), default="vllm")
    f.add_argument("--model", action="append", default=None, help="served model (repeatable)")
    f.add_argument("--lora", action="append", default=None, help="served LoRA adapter (repeatable)")
    f.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per model second")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-num-seqs", type=int, default=None, help="sequences per batch before queueing")
    f.add_argument("--num-blocks", type=int, default=None, help="KV-cache blocks of 16 tokens")
    f.add_argument("--max-lora", type=int, default=None, help="resident LoRA adapters")
    f.add_argument("--slower", type=float, default=1.0, help="every step this many times slower")

    _demo_parser(sub)
    _tune_parser(sub)
    return parser


def _demo_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="fake fleet + the EPP + traffic, printed as a table")
    d.add_argument("--requests", type=int, default=500)
    d.add_argument("--concurrency", type=int, default=24)
    d.add_argument("--seed", type=int, default=7)


def _tune_parser(sub: Any) -> None:
    """``picker tune`` flags; the work is done by the fleet simulator (``benchmarks/sim/tune.py``)."""
    t = sub.add_parser(
        "tune",
        help="tune scorer weights for your traffic in the fleet simulator (from a source checkout)",
        description="Search scorer weights and parameters that maximise capacity at SLO on a trace, in the "
        "fleet simulator; tuned on the first half of the trace, checked on the second; writes a ready "
        "EndpointPickerConfig. Runs from a checkout of the repository (the simulator is not in the image).",
    )
    t.add_argument("--trace", type=Path, required=True, help="Azure trace CSV or Mooncake JSONL (detected)")
    t.add_argument("--out", type=Path, required=True, help="where to write the tuned configuration (YAML)")
    t.add_argument("--config", type=Path, help="the current configuration (default: the built-in profile)")
    t.add_argument("--servers", type=int, default=16, help="model servers in the pool (default 16)")
    t.add_argument(
        "--profile", default="llama3-8b-h100", help="simulated server profile (default llama3-8b-h100)"
    )
    t.add_argument("--seed", type=int, default=0, help="seed of the search and the simulation (default 0)")
    t.add_argument("--trials", type=int, default=16, help="configurations to try (default 16)")
    t.add_argument("--requests", type=int, default=4000, help="use at most this many requests (default 4000)")
    t.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT objective in s (default 1)")
    t.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT objective in s (default 0.1)")
    t.add_argument(
        "--slo-ttft-per-token",
        type=float,
        default=0.0,
        help="length-scaled TTFT: max(--slo-ttft, this x prompt tokens), s per token (default 0: off)",
    )
    t.add_argument("--time-limit", type=float, default=0.0, help="stop searching after this many s (0: off)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    t.add_argument("--json", action="store_true", help="print the report as JSON")


def _run_tune(ns: argparse.Namespace) -> int:
    # The simulator lives in the source tree (benchmarks/sim), not in the service's packages; imported by
    # name so that the service never depends on it.
    try:
        tune = importlib.import_module("benchmarks.sim.tune")
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("benchmarks"):
            raise
        sys.stderr.write(
            "picker tune runs the fleet simulator, which is part of the source tree (benchmarks/sim), not "
            "of the installed package or the image: run it from a checkout of the repository.\n"
        )
        return 2
    result: int = tune.run(ns)
    return result


def standalone_name_from_pod(pod_name: str) -> str:
    """Standalone pool name as the reference derives it: the Deployment name, i.e. ``POD_NAME`` without
    its ReplicaSet hash and pod suffix (``epp-7d9f8-abcde`` → ``epp``); ``standalone`` if unknown."""
    parts = pod_name.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else "standalone"


def settings_from_args(ns: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    for key, value in vars(ns).items():
        if key.startswith("ignored_") and value is not None:
            log.warning(
                "flag --%s is accepted for compatibility with the reference EPP and has no effect",
                key.removeprefix("ignored_").replace("_", "-"),
            )
    kwargs: dict[str, Any] = {
        name: getattr(ns, name)
        for name in (
            "grpc_health_port",
            "metrics_port",
            "admin_port",
            "admin_bind",
            "host",
            "health_checking",
            "admin_max_body_bytes",
            "max_buffered_body_bytes",
            "metrics_label_max_values",
            "metrics_label_max_length",
            "grpc_keepalive_time",
            "grpc_keepalive_timeout",
            "grpc_stream_window",
            "pool_name",
            "pool_group",
            "endpoint_selector",
            "endpoint_target_ports",
            "static_endpoints",
            "disable_endpoint_subset_filter",
            "model_header",
            "ha_enable_leader_election",
            "leader_lease_duration",
            "leader_renew_deadline",
            "leader_retry_period",
            "kubeconfig",
            "config_configmap",
            "config_configmap_key",
            "refresh_metrics_interval",
            "scrape_timeout",
            "metrics_staleness_threshold",
            "scrape_concurrency",
            "scrape_max_page_bytes",
            "model_server_metrics_port",
            "prometheus_url",
            "gpu_query",
            "config_file",
            "config_text",
            "secure_serving",
            "cert_path",
            "enable_cert_reload",
            "metrics_endpoint_auth",
            "workers",
            "verbosity",
            "log_json",
            "seed",
        )
    }
    if ns.pools and ns.grpc_port is not None:
        raise ValueError("--grpc-port: with --pool each pool's ext_proc port is in its --pool value")
    kwargs["grpc_port"] = 9002 if ns.grpc_port is None else ns.grpc_port
    kwargs["pools"] = tuple(ns.pools)
    kwargs["pool_namespace"] = ns.pool_namespace or env.get("NAMESPACE") or "default"
    if ns.endpoint_selector and not ns.pool_name:
        kwargs["standalone_name"] = standalone_name_from_pod(env.get("POD_NAME", ""))
    if not kwargs["kubeconfig"]:
        kwargs["kubeconfig"] = env.get("KUBECONFIG", "")
    if ns.tracing:
        kwargs["tracing"] = TracingSettings.from_environment(env)  # ValueError: a one-line exit 2
        if kwargs["tracing"] is None:
            log.info("--tracing with OTEL_TRACES_EXPORTER=none: no spans are recorded")
        else:
            from picker.tracing import exporter_problem

            if (problem := exporter_problem()) is not None:
                raise ValueError(f"--tracing: {problem}")
    settings = Settings(**kwargs)
    if settings.enable_cert_reload and not (settings.cert_path and settings.secure_serving):
        log.warning("--enable-cert-reload has no effect without --cert-path and --secure-serving")
    if settings.static_endpoints:
        from picker.state.endpoints import parse_static_endpoints

        try:
            parse_static_endpoints(settings.static_endpoints)
        except ValueError as exc:
            raise ValueError(f"--static-endpoints: {exc}") from exc
    return settings


def describe_settings_errors(exc: ValidationError) -> str:
    """Pydantic's errors with each field named as its flag (``--workers: ...``)."""
    parts = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = err["loc"]
        parts.append(f"--{str(loc[0]).replace('_', '-')}: {msg}" if loc else msg)
    return "; ".join(parts)


def _configure_logging(verbosity: int, as_json: bool) -> None:
    from picker.logs import configure_logging

    configure_logging(verbosity=verbosity, as_json=as_json)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    # Go's flag package (and thus the reference's -v) also accepts "-v=4"; argparse would read "=4".
    args = [f"--v={a[3:]}" if a.startswith("-v=") else a for a in args]
    ns = parser.parse_args(args)
    if ns.command == "serve":
        _configure_logging(ns.verbosity, ns.log_json)
        try:
            settings = settings_from_args(ns)
        except ValidationError as exc:
            parser.error(describe_settings_errors(exc))
        except ValueError as exc:
            parser.error(str(exc))
        from picker.app import run_serve

        return run_serve(settings)
    if ns.command in ("fake-server", "demo") and importlib.util.find_spec("picker.testing") is None:
        # The container image leaves the test doubles out (see the Dockerfile); say so instead of a traceback.
        parser.error(
            f"`picker {ns.command}` needs the test doubles in picker.testing, which this installation leaves "
            "out (the container image does); run it from a source checkout (make demo)"
        )
    if ns.command == "fake-server":
        _configure_logging(2, False)
        from picker.testing.fake_cli import run_fake_server_cli

        return run_fake_server_cli(ns)
    if ns.command == "tune":
        return _run_tune(ns)
    if ns.command == "demo":
        _configure_logging(1, False)
        from picker.demo import run_demo

        return run_demo(requests=ns.requests, concurrency=ns.concurrency, seed=ns.seed)
    parser.error(f"unknown command {ns.command}")  # exits
    raise AssertionError("unreachable")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
