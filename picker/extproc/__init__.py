"""The Envoy ext_proc adapter (L3): gRPC server, per-stream state machine, wire encoding, health, TLS.

The only package that imports ``grpc`` and the Envoy stubs. It turns ``ProcessingRequest`` streams into
:class:`picker.routing.types.RoutingRequest` calls on a :class:`~picker.routing.types.Router`, holds the
one :class:`~picker.routing.types.Dispatch` each routed request gets, and reports outcomes to a
:class:`StreamObserver`; it owns no routing or metrics logic itself. See ``README.md`` here.
"""

from picker.extproc.health import HealthServer, HealthService, HealthState
from picker.extproc.observer import NullObserver, StreamObserver
from picker.extproc.server import DEFAULT_MAX_BODY_BYTES, ExtProcServer
from picker.extproc.tls import TLSConfig
from picker.extproc.usage import Usage

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ExtProcServer",
    "HealthServer",
    "HealthService",
    "HealthState",
    "NullObserver",
    "StreamObserver",
    "TLSConfig",
    "Usage",
]
