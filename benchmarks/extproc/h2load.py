"""nghttp2's C load generator (``h2load``) for the maximum-rate phase: whole streams sent at once."""

from __future__ import annotations

import re
import resource
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.extproc.workload import FULL, SERVICE, Workload

#: h2load: connections x streams in flight on each
H2LOAD_CONNECTIONS = 16
H2LOAD_STREAMS_PER_CONNECTION = 4
#: streams of the probe whose reply bytes a measured h2load run is checked against
H2LOAD_PROBE_STREAMS = 20


def grpc_framed_stream(body_bytes: int, shape: str = FULL) -> bytes:
    """One stream's ``ProcessingRequest`` messages (the same as the Python load's: four for a full stream,
    one for header-only mode), each with its 5-byte gRPC frame header, as one HTTP/2 request body: a
    client that sends the whole stream at once."""
    work = Workload.build(body_bytes, shape)
    out = bytearray()
    for message in (*work.request, *work.response):
        data = message.SerializeToString()
        out += b"\x00" + struct.pack(">I", len(data)) + data
    return bytes(out)


_H2_FINISHED = re.compile(r"finished in ([\d.]+)m?s, ([\d.]+) req/s")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed")
_H2_DATA = re.compile(r"\((\d+)\) data")
#: the per-run figures the summary takes medians of
H2_FIGURES = ("streams_per_s", "client_cores", "server_cores", "reply_bytes_per_stream")


def h2load(target: str, stream_file: Path, count: int) -> dict[str, Any]:
    """Run ``count`` streams with h2load against ``target`` (closed loop, :data:`H2LOAD_CONNECTIONS` x
    :data:`H2LOAD_STREAMS_PER_CONNECTION` streams in flight). Returns its figures and its own CPU use (cores,
    from the child's rusage). A count, not a duration: h2load's byte counts then cover exactly the streams
    it reports, which is what :meth:`Run.measure_h2load` checks them against."""
    args = [
        "h2load",
        "-c", str(H2LOAD_CONNECTIONS),
        "-m", str(H2LOAD_STREAMS_PER_CONNECTION),
        "-t", "1",
        "-d", str(stream_file),
        "-H", "content-type: application/grpc",
        "-H", "te: trailers",
    ]  # fmt: skip
    args += ["-n", str(count), f"http://{target}/{SERVICE}/Process"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=60 + count / 100, check=False).stdout
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {**h2load_figures(out), "client_cores": cpu / wall if wall > 0 else 0.0}


def h2load_figures(out: str) -> dict[str, Any]:
    """Succeeded and failed streams, streams/s and reply (DATA) bytes per stream from h2load's report."""
    finished, requests, data = _H2_FINISHED.search(out), _H2_REQUESTS.search(out), _H2_DATA.search(out)
    if finished is None or requests is None or data is None:
        raise RuntimeError(f"unexpected h2load output: {out[-400:]!r}")
    succeeded = int(requests.group(3))
    return {
        "streams": succeeded,
        "failed": int(requests.group(4)),
        "streams_per_s": float(finished.group(2)),
        "reply_bytes_per_stream": int(data.group(1)) / succeeded if succeeded else 0.0,
    }
