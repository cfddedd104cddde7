"""The clients (plain HTTP, or the MiniGateway with or without the EPP), the open-loop replay, and one run
per router on a fresh fleet."""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.live.processes import STARTUP_TIMEOUT_S, Fleet, Processes, epp_argv, http_ok, wait_until
from benchmarks.live.workload import PATH, LiveConfig, LiveRequest, Record
from picker.testing.net import free_port


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
                await wait_until(partial(http_ok, check, url), timeout_s=STARTUP_TIMEOUT_S, what=url)
            if name == "round-robin":
                records = await _run_round_robin(cfg, requests, fleet.addresses, total_s)
            elif name in EPP_CONFIGS:
                records = await _run_epp(cfg, requests, procs, fleet.addresses, check, total_s, name)
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
    return await http_ok(session, url)


def _peer_argv(name: str, port: int, addresses: Sequence[str]) -> list[str]:
    """The peers as their documentation runs them against HTTP workers (no tokenizer: character trees),
    with the cache-aware thresholds at their defaults (cache 0.3, balance 64 / 1.5)."""
    urls = [f"http://{a}" for a in addresses]
    common = ["--host", "127.0.0.1", "--port", str(port), "--worker-urls", *urls, "--log-level", "error"]
    if name == "sglang-router":
        return [sys.executable, "-m", "sglang_router.launch_router", *common, "--policy", "cache_aware"]
    exe = str(Path(sys.executable).with_name("vllm-router"))
    if name == "vllm-router":
        return [exe, *common, "--policy", "power_of_two"]
    if name == "vllm-router-cache-aware":
        return [exe, *common, "--policy", "cache_aware"]
    raise ValueError(f"unknown router {name!r}")


#: EPP runs: router name -> the scoring document it serves ("" = the built-in default profile)
EPP_CONFIGS = {
    "epp": "",
    # our default profile plus the prefix-cache scorer at the reference's weight, load guard on
    "epp-prefix": """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: prefill-queue-scorer}
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {type: lora-affinity-scorer}
- {type: gpu-utilization-scorer}
- {type: prefix-cache-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefill-queue-scorer, weight: 2}
  - {pluginRef: queue-scorer, weight: 1}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: lora-affinity-scorer, weight: 2}
  - {pluginRef: gpu-utilization-scorer, weight: 0.5}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
""",
    # the reference EPP's built-in profile: queue 2, KV 2, prefix 3
    "epp-reference": """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {type: prefix-cache-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: max-score-picker}
""",
}


async def _run_epp(  # noqa: PLR0917 - one call site, all positional by role
    cfg: LiveConfig,
    requests: Sequence[LiveRequest],
    procs: Processes,
    addresses: Sequence[str],
    check: Any,
    timeout_s: float,
    name: str = "epp",
) -> list[Record]:
    from picker.testing.envoy import EnvoyClient
    from picker.testing.gateway import MiniGateway

    grpc_port, health_port, admin_port = free_port(), free_port(), free_port()
    argv = epp_argv(
        addresses,
        grpc_port=grpc_port,
        health_port=health_port,
        metrics_port=admin_port,
        # the admin API is not used here: an ephemeral port, so runs side by side never collide
        admin_port=0,
        pool_name="bench-live",
        seed=cfg.seed,
        config_text=EPP_CONFIGS[name] or None,
    )
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
