"""The Envoy-like load generator process (``python -m benchmarks.bench_extproc --load``): keeps clients per
target, runs the phases it reads from stdin, answers with one JSON line each."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from benchmarks.extproc.workload import (
    FULL,
    HEADER_ONLY,
    MODEL,
    MODEL_HEADER,
    SMALL_BODY,
    SSE_BODY,
    Workload,
    chat_body,
    install_uvloop,
)

CHANNELS_PER_PROC = 4
MAX_CONCURRENCY_PER_PROC = 8


class StreamFailedError(Exception):
    pass


async def one_stream(client: Any, work: Workload, skip_mode: int) -> tuple[float, float]:
    """Drive one stream like Envoy; returns (request-phase seconds, whole-stream seconds)."""
    stream = client.stream()
    t0 = time.perf_counter()
    for message in work.request:
        await stream.send(message)
    skip = False
    while True:
        reply = await stream.recv()
        if reply is None:
            raise StreamFailedError("stream ended during the request phase")
        kind = reply.WhichOneof("response")
        if kind == "request_body":
            if reply.request_body.response.body_mutation.streamed_response.end_of_stream:
                break
        elif kind == "request_headers":
            skip = reply.HasField("mode_override") and reply.mode_override.response_header_mode == skip_mode
        else:
            raise StreamFailedError(f"unexpected {kind} reply in the request phase")
    t_request = time.perf_counter() - t0
    if not skip:
        for message in work.response:
            await stream.send(message)
            reply = await stream.recv()
            if reply is None or reply.WhichOneof("response") not in ("response_headers", "response_body"):
                raise StreamFailedError("bad response-phase reply")
    await stream.half_close()
    if await stream.recv() is not None:
        raise StreamFailedError("reply after the stream ended")
    code, _details = await stream.status()
    if code.name != "OK":
        raise StreamFailedError(f"stream ended with {code.name}")
    return t_request, time.perf_counter() - t0


async def one_message(client: Any, work: Workload) -> tuple[float, float]:
    """Drive one header-only stream like Envoy with ``request_body_mode: NONE``: the request headers, the
    one reply, then the half-close Envoy sends when the exchange ends (nothing else is processed)."""
    stream = client.stream()
    t0 = time.perf_counter()
    await stream.send(work.request[0])
    reply = await stream.recv()
    if reply is None:
        raise StreamFailedError("stream ended before the request-headers reply")
    kind = reply.WhichOneof("response")
    if kind != "request_headers":
        raise StreamFailedError(f"unexpected {kind} reply to the request headers")
    t_request = time.perf_counter() - t0
    await stream.half_close()
    if await stream.recv() is not None:
        raise StreamFailedError("reply after the stream ended")
    code, _details = await stream.status()
    if code.name != "OK":
        raise StreamFailedError(f"stream ended with {code.name}")
    return t_request, time.perf_counter() - t0


class LoadProcess:
    """One load-generator process: keeps clients per target, runs commands read from stdin."""

    def __init__(self) -> None:
        self.clients: dict[str, list[Any]] = {}
        self.works: dict[tuple[int, str], Workload] = {}

    async def _clients(self, target: str) -> list[Any]:
        import grpc

        from picker.testing.envoy import EnvoyClient, HttpRequest, UpstreamResponse

        clients = self.clients.get(target)
        if clients is None:
            clients = []
            for _ in range(CHANNELS_PER_PROC):
                client = EnvoyClient(target, timeout=30.0, options=[("grpc.use_local_subchannel_pool", 1)])
                await client.connect()
                # one fully checked exchange per connection (order, destination, echo) before any timing
                result = await client.exchange(
                    HttpRequest(
                        path="/v1/chat/completions",
                        body=chat_body(SMALL_BODY),
                        headers=[(MODEL_HEADER, MODEL)],
                    ),
                    UpstreamResponse(headers=(("content-type", "text/event-stream"),), chunks=(SSE_BODY,)),
                )
                if result.code != grpc.StatusCode.OK or result.immediate is not None:
                    raise StreamFailedError(f"warm-up exchange failed: {result.code} {result.immediate}")
                clients.append(client)
            self.clients[target] = clients
        return clients

    def _work(self, body_bytes: int, shape: str) -> Workload:
        work = self.works.get((body_bytes, shape))
        if work is None:
            work = self.works[body_bytes, shape] = Workload.build(body_bytes, shape)
        return work

    async def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """One phase: every target in ``cmd["targets"]`` gets the same load at the same time."""
        results = await asyncio.gather(*(self._drive(cmd, target) for target in cmd["targets"]))
        return dict(zip(cmd["targets"], results, strict=True))

    async def _drive(self, cmd: dict[str, Any], target: str) -> dict[str, Any]:
        from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

        skip_mode = processing_mode_pb2.ProcessingMode.SKIP
        clients = await self._clients(target)
        shape = cmd.get("shape", FULL)
        work = self._work(cmd["body_bytes"], shape)
        request_s: list[float] = []
        total_s: list[float] = []
        errors: list[str] = []
        late = 0
        start = cmd["start_at"] - time.time() + time.monotonic()
        end = start + cmd["duration"]
        pick = 0

        async def one() -> None:
            nonlocal pick
            client = clients[pick % len(clients)]
            pick += 1
            try:
                if shape == HEADER_ONLY:
                    t_request, t_total = await one_message(client, work)
                else:
                    t_request, t_total = await one_stream(client, work, skip_mode)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}" if len(errors) < 5 else "")
                return
            request_s.append(t_request)
            total_s.append(t_total)

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0 = time.process_time()
        if cmd["mode"] == "closed":

            async def loop() -> None:
                while time.monotonic() < end:
                    await one()

            await asyncio.gather(*(loop() for _ in range(cmd["concurrency"])))
        else:
            interval = 1.0 / cmd["rate"]
            at = start + cmd.get("offset", 0.0) * interval
            tasks = []
            while at < end:
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -0.01:
                    late += 1
                tasks.append(asyncio.ensure_future(one()))
                at += interval
            await asyncio.gather(*tasks)
        wall = time.monotonic() - start
        cpu = time.process_time() - cpu0
        return {
            "ok": len(request_s),
            "errors": len(errors),
            "error_samples": [e for e in errors if e][:5],
            "late": late,
            "wall_s": wall,
            "client_cores": cpu / wall if wall > 0 else 0.0,
            "request_us": sorted(round(t * 1e6) for t in request_s),
            "total_us": sorted(round(t * 1e6) for t in total_s),
        }


def load_main() -> int:
    install_uvloop()

    async def main() -> None:
        proc = LoadProcess()
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("op") == "connect":
                await proc._clients(cmd["target"])
                result: dict[str, Any] = {"connected": cmd["target"]}
            else:
                result = await proc.run(cmd)
            print(json.dumps(result), flush=True)

    asyncio.run(main())
    return 0
