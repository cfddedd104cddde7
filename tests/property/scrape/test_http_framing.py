"""The scraper's HTTP parser on any framing, any chunk sizes and any split of the bytes into reads:
a page within the cap comes out byte for byte; a page over it is refused, never more than the cap held."""

from __future__ import annotations

import asyncio
import itertools
import zlib
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picker.scrape.client import ScrapeError
from picker.scrape.http import _Connection

CAP = 4096


class _Transport:
    def __init__(self) -> None:
        self.closing = False

    def write(self, _data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


def _frame(page: bytes, framing: str, sizes: list[int], encoding: str) -> bytes:
    body = page
    head = b"HTTP/1.1 200 OK\r\n"
    if encoding == "gzip":
        c = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = c.compress(page) + c.flush()
        head += b"Content-Encoding: gzip\r\n"
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    if framing == "close":
        return b"HTTP/1.0 200 OK\r\n" + head.split(b"\r\n", 1)[1] + b"\r\n" + body
    out = [head + b"Transfer-Encoding: chunked\r\n\r\n"]
    at = 0
    i = 0
    while at < len(body):
        n = max(1, sizes[i % len(sizes)])
        part = body[at : at + n]
        out.append(b"%x;ext=%d\r\n" % (len(part), i) + part + b"\r\n")
        at += n
        i += 1
    out.append(b"0\r\nTrailer: x\r\n\r\n")
    return b"".join(out)


def _run(raw: bytes, cuts: list[int]) -> Any:
    loop = asyncio.new_event_loop()
    try:
        conn = _Connection(("h", 1), CAP, lambda _c: None)
        conn.connection_made(_Transport())  # type: ignore[arg-type]
        waiter = conn.request(b"GET / HTTP/1.1\r\n\r\n", loop)
        points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
        for a, b in itertools.pairwise(points):
            if waiter.done():
                break
            conn.data_received(raw[a:b])
        if not waiter.done():
            conn.connection_lost(None)
        exc = waiter.exception()
        return exc if exc is not None else waiter.result().body
    finally:
        loop.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    page=st.binary(max_size=2 * CAP),
    framing=st.sampled_from(["length", "chunked", "close"]),
    encoding=st.sampled_from(["identity", "gzip"]),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_any_framing_and_split_yields_the_page_or_a_cap_error(
    page: bytes, framing: str, encoding: str, sizes: list[int], cuts: list[int]
) -> None:
    raw = _frame(page, framing, sizes, encoding)
    out = _run(raw, cuts)
    wire = len(raw.split(b"\r\n\r\n", 1)[1])
    if len(page) <= CAP and (framing == "chunked" or wire <= CAP):
        if isinstance(out, ScrapeError) and "larger than" in str(out):
            # only the bytes on the wire can be over the cap (gzip grows incompressible pages)
            assert encoding == "gzip"
            return
        assert out == page
    else:
        assert isinstance(out, ScrapeError), out
        assert "larger than" in str(out) or "too large" in str(out)


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=600), cuts=st.lists(st.integers(0, 1 << 12), max_size=6))
def test_junk_after_a_chunked_head_never_raises_out_of_the_parser(junk: bytes, cuts: list[int]) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + junk
    out = _run(raw, cuts)
    assert isinstance(out, ScrapeError | bytes)
