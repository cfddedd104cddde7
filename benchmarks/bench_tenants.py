"""The cost of tenants on the ext_proc path, in the same run as without them (``bench_extproc --tenants``).

    python -m benchmarks.bench_extproc --tenants --json           # 3 runs, ~3 min
    python -m benchmarks.bench_extproc --tenants --quick --json   # 1 short run

Servers (``bench_extproc``'s harness: real ``picker serve`` processes over 16 fake vLLM servers, Envoy-like
load processes, server CPU from schedstat minus idle):

- ``ours``: no ``tenants`` section (nothing metered);
- ``ours_tenants``: a ``tenants`` section with a price and a limit on every request's tenant (the load
  sends no tenant header, so every request is the ``anonymous`` tenant of the default tier: tokens per
  minute and cost per day, high enough never to refuse), memory backend: each stream is resolved,
  estimated, reserved, its SSE usage settled, metered;
- ``ours_tenants_redis``: the same with the Redis backend on a local ``redis-server``, with leases (the
  default): requests admitted on the replica's lease, which is refilled and reported in the background;
- ``ours_tenants_redis_per_request``: the Redis backend with leases off (``lease: {fraction: 0}``): one
  Lua script per admission on the request path, settlements written in the background (answer time only).

Phases, each ``--runs`` times: side by side at 200/s (``ours`` with each tenants server, in one window:
``tenants_cpu_ratio`` = median of per-run CPU-per-stream ratios, target <= 1.10 for the memory backend);
one server at a time at 100/s for the EPP's answer time (request headers to the last request-body reply):
``redis_added_p50_ms`` = p50(redis) - p50(memory), target <= 0.3 ms (``redis_per_request_added_p50_ms``:
the same without leases, the baseline of the same run).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.extproc.run import CPU_RATE, Plan, Run, per_run, ratio
from benchmarks.harness import children
from picker.testing.redis_server import RedisServer

__all__ = ["run", "summary"]

TARGETS = {"tenants_cpu_ratio_max": 1.10, "redis_added_p50_ms_max": 0.3}
#: the servers of the answer-time phase, one at a time
ANSWER_TIME = ("ours", "ours_tenants", "ours_tenants_redis", "ours_tenants_redis_per_request")
TENANTS = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  defaultTier: bench
  tiers: [{name: bench, limits: {tokensPerMinute: 1000000000, costPerDay: 1000000}}]
  prices: [{model: meta-llama/Llama-3.1-8B-Instruct, inputPer1M: 0.1, outputPer1M: 0.4}]
"""
REDIS = """\
  backend:
    type: redis
    redis: {{url: "{url}", timeout: 1s{lease}}}
"""
#: the Redis backend asking Redis for every admission (leases off): the per-request path, as before leases
PER_REQUEST = ", lease: {fraction: 0}"


def run(quick: bool, runs: int | None, command: str) -> dict[str, Any]:
    plan = Plan.side_by_side(quick, runs)
    doc = plan.document("bench_extproc --tenants", command, quick=quick)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-tenants-") as tmp, children() as procs:
        workdir = Path(tmp)
        redis = RedisServer(workdir)
        redis.start()
        try:
            memory = workdir / "tenants.yaml"
            memory.write_text(TENANTS, encoding="utf-8")
            shared = workdir / "tenants-redis.yaml"
            shared.write_text(TENANTS + REDIS.format(url=redis.url, lease=""), encoding="utf-8")
            per_request = workdir / "tenants-redis-per-request.yaml"
            per_request.write_text(TENANTS + REDIS.format(url=redis.url, lease=PER_REQUEST), encoding="utf-8")
            r = Run(plan, doc)
            r.start(
                procs,
                workdir,
                variants=[
                    ("ours", 1, None, []),
                    ("ours_tenants", 1, memory, []),
                    ("ours_tenants_redis", 1, shared, []),
                    ("ours_tenants_redis_per_request", 1, per_request, []),
                ],
            )
            for _ in range(plan.runs):
                for server in ANSWER_TIME:
                    r.measure("100/s", [server], mode="open", duration=plan.rate_s, rate=100.0)
                for label, other in (("cpu_memory", "ours_tenants"), ("cpu_redis", "ours_tenants_redis")):
                    r.side_by_side(label, ["ours", other])
        finally:
            redis.stop()
    phases = doc["phases"] = r.phases()

    def p50(server: str) -> float:
        return float(phases.get("100/s", {}).get(server, {}).get("request_p50_ms", float("nan")))

    doc["cpu_us_per_stream"] = {
        "ours": phases.get("cpu_memory", {}).get("ours", {}).get("cpu_us_per_stream"),
        "ours_tenants": phases.get("cpu_memory", {}).get("ours_tenants", {}).get("cpu_us_per_stream"),
        "ours_tenants_redis": phases.get("cpu_redis", {})
        .get("ours_tenants_redis", {})
        .get("cpu_us_per_stream"),
    }
    doc["tenants_cpu_ratio"] = ratio(r.results, "cpu_memory", "ours_tenants", "ours")
    doc["tenants_redis_cpu_ratio"] = ratio(r.results, "cpu_redis", "ours_tenants_redis", "ours")
    doc["request_p50_ms_at_100"] = {s: p50(s) for s in ANSWER_TIME}
    doc["redis_added_p50_ms"] = round(p50("ours_tenants_redis") - p50("ours_tenants"), 3)
    doc["redis_per_request_added_p50_ms"] = round(
        p50("ours_tenants_redis_per_request") - p50("ours_tenants"), 3
    )

    def added_per_run(server: str) -> list[float]:
        return [
            round(x - y, 3)
            for x, y in zip(
                per_run(r.results, "100/s", server, "request_p50_ms"),
                per_run(r.results, "100/s", "ours_tenants", "request_p50_ms"),
                strict=False,
            )
        ]

    doc["redis_added_p50_ms_per_run"] = added_per_run("ours_tenants_redis")
    doc["redis_per_request_added_p50_ms_per_run"] = added_per_run("ours_tenants_redis_per_request")
    doc["targets"] = {
        "tenants_cpu_le_1.10x": doc["tenants_cpu_ratio"] <= TARGETS["tenants_cpu_ratio_max"],
        "redis_adds_le_0.3ms_p50": doc["redis_added_p50_ms"] <= TARGETS["redis_added_p50_ms_max"],
    }
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    return doc


def summary(doc: dict[str, Any]) -> str:
    p50 = doc["request_p50_ms_at_100"]
    return "\n".join(
        [
            f"CPU per stream at {CPU_RATE:g}/s side by side: {doc['cpu_us_per_stream']}",
            (
                f"tenants (memory) / none: {doc['tenants_cpu_ratio']}; tenants (redis) / none: "
                f"{doc['tenants_redis_cpu_ratio']}"
            ),
            f"EPP answer p50 at 100/s (ms): {p50}",
            (
                f"Redis adds {doc['redis_added_p50_ms']} ms (per run {doc['redis_added_p50_ms_per_run']}); "
                f"asking Redis for every admission: {doc['redis_per_request_added_p50_ms']} ms "
                f"(per run {doc['redis_per_request_added_p50_ms_per_run']})"
            ),
            "targets: " + ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in doc["targets"].items()),
        ]
    )
