"""The orchestration: servers started once (the fake fleet, the floor, variants of ours), load processes,
measured phases taking turns server by server, the RSS soak, per-run results kept for the report.

Why one module: every phase (fixed rate, closed loop, h2load, soak) runs against the same started servers
and records into the same per-run results; split, each part would need the whole :class:`Run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.extproc.h2load import H2_FIGURES, H2LOAD_PROBE_STREAMS, h2load
from benchmarks.extproc.load import MAX_CONCURRENCY_PER_PROC
from benchmarks.extproc.workload import FULL, MODEL, MODEL_HEADER, SMALL_BODY, SSE_BODY, chat_body
from benchmarks.harness import ROOT, Child, CpuMeter, machine_info, percentile, rss_bytes, spawn_json
from picker.testing.net import free_port

ENDPOINTS = 16
#: unattended requests a second the fleet serves (``benchmarks.fleet_proc --busy-rps``): about three running
#: per server, so every scraped page shows new running/KV gauges, as a serving fleet's do
FLEET_RPS = 24.0
LOAD_PROCS = 2
#: streams/s per server in the side-by-side CPU phases (1 KB bodies; servers driven at the same time)
CPU_RATE = 200.0
#: streams/s per server when comparing 200 KB with 1 KB bodies
BODY_RATE = 100.0
#: requests/s per server in the side-by-side CPU phases of header-only mode (one message each: a higher
#: rate than CPU_RATE, so the scrape loop's idle CPU weighs less per request)
HEADER_CPU_RATE = 400.0
#: the variants of ours in header-only mode (default profile for it, the model from MODEL_HEADER)
HEADER_VARIANTS: list[tuple[str, int, Path | None, list[str]]] = [
    ("ours_header", 1, None, ["--model-header", MODEL_HEADER]),
    ("ours_header_noscrape", 1, None, ["--model-header", MODEL_HEADER, "--refresh-metrics-interval", "1h"]),
]
SKIP_CONFIG = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
responseProcessing: WhenNeeded
"""


@dataclass
class Server:
    name: str
    target: str
    pid: int
    idle_cores: float = 0.0
    stopper: Callable[[], None] = field(default=lambda: None)


def start_picker(
    name: str,
    addresses: Sequence[str],
    logs: Path,
    *,
    workers: int = 1,
    config_file: str | None = None,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[Server, subprocess.Popen[bytes]]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "picker",
        "serve",
        "--static-endpoints",
        ",".join(addresses),
        "--secure-serving=false",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(port),
        "--grpc-health-port",
        "0",
        "--metrics-port",
        "0",
        "--admin-port",
        "0",
        "--workers",
        str(workers),
        "-v",
        "1",
    ]
    if config_file:
        args += ["--config-file", config_file]
    args += list(extra)
    with (logs / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)
    return Server(name, f"127.0.0.1:{port}", proc.pid), proc


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Until one full exchange gets a destination (the pool is loaded and the port is served)."""

    async def probe() -> bool:
        from picker.testing.envoy import EnvoyClient, HttpRequest, UpstreamResponse

        async with EnvoyClient(target, timeout=2.0) as client:
            result = await client.exchange(
                HttpRequest(
                    path="/v1/chat/completions", body=chat_body(SMALL_BODY), headers=[(MODEL_HEADER, MODEL)]
                ),
                UpstreamResponse(headers=(("content-type", "text/event-stream"),), chunks=(SSE_BODY,)),
            )
            return bool(result.destination) and result.immediate is None

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {target} exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if asyncio.run(probe()):
                return
        time.sleep(0.2)
    raise TimeoutError(f"server {target} not serving after {timeout:g}s")


class Bench:
    def __init__(self, loaders: list[Child], *, settle: float) -> None:
        self.loaders = loaders
        self.settle = settle

    def idle_rates(self, servers: list[Server], seconds: float) -> dict[str, float]:
        """Cores each server uses with no stream running, measured in one shared window (all are idle at
        once), so each gets the whole window: the scrape loop's rate is subtracted from every stream of
        ``ours``, and a short window would make that figure swing from run to run."""
        meters, t0 = {s.name: CpuMeter(s.pid) for s in servers}, time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        return {name: meter.seconds() / elapsed for name, meter in meters.items()}

    def connect(self, server: Server) -> None:
        for child in self.loaders:
            child.send({"op": "connect", "target": server.target})
        for child in self.loaders:
            child.read_json(timeout=120)

    def phase(
        self,
        servers: list[Server],
        *,
        mode: str,
        duration: float,
        rate: float = 0.0,
        concurrency: int = MAX_CONCURRENCY_PER_PROC,
        body_bytes: int = SMALL_BODY,
        shape: str = FULL,
    ) -> dict[str, dict[str, Any]]:
        """One measured window; every load process drives every server in ``servers`` at once (the same
        load each), so servers compared in one phase see the same machine conditions. ``shape``: full
        streams or header-only mode's one message (``benchmarks.extproc.workload``)."""
        start_at = time.time() + self.settle
        for i, child in enumerate(self.loaders):
            child.send(
                {
                    "targets": [s.target for s in servers],
                    "mode": mode,
                    "duration": duration,
                    "rate": rate / len(self.loaders),
                    "offset": i / len(self.loaders),
                    "concurrency": concurrency,
                    "body_bytes": body_bytes,
                    "shape": shape,
                    "start_at": start_at,
                }
            )
        time.sleep(max(0.0, start_at - time.time()))
        meters = {s.name: CpuMeter(s.pid) for s in servers}
        t0 = time.monotonic()
        time.sleep(duration)
        busy = {name: meter.seconds() for name, meter in meters.items()}
        wall = time.monotonic() - t0
        replies = [child.read_json(timeout=duration + 120) for child in self.loaders]
        return {s.name: self._result(s, [r[s.target] for r in replies], busy[s.name], wall) for s in servers}

    @staticmethod
    def _result(server: Server, results: list[dict[str, Any]], busy: float, wall: float) -> dict[str, Any]:
        ok = sum(r["ok"] for r in results)
        adjusted = max(0.0, busy - server.idle_cores * wall)
        request_us = sorted(v for r in results for v in r["request_us"])
        total_us = sorted(v for r in results for v in r["total_us"])
        return {
            "streams": ok,
            "errors": sum(r["errors"] for r in results),
            "error_samples": [e for r in results for e in r["error_samples"]][:3],
            "late_starts": sum(r["late"] for r in results),
            "streams_per_s": ok / wall,
            "server_cores": busy / wall,
            "cpu_us_per_stream": adjusted / ok * 1e6 if ok else float("nan"),
            "cpu_us_per_stream_raw": busy / ok * 1e6 if ok else float("nan"),
            "client_cores": sum(r["client_cores"] for r in results),
            "request_p50_ms": percentile(request_us, 50) / 1000,
            "request_p99_ms": percentile(request_us, 99) / 1000,
            "stream_p50_ms": percentile(total_us, 50) / 1000,
            "stream_p99_ms": percentile(total_us, 99) / 1000,
        }


def median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return round(statistics.median(clean), 3) if clean else float("nan")


#: raw phase results, as :attr:`Run.results` keeps them: phase label -> server -> one result per run
Results = Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]


def per_run(results: Results, label: str, server: str, key: str = "cpu_us_per_stream") -> list[float]:
    """``key`` of ``server`` in phase ``label``, run by run (empty if it was not measured)."""
    return [x[key] for x in results.get(label, {}).get(server, [])]


def ratio(results: Results, label: str, a: str, b: str, key: str = "cpu_us_per_stream") -> float:
    """The median of the per-run ratios ``a`` / ``b`` in phase ``label``: servers measured in the same
    window, so a slow drift in the machine's load cancels."""
    pairs = zip(per_run(results, label, a, key), per_run(results, label, b, key), strict=False)
    return median([x / y for x, y in pairs if y])


SUMMARY_KEYS = (
    "streams_per_s",
    "server_cores",
    "cpu_us_per_stream",
    "cpu_us_per_stream_raw",
    "client_cores",
    "request_p50_ms",
    "request_p99_ms",
    "stream_p50_ms",
    "stream_p99_ms",
)


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: median([r[k] for r in results]) for k in SUMMARY_KEYS}
    out["per_run_cpu_us"] = [round(r["cpu_us_per_stream"], 1) for r in results]
    out["streams"] = sum(r["streams"] for r in results)
    out["errors"] = sum(r["errors"] for r in results)
    out["late_starts"] = sum(r["late_starts"] for r in results)
    samples = [e for r in results for e in r["error_samples"]]
    if samples:
        out["error_samples"] = samples[:3]
    return out


@dataclass
class Plan:
    runs: int
    max_s: float
    rate_s: float
    #: the half-max-rate phase, whose p99 is a target: long enough for ~1,000 streams in --quick
    half_s: float
    idle_s: float
    soak_s: float
    rss_streams: int

    @classmethod
    def side_by_side(cls, quick: bool, runs: int | None) -> Plan:
        """The plan of a feature's cost against ``ours`` in the same windows (``--tenants``, ``--tracing``):
        side-by-side CPU phases and idle CPU only, no maximum, half-max or soak phase."""
        return cls(
            runs=runs or (1 if quick else 3),
            max_s=0.0,
            rate_s=2.0 if quick else 6.0,
            half_s=0.0,
            idle_s=3.0 if quick else 8.0,
            soak_s=0.0,
            rss_streams=0,
        )

    def document(self, benchmark: str, command: str, *, quick: bool) -> dict[str, Any]:
        """The head every result document starts with (the machine is read now)."""
        return {
            "benchmark": benchmark,
            "command": command,
            "quick": quick,
            "machine": machine_info(),
            "runs": self.runs,
        }


class Run:
    """One benchmark run: servers started once, phases taking turns server by server, run by run."""

    def __init__(self, plan: Plan, doc: dict[str, Any]) -> None:
        self.plan = plan
        self.doc = doc
        self.live: dict[str, Server] = {}
        self.bench: Bench | None = None
        #: raw phase results: phase label -> server -> one result per run
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        #: h2load maximum-rate results: server -> one result per run
        self.h2load: dict[str, list[dict[str, Any]]] = {}

    def start(
        self,
        procs: list[Child],
        tmp: Path,
        variants: list[tuple[str, int, Path | None, list[str]]] | None = None,
        env: Mapping[str, Mapping[str, str]] | None = None,
        fleet_rps: float = FLEET_RPS,
    ) -> None:
        """Start the fleet, the floor and ``variants`` of ours ((name, workers, config file, extra flags);
        default: ours, ours_skip, ours_w2, ours_noscrape and the header-only ones; ``env`` by name).
        ``fleet_rps``: unattended requests a second the fleet serves so its gauges move (0: pages that
        never change, the cheapest case for ours' new snapshots)."""
        skip_config = tmp / "skip.yaml"
        skip_config.write_text(SKIP_CONFIG, encoding="utf-8")
        busy = ["--busy-rps", f"{fleet_rps:g}", "--time-scale", "1"] if fleet_rps > 0 else []
        self.doc["fleet_rps"] = fleet_rps
        fleet = spawn_json(["-m", "benchmarks.fleet_proc", "--count", str(ENDPOINTS), *busy], timeout=60)
        procs.append(fleet)
        addresses = fleet.ready["addresses"]
        null_port = free_port()
        null = spawn_json(["-m", "benchmarks.bench_extproc", "--serve-null", str(null_port)], timeout=60)
        procs.append(null)
        servers: dict[str, Server] = {"floor": Server("floor", f"127.0.0.1:{null_port}", null.pid)}
        started: list[tuple[Server, subprocess.Popen[bytes]]] = []
        if variants is None:
            variants = [
                ("ours", 1, None, []),
                ("ours_skip", 1, skip_config, []),
                ("ours_w2", 2, None, []),
                # the request path alone: no scrape loop, so no idle CPU to subtract (and no new snapshots)
                ("ours_noscrape", 1, None, ["--refresh-metrics-interval", "1h"]),
                *HEADER_VARIANTS,
            ]
        for name, workers, config, extra in variants:
            server, proc = start_picker(
                name,
                addresses,
                tmp,
                workers=workers,
                config_file=str(config) if config else None,
                extra=extra,
                env=(env or {}).get(name),
            )
            servers[name] = server
            started.append((server, proc))
            procs.append(Child(proc, {}))
        for server, proc in started:
            try:
                wait_serving(server.target, proc)
            except (RuntimeError, TimeoutError) as exc:
                tail = (tmp / f"{server.name}.log").read_text(errors="replace")[-600:]
                self.doc.setdefault("server_errors", {})[server.name] = f"{exc}: {tail}"
        loaders = [
            spawn_json(["-m", "benchmarks.bench_extproc", "--load"], timeout=60, stdin=True)
            for _ in range(LOAD_PROCS)
        ]
        procs.extend(loaders)
        self.bench = Bench(loaders, settle=0.3)
        self.live = {k: s for k, s in servers.items() if k not in self.doc.get("server_errors", {})}
        for server in self.live.values():
            self.bench.connect(server)
        idle = self.bench.idle_rates(list(self.live.values()), self.plan.idle_s)
        for server in self.live.values():
            server.idle_cores = idle[server.name]
        self.doc["idle_cores"] = {k: round(s.idle_cores, 4) for k, s in self.live.items()}

    def measure(self, label: str, servers: list[str], *, together: bool = False, **phase: Any) -> None:
        """One phase on each of ``servers`` (those alive): in turn, or ``together`` in one window."""
        assert self.bench is not None
        alive = [self.live[n] for n in servers if n in self.live]
        groups = [alive] if together else [[s] for s in alive]
        for group in groups:
            if group:
                for name, result in self.bench.phase(group, **phase).items():
                    self.results.setdefault(label, {}).setdefault(name, []).append(result)

    def measure_h2load(
        self,
        servers: list[str],
        stream_file: Path,
        count: int,
        *,
        min_reply_bytes: int = SMALL_BODY + len(SSE_BODY),
        suffix: str = "",
    ) -> None:
        """Maximum streams/s with h2load, ``count`` streams per server, one server at a time. Every full
        stream gets at least its two bodies back (``min_reply_bytes``; a header-only stream its one reply);
        a failed gRPC stream still reads as HTTP 200 to h2load but returns no data, so a run whose reply
        bytes per stream fall 2 % below a probe's is refused (``valid``: false). Results are kept under
        the server's name plus ``suffix``."""
        for name in servers:
            server = self.live.get(name)
            if server is None:
                continue
            try:
                probe = h2load(server.target, stream_file, H2LOAD_PROBE_STREAMS)
                meter, t0 = CpuMeter(server.pid), time.monotonic()
                result = h2load(server.target, stream_file, count)
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:  # reported, the run goes on
                failed: dict[str, Any] = dict.fromkeys(H2_FIGURES, float("nan"))
                failed |= {"valid": False, "error": str(exc)[:300]}
                self.h2load.setdefault(name + suffix, []).append(failed)
                continue
            result["server_cores"] = meter.seconds() / (time.monotonic() - t0)
            expected = probe["reply_bytes_per_stream"]
            result["valid"] = (
                probe["streams"] == H2LOAD_PROBE_STREAMS
                and expected >= min_reply_bytes
                and result["reply_bytes_per_stream"] >= 0.98 * expected
                and result["failed"] == 0
            )
            if not result["valid"]:
                result["streams_per_s"] = float("nan")
            self.h2load.setdefault(name + suffix, []).append(result)

    def side_by_side(
        self,
        label: str,
        servers: list[str],
        *,
        rate: float = CPU_RATE,
        body_bytes: int = SMALL_BODY,
        shape: str = FULL,
    ) -> None:
        """A side-by-side CPU phase: ``servers`` driven together at ``rate`` streams/s each for the plan's
        ``rate_s``, so their CPU per stream is measured in one window."""
        self.measure(
            label,
            servers,
            together=True,
            mode="open",
            duration=self.plan.rate_s,
            rate=rate,
            body_bytes=body_bytes,
            shape=shape,
        )

    def phases(self) -> dict[str, dict[str, Any]]:
        """Every phase's results summarized per server (medians over runs, see :func:`summarize`)."""
        return {label: {s: summarize(res) for s, res in per.items()} for label, per in self.results.items()}

    def streams_per_s(self, label: str, server: str) -> float:
        return median(per_run(self.results, label, server, "streams_per_s"))

    def soak(self, rate_hint: float) -> None:
        """RSS of ours after every phase above (the warm-up) and after the soak."""
        ours = self.live.get("ours")
        if ours is None or self.bench is None:
            return
        before = rss_bytes(ours.pid)
        target = max(0, self.plan.rss_streams)
        done = 0
        t0 = time.monotonic()
        samples = [(0, before)]
        while True:
            seconds = self.plan.soak_s if target == 0 else min(30.0, max(2.0, (target - done) / rate_hint))
            done += self.bench.phase([ours], mode="closed", duration=seconds)["ours"]["streams"]
            samples.append((done, rss_bytes(ours.pid)))
            if target == 0 or done >= target:
                break
        after = samples[-1][1]
        growth = (after - before) / 2**20
        step = max(1, len(samples) // 20)
        self.doc["rss"] = {
            "before_mb": round(before / 2**20, 2),
            "after_mb": round(after / 2**20, 2),
            "streams": done,
            "seconds": round(time.monotonic() - t0, 1),
            "growth_measured_mb": round(growth, 2),
            "extrapolated": done < 1_000_000,
            # a shrinking RSS extrapolates to nonsense: no growth detected reads as 0
            "growth_per_1m_streams_mb": round(max(0.0, growth) * 1_000_000 / done, 2)
            if done
            else float("nan"),
            "samples_mb": [(n, round(b / 2**20, 2)) for n, b in samples[::step]],
        }
