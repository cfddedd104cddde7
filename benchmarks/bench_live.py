"""Live routing benchmark: our EPP and two peer routers in front of the same fake fleet, in real time.

    python -m benchmarks.bench_live --json            # about 4-5 minutes
    python -m benchmarks.bench_live --quick --json    # under 60 s

Where ``bench_quality`` simulates, this runs everything for real on 127.0.0.1: N fake model servers
(:class:`picker.testing.fake_server.FakeFleet`, vLLM metric pages, OpenAI streaming), each running the same
continuous-batching load model (:class:`picker.testing.fake_load.LoadParams`) in scaled real time, and the
same slice of a request trace replayed open-loop at the same rate through each router in turn:

* ``epp`` — ``python -m picker serve --static-endpoints ...`` (our default profile), driven through
  :class:`picker.testing.gateway.MiniGateway`: the ext_proc exchange, then the real HTTP request to the
  endpoint the EPP named, the response streamed back through the EPP, as Envoy does; ``epp-prefix`` is our
  default profile plus ``prefix-cache-scorer`` at weight 3 (load guard on), ``epp-reference`` the
  reference's built-in profile (queue 2, KV 2, prefix 3) — both with our prefix index;
* ``sglang-router`` — ``python -m sglang_router.launch_router --policy cache_aware`` as an HTTP proxy;
* ``vllm-router-cache-aware`` / ``vllm-router`` — ``vllm-router --policy cache_aware`` / ``power_of_two``;
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
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.harness import machine_info
from benchmarks.live.processes import Processes, fleet_main
from benchmarks.live.report import markdown_report, summarize_live
from benchmarks.live.routers import run_router
from benchmarks.live.workload import (
    LiveConfig,
    LiveRequest,
    build_requests,
    capacity_rps,
    load_params,
    trace_slice,
)
from benchmarks.sim.metrics import DEFAULT_TPOT_SLO_S, DEFAULT_TTFT_SLO_S, Slo

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROUTERS = (
    "epp",
    "epp-prefix",
    "epp-reference",
    "sglang-router",
    "vllm-router-cache-aware",
    "vllm-router",
    "round-robin",
)


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
    machine = machine_info()  # the load average before this run adds its own
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
        "machine": machine,
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
