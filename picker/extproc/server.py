"""The gRPC ext_proc server: ``envoy.service.ext_proc.v3.ExternalProcessor/Process`` on grpc.aio.

Each RPC gets one :class:`~picker.extproc.stream.ExtProcStream`; this module only moves messages
between gRPC and that state machine and guarantees :meth:`ExtProcStream.close` (lease release, observer
``stream_closed``) runs exactly once however the RPC ends: normal end, the proxy's half-close, a client
cancel, an error, or server shutdown (``stop`` cancels the RPCs still running after ``grace``).

Error mapping at this boundary: a :class:`~picker.extproc.stream.StreamAbortError` ends the RPC with
``INTERNAL`` (our bug) or ``FAILED_PRECONDITION`` (the proxy sent a message in an impossible order);
bytes that are not a ``ProcessingRequest`` end it with ``INVALID_ARGUMENT``; ImmediateResponses are
ordinary replies. The server is constructed idle; ``start()`` builds credentials
(generating the self-signed certificate), binds and serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf.message import DecodeError

from picker.extproc import wire
from picker.extproc.budget import DEFAULT_BODY_BUDGET, BodyBudget
from picker.extproc.health import HealthService
from picker.extproc.observer import StreamObserver
from picker.extproc.protocol import ResponseSkip
from picker.extproc.spans import RequestTracer
from picker.extproc.stream import SUSPENDED, ExtProcStream, StreamAbortError
from picker.extproc.tls import TLSConfig, server_credentials
from picker.logs import peer_text
from picker.routing.types import Dispatch, Router

__all__ = [
    "AUTO_STREAM_WINDOW",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_STREAM_WINDOW",
    "SERVICE_NAME",
    "ExtProcServer",
    "window_options",
]

logger = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
#: Request body cap (16 MiB). The reference buffers without a limit.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: Room for protobuf framing around a body chunk as large as the cap, so an over-cap body reaches our
#: 413 path instead of gRPC's own message-size error.
_FRAME_SLACK = 1024 * 1024
#: 0 as ``stream_window``: gRPC's own receive windows, grown by its bandwidth-delay probe
AUTO_STREAM_WINDOW = 0
#: 256 KiB: a 200 KB prompt fits in one window (no window update mid-body), while a stream nobody reads
#: parks at most this much instead of the 4 MiB or more of gRPC's probe (``benchmarks/RESULTS.md``,
#: "ext_proc streams nobody reads")
DEFAULT_STREAM_WINDOW = 256 << 10
_UNDECODABLE = "message is not a ProcessingRequest"


def window_options(stream_window: int) -> list[tuple[str, int]]:
    """gRPC server options for a fixed receive window of ``stream_window`` bytes per stream: the
    bandwidth-delay probe off (it would resize the window) and the window announced in
    SETTINGS_INITIAL_WINDOW_SIZE (see :class:`ExtProcServer`); none for ``AUTO_STREAM_WINDOW``.
    ``benchmarks/extproc/floor.py`` serves its null handler with the same options, so the floor
    pays the same transport settings as we do."""
    if stream_window == AUTO_STREAM_WINDOW:
        return []
    return [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", stream_window)]


class ExtProcServer:
    """Serves the Endpoint Picker Protocol. Constructing it starts nothing.

    ``port=0`` binds an ephemeral port (read :attr:`bound_port` after :meth:`start`). ``tls=None`` is
    plaintext h2c. ``health`` also registers the health service on this port (``--health-checking``).
    ``reuse_port`` sets ``SO_REUSEPORT`` so several worker processes can share the port; it is off by
    default so that a second server on a busy port fails loudly instead of silently sharing it.
    ``skip_response`` enables the ``mode_override`` that skips the response phases (see
    :mod:`picker.extproc.stream`).

    ``stream_config``, when given, is read at the start of every stream for ``(max_body_bytes,
    served_verifier, header_only)`` (header-only mode: route at the request headers, see
    :mod:`picker.extproc.stream`), so that a reloaded config document applies to the next stream;
    without it the constructor's values hold. gRPC's per-message receive limit is fixed when the server
    starts (from ``max_body_bytes``): a larger reloaded cap applies to bodies sent in several messages,
    as Envoy streams them, while one single message above the starting cap is still refused by gRPC.

    ``keepalive_s`` is ``(ping interval, ping timeout)`` in seconds: every connection is pinged at that
    interval and closed when a ping is not answered within the timeout, which ends its streams (and
    releases their in-flight counts) when a proxy froze or vanished without closing the TCP connection.

    ``stream_window`` (``--grpc-stream-window``) is the HTTP/2 receive window of every stream, in bytes:
    how much of a stream's messages gRPC accepts from the proxy before the stream's handler reads them.
    Bytes the handler has not read yet are outside the body budget; gRPC's default grows each stream's
    window with its bandwidth-delay probe (BDP) to 4 MiB or more, so a peer whose streams are not being
    read (the handler waits on a write the peer does not read, or the event loop is late) could park
    everything it sends. With a fixed window the probe is off and a stream holds at most ``stream_window``
    unread bytes plus the one message its handler is waiting for (gRPC opens the window to that message's
    length; at most ``max_body_bytes`` + framing). gRPC's connection-level window is replenished as bytes
    arrive, not as they are read, so it bounds nothing here: a connection holds at most its streams times
    that. ``AUTO_STREAM_WINDOW`` (0) keeps gRPC's automatic window.

    ``max_buffered_bytes`` (``shared_budget``: the process's, which it draws from) bounds the bytes of
    bodies buffered, and separately those of replies handed to gRPC but not yet written
    (:mod:`picker.extproc.budget`): a write completes only once the proxy's window took the reply, so
    without that budget a proxy reading none of them would leave an echo of up to the largest message we
    accept in every stream.

    ``tracer`` (``--tracing``) gives every stream a span and puts its trace context into the headers set
    for the upstream request (:mod:`picker.extproc.spans`); None: no tracing, nothing added.
    """

    def __init__(
        self,
        router: Router,
        observer: StreamObserver,
        *,
        port: int,
        host: str = "0.0.0.0",  # noqa: S104 - the gateway reaches the pod on its pod IP
        tls: TLSConfig | None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        served_verifier: bool = False,
        health: HealthService | None = None,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
        skip_response: Callable[[Dispatch], ResponseSkip] | None = None,
        stream_config: Callable[[], tuple[int, bool, bool]] | None = None,
        keepalive_s: tuple[float, float] = (30.0, 10.0),
        max_buffered_bytes: int = DEFAULT_BODY_BUDGET,
        shared_budget: BodyBudget | None = None,
        tracer: RequestTracer | None = None,
        stream_window: int = DEFAULT_STREAM_WINDOW,
    ) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        if stream_window < 0:
            raise ValueError(f"stream_window must be 0 (automatic) or positive, got {stream_window}")
        self._router = router
        self._observer = observer
        self._address = f"{host}:{port}"
        self._tls = tls
        self._max_body = max_body_bytes
        self._served_verifier = served_verifier
        self._health = health
        self._reuse_port = reuse_port
        self._clock = clock
        self._skip_response = skip_response
        self._stream_config = stream_config
        self._keepalive = keepalive_s
        self._tracer = tracer
        #: the HTTP/2 receive window of each stream, fixed at :meth:`start` (0: gRPC's automatic window)
        self.stream_window = stream_window
        #: the budget every stream's buffered bodies draw from; ``limit`` may be changed at any time. With
        #: ``shared_budget`` (the process's, when it serves several pools) each take is also taken there.
        self.body_budget = BodyBudget(max_buffered_bytes, parent=shared_budget)
        self._server: Any = None
        self._port = 0

    @property
    def bound_port(self) -> int:
        """The port actually bound (0 before :meth:`start`)."""
        return self._port

    async def start(self) -> None:
        """Bind and start serving. Raises RuntimeError if the address cannot be bound."""
        if self._server is not None:
            raise RuntimeError("ext_proc server already started")
        ping_every, ping_timeout = self._keepalive
        server = grpc.aio.server(
            options=[
                *window_options(self.stream_window),
                ("grpc.so_reuseport", 1 if self._reuse_port else 0),
                ("grpc.max_receive_message_length", self._max_body + _FRAME_SLACK),
                # A proxy that freezes (TCP up, nothing moving) would pin its streams, their leases and
                # in-flight counts until the kernel gives up on the connection (hours). The server pings
                # every connection, busy or idle, and closes it when a ping goes unanswered.
                ("grpc.keepalive_time_ms", int(ping_every * 1000)),
                ("grpc.keepalive_timeout_ms", int(ping_timeout * 1000)),
                ("grpc.http2.ping_timeout_ms", int(ping_timeout * 1000)),  # newer cores time pings by this
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.http2.min_sent_ping_interval_without_data_ms", int(ping_every * 1000)),
                # and accepts the proxy's own keepalive pings (Envoy's connection_keepalive) down to 5 s
                # apart instead of answering them with GOAWAY "too_many_pings" (the default is 5 min)
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ]
        )
        server.add_generic_rpc_handlers((self._rpc_handler(),))
        if self._health is not None:
            server.add_generic_rpc_handlers((self._health.rpc_handler(),))
        if self._tls is None:
            self._port = server.add_insecure_port(self._address)
        else:
            self._port = server.add_secure_port(self._address, server_credentials(self._tls))
        await server.start()
        self._server = server
        logger.info(
            "ext_proc server listening on %s (port %d, %s)",
            self._address,
            self._port,
            "TLS" if self._tls is not None else "plaintext",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams; cancel those still running after ``grace`` seconds (None = now)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def wait(self) -> None:
        """Block until the server stops (for a long-running task in the app's TaskGroup)."""
        if self._server is not None:
            await self._server.wait_for_termination()

    def _rpc_handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Process": grpc.stream_stream_rpc_method_handler(
                    self._process,
                    request_deserializer=pb.ProcessingRequest.FromString,
                    # replies are wire bytes (picker.extproc.wire) or, rarely, messages
                    response_serializer=wire.serialize,
                )
            },
        )

    async def _process(self, _request_iterator: Any, context: Any) -> None:
        if self._stream_config is None:
            max_body, served_verifier, header_only = self._max_body, self._served_verifier, False
        else:
            max_body, served_verifier, header_only = self._stream_config()
        stream = ExtProcStream(
            self._router,
            self._observer,
            max_body_bytes=max_body,
            served_verifier=served_verifier,
            clock=self._clock,
            skip_response=self._skip_response,
            header_only=header_only,
            budget=self.body_budget,
            tracer=self._tracer,
        )
        read = context.read
        write = context.write
        eof = grpc.aio.EOF
        budget = self.body_budget.replies
        try:
            while not stream.finished:
                try:
                    request = await read()
                except DecodeError:
                    logger.warning(
                        "ext_proc message is not a ProcessingRequest, request_id=%s",
                        peer_text(stream.request_id),
                    )
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT, "message is not a ProcessingRequest"
                    )
                    return
                if request is eof:
                    return
                try:
                    replies = stream.handle(request)
                    if replies is SUSPENDED:  # routing waits: a remote budget, a queue, a first replica
                        for reply in stream.waiting_replies():
                            await write(reply)
                        replies = await stream.resume()
                except StreamAbortError as exc:
                    code = grpc.StatusCode.INTERNAL if exc.internal else grpc.StatusCode.FAILED_PRECONDITION
                    await context.abort(code, exc.details)
                    return
                if not replies:
                    continue
                # The replies count against the reply budget until gRPC has written them (a write
                # completes once the proxy's window took it), twice (ours and gRPC's copy): a proxy that
                # reads none of them cannot park an echo per stream beyond the budget. One that does not
                # fit waits for room, and this stream reads nothing meanwhile (picker.extproc.budget).
                del request  # what the replies need of the message they carry: not held twice
                size = 2 * sum(map(len, replies))
                if not budget.take(size):
                    size = await budget.reserve(size)
                try:
                    for reply in replies:
                        await write(reply)
                finally:
                    budget.give(size)
        finally:
            stream.close()
