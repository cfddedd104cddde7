"""``picker demo``: a local fake fleet, the EPP in standalone mode, real traffic, and a readable result.

What it does, all on 127.0.0.1 and in about half a minute:

1. Starts four model-server stand-ins as separate processes (``picker fake-server``): two vLLM, one
   SGLang, one TGI. They differ in speed, as pods on mixed hardware do: one vLLM and the TGI server are
   slower. Each serves the real ``/metrics`` page of its engine with live values.
2. Starts the EPP (``picker serve --static-endpoints ...``) as another process, plaintext, on free ports.
3. Sends the same request stream twice — once routed by the EPP (every request goes through the ext_proc
   exchange, exactly as a gateway would run it, then to the endpoint the EPP chose, retried once on the
   EPP's fallback if it fails, as Envoy does), once round-robin (no retries, no health checks) — and
   prints where the requests went, what the EPP saw of each endpoint, and client-side latency. Half-way
   through each run one server starts answering 503 (an engine that lost its GPU): the EPP ejects it after
   five failures and its clients see none of them; round-robin keeps sending it a quarter of the traffic.
   Multi-turn chats ride along (each turn resends the history; the two runs' chats share no text): the
   share of their prompt tokens the servers found cached shows what prefix affinity keeps.
4. Replays the seed's weekend: three teams send their usual traffic (``x-tenant-id``) while a fourth
   tenant's loop fires requests at twice their rate. The EPP's ``tenants`` section gives the loop a daily
   cost budget (scaled down to the demo): it is cut at its budget with 429s while the teams keep their
   latency; the table prints each tenant's requests, refusals, latency and cost, and the loop's cost with
   and without the limit (without: its refused requests priced as its served ones, a projection).
5. Stops every process it started, also on Ctrl+C or failure.

Why one module of this size: it is one command's script (start, replay twice, the tenant weekend, the
tables, stop), each step a function; the process handling it shares with both replays is what keeps every
child stopped on any exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from picker.testing.net import free_port
from picker.testing.traffic import completions

#: name, engine, slowdown factor (1 = fastest); ``slower`` multiplies every engine step's duration
FLEET: tuple[tuple[str, str, float], ...] = (
    ("vllm-a", "vllm", 1.0),
    ("vllm-b", "vllm", 2.5),
    ("sglang", "sglang", 1.0),
    ("tgi", "tgi", 2.0),
)
TIME_SCALE = 0.5  # fake servers run twice as fast as their model's numbers
#: the server that starts failing half-way through each routing run
FAILING = "vllm-a"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
#: the tenants of the last phase: three teams and the loop left running over the weekend
TEAMS = ("team-search", "team-support", "team-docs")
RUNAWAY = "weekend-loop"
#: the loop's rate, requests/s (the teams together send about 42/s), its daily budget (demo-sized) and how
#: many of its requests may run at once (what keeps a tenant from crowding the others out before its
#: budget is gone)
RUNAWAY_RATE = 80.0
RUNAWAY_BUDGET = 0.03
RUNAWAY_CONCURRENT = 4
PRICE_INPUT_PER_1M, PRICE_OUTPUT_PER_1M = 3.0, 15.0
#: multi-turn chats in each run: conversations, turns each
CHATS, TURNS = 16, 6
#: our default profile (scoring/README.md) plus prefix-cache-scorer at the reference's weight, with one
#: fallback endpoint, which the gateway retries on
PROFILE_CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: prefill-queue-scorer}, {type: queue-scorer}, {type: kv-cache-utilization-scorer},
  {type: lora-affinity-scorer}, {type: gpu-utilization-scorer}, {type: prefix-cache-scorer},
  {name: picker, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: prefill-queue-scorer, weight: 2}, {pluginRef: queue-scorer, weight: 1},
    {pluginRef: kv-cache-utilization-scorer, weight: 2}, {pluginRef: lora-affinity-scorer, weight: 2},
    {pluginRef: gpu-utilization-scorer, weight: 0.5}, {pluginRef: prefix-cache-scorer, weight: 3},
    {pluginRef: picker}]
---
"""
TENANTS_CONFIG = f"""\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  tenants:
  - {{id: {RUNAWAY}, limits: {{costPerDay: {RUNAWAY_BUDGET}, concurrent: {RUNAWAY_CONCURRENT}}}}}
  prices:
  - {{model: {MODEL}, inputPer1M: {PRICE_INPUT_PER_1M}, outputPer1M: {PRICE_OUTPUT_PER_1M}}}
"""


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]


@dataclass
class _Endpoint:
    name: str
    engine: str
    slower: float
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class _Phase:
    label: str
    latencies: list[float] = field(default_factory=list)
    #: per tenant (the weekend phase): requests sent, latencies of served ones, refusals (over the budget,
    #: and over the rate or concurrency limit)
    sent: Counter[str] = field(default_factory=Counter)
    by_tenant: dict[str, list[float]] = field(default_factory=dict)
    over_budget: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    shares: Counter[str] = field(default_factory=Counter)
    pick_ms: list[float] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    #: the chats' latencies, and the share of their prompt tokens the servers found cached
    chat: list[float] = field(default_factory=list)
    hit_rate: float = float("nan")


class _Processes:
    """Children of the demo; all terminated on exit, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[_Proc] = []

    def start(self, name: str, args: Sequence[str]) -> None:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "picker", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.procs.append(_Proc(name, popen))

    def check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                err = p.popen.stderr.read().decode(errors="replace") if p.popen.stderr else ""
                raise RuntimeError(f"{p.name} exited early (code {p.popen.returncode}):\n{err[-2000:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.popen.pid, signal.SIGKILL)
                p.popen.wait()
            if p.popen.stderr:
                p.popen.stderr.close()


async def _http_get(session: Any, url: str) -> tuple[int, bytes]:
    async with session.get(url) as resp:
        return resp.status, await resp.read()


async def _wait_ready(session: Any, urls: Sequence[str], procs: _Processes, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending:
        procs.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f}s: {', '.join(pending)}")
        still = []
        for url in pending:
            try:
                status, _ = await _http_get(session, url)
            except OSError:
                status = 0
            except Exception:  # noqa: BLE001 - any client error just means "not yet"
                status = 0
            if status != 200:
                still.append(url)
        pending = still
        if pending:
            await asyncio.sleep(0.1)


async def _run_phase(  # noqa: PLR0917 - one call site per routing policy, all positional by role
    label: str,
    send: Callable[[str, bytes], Any],
    workload: list[tuple[float, str, bytes]],
    concurrency: int,
    sampler: Callable[[], Any] | None,
    fault: Callable[[], Awaitable[Any]] | None = None,
    meter: Any = None,
) -> _Phase:
    """Replay ``workload`` through ``send``; ``fault`` runs half-way through (by arrival time); ``meter``
    (a :class:`picker.testing.conversations.ChatMeter`) measures the chats' prefix-cache hit rate."""
    from picker.testing.gateway import GatewayResult

    phase = _Phase(label)
    sem = asyncio.Semaphore(concurrency * 4)
    start = time.monotonic()

    async def inject() -> None:
        if fault is not None and workload:
            await asyncio.sleep(max(0.0, start + workload[-1][0] / 2 - time.monotonic()))
            await fault()

    async def one(at: float, path: str, body: bytes) -> None:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        async with sem:
            res: GatewayResult = await send(path, body)
        if res.error or res.status != 200:
            phase.errors[res.error.split(" - ")[0][:60] or f"HTTP {res.status}"] += 1
            return
        phase.latencies.append(res.latency_s)
        if path.endswith("/chat/completions"):
            phase.chat.append(res.latency_s)
        phase.shares[res.endpoint] += 1
        if res.pick_s:
            phase.pick_ms.append(res.pick_s * 1000)

    sampling = asyncio.ensure_future(_sample_loop(sampler, phase)) if sampler is not None else None
    if meter is not None:
        await meter.start()
    await asyncio.gather(inject(), *(one(at, path, body) for at, path, body in workload))
    phase.wall_s = time.monotonic() - start
    phase.hit_rate = await meter.rate() if meter is not None else phase.hit_rate
    if sampling is not None:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
    return phase


def _weekend_workload(n: int, seed: int) -> list[tuple[float, str, bytes]]:
    """(arrival s, tenant, body): the teams' usual traffic (round-robin over TEAMS) and, over the same
    span, the loop's identical long requests at RUNAWAY_RATE."""
    teams = [
        (at, TEAMS[i % len(TEAMS)], body)
        for i, (at, body) in enumerate(completions(n, seed + 1, model=MODEL))
    ]
    span = teams[-1][0] if teams else 0.0
    prompt = "Summarize this weekend's incident reports and draft the follow-ups. " * 30
    body = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0}).encode()
    loop = [(k / RUNAWAY_RATE, RUNAWAY, body) for k in range(int(span * RUNAWAY_RATE))]
    return sorted(teams + loop, key=lambda item: item[0])


async def _run_weekend(send: Callable[[str, bytes], Any], workload: list[tuple[float, str, bytes]]) -> _Phase:
    from picker.testing.gateway import GatewayResult

    phase = _Phase("weekend")
    start = time.monotonic()

    async def one(at: float, tenant: str, body: bytes) -> None:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        phase.sent[tenant] += 1
        res: GatewayResult = await send(tenant, body)
        if res.status == 429 and "insufficient_quota" in res.error:
            phase.over_budget[tenant] += 1
        elif res.status == 429:
            phase.refused[tenant] += 1
        elif res.error or res.status != 200:
            phase.errors[res.error.split(" - ")[0][:60] or f"HTTP {res.status}"] += 1
        else:
            phase.by_tenant.setdefault(tenant, []).append(res.latency_s)

    await asyncio.gather(*(one(at, tenant, body) for at, tenant, body in workload))
    phase.wall_s = time.monotonic() - start
    return phase


def _weekend_report(weekend: _Phase, before: _Phase, costs: dict[str, float]) -> str:
    lines = [
        "",
        f"The weekend, replayed: three teams as usual, and a loop left running at {RUNAWAY_RATE:.0f} req/s",
        (
            f"(its limits: ${RUNAWAY_BUDGET:.2f} a day, demo-sized, and {RUNAWAY_CONCURRENT} at once; "
            f"prices ${PRICE_INPUT_PER_1M:g} / ${PRICE_OUTPUT_PER_1M:g} per 1M tokens in / out):"
        ),
        "",
        (
            f"  {'tenant':<14}{'sent':>5}{'served':>7}{'429 budget':>11}{'429 busy':>9}{'p50':>7}{'p99':>7}"
            f"{'cost':>9}"
        ),
        "  " + "-" * 69,
    ]
    for tenant in (*TEAMS, RUNAWAY):
        lat = weekend.by_tenant.get(tenant, [])
        cost = "$" + format(costs.get(tenant, 0.0), ".4f")
        lines.append(
            f"  {tenant:<14}{weekend.sent[tenant]:>5}{len(lat):>7}{weekend.over_budget[tenant]:>11}"
            f"{weekend.refused[tenant]:>9}"
            f"{_pct(lat, 0.5):>6.2f}s{_pct(lat, 0.99):>6.2f}s{cost:>9}"
        )
    teams = [x for t in TEAMS for x in weekend.by_tenant.get(t, [])]
    lines.append("")
    if teams and before.latencies:
        lines.append(
            f"  The teams next to the loop: p50 {_pct(teams, 0.5):.2f}s, p99 {_pct(teams, 0.99):.2f}s "
            f"(alone, above: p50 {_pct(before.latencies, 0.5):.2f}s, "
            f"p99 {_pct(before.latencies, 0.99):.2f}s)."
        )
    served = len(weekend.by_tenant.get(RUNAWAY, []))
    sent = weekend.sent[RUNAWAY]
    spent = costs.get(RUNAWAY, 0.0)
    if served and sent and weekend.wall_s > 0:
        projected = spent / served * sent
        weekend_cost = projected / weekend.wall_s * 60 * 3600
        held = f"held to {RUNAWAY_CONCURRENT} at once and stayed under its budget"  # a very slow machine
        cut = "cut at its budget" if weekend.over_budget[RUNAWAY] else held
        lines.append(f"  The loop was {cut}: ${spent:.4f} for {served} of its {sent} requests. Without the")
        lines.append(
            f"  limits: ${projected:.4f} (projected from its served requests), ${weekend_cost:,.0f} over a "
            "60-hour weekend."
        )
    for err, count in weekend.errors.most_common(3):
        lines.append(f"  errors: {count} x {err}")
    lines.append("")
    return "\n".join(lines)


async def _sample_loop(sampler: Callable[[], Any], phase: _Phase) -> None:
    while True:
        with contextlib.suppress(Exception):
            phase.samples.append(await sampler())
        await asyncio.sleep(0.25)


def _change(ours: float, baseline: float) -> str:
    """Say a relative change the way a reader expects: "23% lower", "5% higher" or "the same"."""
    ratio = ours / baseline - 1.0
    if abs(ratio) < 0.005:
        return "the same"
    return f"{abs(ratio):.0%} {'lower' if ratio < 0 else 'higher'}"


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _mean_field(samples: list[dict[str, Any]], address: str, key: str) -> float | None:
    vals = [
        e[key]
        for s in samples
        for e in s.get("endpoints", [])
        if e["address"] == address and e.get(key) is not None
    ]
    return statistics.fmean(vals) if vals else None


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _report(fleet: list[_Endpoint], picker: _Phase, rr: _Phase, final: dict[str, Any], n: int) -> str:
    lines = []
    width = 78
    lines.append("=" * width)
    lines.append(
        f"picker demo: {len(fleet)} fake model servers, the EPP in standalone mode, {n} requests per policy"
    )
    lines.append("=" * width)
    lines.append("")
    lines.append("Where requests went, and what the EPP saw while routing (means over the run):")
    lines.append("")
    hdr = (
        f"  {'endpoint':<16}{'engine':<8}{'speed':>6}  {'picker':>7}{'round-robin':>12}"
        f"{'queue':>7}{'running':>8}{'KV':>6}"
    )
    lines.append(hdr)
    lines.append("  " + "-" * (len(hdr) - 2))
    by_addr = {e["address"]: e for e in final.get("endpoints", [])}
    for ep in fleet:
        share_p = picker.shares[ep.address] / max(1, sum(picker.shares.values()))
        share_r = rr.shares[ep.address] / max(1, sum(rr.shares.values()))
        q = _mean_field(picker.samples, ep.address, "waiting")
        run = _mean_field(picker.samples, ep.address, "running")
        kv = _mean_field(picker.samples, ep.address, "kv_usage")
        engine = (by_addr.get(ep.address) or {}).get("engine") or ep.engine
        speed = f"{1 / ep.slower:.1f}x"
        lines.append(
            f"  {ep.name:<16}{engine:<8}{speed:>6}  {share_p:>7.0%}{share_r:>12.0%}"
            f"{_fmt(q, '.1f'):>7}{_fmt(run, '.1f'):>8}{_fmt(kv, '.0%'):>6}"
        )
    lines.append("")
    lines.append("Client-side latency (request sent -> last byte), same requests, same arrival times:")
    lines.append("")
    lines.append(f"  {'policy':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'errors':>8}")
    lines.append("  " + "-" * 47)
    for ph in (picker, rr):
        errs = sum(ph.errors.values())
        lines.append(
            f"  {ph.label:<14}{_pct(ph.latencies, 0.5):>8.2f}s{_pct(ph.latencies, 0.9):>8.2f}s"
            f"{_pct(ph.latencies, 0.99):>8.2f}s{errs:>8}"
        )
    lines.append("")
    lines.append(
        f"  Half-way through each run {FAILING} started answering 503. Through the EPP, the gateway retried"
    )
    epp_errors = sum(picker.errors.values())
    lines.append(
        f"  its first failures on the EPP's fallback and the EPP stopped picking it: {epp_errors} client"
        " errors."
    )
    lines.append(
        f"  Round-robin (no retries, no health checks) kept sending it a quarter: {sum(rr.errors.values())}"
        " client errors."
    )
    lines.append(
        f"  {CHATS} multi-turn chats ({TURNS} turns each): the servers found {picker.hit_rate:.0%} of their"
        f" prompt tokens cached with"
    )
    lines.append(
        f"  the EPP, {rr.hit_rate:.0%} round-robin; chat p50 {_pct(picker.chat, 0.5):.2f}s vs "
        f"{_pct(rr.chat, 0.5):.2f}s, p90 {_pct(picker.chat, 0.9):.2f}s vs {_pct(rr.chat, 0.9):.2f}s."
    )
    p99p, p99r = _pct(picker.latencies, 0.99), _pct(rr.latencies, 0.99)
    p50p, p50r = _pct(picker.latencies, 0.5), _pct(rr.latencies, 0.5)
    lines.append("")
    if picker.latencies and rr.latencies and p99r > 0 and p50r > 0:
        lines.append(
            f"  Versus round-robin, the EPP's p50 latency is {_change(p50p, p50r)} and its p99 "
            f"{_change(p99p, p99r)},"
        )
        lines.append(
            "  from sending less traffic to the slow servers as their queues grew (latency of served"
        )
        lines.append("  requests; the failing server's fast 503s are not in it).")
    if picker.pick_ms:
        lines.append(
            f"  EPP answer time as seen by the gateway: p50 {_pct(picker.pick_ms, 0.5):.2f} ms, "
            f"p99 {_pct(picker.pick_ms, 0.99):.2f} ms."
        )
    for ph in (picker, rr):
        for err, count in ph.errors.most_common(3):
            lines.append(f"  {ph.label} errors: {count} x {err}")
    lines.append("")
    return "\n".join(lines)


async def _demo(requests: int, concurrency: int, seed: int) -> str:
    import aiohttp

    from picker.testing.envoy import EnvoyClient
    from picker.testing.gateway import MiniGateway
    from picker.testing.traffic import ChatMeter, with_chats

    procs = _Processes()
    try:
        fleet = [_Endpoint(name, engine, slower, free_port()) for name, engine, slower in FLEET]
        for i, ep in enumerate(fleet):
            procs.start(
                ep.name,
                [
                    "fake-server",
                    "--port",
                    str(ep.port),
                    "--engine",
                    ep.engine,
                    "--time-scale",
                    str(TIME_SCALE),
                    "--slower",
                    str(ep.slower),
                    "--seed",
                    str(seed + i),
                ],
            )
        grpc_port, health_port, metrics_port, admin_port = free_port(), free_port(), free_port(), free_port()
        static = ",".join(f"{ep.address}@{ep.engine}" for ep in fleet)
        procs.start(
            "epp",
            [
                "serve",
                "--static-endpoints",
                static,
                "--secure-serving=false",
                "--metrics-endpoint-auth=false",  # a local fleet: no API server to review tokens
                "--host",
                "127.0.0.1",
                f"--grpc-port={grpc_port}",
                f"--grpc-health-port={health_port}",
                f"--metrics-port={metrics_port}",
                f"--admin-port={admin_port}",
                "--pool-name",
                "demo-pool",
                "--seed",
                str(seed),
                "--config-text",
                PROFILE_CONFIG + TENANTS_CONFIG,
                "-v",
                "1",
            ],
        )
        admin = f"http://127.0.0.1:{admin_port}"  # /debug/*; /readyz is on the metrics port
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await _wait_ready(
                session,
                [f"http://{ep.address}/health" for ep in fleet] + [f"http://127.0.0.1:{metrics_port}/readyz"],
                procs,
            )
            # first scrapes land within a few intervals of readiness
            await asyncio.sleep(0.5)

            async def sample() -> Any:
                status, body = await _http_get(session, f"{admin}/debug/endpoints")
                return json.loads(body) if status == 200 else {}

            failing = next(ep for ep in fleet if ep.name == FAILING)

            async def set_fault(fault: str) -> None:
                url = f"http://{failing.address}/_fake/control"
                async with session.post(url, json={"fault": fault}) as resp:
                    await resp.read()

            def fail() -> Awaitable[None]:
                return set_fault("error-503")

            addresses = [ep.address for ep in fleet]
            base = [(at, "/v1/completions", body) for at, body in completions(requests, seed, model=MODEL)]
            # the two runs' chats share no text: round-robin finds nothing the EPP's run cached
            runs = {salt: with_chats(base, CHATS, TURNS, seed=seed, salt=salt, model=MODEL) for salt in "ab"}
            meters = {salt: ChatMeter(session, addresses, w) for salt, w in runs.items()}
            async with EnvoyClient(f"127.0.0.1:{grpc_port}", timeout=60) as epp:
                gw = MiniGateway(epp)
                try:
                    picker = await _run_phase(
                        "picker (EPP)", gw.send, runs["a"], concurrency, sample, fail, meters["a"]
                    )
                finally:
                    await gw.close()
            final = await sample()
            await set_fault("none")
            await asyncio.sleep(2.0)  # let queues drain before the baseline
            rr_gw = MiniGateway(None, route=itertools.cycle(addresses).__next__)
            try:
                rr = await _run_phase(
                    "round-robin", rr_gw.send, runs["b"], concurrency, None, fail, meters["b"]
                )
            finally:
                await rr_gw.close()
            await set_fault("none")
            await asyncio.sleep(1.0)
            async with EnvoyClient(f"127.0.0.1:{grpc_port}", timeout=60) as epp:
                gw = MiniGateway(epp)
                try:
                    weekend = await _run_weekend(
                        lambda t, b: gw.send("/v1/completions", b, headers=[("x-tenant-id", t)]),
                        _weekend_workload(requests * 2 // 5, seed),
                    )
                finally:
                    await gw.close()
            status, body = await _http_get(session, f"{admin}/debug/tenants")
            rows = json.loads(body).get("tenants", []) if status == 200 else []
            costs = {row["tenant"]: float(row["meters"]["costPerDay"]["used"]) for row in rows}
            procs.check_alive()
        report = _report(fleet, picker, rr, final, requests + CHATS * TURNS)
        return report + _weekend_report(weekend, picker, costs)
    finally:
        procs.stop()


def run_demo(*, requests: int = 500, concurrency: int = 24, seed: int = 7) -> int:
    started = time.monotonic()
    print("Starting 4 fake model servers and the EPP on 127.0.0.1 ...", flush=True)  # noqa: T201
    try:
        report = asyncio.run(_demo(requests, concurrency, seed))
    except KeyboardInterrupt:
        print("interrupted; all demo processes stopped", file=sys.stderr)  # noqa: T201
        return 130
    except RuntimeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print(report)  # noqa: T201
    print(f"(demo took {time.monotonic() - started:.0f}s; all processes stopped)")  # noqa: T201
    return 0
