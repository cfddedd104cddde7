"""The per-stream state machine of the Endpoint Picker Protocol (reference §1.3), without I/O.

One :class:`ExtProcStream` lives for one gRPC stream (= one HTTP exchange). The server feeds it each
``ProcessingRequest`` (:meth:`ExtProcStream.handle`, the entry point, next to its table of handlers) and
writes whatever replies it returns, in order; :attr:`ExtProcStream.finished` tells the server to stop
reading and end the RPC; :meth:`ExtProcStream.close` runs exactly once when the RPC ends for any reason
and releases the routing lease. Keeping the protocol state here and the gRPC lifecycle in
:mod:`picker.extproc.server` lets each be read (and tested) on its own.

Per request the stream holds one :class:`~picker.routing.types.Dispatch` (where the request went, its
lease, what to put back in the response, its metric labels); routing is asked in two steps
(``resolve``, then ``route``), so a routing failure is labelled with the models resolved before it.

The order of the messages (:class:`Phase`, what is a protocol violation), the protocol decisions (when
replies go out, the body cap, errors, fewer messages, tenants, load accounting, outcomes) are in
``picker/extproc/README.md``; the response body's modes in
:mod:`picker.extproc.response`, the metadata read from the proxy in :mod:`picker.extproc.metadata`.

Why one module: the phases and the one dispatch they act on are one state machine; every handler reads
and moves the same phase, and a handler elsewhere would need the whole stream's state to check its order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest

from picker.errors import MODEL_SERVER_ERROR, PickerError
from picker.extproc import wire
from picker.extproc.budget import BodyBudget
from picker.extproc.metadata import served_address, served_endpoint, subset_hint
from picker.extproc.observer import StreamObserver
from picker.extproc.protocol import ResponseSkip, StreamAbortError
from picker.extproc.request_body import RequestBody, declared_length
from picker.extproc.request_head import read_request_head
from picker.extproc.response import NO_TIMING, ResponseBody
from picker.extproc.response_head import read_response_head
from picker.extproc.spans import RequestSpan, RequestTracer
from picker.logs import peer_text
from picker.routing.types import Dispatch, PendingRoute, Resolved, Router, RoutingRequest
from picker.state.outcomes import Outcome

__all__ = ["SUSPENDED", "UNKNOWN_ERROR", "ExtProcStream", "Phase", "StreamAbortError"]

logger = logging.getLogger(__name__)


class Phase(IntEnum):
    """Where a stream is in the protocol (see the module doc); ordered as the messages come."""

    START = 0
    REQUEST_BODY = 1
    ROUTED = 2
    RESPONSE_BODY = 3
    DONE = 4


_REQUEST_PHASE = frozenset({"request_headers", "request_body", "request_trailers"})
#: what a message is answered with: wire-encoded ``ProcessingResponse``s (:mod:`picker.extproc.wire`)
Replies: TypeAlias = Sequence[bytes]
_NO_REPLIES: tuple[bytes, ...] = ()
#: Label for failures that are neither a PickerError nor a model-server status (reference "Unknown").
UNKNOWN_ERROR: Final = "Unknown"


class _Suspended(tuple[bytes, ...]):
    __slots__ = ()


#: what :meth:`ExtProcStream.handle` returns when routing waits for I/O: no replies yet; await resume()
SUSPENDED: Final = _Suspended()


class _ProtocolViolationError(Exception):
    """A message arrived that the protocol does not allow in the current phase."""


class ExtProcStream:
    """Protocol state of one ext_proc stream. Not thread-safe; one instance per RPC."""

    __slots__ = (
        "_body",
        "_budget",
        "_clock",
        "_closed",
        "_dispatch",
        "_echo",
        "_failed",
        "_header_only",
        "_headers",
        "_max_body",
        "_observer",
        "_path",
        "_pending",
        "_phase",
        "_request_body",
        "_request_id",
        "_response_skipped",
        "_router",
        "_served",
        "_served_verifier",
        "_skip_response",
        "_span",
        "_started",
        "_status",
        "_status_ok",
        "_subset",
        "_timing",
        "_tracer",
    )

    def __init__(
        self,
        router: Router,
        observer: StreamObserver,
        *,
        max_body_bytes: int,
        served_verifier: bool = False,
        clock: Callable[[], float] = time.monotonic,
        skip_response: Callable[[Dispatch], ResponseSkip] | None = None,
        header_only: bool = False,
        budget: BodyBudget | None = None,
        tracer: RequestTracer | None = None,
    ) -> None:
        self._router = router
        #: ``--tracing``: the tracer, and the span of this request while it is recorded
        self._tracer = tracer
        self._span: RequestSpan | None = None
        self._header_only = header_only
        #: the process-wide budget of buffered body bytes; the request body once one is announced
        self._budget = budget if budget is not None else BodyBudget(1 << 62)
        self._request_body: RequestBody | None = None
        self._observer = observer
        self._max_body = max_body_bytes
        self._served_verifier = served_verifier
        self._clock = clock
        self._skip_response = skip_response
        self._phase = Phase.START
        #: a failure was reported (at most one per stream)
        self._failed = False
        self._closed = False
        self._request_id = ""
        self._headers: dict[str, str] = {}
        self._echo: list[tuple[str, bytes]] = []
        self._path = ""
        self._subset: tuple[str, ...] | None = None
        self._started = 0.0
        #: the routed request: set once routing succeeded, never replaced
        self._dispatch: Dispatch | None = None
        #: the response body once the response headers came (:mod:`picker.extproc.response`)
        self._body: ResponseBody | None = None
        self._status_ok = True
        #: routing waiting for I/O: (pending route, what it resolved, body end_of_stream, trailers follow)
        self._pending: tuple[PendingRoute, Resolved, bool, bool] | None = None
        #: what passive health and the latency averages learn (:meth:`_outcome`): the response status (0:
        #: no response headers), the served endpoint the gateway reported, response timing (from the
        #: request headers, ``_started``: the routing itself takes microseconds)
        self._status = 0
        self._served: str | None = None
        self._response_skipped = False
        #: the latency signals of the complete response (:meth:`ResponseBody.timing`)
        self._timing = NO_TIMING

    # ------------------------------------------------------------------------------------------ public
    @property
    def finished(self) -> bool:
        """True once nothing more will be answered: the server should end the RPC."""
        return self._phase == Phase.DONE

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def request_id(self) -> str:
        """``x-request-id`` (generated when missing); empty before the request headers arrive."""
        return self._request_id

    @property
    def dispatch(self) -> Dispatch | None:
        """The routed request, once routed."""
        return self._dispatch

    @property
    def closed(self) -> bool:
        return self._closed

    def waiting_replies(self) -> Replies:
        """What to send while a suspended request waits (after :data:`SUSPENDED`, before :meth:`resume`):
        the ``override_message_timeout`` its wait asks for, when it asks for one (scale from zero holds a
        request longer than a proxy's ``message_timeout``)."""
        pending = self._pending
        extend = pending[0].extend_s if pending is not None else None
        return () if extend is None else (wire.message_timeout_override(extend),)

    async def resume(self) -> Replies:
        """The replies of a request whose routing waited (after :data:`SUSPENDED`). Raises
        :class:`StreamAbortError` as :meth:`handle` does."""
        assert self._pending is not None
        pending, resolved, end_of_stream, trailers = self._pending
        self._pending = None
        try:
            try:
                dispatch = await pending.wait()
            except PickerError as exc:
                self._report_failure(exc.code, resolved)  # labelled with the models it resolved
                raise
            replies = self._routed_replies(dispatch, end_of_stream)
            if trailers:
                replies.append(wire.REQUEST_TRAILERS_REPLY)
        except PickerError as exc:
            return self._immediate(exc)
        except Exception as exc:
            logger.exception("ext_proc stream failed, request_id=%s", peer_text(self._request_id))
            self._report_failure(UNKNOWN_ERROR)
            self._phase = Phase.DONE
            raise StreamAbortError(f"internal error (request_id={self._request_id})", internal=True) from exc
        return replies

    def close(self) -> None:
        """Release the lease and the tenant's reservation, report the stream closed. Idempotent; never
        raises."""
        if self._closed:
            return
        self._closed = True
        if self._request_body is not None or self._body is not None:
            self._give_back()
        if self._pending is not None:
            self._pending[0].cancel()
            self._pending = None
        dispatch = self._dispatch
        if dispatch is not None:
            try:
                if not self._response_skipped:
                    dispatch.lease.report(self._outcome(dispatch))
                dispatch.lease.release()
            except Exception:
                logger.exception("lease release failed, request_id=%s", peer_text(self._request_id))
            ticket = dispatch.ticket
            if ticket is not None:
                try:
                    ticket.release()
                except Exception:
                    logger.exception("tenant release failed, request_id=%s", peer_text(self._request_id))
        try:
            self._observer.stream_closed(dispatch)
        except Exception:
            logger.exception("observer.stream_closed failed, request_id=%s", peer_text(self._request_id))
        if self._span is not None:
            self._span.end(self._status)

    # ------------------------------------------------------------------------------------------ request
    def _on_unknown(self, request: ProcessingRequest) -> Replies:
        raise _ProtocolViolationError(
            f"message without a known request field ({request.WhichOneof('request')})"
        )

    def _on_request_headers(self, request: ProcessingRequest) -> Replies:
        if self._phase != Phase.START:
            raise _ProtocolViolationError("request_headers after the request started")
        self._started = self._clock()
        message = request.request_headers
        head = read_request_head(message, echo=not self._header_only)
        self._headers, self._echo, self._request_id, self._path = head
        if self._tracer is not None:
            self._span = self._tracer.begin(self._headers, self._echo)
        if self._header_only:
            return self._route_by_header(end_of_stream=message.end_of_stream)
        if message.end_of_stream:
            return self._route_headers_only()
        body = self._request_body = RequestBody(self._max_body, self._budget)
        body.declared(self._headers.get("content-length", ""))
        self._phase = Phase.REQUEST_BODY
        return _NO_REPLIES

    def _on_request_body(self, request: ProcessingRequest) -> Replies:
        if self._phase == Phase.ROUTED and self._header_only:
            # header-only mode with a proxy that sends the body anyway (a body mode the override cannot
            # lower): forward it unchanged, chunk by chunk, buffering nothing
            message = request.request_body
            return (wire.request_body_reply(message.body, message.end_of_stream),)
        if self._phase != Phase.REQUEST_BODY:
            raise _ProtocolViolationError(
                "request_body before request_headers"
                if self._phase == Phase.START
                else "request_body after the request ended"
            )
        message = request.request_body
        if message.body:
            assert self._request_body is not None  # made with the phase
            self._request_body.add(message.body)
        if not message.end_of_stream:
            return _NO_REPLIES
        return self._route(end_of_stream=True)

    def _on_request_trailers(self, _request: ProcessingRequest) -> Replies:
        if self._phase == Phase.START:
            raise _ProtocolViolationError("request_trailers before request_headers")
        if self._phase == Phase.ROUTED and self._header_only:
            return (wire.REQUEST_TRAILERS_REPLY,)  # a proxy that sends them despite the override
        if self._phase != Phase.REQUEST_BODY:
            return _NO_REPLIES  # the reference ignores request trailers
        replies = self._route(end_of_stream=False)
        if isinstance(replies, _Suspended):
            assert self._pending is not None
            pending, resolved, _, _ = self._pending
            self._pending = (pending, resolved, False, True)
            return replies
        replies.append(wire.REQUEST_TRAILERS_REPLY)
        return replies

    def _route(self, *, end_of_stream: bool) -> list[bytes] | _Suspended:
        assert self._request_body is not None  # made with the phase
        request = self._request(self._request_body.take())  # handed on: the replies carry it
        return self._dispatched(request, self._router.resolve(request), end_of_stream)

    def _route_by_header(self, *, end_of_stream: bool) -> Replies:
        """Header-only mode: route now, from the headers, and ask the proxy to skip everything after. A
        request without a body and without the model header routes as any body-less request."""
        request = RoutingRequest(
            self._request_id, self._headers, self._path, b"", self._subset, headers_only=end_of_stream
        )
        resolved = self._router.resolve_by_header(request)
        if resolved is None:
            return self._routed_replies(self._router.route_headers_only(request), end_of_stream)
        return self._dispatched(request, resolved, end_of_stream)

    def _request(self, body: bytes, *, headers_only: bool = False) -> RoutingRequest:
        return RoutingRequest(
            request_id=self._request_id,
            headers=self._headers,
            path=self._path,
            body=body,
            subset=self._subset,
            headers_only=headers_only,
            timings=None if self._span is None else self._span.timings,
        )

    def _dispatched(
        self, request: RoutingRequest, resolved: Resolved, end_of_stream: bool
    ) -> list[bytes] | _Suspended:
        try:
            dispatch = self._router.route(request, resolved)
        except PickerError as exc:
            self._report_failure(exc.code, resolved)  # labelled with the models it resolved
            raise
        if isinstance(dispatch, PendingRoute):
            self._pending = (dispatch, resolved, end_of_stream, False)
            return SUSPENDED
        return self._routed_replies(dispatch, end_of_stream)

    def _routed_replies(self, dispatch: Dispatch, end_of_stream: bool) -> list[bytes]:
        if self._header_only:
            # nothing will be seen after this reply: no first response byte to end prefill (its charge
            # goes back now), no outcome to report
            dispatch.lease.first_byte()
            self._response_skipped = True
            echo = self._echo
            reply = (
                wire.request_headers_reply(
                    dispatch.destination, echo, None, skip_response=ResponseSkip.AFTER_REQUEST_HEADERS
                )
                if echo
                else wire.header_only_reply(dispatch.endpoints)
            )
            self._routed(dispatch, declared_length(self._headers.get("content-length", "")) or 0)
            return [reply]
        forwarded = dispatch.body
        replies: list[bytes] = [
            wire.request_headers_reply(
                dispatch.destination, self._echo, len(forwarded), skip_response=self._skips(dispatch)
            )
        ]
        replies.extend(wire.request_body_replies(forwarded, end_of_stream=end_of_stream))
        dispatch.body = b""  # the replies carry it; kept with the Dispatch it would outlive every budget
        self._routed(dispatch, len(forwarded))
        return replies

    def _route_headers_only(self) -> Replies:
        dispatch = self._router.route_headers_only(self._request(b"", headers_only=True))
        reply = wire.request_headers_reply(
            dispatch.destination, self._echo, None, skip_response=self._skips(dispatch)
        )
        self._routed(dispatch, 0)
        return (reply,)

    def _skips(self, dispatch: Dispatch) -> ResponseSkip:
        if self._skip_response is None or dispatch.ticket is not None:
            return ResponseSkip.NONE
        mode = self._skip_response(dispatch)
        if not mode:
            return ResponseSkip.NONE
        # No response body will be seen, so the end of prefill cannot be: give the prefill charge back
        # now rather than holding it until the stream ends (which would make the endpoint look busy
        # with prefill work long finished). The prefill-queue signal is lost for these requests.
        dispatch.lease.first_byte()
        # with every response phase skipped nothing will be known about the outcome: report none (a
        # proxy that ignores the override sends the response anyway, which is then handled as usual)
        self._response_skipped = mode == ResponseSkip.ALL
        return mode

    def _routed(self, dispatch: Dispatch, request_bytes: int) -> None:
        if dispatch.ticket is not None:
            dispatch.ticket.sent = True
        self._dispatch = dispatch
        self._phase = Phase.ROUTED
        self._echo = []
        self._observer.routed(dispatch, request_bytes)
        if self._span is not None:
            self._span.routed(dispatch)

    # ------------------------------------------------------------------------------------------ response
    def _on_response_headers(self, request: ProcessingRequest) -> Replies:
        if self._phase == Phase.START:
            # A response-only stream (a proxy with request_header_mode SKIP; the reference's hermetic
            # rows 16-19 do this): handled the same; response_complete gets dispatch=None.
            self._started = self._clock()
        elif self._phase != Phase.ROUTED:
            raise _ProtocolViolationError(
                "response_headers before the request ended"
                if self._phase == Phase.REQUEST_BODY
                else "response_headers twice"
            )
        dispatch = self._dispatch
        message = request.response_headers
        echo, status, content_type = read_response_head(message)
        if dispatch is not None and dispatch.ticket is not None:
            echo.extend(dispatch.ticket.response_headers())
        self._status_ok = status in {b"", b"200"}
        # no :status (the reference's tests omit it) reads as 200; junk as a server error
        self._status = int(status) if status.isdigit() else 500 if status else 200
        self._response_skipped = False
        if request.HasField("metadata_context"):
            self._served = served_address(request.metadata_context)
            if self._served is not None and dispatch is not None and dispatch.ticket is not None:
                dispatch.ticket.served_by(self._served)
        if not self._status_ok:
            self._report_failure(MODEL_SERVER_ERROR)
        body = self._body = ResponseBody(
            content_type,
            streamed=dispatch is not None and dispatch.streamed,
            restore=dispatch.restore if dispatch is not None else None,
            ticket=dispatch.ticket if dispatch is not None else None,
            max_body=self._max_body,
            budget=self._budget,
            clock=self._clock,
        )
        served = served_endpoint(request.metadata_context) if self._served_verifier else None
        reply = wire.response_headers_reply(
            echo, served_endpoint=served, remove_content_length=body.restore is not None
        )
        if message.end_of_stream:
            self._complete(body)
        else:
            self._phase = Phase.RESPONSE_BODY
        return (reply,)

    def _on_response_body(self, request: ProcessingRequest) -> Replies:
        if self._phase != Phase.RESPONSE_BODY:
            raise _ProtocolViolationError(
                "response_body before response_headers"
                if self._phase < Phase.RESPONSE_BODY
                else "response_body after the response ended"
            )
        body = self._body
        assert body is not None  # set with the phase
        chunk = request.response_body.body
        if chunk and not body.size and self._dispatch is not None:
            # the first response byte: for a streamed response, the first token, so prefill is done
            self._dispatch.lease.first_byte()
        replies = body.chunk(chunk, request.response_body.end_of_stream)
        if body.done:
            self._complete(body)
        return replies

    def _on_response_trailers(self, _request: ProcessingRequest) -> Replies:
        if self._phase != Phase.RESPONSE_BODY:
            raise _ProtocolViolationError(
                "response_trailers before response_headers"
                if self._phase < Phase.RESPONSE_BODY
                else "response_trailers after the response ended"
            )
        body = self._body
        assert body is not None  # set with the phase
        replies = body.trailers()
        self._complete(body)
        return replies

    def _complete(self, body: ResponseBody) -> None:
        self._phase = Phase.DONE
        dispatch = self._dispatch
        latency = self._clock() - self._started
        self._timing = body.timing(self._started, latency)
        usage = body.usage
        ticket = dispatch.ticket if dispatch is not None else None
        if ticket is not None:
            # settled here, exactly from the usage when there is one; ``body``: a buffered response
            # without usage, read for its text
            if body.size:
                ticket.chunk(b"")
            ticket.complete(usage, status_ok=self._status_ok, body=body.unparsed)
        # dispatch is None on a response-only stream (the reference's rows 16-19): still reported, with
        # empty model labels, as the reference records its token counts.
        self._observer.response_complete(
            dispatch,
            latency_s=latency,
            response_bytes=body.size,
            usage=usage,
            status_ok=self._status_ok,
        )

    def _outcome(self, dispatch: Dispatch) -> Outcome:
        """What the request came to, for passive health and the latency averages (see
        :mod:`picker.state.outcomes`): status 0 when the stream ended without response headers; timing
        only of a complete response."""
        ttfb, tpot, ntpot = self._timing
        info = dispatch.info
        return Outcome(
            endpoints=dispatch.endpoints,
            served=self._served,
            status=self._status,
            ttfb_s=ttfb,
            prompt_tokens=(info.prompt_chars // 4) if info is not None else 0,
            tpot_s=tpot,
            ntpot_s=ntpot,
        )

    # ------------------------------------------------------------------------------------------ errors
    def _immediate(self, exc: PickerError) -> Replies:
        self._report_failure(exc.code)
        self._phase = Phase.DONE
        self._give_back()
        return (wire.immediate_response(exc.http_status, exc.wire_body(), exc.wire_headers()),)

    def _give_back(self) -> None:
        """Return what this stream holds of the body budget (its buffered bytes were handed on or
        dropped), of the request body and of the response body."""
        if self._request_body is not None:
            self._request_body.release()
        if self._body is not None:
            self._body.release()

    def _report_failure(self, code: str, labels: Resolved | None = None) -> None:
        """Count the stream's failure once, labelled with its dispatch's models, or with what routing
        resolved before it failed, or with none."""
        if self._failed:
            return
        self._failed = True
        source: Dispatch | Resolved | None = self._dispatch or labels
        incoming = source.incoming_model if source is not None else ""
        target = source.target_model if source is not None else ""
        try:
            self._observer.failed(code, incoming, target)
        except Exception:
            logger.exception("observer.failed raised, request_id=%s", peer_text(self._request_id))
        if self._span is not None:
            self._span.failed(code, incoming)

    # ------------------------------------------------------------------------------------------ entry
    #: ``ProcessingRequest.request`` (a oneof) → its handler; anything else is a protocol violation
    _HANDLERS: ClassVar[Mapping[str | None, Callable[[ExtProcStream, ProcessingRequest], Replies]]] = {
        "request_headers": _on_request_headers,
        "request_body": _on_request_body,
        "request_trailers": _on_request_trailers,
        "response_headers": _on_response_headers,
        "response_body": _on_response_body,
        "response_trailers": _on_response_trailers,
    }

    def handle(self, request: ProcessingRequest) -> Replies:
        """Consume one ``ProcessingRequest`` and return the replies to write, in order (the entry point).

        Raises :class:`StreamAbortError` when the RPC must end with a gRPC error.
        """
        kind = request.WhichOneof("request")
        handler = self._HANDLERS.get(kind, ExtProcStream._on_unknown)
        try:
            if kind in _REQUEST_PHASE and request.HasField("metadata_context"):
                self._subset = subset_hint(request.metadata_context, self._subset)
            return handler(self, request)
        except PickerError as exc:
            return self._immediate(exc)
        except _ProtocolViolationError as exc:
            logger.warning("ext_proc protocol violation, request_id=%s: %s", peer_text(self._request_id), exc)
            self._report_failure(UNKNOWN_ERROR)
            self._phase = Phase.DONE
            raise StreamAbortError(f"protocol violation: {exc}", internal=False) from exc
        except Exception as exc:
            logger.exception("ext_proc stream failed, request_id=%s", peer_text(self._request_id))
            self._report_failure(UNKNOWN_ERROR)
            self._phase = Phase.DONE
            raise StreamAbortError(
                f"internal error (request_id={peer_text(self._request_id)})", internal=True
            ) from exc
