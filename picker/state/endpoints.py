"""Pool and endpoint identities (what Kubernetes or ``--static-endpoints`` tell us), no live signals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_NO_LABELS: Mapping[str, str] = MappingProxyType({})


def join_host_port(host: str, port: int) -> str:
    """``ip:port``, with IPv6 literals bracketed (Go's ``net.JoinHostPort``, which the reference uses)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """The InferencePool this EPP serves (or the standalone selector)."""

    name: str
    namespace: str
    selector: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    target_ports: tuple[int, ...] = ()
    #: ``http`` (default) or ``kubernetes.io/h2c``; health reports NOT_SERVING if the parser can't speak it
    app_protocol: str = "http"
    group: str = "inference.networking.k8s.io"

    def to_doc(self) -> dict[str, Any]:
        """As JSON-ready data (``/debug/endpoints``, the ``--workers`` shared state)."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "selector": dict(self.selector),
            "target_ports": list(self.target_ports),
            "app_protocol": self.app_protocol,
            "group": self.group,
        }


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One scheduling target: a pod IP and one of the pool's target ports (a "rank")."""

    #: ``<pod>-rank-<i>`` in Kubernetes mode (reference naming), the address in static mode
    name: str
    ip: str
    port: int
    pod: str = ""
    namespace: str = ""
    #: engine from the pod label ``inference.networking.k8s.io/engine-type``; None = auto-detect
    engine: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)
    #: where /metrics is served (defaults to the serving port)
    metrics_port: int | None = None
    #: the pod's annotations this EPP reads (``picker.dev/*``: prices), not all of them
    annotations: Mapping[str, str] = field(default_factory=lambda: _NO_LABELS)

    @property
    def address(self) -> str:
        return join_host_port(self.ip, self.port)

    @property
    def metrics_address(self) -> str:
        return join_host_port(self.ip, self.metrics_port or self.port)


def parse_static_endpoints(text: str) -> tuple[Endpoint, ...]:
    """Parse ``--static-endpoints``: ``127.0.0.1:8001,127.0.0.1:8002@sglang,[::1]:8003``.

    Raises ValueError naming the bad entry. Duplicates are rejected: two endpoints with one address would
    double-count in-flight requests.
    """
    out: list[Endpoint] = []
    seen: set[str] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        addr, _, engine = item.partition("@")
        host, sep, port_s = addr.rpartition(":")
        if not sep or not host or not port_s.isdigit():
            raise ValueError(f"invalid static endpoint {item!r}: expected host:port[@engine]")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_s)
        if not 0 < port < 65536:
            raise ValueError(f"invalid static endpoint {item!r}: port out of range")
        ep = Endpoint(name=join_host_port(host, port), ip=host, port=port, engine=engine.strip() or None)
        if ep.address in seen:
            raise ValueError(f"duplicate static endpoint {ep.address!r}")
        seen.add(ep.address)
        out.append(ep)
    if not out:
        raise ValueError("--static-endpoints is empty")
    return tuple(out)
