"""A miniature gateway: asks the EPP over ext_proc, then really forwards the request to the chosen server.

Envoy does three things per request that a test of routing *quality* needs: it holds the ext_proc
stream open for the whole exchange (so the EPP's in-flight accounting is real), it sends the request
to the endpoint the EPP named, and it streams the response through the EPP. :class:`MiniGateway` does
the same with :mod:`picker.testing.envoy` for the ext_proc side and aiohttp for the upstream side, and
measures time to first byte and total latency as a client would see them. Used by ``picker demo`` and
the live benchmark; also usable with a fixed routing policy (round-robin) to compare against.
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


@dataclass(slots=True)
class GatewayResult:
    """One request as the client saw it."""

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
    body: bytes = field(default=b"", repr=False)


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


def _kind(reply: Message) -> str:
    return str(reply.WhichOneof("response"))


class MiniGateway:
    """``await gw.send(path, body)`` → :class:`GatewayResult`. Create inside a running loop."""

    def __init__(
        self, epp: EnvoyClient | None, *, timeout_s: float = 60.0, route: Callable[[], str] | None = None
    ) -> None:
        """``epp`` picks the endpoint; or ``route`` (no EPP) does, e.g. a round-robin baseline."""
        if (epp is None) == (route is None):
            raise ValueError("give exactly one of an EPP client or a fixed route")
        self._epp = epp
        self._route = route
        self._timeout = timeout_s
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
            result.endpoint = self._route()
            await self._forward(result, path, body, started=started, stream=None)
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
        first = await replies.next()
        result.pick_s = time.monotonic() - started
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
        result.endpoint = dest.split(",")[0]
        forwarded = bytearray()
        while (reply := await replies.next()) is not None and _kind(reply) == "request_body":
            chunk = reply.request_body.response.body_mutation.streamed_response
            forwarded += chunk.body
            if chunk.end_of_stream:
                break
        await self._forward(result, path, bytes(forwarded), started=started, stream=stream)
        with contextlib.suppress(Exception):
            await stream.half_close()
        await replies.task

    async def _forward(
        self, result: GatewayResult, path: str, body: bytes, *, started: float, stream: Any
    ) -> None:
        url = f"http://{result.endpoint}{path}"
        async with self._session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
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
            async for chunk in resp.content.iter_any():
                if first:
                    result.ttft_s = time.monotonic() - started
                    first = False
                out += chunk
                if stream is not None:
                    await stream.send(response_body(chunk))
            if stream is not None:
                await stream.send(response_body(b"", end_of_stream=True))
            result.response_bytes = len(out)
            result.body = bytes(out)
        result.latency_s = time.monotonic() - started
