"""Failover benchmark: does a client notice when a pod fails, and how fast does the EPP stop using it?

    python -m benchmarks.bench_failover --json            # about 5 minutes
    python -m benchmarks.bench_failover --quick --json    # about 3 minutes (shorter steady phases)

Everything runs for real on 127.0.0.1: four fake vLLM servers, each its own ``picker fake-server`` process
(so "killed" is a SIGKILL and the port then refuses connections), the EPP (``picker serve``, our default
profile with ``maxNumOfEndpoints: 2``: a primary and one fallback), and in this process the client and the
Envoy-like gateway (:class:`picker.testing.gateway.MiniGateway`), which — like Envoy with the EPP's
fallback list and ``retry_on: 5xx,reset,connect-failure`` — retries a failed attempt once on the next
endpoint of the list. Steady open-loop load of streamed completions (Poisson arrivals); after a steady
phase one fault is injected into server 0 for ``--fault`` seconds, then removed:

* ``killed`` — the server's process is killed (connections refused), and started again at the end;
* ``error-503`` — it answers every completion with 503 (``/_fake/control``), its metrics still served;
* ``slow`` — its engine runs three times slower than its parameters (its gauges show only what follows
  from that), once with the default profile and once with ``latency-scorer`` added (weight 1);
* ``saturated`` — every pool server runs 8x slower (``saturate_slowdown``), nowhere else to go (the
  baseline of the next); ``external-saturated`` — the same with a fifth fake server configured as an
  external endpoint (a price ten times the pool's, requests- and tokens-per-minute limits);
  ``external-503`` — the same, but the external endpoint answers 503 during the fault: the gateway's
  retry lands on the pool's fallback, and passive health ejects the external endpoint.

Per fault: client-visible errors (before, during, after; streams in flight on the killed server that broke
off are counted apart: no router can save them); requests that reached the bad server after the onset (any
attempt), the share reaching it after its first five failures (the consecutive-failure threshold), and
when it stopped being sent traffic (the first moment after which fewer than 1 % of the fault window's
requests reached it); p50/p99 TTFT before, during and after; for ``slow`` its share of primary picks before
and 20-30 s into the fault; for ``external-saturated`` the share sent to the external endpoint first, its
cost (the EPP's accounting, ``/debug/external``) against the same tokens at the pool's price, and its peak
requests and tokens per minute (polled every second) against the limits. The EPP's ``ai_failover_total``
and ejection counters come from its ``/metrics``. Targets (issue 14 §5): zero client-visible errors for
``killed`` and ``error-503``; under 1 % to the bad server after its first failures; the slow server's
share down by half within 30 s; the external endpoint used only while the pool is saturated, within its
limits.

Why one module of this size: it is one command's script, read top to bottom (configuration, the fleet's
processes, one fault's run, its summary, the report); its parts are used nowhere else.

Honesty on two shared cores: everything shares the machine with whatever else runs; latencies are wall
seconds (time scale 1) with the Python gateway's overhead; ``load_average_1m`` says how busy it was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import machine_info
from benchmarks.live.external import external_document, external_markdown, external_summary, poll_external
from benchmarks.live.faults import inject
from benchmarks.live.processes import Processes, epp_argv, http_ok, wait_until
from picker.testing.net import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PATH = "/v1/completions"
FAULTS = (
    "killed",
    "error-503",
    "slow",
    "slow+latency-scorer",
    "saturated",
    "external-saturated",
    "external-503",
)
#: the consecutive-failure threshold of the outlier detector's defaults
EJECTION_FAILURES = 5
STARTUP_TIMEOUT_S = 40.0

#: our default profile (scoring/README.md) with a fallback endpoint, optionally plus latency-scorer
_PROFILE = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: prefill-queue-scorer}}
- {{type: queue-scorer}}
- {{type: kv-cache-utilization-scorer}}
- {{type: lora-affinity-scorer}}
- {{type: gpu-utilization-scorer}}
{extra_plugin}- {{name: picker, type: max-score-picker, parameters: {{maxNumOfEndpoints: 2}}}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: prefill-queue-scorer, weight: 2}}
  - {{pluginRef: queue-scorer, weight: 1}}
  - {{pluginRef: kv-cache-utilization-scorer, weight: 2}}
  - {{pluginRef: lora-affinity-scorer, weight: 2}}
  - {{pluginRef: gpu-utilization-scorer, weight: 0.5}}
{extra_ref}  - {{pluginRef: picker}}
"""


def epp_config(latency_scorer: bool, external: str | None = None, cfg: FailoverConfig | None = None) -> str:
    text = _PROFILE.format(
        extra_plugin="- {type: latency-scorer}\n" if latency_scorer else "",
        extra_ref="  - {pluginRef: latency-scorer, weight: 1}\n" if latency_scorer else "",
    )
    if external is None or cfg is None:
        return text
    return text + external_document(
        external,
        price=cfg.external_price,
        pool_price=cfg.pool_price,
        rpm=cfg.external_rpm,
        tpm=cfg.external_tpm,
    )


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    servers: int = 4
    #: offered load, requests per second (open loop, Poisson)
    rate: float = 16.0
    #: seconds of steady load before the fault
    before_s: float = 20.0
    #: seconds the fault lasts
    fault_s: float = 30.0
    #: seconds of load after the fault is removed
    after_s: float = 20.0
    max_tokens: int = 24
    #: the gateway's per-attempt wait for response headers (Envoy ``per_try_timeout``)
    per_try_timeout_s: float = 10.0
    slowdown: float = 3.0
    #: ``external-saturated``: how much slower every pool server runs during the fault
    saturate_slowdown: float = 8.0
    #: ``external-saturated``: the external endpoint's limits and the prices
    external_rpm: int = 150
    external_tpm: int = 60000
    external_price: tuple[float, float] = (3.0, 15.0)
    pool_price: tuple[float, float] = (0.3, 1.2)
    seed: int = 0


@dataclass(slots=True)
class Record:
    sent_s: float
    attempts: list[str] = field(default_factory=list)
    endpoint: str = ""
    status: int = 0
    ok: bool = False
    ttft_s: float = math.nan
    error: str = ""


# ------------------------------------------------------------------------------------------------ workload
def workload(cfg: FailoverConfig) -> list[tuple[float, bytes]]:
    """``(send time s, body)``: Poisson arrivals over the whole run, chat-sized prompts, streamed."""
    rng = random.Random(cfg.seed)
    total = cfg.before_s + cfg.fault_s + cfg.after_s
    out: list[tuple[float, bytes]] = []
    t = 0.0
    words = ("route", "token", "cache", "queue", "batch", "model", "prefix", "decode", "gateway", "pool")
    while True:
        t += rng.expovariate(cfg.rate)
        if t >= total:
            return out
        n_words = int(min(1200, rng.lognormvariate(5.2, 0.7)))
        prompt = f"request {len(out)}: " + " ".join(rng.choice(words) for _ in range(n_words))
        body = {"model": MODEL, "prompt": prompt, "max_tokens": cfg.max_tokens, "stream": True}
        out.append((t, json.dumps(body).encode()))


# ------------------------------------------------------------------------------------------------ processes
class Fleet:
    """The fake servers, one process each, restartable on the same port."""

    def __init__(self, procs: Processes, count: int, seed: int) -> None:
        self._procs = procs
        self.ports = [free_port() for _ in range(count)]
        self._seed = seed

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    async def start(self, i: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "picker",
            "fake-server",
            "--port",
            str(self.ports[i]),
            "--engine",
            "vllm",
            "--seed",
            str(self._seed + i),
        ]
        await self._procs.start(f"server-{i}", argv)

    async def kill(self, i: int) -> None:
        await self._procs.stop(f"server-{i}", grace_s=0.0)


async def _metric_values(session: Any, admin: str) -> dict[str, float]:
    """``ai_failover_total`` and ``picker_endpoint_ejections_total`` summed by name{reason}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(admin + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("ai_failover_total", "picker_endpoint_ejections_total"):
                key = f"{s.name}{{{s.labels.get('reason', '')}}}"
                out[key] = out.get(key, 0.0) + float(s.value)
    return out


# ------------------------------------------------------------------------------------------------ one fault
async def run_fault(fault: str, cfg: FailoverConfig, procs: Processes) -> dict[str, Any]:
    """One fresh fleet and EPP, steady load, ``fault`` on server 0 between ``before_s`` and
    ``before_s + fault_s``. A fault that cannot run yet returns ``{"skipped": reason}``."""
    import aiohttp

    from picker.testing.envoy import EnvoyClient
    from picker.testing.gateway import MiniGateway

    spill = fault in ("external-saturated", "external-503")
    fleet = Fleet(procs, cfg.servers + spill, cfg.seed)
    for i in range(len(fleet.ports)):
        await fleet.start(i)
    pool, external = fleet.addresses[: cfg.servers], fleet.addresses[-1] if spill else None
    grpc_port, health_port, admin_port, debug_port = free_port(), free_port(), free_port(), free_port()
    await procs.start(
        "epp",
        epp_argv(
            pool,
            grpc_port=grpc_port,
            health_port=health_port,
            metrics_port=admin_port,
            admin_port=debug_port,  # /debug/external for the external-endpoint fault
            pool_name="bench-failover",
            seed=cfg.seed,
            config_text=epp_config(latency_scorer=fault == "slow+latency-scorer", external=external, cfg=cfg),
        ),
    )
    admin, debug = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{debug_port}"
    bad = external if external is not None else fleet.addresses[0]
    records: list[Record] = []
    events: dict[str, float] = {}
    peaks: dict[str, int] = {}
    final: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for url in [f"http://{a}/health" for a in fleet.addresses] + [admin + "/readyz"]:
            await wait_until(partial(http_ok, session, url), timeout_s=STARTUP_TIMEOUT_S, what=url)
        await asyncio.sleep(1.0)  # the first scrapes land
        async with EnvoyClient(f"127.0.0.1:{grpc_port}", timeout=120.0) as epp:
            gw = MiniGateway(epp, timeout_s=120.0, retries=1, upstream_timeout_s=cfg.per_try_timeout_s)
            try:
                t0 = time.monotonic()
                injector = asyncio.ensure_future(inject(fault, cfg, fleet, session, t0=t0, events=events))
                poller = asyncio.ensure_future(poll_external(session, debug, peaks)) if spill else None
                records = await _replay(gw, workload(cfg), t0)
                await injector
                if poller is not None:
                    poller.cancel()
                    await asyncio.gather(poller, return_exceptions=True)
            finally:
                await gw.close()
        counters = await _metric_values(session, admin)
        if spill:
            async with session.get(debug + "/debug/external") as resp:
                final = (await resp.json())["external"]
    await procs.stop("epp")
    for i in range(len(fleet.ports)):
        await fleet.kill(i)
    row = summarize(fault, cfg, records, bad, counters=counters, events=events)
    if spill:
        row["external"] = external_summary(
            records,
            bad,
            window=row["fault_window_s"],
            peaks=peaks,
            final=final[0],
            prices=(cfg.external_price, cfg.pool_price),
            limits=(cfg.external_rpm, cfg.external_tpm),
        )
        failing = {  # external-503: the failing external endpoint is ejected, the client sees no error
            **row["targets"],
            "external_ejected": counters.get("picker_endpoint_ejections_total{consecutive_5xx}", 0.0) >= 1,
        }
        row["targets"] = (
            failing
            if fault == "external-503"
            else {
                "within_rpm": peaks.get("requestsPerMinute", 0) <= cfg.external_rpm,
                "within_tpm": peaks.get("tokensPerMinute", 0) <= cfg.external_tpm,
                "none_before_fault": row["external"]["share"]["before"] == 0.0,
                "every_spill_while_saturated": counters.get("ai_failover_total{saturated}", 0.0)
                == row["external"]["sent"],
            }
        )
    return row


async def _replay(gw: Any, requests: Sequence[tuple[float, bytes]], t0: float) -> list[Record]:
    records: list[Record] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(rec: Record, body: bytes) -> None:
        result = await gw.send(PATH, body)
        rec.attempts = list(result.attempts)
        rec.endpoint = result.endpoint
        rec.status = result.status
        rec.ok = result.ok
        rec.error = result.error
        if result.ok:
            rec.ttft_s = result.ttft_s

    for at, body in requests:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        rec = Record(sent_s=time.monotonic() - t0)
        records.append(rec)
        tasks.append(asyncio.ensure_future(one(rec, body)))
    await asyncio.gather(*tasks)
    return records


# ------------------------------------------------------------------------------------------------ report
def _pct(values: Sequence[float], q: float) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.percentile(vals, q)) if vals else None


def summarize(
    fault: str,
    cfg: FailoverConfig,
    records: Sequence[Record],
    bad: str,
    *,
    counters: dict[str, float],
    events: dict[str, float],
) -> dict[str, Any]:
    start = events.get("fault_s", cfg.before_s)
    end = events.get("recovered_s", cfg.before_s + cfg.fault_s)
    windows = {
        "before": [r for r in records if r.sent_s < start],
        "during": [r for r in records if start <= r.sent_s < end],
        "after": [r for r in records if r.sent_s >= end],
    }
    during = windows["during"]
    reached = [r for r in during if bad in r.attempts]
    # the time after which fewer than 1 % of the fault window's requests reached the bad server
    stop_index = len(during)
    for k in range(len(during)):
        tail = during[k:]
        if sum(bad in r.attempts for r in tail) < 0.01 * len(tail):
            stop_index = k
            break
    stop_s = (during[stop_index].sent_s - start) if stop_index < len(during) else None
    # failed attempts on the bad server since the onset, in order; the fifth is the ejection threshold
    failed_attempts = [
        r for r in during if bad in r.attempts and (r.attempts.index(bad) < len(r.attempts) - 1 or not r.ok)
    ]
    after_first = (
        [r for r in during if r.sent_s > failed_attempts[EJECTION_FAILURES - 1].sent_s]
        if len(failed_attempts) >= EJECTION_FAILURES
        else []
    )
    # a response that was streaming from the bad server when it was killed breaks off: no router or retry
    # can save it (the client has part of it); counted apart from the errors of requests sent after
    broken = [
        r for r in windows["before"] if not r.ok and r.endpoint == bad and r.error.startswith("response")
    ]
    row: dict[str, Any] = {
        "requests": len(records),
        "errors": {name: sum(not r.ok for r in rs if r not in broken) for name, rs in windows.items()},
        "broken_in_flight_at_fault": len(broken),
        "error_kinds": _error_kinds(records),
        "retried": sum(len(r.attempts) > 1 for r in records),
        "reached_bad_after_fault": len(reached),
        "share_reaching_bad_after_first_failures": (
            sum(bad in r.attempts for r in after_first) / len(after_first) if after_first else None
        ),
        "stopped_after_s": stop_s,
        "ttft_s": {
            name: {"p50": _pct([r.ttft_s for r in rs], 50), "p99": _pct([r.ttft_s for r in rs], 99)}
            for name, rs in windows.items()
        },
        "epp_counters": counters,
        "fault_window_s": [start, end],
    }
    if fault.startswith("slow"):
        row["slow_share"] = _shares(records, bad, start)
    row["targets"] = _targets(fault, row)
    return row


def _error_kinds(records: Sequence[Record]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for r in records:
        if not r.ok:
            kind = (r.error.split(":", 1)[0] or f"status {r.status}")[:60]
            kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _shares(records: Sequence[Record], bad: str, start: float) -> dict[str, Any]:
    """The bad server's share of first attempts (the EPP's primary picks): the steady phase before the
    fault, then per 5 s of the fault's first 30 s."""

    def share(rs: Sequence[Record]) -> float | None:
        picked = [r for r in rs if r.attempts]
        return sum(r.attempts[0] == bad for r in picked) / len(picked) if picked else None

    before = share([r for r in records if start - 15.0 <= r.sent_s < start])
    buckets = [
        share([r for r in records if start + k <= r.sent_s < start + k + 5.0]) for k in range(0, 30, 5)
    ]
    late = share([r for r in records if start + 20.0 <= r.sent_s < start + 30.0])
    return {
        "before": before,
        "per_5s_of_fault": buckets,
        "fault_20_30s": late,
        "drop": (1.0 - late / before) if before and late is not None else None,
    }


def _targets(fault: str, row: dict[str, Any]) -> dict[str, bool | None]:
    if fault in ("killed", "error-503", "external-503"):
        share = row["share_reaching_bad_after_first_failures"]
        return {
            "zero_client_errors": row["errors"]["during"] == 0 and row["errors"]["after"] == 0,
            "under_1pct_after_first_failures": None if share is None else share < 0.01,
        }
    if not fault.startswith("slow"):
        return {}  # external-saturated: set by run_fault from the external endpoint's numbers
    drop = row["slow_share"]["drop"]
    return {"share_down_half_within_30s": None if drop is None else drop >= 0.5}


def markdown_report(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [
        (
            f"# Failover — {cfg['servers']} fake vLLM servers, {cfg['rate']:.0f} req/s, fault on one for "
            f"{cfg['fault_s']:.0f} s"
        ),
        "",
        (
            f"Command: `{doc['command']}`; machine: {doc['machine']['cpus']} CPUs (shared), load average "
            f"{doc['machine']['load_average_1m_at_start']} at start; wall time {doc['wall_s']:.0f} s."
        ),
        "",
        (
            "| fault | errors before/during/after (+ broken in flight) | reached bad after onset | "
            "share after first failures | "
            "stopped after | p99 TTFT before/during/after (s) | EPP failovers | targets |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in doc["faults"].items():
        if "skipped" in row:
            lines.append(f"| {name} | not run: {row['skipped']} | | | | | | |")
            continue
        e = row["errors"]
        t = row["ttft_s"]
        p99 = "/".join(
            "—" if t[w]["p99"] is None else f"{t[w]['p99']:.2f}" for w in ("before", "during", "after")
        )
        share = row["share_reaching_bad_after_first_failures"]
        stop = row["stopped_after_s"]
        failovers = sum(v for k, v in row["epp_counters"].items() if k.startswith("ai_failover_total"))
        targets = ", ".join(f"{k}: {v}" for k, v in row["targets"].items())
        if "slow_share" in row:
            s = row["slow_share"]
            extra = f"share {s['before']:.2f} → {s['fault_20_30s']:.2f}" if s["before"] is not None else ""
            targets = f"{targets} ({extra})"
        broken = row.get("broken_in_flight_at_fault", 0)
        reached = "see below" if "external" in row else row["reached_bad_after_fault"]
        lines.append(
            f"| {name} | {e['before']}/{e['during']}/{e['after']}{f' (+{broken})' if broken else ''} | "
            f"{reached} | "
            f"{'—' if share is None else f'{share:.1%}'} | {'—' if stop is None else f'{stop:.1f} s'} | "
            f"{p99} | {failovers:.0f} | {targets} |"
        )
    for name, row in doc["faults"].items():
        if "external" in row:
            lines += external_markdown(name, row)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ command
async def run(cfg: FailoverConfig, faults: Sequence[str], command: str) -> dict[str, Any]:
    wall0 = time.monotonic()
    machine = machine_info()  # the load average before this run adds its own
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        procs = Processes(Path(tmp))
        try:
            for fault in faults:
                print(f"bench_failover: {fault} ...", file=sys.stderr, flush=True)
                rows[fault] = await run_fault(fault, cfg, procs)
        finally:
            await procs.stop_all()
    return {
        "benchmark": "bench_failover",
        "command": command,
        "config": asdict(cfg),
        "faults": rows,
        "machine": machine,
        "wall_s": time.monotonic() - wall0,
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_failover", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, from " + ", ".join(FAULTS))
    p.add_argument("--rate", type=float, default=16.0, help="requests per second")
    p.add_argument("--fault", type=float, default=30.0, help="seconds the fault lasts")
    p.add_argument("--quick", action="store_true", help="10 s steady phases instead of 20 s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result document as JSON")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--no-write", action="store_true", help="do not write results/failover.{json,md}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise SystemExit(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    steady = 10.0 if args.quick else 20.0
    cfg = FailoverConfig(rate=args.rate, fault_s=args.fault, before_s=steady, after_s=steady, seed=args.seed)
    command = "python -m benchmarks.bench_failover " + shlex.join(sys.argv[1:] if argv is None else argv)
    with contextlib.suppress(KeyboardInterrupt):
        doc = asyncio.run(run(cfg, faults, command))
        if not args.no_write:
            args.out.mkdir(parents=True, exist_ok=True)
            stem = "failover-quick" if args.quick else "failover"
            if faults != list(FAULTS):
                stem = f"{stem}-{'-'.join(faults)}"  # a subset never overwrites the full run's report
            (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            (args.out / f"{stem}.md").write_text(markdown_report(doc) + "\n", encoding="utf-8")
        print(json.dumps(doc, indent=2) if args.json else markdown_report(doc))
        return 0
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
