"""A real ``picker serve`` process against hostile model servers and clients: its memory stays bounded.

The hostile server (``picker.testing.hostile``) runs in its own process and offers up to 1 GiB per
response, in the framings that used to exhaust the scraper. The EPP's resident set is sampled while it
scrapes (every 50 ms) until it has refused several whole pages; it must stay under the baseline plus
:data:`RSS_BOUND`. Without the cap-while-reading it grows by hundreds of MiB a second.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import grpc
import pytest

from picker.extproc.server import DEFAULT_STREAM_WINDOW
from picker.testing.envoy import (
    EnvoyClient,
    request_body,
    request_headers,
)
from picker.testing.hostile import hostile_process
from picker.testing.unread_peer import offer_unread
from tests.integration.cli.conftest import PeakRss, rss
from tests.integration.conftest import LOCAL, PICKER, Spawn, serving_ports

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: the stated bound: the 8 MiB page cap, the bytes in flight of one socket read, allocator slack
RSS_BOUND = 96 << 20
#: what may stay resident once the hostile peer is gone (allocator caches, not pages)
RETURNED_BOUND = 32 << 20
#: whole pages refused while the resident set is sampled (one per 50 ms scrape on an idle machine)
REFUSALS = 5
REFUSED = re.compile(r"failing: page (larger than|too large)")


async def scrape_errors(http: aiohttp.ClientSession, port: int) -> float:
    """``picker_scrape_errors_total`` from the process's ``/metrics``."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    m = re.search(r"^picker_scrape_errors_total (\S+)$", text, re.MULTILINE)
    assert m is not None, text
    return float(m[1])


async def errors_reach(http: aiohttp.ClientSession, port: int, count: float) -> float:
    """Wait until ``count`` scrapes have failed (each a page read to the cap, or a peer gone); the count.
    A bounded poll, so a scraper that stopped fails with a message rather than the test's timeout."""
    for _ in range(1800):
        seen = await scrape_errors(http, port)
        if seen >= count:
            return seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{seen:g} failed scrapes, expected {count:g}")


@pytest.mark.parametrize(
    "mode", ["endless-chunk", "many-chunks", "gzip-bomb", "close-delimited", "content-length"]
)
async def test_memory_stays_bounded_while_a_model_server_sends_an_endless_page(
    spawn: Spawn, mode: str
) -> None:
    """Waits on what happened, not on a clock: the refusal's log line, then :data:`REFUSALS` failed
    scrapes while sampling; the scrape timeout is long because the subject is the cap (a scrape starved
    on a loaded machine would otherwise time out before the cap and log that instead)."""
    async with hostile_process(mode, 1 << 30, 1 << 20) as address, aiohttp.ClientSession() as http:
        process = await spawn(
            [
                PICKER,
                "serve",
                *LOCAL,
                "--secure-serving=false",
                f"--static-endpoints={address}@vllm",
                "--scrape-timeout=600s",
            ]
        )
        ports = await serving_ports(process, deadline_s=120.0)
        await scrape_errors(http, ports.metrics)  # warm: the first exposition's allocations
        pid = process.proc.pid
        baseline = rss(pid)
        async with PeakRss(pid, interval_s=0.05) as peak:
            await process.wait_for(REFUSED)
            refused = await errors_reach(http, ports.metrics, REFUSALS)
        assert process.proc.returncode is None, process.output
        grown = peak.peak - baseline
        assert grown < RSS_BOUND, f"{mode}: RSS grew by {grown >> 20} MiB (bound {RSS_BOUND >> 20} MiB)"
    # the peer is gone: once the page in flight has failed and a later scrape too, what the refused
    # pages took is given back
    async with aiohttp.ClientSession() as http:
        await errors_reach(http, ports.metrics, refused + 2)
    kept = rss(pid) - baseline
    assert kept < RETURNED_BOUND, f"{mode}: {kept >> 20} MiB kept after the refusals"
    assert await process.stop() == 0


FORGED = "2026-01-01 00:00:00,000 ERROR   picker: forged line"


async def test_a_request_id_cannot_forge_a_log_line(spawn: Spawn) -> None:
    process = await spawn(
        [PICKER, "serve", *LOCAL, "--secure-serving=false", "--static-endpoints=127.0.0.1:1"]
    )
    ports = await serving_ports(process, deadline_s=120.0)
    request_id = "abc\n" + FORGED + "\r\x1b[2J" + "x" * 5000
    async with EnvoyClient(f"127.0.0.1:{ports.grpc}", tls=False) as client:
        headers = request_headers([(":path", "/v1/completions"), ("x-request-id", request_id)])
        result = await client.raw([headers, headers])  # a second headers message: a protocol violation
    assert result.code == grpc.StatusCode.FAILED_PRECONDITION
    await process.wait_for(re.compile(r"protocol violation, request_id=abc"))
    assert await process.stop() == 0
    assert not any(line.startswith(FORGED[:10]) for line in process.lines), process.output
    line = next(line for line in process.lines if "protocol violation" in line)
    assert "abc\\x0a2026-01-01" in line
    assert "\\x1b[2J" in line
    assert len(line) < 1000  # the 5,000-character tail is elided


async def _post_stream(port: int, total: int, *, declare: bool) -> int:
    """POST ``total`` bytes to /debug/explain over a raw socket, reading the answer while sending (the
    server answers and closes mid-body); the HTTP status, or 0 if none came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: %d\r\n\r\n" % total if declare else b"Transfer-Encoding: chunked\r\n\r\n"
    body = b'{"body":"' + b"x" * (total - 11) + b'"}' if total < (1 << 20) else b"x" * (1 << 20)
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        sent = 0
        while sent < total and not answer.done():
            writer.write(body if declare else b"%x\r\n" % len(body) + body + b"\r\n")
            await writer.drain()
            sent += len(body)
        if not declare and not answer.done():
            writer.write(b"0\r\n\r\n")
    except ConnectionError:
        pass  # the server answered and closed while we were still sending
    try:
        status = await asyncio.wait_for(answer, 30)
    except (ConnectionError, TimeoutError):
        return 0
    finally:
        writer.transport.abort()
    return int(status.split()[1]) if status.startswith(b"HTTP/1.1 ") else 0


async def _refused(port: int, *, declare: bool) -> int:
    """The status of a POST over the cap that leaves nothing unread on the server's socket (so its close
    is a FIN, not a reset that could discard the answer): a declared 200 MiB with no body sent, or one
    chunk of cap + 1 bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /debug/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if declare:
        writer.write(head + b"Content-Length: %d\r\n\r\n" % (200 << 20))
    else:
        piece = b"x" * ((1 << 20) + 1)
        writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(piece) + piece)
    await writer.drain()
    try:
        status = await asyncio.wait_for(reader.readline(), 60)
    finally:
        writer.transport.abort()
    return int(status.split()[1]) if status.startswith(b"HTTP/1.1 ") else 0


#: the stated bound while 200 MiB are offered to the admin API: the 1 MiB cap, the server's read buffers
ADMIN_RSS_BOUND = 32 << 20


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "chunked"])
async def test_an_oversized_admin_body_is_refused_while_reading(spawn: Spawn, declare: bool) -> None:
    process = await spawn(
        [PICKER, "serve", *LOCAL, "--secure-serving=false", "--static-endpoints=127.0.0.1:1"]
    )
    ports = await serving_ports(process, deadline_s=120.0)
    assert await _post_stream(ports.admin, 4096, declare=declare) == 200  # warm: the first request's imports
    baseline = rss(process.proc.pid)
    async with PeakRss(process.proc.pid) as peak:
        await _post_stream(ports.admin, 200 << 20, declare=declare)  # 200 MiB offered: refused (or reset)
    grown = peak.peak - baseline
    assert grown < ADMIN_RSS_BOUND, f"RSS grew by {grown >> 20} MiB (bound {ADMIN_RSS_BOUND >> 20} MiB)"
    assert await _refused(ports.admin, declare=declare) == 413
    assert await _post_stream(ports.admin, 4096, declare=declare) == 200  # small bodies still work
    assert await process.stop() == 0


#: what gRPC holds of a stream its handler has not read (yet): the stream's receive window
#: (``--grpc-stream-window``, README "Limits") and the one message the handler waits for
STREAM_WINDOW = DEFAULT_STREAM_WINDOW
#: the memory those window's bytes may take: gRPC keeps the frames it holds in the read buffers they
#: arrived in, which it sizes ahead of each read (measured 1.3x the bytes held with a 1 MiB window)
WINDOW_MEMORY = 2 * STREAM_WINDOW
#: what the process may grow by beyond the stated per-stream bounds, whatever the streams: its own
#: allocations while serving (measured 8 MiB for 64 streams that each hold a 64 KiB chunk and its echo) and
#: the allocator's arenas
FIXED_SLACK = 24 << 20
#: the chunk size of both tests: what Envoy sends a streamed body in
CHUNK = 64 << 10
#: --max-buffered-body-bytes for the body test
BODY_BUDGET = 16 << 20
BODY_STREAMS = 96
#: 4 MiB offered per stream: 384 MiB in all
BODY_CHUNKS = 64
#: per unfinished body beyond the budget: its unread bytes (the window, in gRPC's read buffers), the message
#: its handler waits for, and that message's copy while the handler takes it
BODY_PER_STREAM = WINDOW_MEMORY + 2 * CHUNK


async def test_memory_stays_bounded_while_clients_send_unfinished_bodies(spawn: Spawn) -> None:
    """96 streams each offer 4 MiB of a body that never ends (384 MiB in all): the process-wide budget
    refuses what does not fit at once, and what no handler has read yet is bounded by each stream's
    window, however late the event loop reads (gRPC's automatic window grew to 4 MiB or more a stream: growth
    measured 81-86 MiB at a load of 10x the cores, 217 MiB once at more). Bound: the budget plus
    :data:`BODY_PER_STREAM` a stream plus :data:`FIXED_SLACK`."""
    process = await spawn(
        [
            PICKER,
            "serve",
            *LOCAL,
            "--secure-serving=false",
            "--static-endpoints=127.0.0.1:1",
            f"--max-buffered-body-bytes={BODY_BUDGET}",
        ]
    )
    ports = await serving_ports(process, deadline_s=120.0)
    baseline = rss(process.proc.pid)
    chunk = request_body(b"x" * CHUNK, end_of_stream=False)
    headers = request_headers([(":method", "POST"), (":path", "/v1/completions")])
    peak = baseline
    refused = 0
    #: streams the server answered and closed while we were still sending (their 503 may be lost with it)
    closed: set[int] = set()
    async with EnvoyClient(f"127.0.0.1:{ports.grpc}", tls=False) as client:
        streams = []
        for i in range(BODY_STREAMS):
            stream = client.stream()
            streams.append(stream)
            try:
                await stream.send(headers)
                for _ in range(BODY_CHUNKS):
                    await stream.send(chunk)
            except grpc.aio.AioRpcError:
                closed.add(i)
            peak = max(peak, rss(process.proc.pid))
        # four streams fill the budget; every other one is answered 503 at once (a bounded wait on that)
        replies = [asyncio.create_task(stream.recv()) for stream in streams]
        pending = set(replies)
        deadline = asyncio.get_running_loop().time() + 120
        while len(pending) > 4 and asyncio.get_running_loop().time() < deadline:
            _, pending = await asyncio.wait(pending, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
            peak = max(peak, rss(process.proc.pid))
        # a stream whose send failed was answered and closed already (its reply may be lost with it)
        buffered = len(pending)
        for i, task in enumerate(replies):
            reply = task.result() if task.done() and not task.exception() else None
            if reply is not None:
                assert reply.HasField("immediate_response"), reply
                assert reply.immediate_response.status.code == 503
            if reply is not None or i in closed:
                refused += 1
        for task in pending:
            task.cancel()
        for stream in streams:
            stream.cancel()
    assert buffered == 4, f"{buffered} of {BODY_STREAMS} unfinished bodies buffered, expected the 4 that fit"
    assert refused == BODY_STREAMS - 4, f"{refused} refused, expected every stream but the 4 buffered"
    bound = BODY_BUDGET + BODY_STREAMS * BODY_PER_STREAM + FIXED_SLACK
    assert peak - baseline < bound, f"RSS grew by {(peak - baseline) >> 20} MiB (bound {bound >> 20} MiB)"
    assert process.proc.returncode is None, process.output
    assert await process.stop() == 0


#: the peer that reads none of our replies: its streams, and the chunks each offers once its handler waits
UNREAD_STREAMS = 64
UNREAD_CHUNKS = 32
#: the peer's own receive window (gRPC's probe off): the echo of its first chunk does not fit
PEER_WINDOW = 16 << 10
#: per stream beyond the window: the chunk whose echo waits, and the echo
UNREAD_PER_STREAM = WINDOW_MEMORY + 2 * CHUNK
#: the senders are done, or none progressed for this long: each sent what the server's windows take
QUIET_S = 1.0


async def test_memory_stays_bounded_while_a_client_sends_what_no_handler_reads(spawn: Spawn) -> None:
    """64 streams start at SSE response headers (a proxy that skips the request phase) and send one 64 KiB
    chunk; the client never reads the echo, so each stream's handler waits on that write and reads nothing
    more. Each stream then offers 2 MiB more (128 MiB in all): gRPC takes at most the stream's window of it
    (with its automatic window it took everything: growth 147 MiB, every chunk accepted). Deterministic:
    the handlers cannot read, whatever the machine's load."""
    process = await spawn(
        [PICKER, "serve", *LOCAL, "--secure-serving=false", "--static-endpoints=127.0.0.1:1"]
    )
    ports = await serving_ports(process, deadline_s=120.0)
    pid = process.proc.pid
    outcome = await offer_unread(
        f"127.0.0.1:{ports.grpc}",
        lambda: rss(pid),
        streams=UNREAD_STREAMS,
        chunks=UNREAD_CHUNKS,
        chunk=CHUNK,
        client_window=PEER_WINDOW,
        quiet_s=QUIET_S,
        sample_s=0.02,
    )
    accepted = outcome.accepted
    assert accepted <= STREAM_WINDOW // CHUNK + 1, f"{accepted} unread chunks accepted on a stream"
    bound = UNREAD_STREAMS * UNREAD_PER_STREAM + FIXED_SLACK
    grown = outcome.growth
    assert grown < bound, f"RSS grew by {grown >> 20} MiB (bound {bound >> 20} MiB)"
    assert process.proc.returncode is None, process.output
    assert await process.stop() == 0


#: the peer whose response chunks are large and whose echoes it never reads: streams, chunk, the budget
ECHO_STREAMS = 32
ECHO_CHUNK = 2 << 20
ECHO_BUDGET = 16 << 20
#: per stream outside the budget: its window's bytes, the one chunk whose echo waits for room (held once
#: while it waits: the server drops the request message and the usage scanner keeps a 64 KiB tail; twice at
#: the peak, in gRPC's read buffers while the reply is built from it), and that tail
ECHO_PER_STREAM = WINDOW_MEMORY + 2 * ECHO_CHUNK + (64 << 10)


async def test_memory_stays_bounded_while_a_client_reads_no_echo_of_large_chunks(spawn: Spawn) -> None:
    """32 streams start at SSE response headers and send one 2 MiB chunk each; the client never reads the
    echoes. The echoes handed to gRPC count against the 16 MiB reply budget (twice each: ours and gRPC's
    copy), the others wait for room holding their chunk once, and no stream reads more. Before the
    replies were budgeted each stream held its chunk about four times over (the echo, gRPC's copy, the
    request message, the usage scanner's reference): 4.5 chunks a stream, 290-305 MiB here."""
    process = await spawn(
        [
            PICKER,
            "serve",
            *LOCAL,
            "--secure-serving=false",
            "--static-endpoints=127.0.0.1:1",
            f"--max-buffered-body-bytes={ECHO_BUDGET}",
        ]
    )
    ports = await serving_ports(process, deadline_s=120.0)
    pid = process.proc.pid
    outcome = await offer_unread(
        f"127.0.0.1:{ports.grpc}",
        lambda: rss(pid),
        streams=ECHO_STREAMS,
        chunks=1,
        chunk=ECHO_CHUNK,
        client_window=PEER_WINDOW,
        quiet_s=QUIET_S,
        sample_s=0.02,
    )
    assert outcome.accepted == 0, f"{outcome.accepted} chunks accepted past a waiting echo"
    bound = ECHO_BUDGET + ECHO_STREAMS * ECHO_PER_STREAM + FIXED_SLACK
    grown = outcome.growth
    assert grown < bound, f"RSS grew by {grown >> 20} MiB (bound {bound >> 20} MiB)"
    assert process.proc.returncode is None, process.output
    assert await process.stop() == 0
