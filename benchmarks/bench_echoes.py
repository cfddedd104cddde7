"""What a proxy that reads none of our replies makes the EPP hold when its response chunks are large.

    python -m benchmarks.bench_echoes --json                       # the grid below, ~1 min
    python -m benchmarks.bench_echoes --budget 16Mi --budget 256Mi --shape 32x4Mi

In FULL_DUPLEX_STREAMED mode every response body chunk is answered with its echo, and a write completes
only once the proxy's HTTP/2 window took it. The peer (:func:`picker.testing.unread_peer.offer_unread`, the
one the hardening tests bound) opens ``streams`` streams on one connection, each starting at SSE response
headers, sends one ``chunk``-byte body chunk on each and reads nothing (its own window is 16 KiB, gRPC's
probe off), then offers one more chunk per stream. Each shape runs against a fresh ``picker serve`` per
``--max-buffered-body-bytes`` value (replies not yet written count against that budget): the server's
resident set, peak minus after a warm-up stream, in MiB and in chunks per stream. Deterministic whatever
the machine's load: the handlers cannot move on until the peer reads.

``python -m picker`` is started from the current directory, so running this from a checkout of another
commit (``PYTHONPATH=.``) measures that commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import threading
from typing import Any

from benchmarks.harness import machine_info, rss_bytes

__all__ = ["grow", "main"]

SERVING = re.compile(r"picker serving: ext_proc :(\d+)")
ARGS = (
    "serve",
    "--grpc-port=0",
    "--grpc-health-port=0",
    "--metrics-port=0",
    "--admin-port=0",
    "--host=127.0.0.1",
    "--secure-serving=false",
    "--static-endpoints=127.0.0.1:1",
)
#: (streams, chunk bytes) and budgets measured by default
SHAPES = ((16, 1 << 20), (32, 1 << 20), (16, 4 << 20), (32, 4 << 20))
BUDGETS = ("16Mi", "256Mi")
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20}


def _size(text: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4Mi)")
    return int(m[1]) * _UNITS[m[2]]


def _shape(text: str) -> tuple[int, int]:
    streams, _, chunk = text.partition("x")
    if not streams.isdigit() or not chunk:
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (STREAMSxCHUNK, e.g. 32x4Mi)")
    return int(streams), _size(chunk)


def grow(streams: int, chunk: int, budget: str) -> dict[str, Any]:
    """One fresh server, one peer run: RSS growth in MiB and in chunks per stream."""
    from picker.testing.unread_peer import offer_unread

    proc = subprocess.Popen(
        [sys.executable, "-m", "picker", *ARGS, f"--max-buffered-body-bytes={budget}"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if (m := SERVING.search(line)) is not None:
                port = int(m[1])
                break
        if port is None:
            raise RuntimeError(f"picker serve exited {proc.wait()} before serving")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        outcome = asyncio.run(
            offer_unread(
                f"127.0.0.1:{port}",
                lambda: rss_bytes(proc.pid, tree=False),
                streams=streams,
                chunks=1,
                chunk=chunk,
                quiet_s=2.0,
                sample_s=0.02,
                settle_s=0.3,
                rpc_timeout_s=120.0,
            )
        )
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "streams": streams,
        "chunk_mib": chunk / (1 << 20),
        "budget": budget,
        "offered_mib": streams * chunk >> 20,
        "rss_growth_mib": round(outcome.growth / (1 << 20), 1),
        "chunks_per_stream": round(outcome.growth / streams / chunk, 2),
        "accepted_chunks": outcome.accepted,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=_shape, action="append", help="STREAMSxCHUNK (repeatable), e.g. 32x4Mi")
    p.add_argument("--budget", action="append", help="--max-buffered-body-bytes (repeatable)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [
        grow(streams, chunk, budget)
        for streams, chunk in args.shape or SHAPES
        for budget in args.budget or BUDGETS
    ]
    doc = {"benchmark": "bench_echoes", "machine": machine_info(), "rows": rows}
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for row in rows:
            print(
                f"{row['streams']:3d} streams x {row['chunk_mib']:g} MiB, budget {row['budget']:>6}: "
                f"+{row['rss_growth_mib']:g} MiB ({row['chunks_per_stream']:g} chunks a stream)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
