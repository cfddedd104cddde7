"""A cap on request bodies of the admin API, enforced while reading.

Why: ``POST /debug/explain`` runs the router on the body it is given; without a cap a 200 MiB body was
read whole (over 1 GiB of RSS) and parsed on the event loop that also routes. The middleware refuses a
``Content-Length`` over the cap at once, and otherwise reads the body itself, counting, before the
application sees any of it: it holds at most ``limit`` bytes and answers 413 the moment the count
exceeds them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

__all__ = ["DEFAULT_ADMIN_MAX_BODY_BYTES", "BodyCap"]

#: 1 MiB: an explain request is a few KB; a long prompt a few hundred
DEFAULT_ADMIN_MAX_BODY_BYTES = 1 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyCap:
    """ASGI middleware: HTTP request bodies over ``limit`` bytes get 413 without reaching ``app``."""

    def __init__(self, app: ASGIApp, limit: int = DEFAULT_ADMIN_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await self._refuse(send)
                return
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(send)
                return
            if body:
                parts.append(body)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send: Send) -> None:
        body = orjson.dumps(
            {
                "error": {
                    "code": "PayloadTooLarge",
                    "message": f"request body exceeds the admin API limit of {self.limit} bytes",
                }
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
