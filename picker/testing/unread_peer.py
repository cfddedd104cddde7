"""An ext_proc client that sends what no handler reads: how much of it the server holds.

``streams`` streams (on one connection, gRPC's bandwidth-delay probe off and the client's own receive
window ``client_window``) start at SSE response headers (a proxy that skips the request phase) and send
one ``chunk``; the client never reads the echo, which does not fit its window, so each stream's handler
waits on that write and reads nothing more. Each stream then offers ``chunks`` more chunks: what the
server accepts of them sits in gRPC's buffers (at most the stream's receive window), so the outcome is
deterministic whatever the machine's load: the handlers cannot read.

One implementation for the hardening test that bounds the growth
(``tests/integration/cli/test_hostile_peers.py``) and the stream-window benchmark that reports it per
window (``benchmarks/bench_window.py``); they differ only in the parameters (how long the senders may be
quiet, how the server's resident set is read and how often).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from picker.testing.envoy import EnvoyClient, response_body, response_headers

__all__ = ["UnreadOutcome", "offer_unread"]


@dataclass(frozen=True, slots=True)
class UnreadOutcome:
    """What :func:`offer_unread` saw: the server's resident set (bytes) after the warm-up stream and its
    largest sample while the chunks were offered, and the chunks each stream's sends completed."""

    before: int
    peak: int
    sent: tuple[int, ...]
    seconds: float

    @property
    def growth(self) -> int:
        return self.peak - self.before

    @property
    def accepted(self) -> int:
        """Chunks accepted on the stream that got the most of them."""
        return max(self.sent, default=0)


async def offer_unread(
    target: str,
    rss: Callable[[], int],
    *,
    streams: int = 64,
    chunks: int = 32,
    chunk: int = 64 << 10,
    client_window: int = 16 << 10,
    quiet_s: float = 1.0,
    sample_s: float = 0.05,
    settle_s: float = 0.0,
    within_s: float = 60.0,
    rpc_timeout_s: float = 300.0,
) -> UnreadOutcome:
    """Run the peer against the plaintext ext_proc server at ``target``; ``rss()`` reads its resident set.

    One warm-up stream first (the first stream's imports and allocations are not the peer's), then the
    resident set is sampled every ``sample_s`` in the background while the streams send, until every
    sender is done or none progressed for ``quiet_s`` (each sent what the server's windows take), or
    ``within_s`` passed (a bound, not a verdict: the caller judges what was accepted). ``settle_s``: a
    last wait before the final sample, for what was written last to reach the server (the benchmark's;
    the test samples at once). ``rpc_timeout_s``: each RPC's deadline, beyond the whole run.
    """
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", client_window)]
    headers = response_headers([(":status", "200"), ("content-type", "text/event-stream")])
    first = response_body(b"d" * chunk)
    more = response_body(b"x" * chunk)
    sent = [0] * streams
    loop = asyncio.get_running_loop()
    async with EnvoyClient(target, timeout=rpc_timeout_s, options=options) as client:
        warm = await client.raw([headers, response_body(b"x", end_of_stream=True)])
        if warm.code != grpc.StatusCode.OK:
            raise RuntimeError(f"the warm-up stream ended {warm.code}: {warm.details}")
        before = peak = rss()
        opened = [client.stream() for _ in range(streams)]

        async def offer(i: int) -> None:
            await opened[i].send(headers)
            await opened[i].send(first)
            for _ in range(chunks):
                await opened[i].send(more)
                sent[i] += 1

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss())
                await asyncio.sleep(sample_s)

        t0 = loop.time()
        sampler = asyncio.create_task(sample())
        senders = [asyncio.create_task(offer(i)) for i in range(streams)]
        try:
            progress, quiet_since, deadline = -1, t0, t0 + within_s
            while not all(s.done() for s in senders) and loop.time() < deadline:
                if loop.time() - quiet_since > quiet_s:
                    break
                await asyncio.sleep(0.05)
                if sum(sent) != progress:
                    progress, quiet_since = sum(sent), loop.time()
            if settle_s:
                await asyncio.sleep(settle_s)
            peak = max(peak, rss())
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            for sender in senders:
                sender.cancel()
            for stream in opened:
                stream.cancel()
    return UnreadOutcome(before, peak, tuple(sent), loop.time() - t0)
