"""Live routing benchmark: our EPP and two peer routers in front of the same fake fleet, in real time.

    python -m benchmarks.bench_live --json            # about 4-5 minutes
    python -m benchmarks.bench_live --quick --json    # under 60 s

Where ``bench_quality`` simulates, this runs everything for real on 127.0.0.1: N fake model servers
(:class:`picker.testing.fake_server.FakeFleet`, vLLM metric pages, OpenAI streaming), each running the same
continuous-batching load model (:class:`picker.testing.fake_load.LoadParams`) in scaled real time, and the
same slice of a request trace replayed open-loop at the same rate through each router in turn:

* ``epp`` — ``python -m picker serve --static-endpoints ...`` (our default profile), driven through
  :class:`picker.testing.gateway.MiniGateway`: the ext_proc exchange, then the real HTTP request to the
  endpoint the EPP named, the response streamed back through the EPP, as Envoy does;
* ``sglang-router`` — ``python -m sglang_router.launch_router --policy cache_aware`` as an HTTP proxy;
* ``vllm-router`` — ``vllm-router --policy power_of_two`` as an HTTP proxy;
* ``round-robin`` — the same MiniGateway forwarding without an EPP, rotating over the servers.

Each router gets a freshly started fleet (empty queues, cold prefix caches) so no run inherits another's
backlog. Requests are ``/v1/completions`` with ``stream: true``: the fake server's first body byte of a
completions stream is the first token, so client-side time to first byte is TTFT. ``max_tokens`` is the
trace's output length (the fake generates exactly that many tokens), so TPOT = (end - first byte) /
(tokens - 1). Latencies are reported in *model* seconds (wall seconds / ``--time-scale``), the unit of the
SLO; the same keys and definitions as ``bench_quality`` (``benchmarks/sim/metrics.py``).

Honesty on two cores: the fleet runs in its own process (one event loop for all N servers), so the client,
the gateway and the routers never slow the model's clock; the time scale is chosen so the SSE token stream
stays far below what one Python process can relay. ``load_average_1m`` in the output says how busy the
machine was; other work on the same cores inflates every router's figures alike but adds noise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.sim.metrics import DEFAULT_TPOT_SLO_S, DEFAULT_TTFT_SLO_S, Slo, latency_stats
from benchmarks.sim.report import markdown_table
from benchmarks.sim.traces import Workload, named_trace
from picker.testing.net import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROUTERS = ("epp", "sglang-router", "vllm-router", "round-robin")
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PATH = "/v1/completions"
CHARS_PER_TOKEN = 4  # the fake server counts prompt tokens as ceil(chars / 4) (picker.testing.fake_openai)
#: seconds a router process may take to answer its health route
STARTUP_TIMEOUT_S = 40.0


# ------------------------------------------------------------------------------------------------ setup
@dataclass(frozen=True, slots=True)
class LiveConfig:
    """One benchmark run's shape (every router gets the same)."""

    servers: int = 4
    load: float = 0.9
    #: wall seconds per model second of the fake servers
    time_scale: float = 1.0
    #: wall seconds of arrivals per router
    duration_s: float = 60.0
    #: wall seconds after the last arrival before unfinished requests count as timeouts
    drain_s: float = 30.0
    #: output lengths are capped at this (tokens): every token is one SSE event relayed in Python
    max_output_tokens: int = 256
    trace: str = "azure-conv"
    #: first request of the trace slice
    offset: int = 0
    seed: int = 0
    slo: Slo = field(default_factory=Slo)


@dataclass(frozen=True, slots=True)
class LiveRequest:
    """One request of the replay: when to send it (wall seconds after the start) and what."""

    index: int
    at_s: float
    prompt_tokens: int
    output_tokens: int
    body: bytes = field(repr=False)


@dataclass(slots=True)
class Record:
    """One request as the client saw it (wall seconds relative to the replay start; NaN = never)."""

    index: int
    sent_s: float
    first_byte_s: float = math.nan
    end_s: float = math.nan
    status: int = 0
    tokens: int = 0
    expected_tokens: int = 0
    pick_s: float = math.nan
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.tokens == self.expected_tokens


def load_params() -> Any:
    """The fleet's engine: the fake server's default load model (a mid-sized model on one GPU, scaled down
    so a handful of concurrent requests saturate a server; numbers in ``picker/testing/fake_load.py``).
    One definition for the fleet process and the capacity estimate, so "load" means the same in both."""
    from picker.testing.fake_load import LoadParams

    return LoadParams()


def trace_slice(cfg: LiveConfig, params: Any, count: int) -> Workload:
    """``count`` consecutive requests of the trace from ``cfg.offset``, clipped to what the engine accepts."""
    w = named_trace(cfg.trace, seed=cfg.seed)
    start = min(cfg.offset, max(0, len(w) - count))
    w = w.head(start + count)
    w = Workload(
        name=w.name,
        arrival_s=w.arrival_s[start:] - w.arrival_s[start],
        prompt_tokens=w.prompt_tokens[start:],
        output_tokens=np.minimum(w.output_tokens[start:], cfg.max_output_tokens),
        units=w.units[start:],
        unit_tokens=w.unit_tokens,
        adapter=w.adapter[start:],
        adapter_names=w.adapter_names,
    )
    # prompt + output must fit max_model_len and the KV cache (the fake answers 400 otherwise)
    limit = min(params.max_model_len, params.num_blocks * params.block_size) - 1
    return w.clipped(limit)


def capacity_rps(params: Any, w: Workload, *, sample: int = 600, seed: int = 0) -> float:
    """Requests per model second one fake server completes on this mix when never starved.

    Same definition as ``benchmarks.sim.fleet.server_capacity_rps``: ``sample`` requests queued at t = 0 on
    one engine (prefix cache off), completion rate between the 10 % and 90 % marks. Computed on the load
    model itself (pure, no I/O), so "load 0.9" means 90 % of what the fake servers can do.
    """
    from dataclasses import replace

    from picker.testing.fake_load import ContinuousBatchingModel, LoadRequest

    rng = np.random.default_rng(seed)
    n = min(sample, len(w))
    idx = np.sort(rng.choice(len(w), size=n, replace=False))
    model = ContinuousBatchingModel(replace(params, enable_prefix_caching=False, jitter=0.0), seed=seed)
    handles = [model.admit(LoadRequest(int(w.prompt_tokens[i]), int(w.output_tokens[i])), 0.0) for i in idx]
    while (t := model.next_event_time()) is not None:
        model.step(t)
    done = np.sort(np.asarray([h.finished_at for h in handles], dtype=np.float64))
    lo, hi = int(0.1 * (n - 1)), int(0.9 * (n - 1))
    return (hi - lo) / float(done[hi] - done[lo])


def _unit_text(unit: int) -> str:
    """Deterministic filler text for one shared prefix unit (equal ids → equal text → cache hits)."""
    rng = np.random.default_rng([unit, 7])
    return "".join(chr(c) for c in rng.integers(97, 123, size=512 * CHARS_PER_TOKEN))


def prompt_text(w: Workload, k: int) -> str:
    """A prompt of ``w.prompt_tokens[k]`` tokens for the fake server (4 characters each).

    Requests with prefix units (Mooncake ``hash_ids``) share text exactly where they share units, so the
    peers' prefix trees and the fake servers' prefix caches see the trace's sharing; requests without start
    with their own index, so nothing is shared by accident.
    """
    chars = int(w.prompt_tokens[k]) * CHARS_PER_TOKEN
    text = "".join(_unit_text(u) for u in w.units[k]) if w.units[k] else f"request {k}: "
    if len(text) < chars:
        text += "lorem ipsum dolor sit amet " * (chars // 27 + 1)
    return text[:chars]


def build_requests(w: Workload, rate_wall: float) -> list[LiveRequest]:
    """The replay: the trace's own arrival pattern scaled to ``rate_wall`` requests per wall second."""
    scaled = w.with_rate(rate_wall)
    out = []
    for k in range(len(w)):
        body = {
            "model": MODEL,
            "prompt": prompt_text(w, k),
            "max_tokens": int(w.output_tokens[k]),
            "stream": True,
        }
        out.append(
            LiveRequest(
                index=k,
                at_s=float(scaled.arrival_s[k]),
                prompt_tokens=int(w.prompt_tokens[k]),
                output_tokens=int(w.output_tokens[k]),
                body=json.dumps(body).encode(),
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ report
def summarize_live(
    records: Sequence[Record],
    *,
    time_scale: float,
    slo: Slo,
    fleet_stats: Sequence[Mapping[str, float]] = (),
) -> dict[str, Any]:
    """The report row of one router: the ``bench_quality`` keys, computed from client-side records.

    Times are converted to model seconds (wall / ``time_scale``). A request that failed (error status,
    exception, timeout, or a stream with fewer tokens than asked) counts in ``errors`` and never in goodput;
    latency percentiles are over the completed requests. ``load_imbalance`` is max / mean over servers of
    prompt + output tokens they processed, ``prefix_hit_rate`` the servers' prefix-cache hits / lookups,
    both from the fleet's own counters (``fleet_stats``).
    """
    ok = [r for r in records if r.ok]
    scale = 1.0 / time_scale
    sent = np.asarray([r.sent_s for r in ok], dtype=np.float64) * scale
    first = np.asarray([r.first_byte_s for r in ok], dtype=np.float64) * scale
    end = np.asarray([r.end_s for r in ok], dtype=np.float64) * scale
    tokens = np.asarray([r.tokens for r in ok], dtype=np.int64)
    makespan = float(np.max(end)) - min(r.sent_s for r in records) * scale if ok else float("nan")
    stats, good = latency_stats(sent, first, end, tokens, slo=slo, makespan=makespan)
    work = [float(s.get("prompt_tokens", 0) + s.get("generation_tokens", 0)) for s in fleet_stats]
    queries = sum(float(s.get("prefix_queries", 0)) for s in fleet_stats)
    picks = [r.pick_s for r in records if not math.isnan(r.pick_s)]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = r.error.split(":", 1)[0] if r.error else f"status {r.status}"
            if not r.error and r.status == 200:
                kind = "incomplete stream"
            errors[kind] = errors.get(kind, 0) + 1
    return {
        "requests": len(records),
        "completed": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **stats,
        "slo_attainment": float(good.sum()) / len(records) if records else float("nan"),
        "prefix_hit_rate": sum(float(s.get("prefix_hits", 0)) for s in fleet_stats) / queries
        if queries
        else 0.0,
        "load_imbalance": max(work) / (sum(work) / len(work)) if work and sum(work) > 0 else float("nan"),
        "preemptions": int(sum(float(s.get("preemptions", 0)) for s in fleet_stats)),
        "makespan_s": makespan,
        "pick_mean_us": float(np.mean(picks)) * 1e6 if picks else float("nan"),
    }


def markdown_report(doc: Mapping[str, Any]) -> str:
    """The result document as Markdown: setup, then the bench_quality table plus an errors column."""
    cfg = doc["config"]
    lines = [
        (
            f"# Live routing — trace `{cfg['trace']}`, {cfg['servers']} fake vLLM servers, "
            f"load {cfg['load']:.2f}"
        ),
        "",
        f"Command: `{doc['command']}`  ",
        " ".join(
            (
                f"{doc['requests']} requests per router (trace slice from request {cfg['offset']},",
                f"outputs capped at {cfg['max_output_tokens']} tokens), open-loop at",
                f"{doc['offered_rps_wall']:.2f} req/s wall =",
                f"{doc['offered_rps_model']:.2f} req/s model time; capacity",
                f"{doc['capacity_rps_per_server']:.3f} req/s per server (model time, never starved);",
                f"time scale {cfg['time_scale']} wall s per model s; latencies in model seconds.",
                f"SLO: TTFT ≤ {cfg['slo']['ttft_s']} s and TPOT ≤ {cfg['slo']['tpot_s']} s.",
                f"Machine: {doc['machine']['cpus']} CPUs, load average",
                f"{doc['machine']['load_average_1m_at_start']} at start; wall time {doc['wall_s']:.0f} s.",
            )
        ),
        "",
        markdown_table(doc["routers"]),
        "",
        "| router | completed | errors | error kinds | EPP pick (µs, incl. gateway) |",
        "|---|---|---|---|---|",
    ]
    for name, row in doc["routers"].items():
        kinds = ", ".join(f"{k}: {v}" for k, v in row.get("error_kinds", {}).items()) or "—"
        pick = row.get("pick_mean_us", float("nan"))
        pick_s = "—" if pick is None or math.isnan(pick) else f"{pick:.0f}"
        lines.append(f"| {name} | {row['completed']} | {row['errors']} | {kinds} | {pick_s} |")
    for name, reason in doc.get("unavailable", {}).items():
        lines.append(f"\n`{name}` did not run: {reason}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ processes


class Processes:
    """Every child process this benchmark starts; :meth:`stop_all` ends them by pid, whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def start(
        self, name: str, argv: Sequence[str], *, pipes: bool = False
    ) -> asyncio.subprocess.Process:
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if pipes else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipes else log,
                stderr=log,
                start_new_session=True,  # a Ctrl+C in the terminal reaches us, and we stop them in order
            )
        finally:
            log.close()
        self._procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 8) -> str:
        path = self.log_dir / f"{name}.log"
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        return proc is not None and proc.returncode is None

    async def stop(self, name: str, *, grace_s: float = 5.0) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    async def stop_all(self) -> None:
        for name in list(self._procs):
            await self.stop(name)


async def _http_ok(session: Any, url: str) -> bool:
    import aiohttp

    try:
        async with session.get(url) as resp:
            await resp.read()
            return bool(resp.status == 200)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def wait_until(check: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


# ------------------------------------------------------------------------------------------------ the fleet
def fleet_main(servers: int, time_scale: float, seed: int) -> int:
    """``--serve-fleet``: run the fake fleet in this process until stdin closes; print stats as JSON."""
    from picker.testing.fake_server import FakeFleet

    params = load_params()

    async def serve() -> None:
        fleet = FakeFleet.uniform(servers, "vllm", seed=seed, time_scale=time_scale, load=params)
        async with fleet:
            print(json.dumps({"addresses": fleet.addresses}), flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            await reader.read()  # EOF: the benchmark is done with us
            stats = []
            for s in fleet:
                snap = s.snapshot()
                stats.append(
                    {
                        "requests": snap.requests_total,
                        "prompt_tokens": snap.prompt_tokens_total,
                        "generation_tokens": snap.generation_tokens_total,
                        "preemptions": snap.preemptions_total,
                        "prefix_queries": snap.prefix_queries_total,
                        "prefix_hits": snap.prefix_hits_total,
                    }
                )
            print(json.dumps({"stats": stats}), flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


class Fleet:
    """The fake fleet as a child process (``--serve-fleet``): start, addresses, stats at the end."""

    def __init__(self, procs: Processes, cfg: LiveConfig, name: str) -> None:
        self._procs = procs
        self._cfg = cfg
        self._name = name
        self._proc: asyncio.subprocess.Process | None = None
        self.addresses: list[str] = []

    async def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "benchmarks.bench_live",
            "--serve-fleet",
            "--servers",
            str(self._cfg.servers),
            "--time-scale",
            str(self._cfg.time_scale),
            "--seed",
            str(self._cfg.seed),
        ]
        self._proc = await self._procs.start(self._name, argv, pipes=True)
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), STARTUP_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line:
            raise RuntimeError(f"fake fleet did not start: {self._procs.log_tail(self._name)}")
        self.addresses = list(json.loads(line)["addresses"])

    async def finish(self) -> list[dict[str, float]]:
        """Close the fleet's stdin, read its counters, let it exit."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            return []
        proc.stdin.close()
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 10.0)
        except TimeoutError:
            line = b""
        await self._procs.stop(self._name)
        return list(json.loads(line)["stats"]) if line else []


# ------------------------------------------------------------------------------------------------ clients
def count_tokens(body: bytes) -> int:
    """Token events in a completions SSE body (each carries one ``"text"``; usage and [DONE] do not)."""
    return body.count(b'"text":')


Send = Callable[[LiveRequest, Record, float], Awaitable[None]]


def http_sender(session: Any, base_url: str) -> Send:
    """Sends straight to an HTTP router (the peers): first body byte, end, status, tokens."""
    import aiohttp

    async def send(req: LiveRequest, rec: Record, t0: float) -> None:
        try:
            async with session.post(
                base_url + PATH, data=req.body, headers={"content-type": "application/json"}
            ) as resp:
                rec.status = resp.status
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    if math.isnan(rec.first_byte_s):
                        rec.first_byte_s = time.monotonic() - t0
                    body += chunk
                rec.end_s = time.monotonic() - t0
                rec.tokens = count_tokens(bytes(body))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"

    return send


def gateway_sender(gw: Any, *, picks: bool) -> Send:
    """Sends through :class:`picker.testing.gateway.MiniGateway` (the EPP, or the round-robin baseline);
    ``picks``: record the time to the EPP's routing answer (gateway included)."""

    async def send(req: LiveRequest, rec: Record, _t0: float) -> None:
        result = await gw.send(PATH, req.body)
        start = rec.sent_s
        rec.status = result.status
        rec.error = result.error
        if result.status == 200 and not result.error:
            rec.first_byte_s = start + result.ttft_s
            rec.end_s = start + result.latency_s
            rec.tokens = count_tokens(result.body)
        if picks and result.pick_s:
            rec.pick_s = result.pick_s

    return send


async def replay(requests: Sequence[LiveRequest], send: Send, *, drain_s: float) -> list[Record]:
    """Send every request at its time (open loop), wait for all up to ``drain_s`` after the last arrival."""
    t0 = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    records: list[Record] = []
    for req in requests:
        delay = req.at_s - (time.monotonic() - t0)
        if delay > 0:
            await asyncio.sleep(delay)
        rec = Record(req.index, sent_s=time.monotonic() - t0, expected_tokens=req.output_tokens)
        records.append(rec)
        tasks.append(asyncio.ensure_future(send(req, rec, t0)))
    done, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    for rec, task in zip(records, tasks, strict=True):
        if task in pending:
            rec.error = rec.error or "timeout: unfinished at the end of the drain"
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        exc = task.exception()
        if exc is not None:
            raise exc
    return records


# ------------------------------------------------------------------------------------------------ routers
async def run_router(
    name: str, cfg: LiveConfig, requests: Sequence[LiveRequest], procs: Processes
) -> tuple[list[Record], list[dict[str, float]]]:
    """Start a fresh fleet and the router, replay, stop both. Returns records and the fleet's counters."""
    import aiohttp

    fleet = Fleet(procs, cfg, f"fleet-{name}")
    await fleet.start()
    total_s = cfg.duration_s + cfg.drain_s + 30.0
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as check,
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=total_s),
            ) as session,
        ):
            for address in fleet.addresses:
                url = f"http://{address}/health"
                await wait_until(partial(_http_ok, check, url), timeout_s=STARTUP_TIMEOUT_S, what=url)
            if name == "round-robin":
                records = await _run_round_robin(cfg, requests, fleet.addresses, total_s)
            elif name == "epp":
                records = await _run_epp(cfg, requests, procs, fleet.addresses, check, total_s)
            else:
                records = await _run_peer(name, cfg, requests, procs, fleet.addresses, check, session)
    finally:
        stats = await fleet.finish()
    return records, stats


async def _run_round_robin(
    cfg: LiveConfig, requests: Sequence[LiveRequest], addresses: Sequence[str], timeout_s: float
) -> list[Record]:
    from picker.testing.gateway import MiniGateway

    rotation = itertools.cycle(addresses)
    gw = MiniGateway(None, route=lambda: next(rotation), timeout_s=timeout_s)
    try:
        return await replay(requests, gateway_sender(gw, picks=False), drain_s=cfg.drain_s)
    finally:
        await gw.close()


async def _run_peer(  # noqa: PLR0917 - one call site, all positional by role
    name: str,
    cfg: LiveConfig,
    requests: Sequence[LiveRequest],
    procs: Processes,
    addresses: Sequence[str],
    check: Any,
    session: Any,
) -> list[Record]:
    port = free_port()
    await procs.start(name, _peer_argv(name, port, addresses))
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until(
            partial(_ready, procs, name, check, base + "/health"), timeout_s=STARTUP_TIMEOUT_S, what=name
        )
        return await replay(requests, http_sender(session, base), drain_s=cfg.drain_s)
    finally:
        await procs.stop(name)


async def _ready(procs: Processes, name: str, session: Any, url: str) -> bool:
    """True once ``url`` answers 200; raises if the process died meanwhile (with its log's tail)."""
    if not procs.alive(name):
        raise RuntimeError(f"{name} exited: {procs.log_tail(name)}")
    return await _http_ok(session, url)


def _peer_argv(name: str, port: int, addresses: Sequence[str]) -> list[str]:
    urls = [f"http://{a}" for a in addresses]
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls, "--log-level", "error"]
    if name == "sglang-router":
        return [sys.executable, "-m", "sglang_router.launch_router", *common, "--policy", "cache_aware"]
    if name == "vllm-router":
        exe = Path(sys.executable).with_name("vllm-router")
        return [str(exe), *common, "--policy", "power_of_two"]
    raise ValueError(f"unknown router {name!r}")


async def _run_epp(  # noqa: PLR0917 - one call site, all positional by role
    cfg: LiveConfig,
    requests: Sequence[LiveRequest],
    procs: Processes,
    addresses: Sequence[str],
    check: Any,
    timeout_s: float,
) -> list[Record]:
    from picker.testing.envoy import EnvoyClient
    from picker.testing.gateway import MiniGateway

    grpc_port, health_port, admin_port = free_port(), free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "picker",
        "serve",
        "--static-endpoints",
        ",".join(f"{a}@vllm" for a in addresses),
        "--secure-serving=false",
        "--host",
        "127.0.0.1",
        "--grpc-port",
        str(grpc_port),
        "--grpc-health-port",
        str(health_port),
        "--metrics-port",
        str(admin_port),
        "--pool-name",
        "bench-live",
        "--seed",
        str(cfg.seed),
    ]
    await procs.start("epp", argv)
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await wait_until(
            partial(_ready, procs, "epp", check, admin + "/readyz"), timeout_s=STARTUP_TIMEOUT_S, what="epp"
        )
        await asyncio.sleep(0.5)  # the first scrapes of every endpoint land
        async with EnvoyClient(f"127.0.0.1:{grpc_port}", timeout=timeout_s) as epp:
            gw = MiniGateway(epp, timeout_s=timeout_s)
            try:
                return await replay(requests, gateway_sender(gw, picks=True), drain_s=cfg.drain_s)
            finally:
                await gw.close()
    finally:
        await procs.stop("epp")


# ------------------------------------------------------------------------------------------------ command
QUICK = {"duration_s": 7.0, "drain_s": 5.0}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_live", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated, from " + ", ".join(ROUTERS))
    p.add_argument("--servers", type=int, default=4)
    p.add_argument("--load", type=float, default=0.9, help="offered load, fraction of fleet capacity")
    p.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per model second")
    p.add_argument("--duration", type=float, default=60.0, help="wall seconds of arrivals per router")
    p.add_argument("--drain", type=float, default=30.0, help="wall seconds to finish after the last arrival")
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--trace", choices=("azure-conv", "mooncake-conv"), default="azure-conv")
    p.add_argument("--offset", type=int, default=0, help="first request of the trace slice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slo-ttft", type=float, default=DEFAULT_TTFT_SLO_S)
    p.add_argument("--slo-tpot", type=float, default=DEFAULT_TPOT_SLO_S)
    p.add_argument(
        "--quick", action="store_true", help="7 s of arrivals per router: the whole run under 60 s"
    )
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-write", action="store_true", help="do not write results/live.{json,md}")
    p.add_argument("--serve-fleet", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> LiveConfig:
    quick = QUICK if args.quick else {}
    return LiveConfig(
        servers=args.servers,
        load=args.load,
        time_scale=args.time_scale,
        duration_s=quick.get("duration_s", args.duration),
        drain_s=quick.get("drain_s", args.drain),
        max_output_tokens=args.max_output_tokens,
        trace=args.trace,
        offset=args.offset,
        seed=args.seed,
        slo=Slo(args.slo_ttft, args.slo_tpot),
    )


def plan(cfg: LiveConfig) -> tuple[list[LiveRequest], dict[str, float]]:
    """The requests every router gets, and the rates behind them."""
    params = load_params()
    probe = trace_slice(cfg, params, 4000)
    cap = capacity_rps(params, probe, seed=cfg.seed)
    rate_model = cfg.load * cap * cfg.servers
    rate_wall = rate_model / cfg.time_scale
    count = max(2, int(rate_wall * cfg.duration_s))
    w = trace_slice(cfg, params, count)
    return build_requests(w, rate_wall), {
        "capacity_rps_per_server": cap,
        "offered_rps_model": rate_model,
        "offered_rps_wall": rate_wall,
    }


async def run(cfg: LiveConfig, routers: Sequence[str], command: str) -> dict[str, Any]:
    wall0 = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    requests, rates = plan(cfg)
    rows: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        procs = Processes(Path(tmp))
        try:
            for name in routers:
                print(f"bench_live: {name} ({len(requests)} requests) ...", file=sys.stderr, flush=True)
                try:
                    records, stats = await run_router(name, cfg, requests, procs)
                except RuntimeError as exc:
                    unavailable[name] = str(exc)
                    continue
                rows[name] = summarize_live(
                    records, time_scale=cfg.time_scale, slo=cfg.slo, fleet_stats=stats
                )
        finally:
            await procs.stop_all()
    cfg_doc = asdict(cfg)
    return {
        "benchmark": "bench_live",
        "command": command,
        "config": cfg_doc,
        "requests": len(requests),
        **rates,
        "engine": asdict(load_params()),
        "routers": rows,
        "unavailable": unavailable,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1m_at_start": load_at_start,
        },
        "wall_s": time.monotonic() - wall0,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.serve_fleet:
        return fleet_main(args.servers, args.time_scale, args.seed)
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    unknown = sorted(set(routers) - set(ROUTERS))
    if unknown:
        raise SystemExit(f"unknown router(s) {', '.join(unknown)}; known: {', '.join(ROUTERS)}")
    command = "python -m benchmarks.bench_live " + shlex.join(sys.argv[1:] if argv is None else argv)
    doc = asyncio.run(run(config_from_args(args), routers, command))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "live-quick" if args.quick else "live"
        (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        (args.out / f"{stem}.md").write_text(markdown_report(doc) + "\n", encoding="utf-8")
    print(json.dumps(doc, indent=2) if args.json else markdown_report(doc))
    for name, reason in doc["unavailable"].items():
        print(f"warning: router {name} did not run: {reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
