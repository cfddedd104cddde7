"""gRPC health checking (``grpc.health.v1.Health``) with the reference semantics (§1.12).

Services: ``liveness``, ``readiness``, ``envoy.service.ext_proc.v3.ExternalProcessor`` and ``""``.
"Synced" means the pool is known (at once with static endpoints); ``protocol_ok`` means the pool's
``appProtocol`` is one the configured parser supports.

* Leader election **off**: every service name, known or not (the chart probes ``inference-extension``),
  is SERVING iff synced and protocol_ok.
* Leader election **on**: ``liveness`` is always SERVING; ``readiness``, ``""`` and the ext_proc service
  are SERVING iff synced, leader and protocol_ok; any other name is SERVICE_UNKNOWN (in the response,
  as the reference does, not as a gRPC NOT_FOUND error).
* ``List`` reports the ext_proc service, plus liveness and readiness when leader election is on.
  ``Watch`` is UNIMPLEMENTED (kubelet and Envoy only use ``Check``).

The state comes from a provider callable, read on every check, so the app owns it and nothing here
caches a stale answer. The same :class:`HealthService` can also be registered on the ext_proc port
(``--health-checking``); there it reports the dynamic readiness above, whereas the reference reports a
constant SERVING, so a gateway health-checking a non-leader replica stops sending it traffic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

__all__ = [
    "EXT_PROC_SERVICE",
    "LIVENESS",
    "READINESS",
    "HealthServer",
    "HealthService",
    "HealthState",
]

logger = logging.getLogger(__name__)

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
LIVENESS = "liveness"
READINESS = "readiness"
_HEALTH_SERVICE = "grpc.health.v1.Health"

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
_READY_SERVICES = frozenset({READINESS, "", EXT_PROC_SERVICE})


@dataclass(frozen=True, slots=True)
class HealthState:
    """What the health answers depend on. The app replaces it as things change."""

    #: the InferencePool is known (standalone: true from the start)
    synced: bool = False
    #: this replica holds the leader lease (ignored without leader election)
    leader: bool = False
    #: the pool's appProtocol is supported by the configured parser
    protocol_ok: bool = True
    #: ``--ha-enable-leader-election``
    leader_election: bool = False


class HealthService:
    """The ``grpc.health.v1.Health`` servicer. Register it with :meth:`rpc_handler`."""

    def __init__(self, state: Callable[[], HealthState]) -> None:
        self._state = state

    def status(self, service: str) -> int:
        """The ServingStatus enum value for ``service`` under the current state."""
        state = self._state()
        if not state.leader_election:
            return _SERVING if state.synced and state.protocol_ok else _NOT_SERVING
        if service == LIVENESS:
            return _SERVING
        if service in _READY_SERVICES:
            return _SERVING if state.synced and state.leader and state.protocol_ok else _NOT_SERVING
        return _SERVICE_UNKNOWN

    def statuses(self) -> dict[str, int]:
        """What ``List`` reports."""
        names = [EXT_PROC_SERVICE]
        if self._state().leader_election:
            names += [LIVENESS, READINESS]
        return {name: self.status(name) for name in names}

    async def _check(self, request: Any, _context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return health_pb2.HealthCheckResponse(status=self.status(request.service))

    async def _list(self, _request: Any, _context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        response = health_pb2.HealthListResponse()
        for name, status in self.statuses().items():
            response.statuses[name].status = status
        return response

    async def _watch(self, _request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not implemented")

    def rpc_handler(self) -> grpc.GenericRpcHandler:
        """A handler serving ``grpc.health.v1.Health`` on any gRPC server."""
        return grpc.method_handlers_generic_handler(
            _HEALTH_SERVICE,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                ),
                "List": grpc.unary_unary_rpc_method_handler(
                    self._list,
                    request_deserializer=health_pb2.HealthListRequest.FromString,
                    response_serializer=health_pb2.HealthListResponse.SerializeToString,
                ),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self._watch,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                ),
            },
        )


class HealthServer:
    """The plaintext health port (``--grpc-health-port``, default 9003). Starts nothing until
    :meth:`start`; ``port=0`` binds an ephemeral port (see :attr:`bound_port`)."""

    def __init__(
        self,
        service: HealthService,
        *,
        port: int = 9003,
        host: str = "0.0.0.0",  # noqa: S104 - kubelet probes the pod IP
    ) -> None:
        self._service = service
        self._address = f"{host}:{port}"
        self._server: grpc.aio.Server | None = None
        self._port = 0

    @property
    def bound_port(self) -> int:
        """The port actually bound (0 before :meth:`start`)."""
        return self._port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("health server already started")
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers((self._service.rpc_handler(),))
        self._port = server.add_insecure_port(self._address)
        await server.start()
        self._server = server
        logger.info("gRPC health server listening on %s (port %d)", self._address, self._port)

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
