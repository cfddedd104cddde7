"""An Envoy-like ext_proc client: drives whole HTTP exchanges over real gRPC, as Envoy does.

It plays the proxy of the reference setup (``request_body_mode`` and ``response_body_mode``
``FULL_DUPLEX_STREAMED``, header and trailer modes ``SEND``), or, with ``request_body_mode="NONE"``, the
proxy of header-only mode (request headers only; a ``mode_override`` skipping the response is honoured
as with ``allow_mode_override: true``): request headers (``:method``, ``:path``,
``:authority``, ``:scheme``, ``content-type``, optional ``x-request-id``), then the body in chunks
without waiting for replies, then it reads the request replies; after that, response headers
(``:status``) and the response body, and the response replies. Subset-hint metadata can ride on the
request headers and body messages, and the served-endpoint metadata on the response headers.

Every reply is checked against the protocol order (request headers → request body → [request trailers]
→ response headers → response body → [response trailers], an ImmediateResponse ends everything); a
violation raises :class:`ProtocolOrderError`. :class:`RawStream` sends arbitrary messages for protocol
tests, and can cancel mid-stream.

TLS "without verification", as gateways connect to the EPP: gRPC Python cannot skip verification, so
the client fetches the certificate the server presents and pins it (with the target name overridden to
one of its names). That works for self-signed certificates (what the server generates, and what tests
put under ``--cert-path``); for a CA-issued certificate pass ``root_certificates``.

Cheap enough for load generation: messages are filled through attribute paths, one gRPC deadline per
exchange replaces per-read timers, and no reply is copied beyond what the result needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from cryptography import x509
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

__all__ = [
    "EnvoyClient",
    "ExchangeResult",
    "HttpRequest",
    "ImmediateReply",
    "ProtocolOrderError",
    "RawResult",
    "RawStream",
    "UpstreamResponse",
    "fetch_server_certificate",
    "request_body",
    "request_headers",
    "request_trailers",
    "response_body",
    "response_headers",
    "response_trailers",
]

Message = Any  # a ProcessingRequest / ProcessingResponse (the generated stubs are untyped)
HeaderItems = Iterable[tuple[str, str | bytes]]

DESTINATION_KEY = "x-gateway-destination-endpoint"
SERVED_KEY = "x-gateway-destination-endpoint-served"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"
SUBSET_KEY = "x-gateway-destination-endpoint-subset"
LB_NAMESPACE = "envoy.lb"


class ProtocolOrderError(AssertionError):
    """The server's replies broke the ext_proc order (or answered something never sent)."""


# ------------------------------------------------------------------------------------------ messages


def _fill_headers(target: Any, headers: HeaderItems) -> None:
    add = target.headers.add
    for key, value in headers:
        header = add()
        header.key = key
        header.raw_value = value if isinstance(value, bytes) else value.encode()


def _set_subset(message: Any, subset: Sequence[str] | str | None) -> None:
    if subset is None:
        return
    value = message.metadata_context.filter_metadata[SUBSET_NAMESPACE].fields[SUBSET_KEY]
    if isinstance(subset, str):
        value.string_value = subset
    else:
        values = value.list_value.values
        value.list_value.SetInParent()
        for item in subset:
            values.add().string_value = item


def request_headers(
    headers: HeaderItems, *, end_of_stream: bool = False, subset: Sequence[str] | str | None = None
) -> Message:
    """A ``request_headers`` message; ``subset`` attaches the ``envoy.lb.subset_hint`` metadata."""
    message = pb.ProcessingRequest()
    http = message.request_headers
    _fill_headers(http.headers, headers)
    http.end_of_stream = end_of_stream
    _set_subset(message, subset)
    return message


def request_body(
    chunk: bytes, *, end_of_stream: bool = False, subset: Sequence[str] | str | None = None
) -> Message:
    message = pb.ProcessingRequest()
    body = message.request_body
    body.body = chunk
    body.end_of_stream = end_of_stream
    _set_subset(message, subset)
    return message


def request_trailers(trailers: HeaderItems = ()) -> Message:
    message = pb.ProcessingRequest()
    message.request_trailers.SetInParent()
    _fill_headers(message.request_trailers.trailers, trailers)
    return message


def response_headers(
    headers: HeaderItems, *, end_of_stream: bool = False, served_endpoint: str | None = None
) -> Message:
    """A ``response_headers`` message; ``served_endpoint`` attaches ``envoy.lb`` served metadata."""
    message = pb.ProcessingRequest()
    http = message.response_headers
    _fill_headers(http.headers, headers)
    http.end_of_stream = end_of_stream
    if served_endpoint is not None:
        fields = message.metadata_context.filter_metadata[LB_NAMESPACE].fields
        fields[SERVED_KEY].string_value = served_endpoint
    return message


def response_body(chunk: bytes, *, end_of_stream: bool = False) -> Message:
    message = pb.ProcessingRequest()
    body = message.response_body
    body.body = chunk
    body.end_of_stream = end_of_stream
    return message


def response_trailers(trailers: HeaderItems = ()) -> Message:
    message = pb.ProcessingRequest()
    message.response_trailers.SetInParent()
    _fill_headers(message.response_trailers.trailers, trailers)
    return message


# ------------------------------------------------------------------------------------------ exchange types


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """The downstream request as Envoy would present it. ``body=None`` = no body (headers carry EOS)."""

    path: str = "/v1/completions"
    body: bytes | None = b""
    method: str = "POST"
    authority: str = "picker.test"
    scheme: str = "http"
    content_type: str | None = "application/json"
    request_id: str | None = None
    #: extra headers, sent after the standard ones
    headers: Sequence[tuple[str, str | bytes]] = ()
    #: split the body into chunks of this size (Envoy forwards what it reads, often 16-64 KiB)
    chunk_size: int = 64 * 1024
    #: explicit chunks instead of ``body`` split by ``chunk_size`` (e.g. an empty chunk with EOS)
    chunks: Sequence[bytes] | None = None
    #: subset hint attached to the headers and every body message (a list, or a comma string)
    subset: Sequence[str] | str | None = None
    #: request trailers (the body's last chunk then has end_of_stream=false)
    trailers: Sequence[tuple[str, str]] | None = None

    def messages(self, *, send_body: bool = True) -> list[Message]:
        """The request-phase messages in sending order. ``send_body=False``: what a proxy with
        ``request_body_mode: NONE`` sends, the headers alone (end_of_stream false when the HTTP request has
        a body or trailers: they go upstream, not to the processor)."""
        header_items: list[tuple[str, str | bytes]] = [
            (":method", self.method),
            (":path", self.path),
            (":authority", self.authority),
            (":scheme", self.scheme),
        ]
        if self.content_type is not None:
            header_items.append(("content-type", self.content_type))
        if self.request_id is not None:
            header_items.append(("x-request-id", self.request_id))
        header_items.extend(self.headers)
        if self.body is None and self.chunks is None:
            return [request_headers(header_items, end_of_stream=self.trailers is None, subset=self.subset)]
        if not send_body:
            return [request_headers(header_items, subset=self.subset)]
        out = [request_headers(header_items, subset=self.subset)]
        chunks = list(self.chunks) if self.chunks is not None else _split(self.body or b"", self.chunk_size)
        eos = self.trailers is None
        for i, chunk in enumerate(chunks):
            out.append(request_body(chunk, end_of_stream=eos and i == len(chunks) - 1, subset=self.subset))
        if self.trailers is not None:
            out.append(request_trailers(self.trailers))
        return out


def _split(body: bytes, size: int) -> list[bytes]:
    if not body:
        return [b""]
    return [body[at : at + size] for at in range(0, len(body), size)]


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """What the model server answers. No chunks and no trailers → response headers carry EOS."""

    status: int = 200
    headers: Sequence[tuple[str, str | bytes]] = (("content-type", "application/json"),)
    chunks: Sequence[bytes] = ()
    trailers: Sequence[tuple[str, str]] | None = None
    #: report the served endpoint in ``envoy.lb`` metadata: the primary picked endpoint by default
    report_served: bool = True
    #: override the reported served endpoint
    served_endpoint: str | None = None
    #: send the status as ``status`` instead of ``:status`` (the reference tests do)
    status_key: str = ":status"

    @property
    def is_sse(self) -> bool:
        return any(
            k.lower() == "content-type"
            and b"text/event-stream" in (v if isinstance(v, bytes) else v.encode()).lower()
            for k, v in self.headers
        )


@dataclass(frozen=True, slots=True)
class ImmediateReply:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(slots=True)
class ExchangeResult:
    """Everything the proxy learned from one exchange."""

    replies: list[Message] = field(default_factory=list)
    #: ``x-gateway-destination-endpoint`` set-header
    destination: str | None = None
    #: the same from ``dynamic_metadata["envoy.lb"]``
    metadata_destination: str | None = None
    clear_route_cache: bool = False
    #: set-headers of the request-headers reply (lower-case keys → values)
    request_set_headers: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    request_body_chunks: int = 0
    request_trailers_replied: bool = False
    mode_override: Message | None = None
    immediate: ImmediateReply | None = None
    response_set_headers: dict[str, str] | None = None
    response_removed_headers: tuple[str, ...] = ()
    response_body: bytes = b""
    response_body_chunks: int = 0
    response_trailers_replied: bool = False
    #: ``override_message_timeout`` values (seconds) of replies that carried only that (no message timer
    #: here: :class:`picker.testing.gateway.MiniGateway` applies Envoy's)
    timeout_overrides: list[float] = field(default_factory=list)
    #: the gRPC status the RPC ended with: OK unless the server aborted. After an ImmediateResponse the
    #: client stops writing; if it was mid-write, gRPC Python reports CANCELLED or INTERNAL here.
    code: grpc.StatusCode | None = None
    details: str = ""

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Picked endpoints, primary first."""
        return tuple(self.destination.split(",")) if self.destination else ()


@dataclass(slots=True)
class RawResult:
    replies: list[Message]
    code: grpc.StatusCode | None
    details: str


# ------------------------------------------------------------------------------------------ order check

_RANK = {
    "request_headers": 0,
    "request_body": 1,
    "request_trailers": 2,
    "response_headers": 3,
    "response_body": 4,
    "response_trailers": 5,
}


class _OrderChecker:
    """Checks each reply against the ext_proc order as Envoy enforces it."""

    __slots__ = ("_body_done", "_ended", "_rank")

    def __init__(self) -> None:
        self._rank = -1
        self._ended = False
        self._body_done = {"request_body": False, "response_body": False}

    def check(self, reply: Message) -> str:
        kind: str | None = reply.WhichOneof("response")
        if kind is None and reply.HasField("override_message_timeout"):
            # "give me longer for the message you wait on": no phase of its own, allowed before any reply
            if self._ended:
                raise ProtocolOrderError("override_message_timeout after an immediate_response")
            return "override_message_timeout"
        if self._ended:
            raise ProtocolOrderError(f"{kind} reply after an immediate_response")
        if kind == "immediate_response":
            self._ended = True
            return kind
        rank = _RANK.get(kind or "")
        if kind is None or rank is None:
            raise ProtocolOrderError(f"reply without a known response field: {kind}")
        if rank < self._rank:
            raise ProtocolOrderError(f"{kind} reply after a later phase")
        if kind in {"request_body", "response_body"}:
            headers_rank = rank - 1
            if self._rank < headers_rank:
                raise ProtocolOrderError(f"{kind} reply before the matching headers reply")
            if self._body_done[kind]:
                raise ProtocolOrderError(f"{kind} reply after its end_of_stream chunk")
            if getattr(reply, kind).response.body_mutation.streamed_response.end_of_stream:
                self._body_done[kind] = True
        elif rank == self._rank:
            raise ProtocolOrderError(f"second {kind} reply")
        self._rank = rank
        return kind


def _headers_dict(mutation: Any) -> dict[str, str]:
    return {
        option.header.key.lower(): (option.header.raw_value or option.header.value.encode()).decode(
            "utf-8", "replace"
        )
        for option in mutation.set_headers
    }


# ------------------------------------------------------------------------------------------ raw stream


class RawStream:
    """One ext_proc RPC under manual control: send messages, read replies, half-close, cancel."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def send(self, message: Message) -> None:
        await self._call.write(message)

    async def recv(self) -> Message | None:
        """The next reply, or None when the RPC ended (see :meth:`status`) or was cancelled here."""
        if self._call.cancelled():
            return None
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError:
            return None
        return None if reply is grpc.aio.EOF else reply

    async def half_close(self) -> None:
        await self._call.done_writing()

    def cancel(self) -> bool:
        """Cancel the RPC, as Envoy does when the downstream client goes away."""
        return bool(self._call.cancel())

    async def status(self) -> tuple[grpc.StatusCode, str]:
        return await self._call.code(), await self._call.details()


# ------------------------------------------------------------------------------------------ client


async def fetch_server_certificate(host: str, port: int) -> bytes:
    """The PEM certificate a TLS server presents (no verification: we are about to pin it)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned right after: trust on first use
    context.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    return ssl.DER_cert_to_PEM_cert(der).encode()


def _certificate_name(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = sans.get_values_for_type(x509.DNSName)
        if dns:
            return str(dns[0])
        ips = sans.get_values_for_type(x509.IPAddress)
        if ips:
            return str(ips[0])
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(common[0].value) if common else "localhost"


class EnvoyClient:
    """An ext_proc client speaking to ``host:port`` like Envoy. Use as an async context manager."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        server_name: str | None = None,
        timeout: float = 10.0,
        options: Sequence[tuple[str, Any]] = (),
        request_body_mode: str = "FULL_DUPLEX_STREAMED",
    ) -> None:
        """``options`` are gRPC channel arguments, e.g. ``("grpc.use_local_subchannel_pool", 1)`` so that
        several clients in one process open separate connections (as several Envoy workers do), which
        ``SO_REUSEPORT`` then spreads over the EPP's worker processes.

        ``request_body_mode`` is the filter's processing mode for request bodies: ``FULL_DUPLEX_STREAMED``
        (the reference setup) or ``NONE`` (header-only mode: Envoy sends the request headers, with
        end_of_stream false when a body follows upstream, and never the body or the request trailers)."""
        if request_body_mode not in {"FULL_DUPLEX_STREAMED", "NONE"}:
            raise ValueError(
                f"request_body_mode must be FULL_DUPLEX_STREAMED or NONE, got {request_body_mode}"
            )
        self._send_body = request_body_mode != "NONE"
        self._target = target
        self._options = list(options)
        self._tls = tls
        self._roots = root_certificates
        self._server_name = server_name
        self._timeout = timeout
        self._channel: Any = None
        self._stub: Any = None
        #: the certificate the server presented (TLS only), after :meth:`connect`
        self.server_certificate: bytes | None = None

    async def __aenter__(self) -> EnvoyClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._channel is not None:
            return
        if not self._tls:
            self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
        else:
            roots = self._roots
            if roots is None:
                host, _, port = self._target.rpartition(":")
                roots = await fetch_server_certificate(host.strip("[]"), int(port))
            self.server_certificate = roots
            name = self._server_name or _certificate_name(roots)
            self._channel = grpc.aio.secure_channel(
                self._target,
                grpc.ssl_channel_credentials(root_certificates=roots),
                options=[("grpc.ssl_target_name_override", name), *self._options],
            )
        self._stub = pb_grpc.ExternalProcessorStub(self._channel)

    async def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def stream(self, *, timeout: float | None = None) -> RawStream:
        """Open one RPC for manual driving."""
        if self._stub is None:
            raise RuntimeError("EnvoyClient is not connected")
        return RawStream(self._stub.Process(timeout=timeout or self._timeout))

    async def raw(self, messages: Sequence[Message], *, half_close: bool = True) -> RawResult:
        """Send ``messages``, half-close (unless told not to), and collect every reply until the server
        ends the RPC. No order checking: for protocol tests that send junk."""
        stream = self.stream()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for message in messages:
                await stream.send(message)
            if half_close:
                await stream.half_close()
        replies: list[Message] = []
        while (reply := await stream.recv()) is not None:
            replies.append(reply)
        code, details = await stream.status()
        return RawResult(replies, code, details)

    async def exchange(
        self,
        request: HttpRequest | None,
        response: UpstreamResponse | None = None,
        *,
        stream_response: bool | None = None,
        honor_mode_override: bool = True,
    ) -> ExchangeResult:
        """Drive one full HTTP exchange and return what the proxy would have applied.

        ``stream_response`` (default: the response is SSE) sends each response chunk only after the
        previous one was echoed, proving the server does not buffer a stream. With
        ``honor_mode_override`` a reply that skips the response phases ends the exchange early, as a
        proxy with ``allow_mode_override`` would; one that skips only the body and trailers gets the
        response headers (not ending the stream) and nothing after them. ``request=None`` drives a
        response-only stream (a proxy that skips the request phase).
        """
        stream = self.stream()
        result = ExchangeResult()
        order = _OrderChecker()
        completed = False
        try:
            if request is not None:
                await self._request_phase(stream, request, result, order)
            mode = result.mode_override if honor_mode_override else None
            skip_all = mode is not None and mode.response_header_mode == mode.SKIP
            if result.code is None and result.immediate is None and response is not None and not skip_all:
                streaming = response.is_sse if stream_response is None else stream_response
                headers_only = mode is not None and mode.response_body_mode == mode.NONE
                await self._response_phase(
                    stream, response, streaming, result, order, headers_only=headers_only
                )
            if result.code is None:
                if result.immediate is None:
                    # The server may have ended the RPC already; gRPC then raises one of several
                    # (partly private) exception types, none of which matters here.
                    with contextlib.suppress(Exception):
                        await stream.half_close()
                while (reply := await stream.recv()) is not None:
                    self._record(reply, result, order)
            completed = True
        finally:
            if not completed:
                stream.cancel()
        result.code, result.details = await stream.status()
        return result

    async def _request_phase(
        self, stream: RawStream, request: HttpRequest, result: ExchangeResult, order: _OrderChecker
    ) -> None:
        """Write the request while reading replies, like Envoy's full-duplex client.

        The read must be pending while we write: gRPC Python marks a call failed (and drops replies not
        yet read) when a write hits an RPC the server already ended, e.g. after a 413 mid-body.
        """
        messages = request.messages(send_body=self._send_body)
        if len(messages) == 1:
            await self._send_all(stream, messages)
            await self._read_request_phase(stream, request, result, order)
            return
        stop = asyncio.Event()
        writer = asyncio.ensure_future(self._send_all(stream, messages, stop))
        try:
            await self._read_request_phase(stream, request, result, order)
        except BaseException:
            writer.cancel()
            raise
        finally:
            # Stop before the next write rather than cancelling one in flight: gRPC Python turns a
            # cancelled write into a cancelled RPC.
            stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    @staticmethod
    async def _send_all(
        stream: RawStream, messages: Iterable[Message], stop: asyncio.Event | None = None
    ) -> None:
        # The server may legitimately end the RPC early (an ImmediateResponse, e.g. 413): stop writing.
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            for message in messages:
                if stop is not None and stop.is_set():
                    return
                await stream.send(message)

    async def _read_until(
        self, stream: RawStream, result: ExchangeResult, order: _OrderChecker, done: Any
    ) -> bool:
        """Read replies until ``done(kind, reply)``; False if the RPC ended first."""
        while True:
            reply = await stream.recv()
            if reply is None:
                result.code, result.details = await stream.status()
                return False
            kind = self._record(reply, result, order)
            if kind == "immediate_response" or done(kind, reply):
                return True

    async def _read_request_phase(
        self, stream: RawStream, request: HttpRequest, result: ExchangeResult, order: _OrderChecker
    ) -> None:
        headers_only = not self._send_body or (
            request.body is None and request.chunks is None and request.trailers is None
        )
        if headers_only:
            await self._read_until(stream, result, order, lambda kind, _r: kind == "request_headers")
        elif request.trailers is not None:
            await self._read_until(stream, result, order, lambda kind, _r: kind == "request_trailers")
        else:
            await self._read_until(
                stream,
                result,
                order,
                lambda kind, r: (
                    kind == "request_body"
                    and r.request_body.response.body_mutation.streamed_response.end_of_stream
                ),
            )

    async def _response_phase(
        self,
        stream: RawStream,
        response: UpstreamResponse,
        streaming: bool,
        result: ExchangeResult,
        order: _OrderChecker,
        *,
        headers_only: bool = False,
    ) -> None:
        served = response.served_endpoint
        if served is None and response.report_served and result.endpoints:
            served = result.endpoints[0]
        headers: list[tuple[str, str | bytes]] = [(response.status_key, str(response.status))]
        headers.extend(response.headers)
        no_body = not response.chunks and response.trailers is None
        first = response_headers(
            headers,
            end_of_stream=no_body and not headers_only,
            served_endpoint=served if response.report_served else None,
        )
        await self._send_all(stream, [first])
        if headers_only:  # the body and trailers are not sent to the processor (response_body_mode NONE)
            await self._read_until(stream, result, order, lambda k, _r: k == "response_headers")
            return
        if streaming:
            if not await self._read_until(stream, result, order, lambda k, _r: k == "response_headers"):
                return
            for i, chunk in enumerate(response.chunks):
                eos = response.trailers is None and i == len(response.chunks) - 1
                await self._send_all(stream, [response_body(chunk, end_of_stream=eos)])
                if not await self._read_until(stream, result, order, lambda k, _r: k == "response_body"):
                    return
            if response.trailers is not None:
                await self._send_all(stream, [response_trailers(response.trailers)])
                await self._read_until(stream, result, order, lambda k, _r: k == "response_trailers")
            return
        messages = [
            response_body(chunk, end_of_stream=response.trailers is None and i == len(response.chunks) - 1)
            for i, chunk in enumerate(response.chunks)
        ]
        if response.trailers is not None:
            messages.append(response_trailers(response.trailers))
        await self._send_all(stream, messages)
        if no_body:
            await self._read_until(stream, result, order, lambda k, _r: k == "response_headers")
        elif response.trailers is not None:
            await self._read_until(stream, result, order, lambda k, _r: k == "response_trailers")
        else:
            await self._read_until(
                stream,
                result,
                order,
                lambda k, r: (
                    k == "response_body"
                    and r.response_body.response.body_mutation.streamed_response.end_of_stream
                ),
            )

    @staticmethod
    def _record(reply: Message, result: ExchangeResult, order: _OrderChecker) -> str:
        kind: str = order.check(reply)
        result.replies.append(reply)
        if kind == "request_headers":
            common = reply.request_headers.response
            result.clear_route_cache = bool(common.clear_route_cache)
            result.request_set_headers = _headers_dict(common.header_mutation)
            result.destination = result.request_set_headers.get(DESTINATION_KEY)
            lb = reply.dynamic_metadata.fields.get(LB_NAMESPACE)
            if lb is not None and DESTINATION_KEY in lb.struct_value.fields:
                result.metadata_destination = lb.struct_value.fields[DESTINATION_KEY].string_value
            if reply.HasField("mode_override"):
                result.mode_override = reply.mode_override
        elif kind == "request_body":
            result.request_body += reply.request_body.response.body_mutation.streamed_response.body
            result.request_body_chunks += 1
        elif kind == "request_trailers":
            result.request_trailers_replied = True
        elif kind == "response_headers":
            mutation = reply.response_headers.response.header_mutation
            result.response_set_headers = _headers_dict(mutation)
            result.response_removed_headers = tuple(mutation.remove_headers)
        elif kind == "response_body":
            result.response_body += reply.response_body.response.body_mutation.streamed_response.body
            result.response_body_chunks += 1
        elif kind == "response_trailers":
            result.response_trailers_replied = True
        elif kind == "override_message_timeout":
            result.timeout_overrides.append(reply.override_message_timeout.ToTimedelta().total_seconds())
        elif kind == "immediate_response":
            immediate = reply.immediate_response
            result.immediate = ImmediateReply(
                status=int(immediate.status.code),
                body=bytes(immediate.body),
                headers=_headers_dict(immediate.headers),
            )
        return kind
