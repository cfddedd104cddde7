"""A miniature gateway: asks the EPP over ext_proc, then really forwards the request to the chosen server.

Envoy does four things per request that a test of routing *quality* needs: it holds the ext_proc
stream open for the whole exchange (so the EPP's in-flight accounting is real), it sends the request
to the endpoint the EPP named, it retries a failed attempt on the next endpoint of the EPP's list, and
it streams the response through the EPP. :class:`MiniGateway` does the same with
:mod:`picker.testing.envoy` for the ext_proc side and aiohttp for the upstream side, and measures time to
first byte and total latency as a client would see them. Used by ``picker demo`` and the live
benchmarks; also usable with a fixed routing policy (round-robin) to compare against.

Retries, as Envoy with ``retry_on: 5xx,reset,connect-failure`` (and a per-try timeout) walks the EPP's
``x-gateway-destination-endpoint`` list: an attempt that fails to connect, is reset before the response
headers, times out waiting for them (``upstream_timeout_s``), or answers a status >= 500 is retried on the
next endpoint of the list, up to ``retries`` times. A 5xx answer of the last attempt is returned to the
client as it is; when no attempt produced a response at all, the gateway answers 503 itself (504 after a
timeout), as Envoy's router does ("upstream connect error or disconnect/reset before headers"). The EPP
sees the final response only, with the endpoint that produced it in the ``envoy.lb`` served-endpoint
metadata; whether a gateway-generated reply reaches the EPP differs between Envoy versions, so it is an
option (``local_reply_to_epp``; without it the ext_proc stream just ends without a response). A response
that breaks off after its headers is not retried (the client already has part of it): the ext_proc
stream is cancelled, as Envoy resets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from picker.testing.envoy import (
    EnvoyClient,
    request_body,
    request_headers,
    response_body,
    response_headers,
)

Message = Any


#: what the gateway itself answers when no attempt produced a response (Envoy's router wording)
LOCAL_REPLY_BODY = (
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
LOCAL_TIMEOUT_BODY = b"upstream request timeout"


@dataclass(slots=True)
class GatewayResult:
    """One request as the client saw it."""

    #: the endpoint that produced the final response (or the last one tried)
    endpoint: str = ""
    #: HTTP status the client got (the EPP's ImmediateResponse status when it refused the request)
    status: int = 0
    #: seconds from sending the request to the first response body byte
    ttft_s: float = 0.0
    #: seconds from sending the request to the end of the response
    latency_s: float = 0.0
    #: seconds the EPP took to answer the request phase
    pick_s: float = 0.0
    response_bytes: int = 0
    error: str = ""
    replies: int = 0
    #: endpoints tried, in order (more than one: the gateway retried)
    attempts: list[str] = field(default_factory=list)
    #: the response came from the gateway itself (no attempt produced one)
    local_reply: bool = False
    #: ``override_message_timeout`` values the EPP sent (seconds), honoured or not
    timeout_overrides: list[float] = field(default_factory=list)
    body: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        """The client got a complete 2xx response."""
        return 200 <= self.status < 300 and not self.error


class _Replies:
    """Reads ext_proc replies in the background so a buffered (non-SSE) response cannot deadlock us."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.items: list[Message] = []
        self._event = asyncio.Event()
        self._cursor = 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while (reply := await self._stream.recv()) is not None:
            self.items.append(reply)
            self._event.set()
        self._event.set()

    async def next(self) -> Message | None:
        """The next reply in arrival order, or None when the stream ended (callers bound the wait)."""
        while self._cursor >= len(self.items):
            if self.task.done():
                return None
            self._event.clear()
            await self._event.wait()
        reply = self.items[self._cursor]
        self._cursor += 1
        return reply


#: the request phase's message timer fired (:meth:`MiniGateway._timed_reply`)
_TIMED_OUT: Message = object()


def _kind(reply: Message) -> str:
    return str(reply.WhichOneof("response"))


class _AttemptFailedError(Exception):
    """One upstream attempt produced no usable response (connect failure, reset, timeout)."""

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout


class MiniGateway:
    """``await gw.send(path, body)`` → :class:`GatewayResult`. Create inside a running loop."""

    def __init__(
        self,
        epp: EnvoyClient | None,
        *,
        timeout_s: float = 60.0,
        route: Callable[[], str] | None = None,
        retries: int = 1,
        upstream_timeout_s: float | None = None,
        local_reply_to_epp: bool = True,
        message_timeout_s: float | None = None,
        max_message_timeout_s: float = 0.0,
    ) -> None:
        """``epp`` picks the endpoints; or ``route`` (no EPP) names one, e.g. a round-robin baseline (no
        retries then: there is no list to walk). ``retries``: further attempts on the next endpoints of
        the EPP's list (Envoy ``num_retries``). ``upstream_timeout_s``: per-attempt wait for the response
        headers (None: only the overall ``timeout_s``). ``local_reply_to_epp``: the gateway's own 503/504
        goes through the EPP's response phase (else the ext_proc stream ends without a response).

        ``message_timeout_s``: Envoy's ext_proc ``message_timeout`` on the request phase — no reply within
        it and the gateway answers 504 itself (``failure_mode_allow: false``; None: no per-message timer).
        ``max_message_timeout_s``: Envoy's ``max_message_timeout``: a reply carrying only
        ``override_message_timeout`` restarts the timer with that duration if it is at most this bound,
        once per message; 0 (Envoy's default) ignores every override."""
        if (epp is None) == (route is None):
            raise ValueError("give exactly one of an EPP client or a fixed route")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._epp = epp
        self._route = route
        self._timeout = timeout_s
        self._retries = retries
        self._upstream_timeout = upstream_timeout_s
        self._local_reply_to_epp = local_reply_to_epp
        self._message_timeout = message_timeout_s
        self._max_message_timeout = max_message_timeout_s
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        )

    async def close(self) -> None:
        await self._session.close()

    async def send(self, path: str, body: bytes, *, headers: Sequence[tuple[str, str]] = ()) -> GatewayResult:
        result = GatewayResult()
        started = time.monotonic()
        if self._epp is None:
            assert self._route is not None
            try:
                async with asyncio.timeout(self._timeout):
                    await self._forward(result, path, body, (self._route(),), started=started, stream=None)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                result.status = result.status or 502
            return result
        stream = self._epp.stream(timeout=self._timeout)
        replies = _Replies(stream)
        try:
            async with asyncio.timeout(self._timeout):
                await self._exchange(
                    stream, replies, result, path=path, body=body, headers=headers, started=started
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            result.status = result.status or 502
            stream.cancel()
        finally:
            if not replies.task.done():
                replies.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replies.task
        result.replies = len(replies.items)
        return result

    async def _exchange(
        self,
        stream: Any,
        replies: _Replies,
        result: GatewayResult,
        *,
        path: str,
        body: bytes,
        headers: Sequence[tuple[str, str]],
        started: float,
    ) -> None:
        hdrs = [
            (":method", "POST"),
            (":path", path),
            (":authority", "demo"),
            (":scheme", "http"),
            ("content-type", "application/json"),
            *headers,
        ]
        await stream.send(request_headers(hdrs))
        await stream.send(request_body(body, end_of_stream=True))
        first = await self._timed_reply(replies, result)
        result.pick_s = time.monotonic() - started
        if first is _TIMED_OUT:
            result.status = 504
            result.local_reply = True
            result.error = "ext_proc message timeout"
            result.latency_s = time.monotonic() - started
            stream.cancel()
            return
        if first is None or _kind(first) != "request_headers":
            imm = first.immediate_response if first is not None else None
            result.status = int(imm.status.code) if imm is not None else 502
            result.error = imm.body.decode(errors="replace") if imm is not None else "no reply"
            result.latency_s = time.monotonic() - started
            return
        mutation = first.request_headers.response.header_mutation
        dest = next(
            h.header.raw_value.decode() or h.header.value
            for h in mutation.set_headers
            if h.header.key == "x-gateway-destination-endpoint"
        )
        endpoints = tuple(e.strip() for e in dest.split(",") if e.strip())
        forwarded = bytearray()
        while (reply := await replies.next()) is not None and _kind(reply) == "request_body":
            chunk = reply.request_body.response.body_mutation.streamed_response
            forwarded += chunk.body
            if chunk.end_of_stream:
                break
        if not await self._forward(result, path, bytes(forwarded), endpoints, started=started, stream=stream):
            return
        with contextlib.suppress(Exception):
            await stream.half_close()
        await replies.task

    async def _timed_reply(self, replies: _Replies, result: GatewayResult) -> Message | None:
        """The request phase's reply under Envoy's message timer (:data:`_TIMED_OUT` when it fires):
        ``override_message_timeout`` replies restart it as Envoy does (see ``__init__``)."""
        loop = asyncio.get_running_loop()
        timer = self._message_timeout
        deadline = None if timer is None else loop.time() + timer
        overridden = False
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    reply = await replies.next()
            except TimeoutError:
                return _TIMED_OUT
            if reply is None or reply.WhichOneof("response") is not None:
                return reply
            if reply.HasField("override_message_timeout"):
                override = reply.override_message_timeout.ToTimedelta().total_seconds()
                result.timeout_overrides.append(override)
                if deadline is not None and not overridden and 0.001 <= override <= self._max_message_timeout:
                    deadline, overridden = loop.time() + override, True

    async def _attempt(self, url: str, body: bytes) -> aiohttp.ClientResponse:
        """One upstream attempt up to its response headers."""
        try:
            async with asyncio.timeout(self._upstream_timeout):
                return await self._session.post(url, data=body, headers={"content-type": "application/json"})
        except TimeoutError as exc:
            raise _AttemptFailedError("upstream request timeout", timeout=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _AttemptFailedError(f"{type(exc).__name__}: {exc}") from exc

    async def _forward(
        self,
        result: GatewayResult,
        path: str,
        body: bytes,
        endpoints: Sequence[str],
        *,
        started: float,
        stream: Any,
    ) -> bool:
        """Try the endpoints in order (at most ``1 + retries``), relay the final response through the EPP
        (``stream``; None without an EPP). False when the ext_proc stream was cancelled (a response that
        broke off, or a failure the gateway did not turn into a response)."""
        tries = endpoints[: 1 + self._retries] if stream is not None else endpoints[:1]
        failure: _AttemptFailedError | None = None
        resp: aiohttp.ClientResponse | None = None
        for k, endpoint in enumerate(tries):
            result.attempts.append(endpoint)
            result.endpoint = endpoint
            try:
                resp = await self._attempt(f"http://{endpoint}{path}", body)
            except _AttemptFailedError as exc:
                failure = exc
                continue
            if resp.status >= 500 and k + 1 < len(tries):
                resp.release()
                resp = None
                continue
            break
        if resp is None:
            return await self._local_reply(result, failure, started=started, stream=stream)
        async with resp:
            result.status = resp.status
            if stream is not None:
                await stream.send(
                    response_headers(
                        [
                            (":status", str(resp.status)),
                            ("content-type", resp.headers.get("content-type", "")),
                        ],
                        served_endpoint=result.endpoint,
                    )
                )
            first = True
            out = bytearray()
            try:
                async for chunk in resp.content.iter_any():
                    if first:
                        result.ttft_s = time.monotonic() - started
                        first = False
                    out += chunk
                    if stream is not None:
                        await stream.send(response_body(chunk))
            except (aiohttp.ClientError, OSError) as exc:
                # the upstream broke off mid-response: the client gets a truncated answer, Envoy resets
                result.error = f"response broke off: {type(exc).__name__}: {exc}"
                result.response_bytes = len(out)
                result.latency_s = time.monotonic() - started
                if stream is not None:
                    stream.cancel()
                return False
            if stream is not None:
                await stream.send(response_body(b"", end_of_stream=True))
            result.response_bytes = len(out)
            result.body = bytes(out)
        result.latency_s = time.monotonic() - started
        return True

    async def _local_reply(
        self, result: GatewayResult, failure: _AttemptFailedError | None, *, started: float, stream: Any
    ) -> bool:
        """No attempt produced a response: the gateway answers 503 (504 after a timeout) itself."""
        timeout = failure is not None and failure.timeout
        result.status = 504 if timeout else 503
        result.local_reply = True
        result.error = str(failure) if failure is not None else "no upstream endpoint"
        body = LOCAL_TIMEOUT_BODY if timeout else LOCAL_REPLY_BODY
        result.latency_s = time.monotonic() - started
        if stream is None:
            return True
        if not self._local_reply_to_epp:
            stream.cancel()
            return False
        await stream.send(
            response_headers(
                [(":status", str(result.status)), ("content-type", "text/plain")],
                served_endpoint=result.endpoint,
            )
        )
        await stream.send(response_body(body, end_of_stream=True))
        return True
