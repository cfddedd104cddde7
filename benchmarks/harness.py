"""Process plumbing shared by the multi-process benchmarks (``bench_scrape``, ``bench_extproc``).

Why separate processes at all: CPU per stream or per scrape is only measurable when the thing measured
runs alone in its process. The fake model servers and the load generators cost as much CPU as the
server under test, so they run in their own processes and this module reads the server's CPU time from
``/proc`` (user + system, every thread, and every descendant process for ``--workers N``).

Everything here is Linux-only (``/proc``), like the benchmarks' target environment (a Kubernetes pod).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ /proc
def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of all its threads, recursively)."""
    out = [pid]
    at = 0
    while at < len(out):
        current = out[at]
        at += 1
        for task in _tasks(current):
            try:
                text = (task / "children").read_text()
            except OSError:
                continue
            out.extend(int(c) for c in text.split())
    return out


def _tasks(pid: int) -> list[Path]:
    """The ``/proc/<pid>/task/<tid>`` directories of a process; none once it is gone."""
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, *, tree: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (all threads), plus its live descendants when ``tree``."""
    total = 0
    for p in descendants(pid) if tree else [pid]:
        fields = _stat_fields(p)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


def thread_cpu_ns(pid: int, *, tree: bool = True) -> dict[tuple[int, int], int]:
    """On-CPU nanoseconds of every live thread of ``pid`` (and its descendants when ``tree``), keyed by
    ``(process id, thread id)``, from ``/proc/<pid>/task/<tid>/schedstat``."""
    out: dict[tuple[int, int], int] = {}
    for p in descendants(pid) if tree else [pid]:
        for task in _tasks(p):
            try:
                out[(p, int(task.name))] = int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return out


class CpuMeter:
    """CPU seconds a process tree uses from construction to each :meth:`seconds` call.

    Why not :func:`cpu_seconds` alone: ``/proc/<pid>/stat`` counts whole clock ticks (10 ms), so a 1.5 s
    window at 200 streams/s reads in steps of ~33 µs per stream, enough to move a ratio of two such
    readings by 0.05. The threads' ``schedstat`` counts nanoseconds; it is used unless a thread present at
    the start is gone at the end (its time would vanish), in which case the tick count is the answer.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ticks = cpu_seconds(pid)
        self._threads = thread_cpu_ns(pid)

    def seconds(self) -> float:
        threads = thread_cpu_ns(self.pid)
        if self._threads and all(key in threads for key in self._threads):
            return sum(ns - self._threads.get(key, 0) for key, ns in threads.items()) / 1e9
        return cpu_seconds(self.pid) - self._ticks


def rss_bytes(pid: int, *, tree: bool = True) -> int:
    """Resident set size of ``pid`` (plus descendants when ``tree``)."""
    total = 0
    for p in descendants(pid) if tree else [pid]:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE_SIZE
        except (OSError, IndexError, ValueError):
            continue
    return total


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, CPU, versions and how busy the machine was."""
    from importlib.metadata import version

    def ver(name: str) -> str:
        try:
            return version(name)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            return "absent"

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "grpcio": ver("grpcio"),
        "protobuf": ver("protobuf"),
        "uvloop": ver("uvloop"),
        "aiohttp": ver("aiohttp"),
        # other processes compete for the same cores; a high value means inflated CPU and latency figures
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


# ------------------------------------------------------------------------------------------------ processes
@dataclass
class Child:
    """A child process whose first stdout line is a JSON readiness document."""

    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the child prints (a load generator's result)."""
        line = _readline(self.proc, timeout)
        doc: dict[str, Any] = json.loads(line)
        return doc

    def send(self, doc: dict[str, Any]) -> None:
        """Write one JSON command line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(doc) + "\n").encode())
        self.proc.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; reaps the child."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _readline(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"process {proc.args!r} printed nothing within {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None:
                raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before it was ready")
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"process {proc.args!r} closed its stdout (exit {proc.poll()})")
        buf += chunk
    return buf.decode()


def spawn_json(
    args: Sequence[str], *, timeout: float = 30.0, env: dict[str, str] | None = None, stdin: bool = False
) -> Child:
    """Start ``python <args>`` from the repository root and wait for its first JSON line. ``stdin``: give
    the child a pipe to read commands from (see :meth:`Child.send`)."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        ready = json.loads(_readline(proc, timeout))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Child(proc, ready)


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """Stop every child appended to the yielded list on exit, even when the benchmark fails."""
    started: list[Child] = []
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    # rank = ceil(q/100 * N), 1-based (round(x + 0.5) is not ceil: Python rounds halves to even)
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values) / 100.0 - 1e-9) - 1))
    return float(sorted_values[k])
