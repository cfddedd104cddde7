"""The benchmark tooling itself: the pick baseline must compute what the scheduler computes (else the
speedup compares different work), and the summary writer must only touch its own block."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.bench_pick import agreement, fleet, requests
from benchmarks.harness import percentile
from benchmarks.run_all import Target, _median, write_block


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_the_python_loop_baseline_picks_what_the_scheduler_picks(n: int) -> None:
    # 64 picks with prompt-token charges in between: queue, KV, LoRA, GPU and prefill terms all move.
    assert agreement(fleet(n, seed=n), requests(64, seed=1))


def test_the_baseline_disagrees_when_its_formula_is_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import bench_pick

    # A loop whose prefill-queue term uses another floor than the scorer must be caught: agreement() can fail.
    monkeypatch.setattr(bench_pick, "DEFAULT_MIN_RANGE_TOKENS", 1.0)
    assert not agreement(fleet(100, seed=100), requests(64, seed=1))


def test_write_block_replaces_only_its_own_block(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# R\n\nintro\n\n<!-- perf:begin -->\nold\n<!-- perf:end -->\n\n## Quality\nkept\n")
    write_block(path, "<!-- perf:begin -->\nnew\n<!-- perf:end -->\n")
    text = path.read_text()
    assert "new" in text
    assert "old" not in text
    assert text.startswith("# R\n\nintro")
    assert text.endswith("## Quality\nkept\n")
    other = tmp_path / "fresh.md"
    write_block(other, "<!-- perf:begin -->\nx\n<!-- perf:end -->\n")
    assert other.read_text().startswith("# Benchmark results")
    assert "x" in other.read_text()


def test_medians_skip_failed_runs_and_work_per_position() -> None:
    assert _median([3.0, float("nan"), 1.0, 2.0]) == 2.0
    assert _median([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0]]) == [2.0, 20.0]
    assert math.isnan(_median(["x", None]))


def test_a_target_not_measured_is_not_met() -> None:
    t = Target("bench_x", "x", ("a",), "<=", 1.0, "ms")
    assert t.met(0.5)
    assert not t.met(1.5)
    assert not t.met(float("nan"))


def test_nearest_rank_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert math.isnan(percentile([], 99))


def _burn(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i
    return total


def test_cpu_meter_counts_this_process_cpu_at_thread_resolution() -> None:
    import os
    import time

    from benchmarks.harness import CpuMeter

    meter = CpuMeter(os.getpid())
    start = time.process_time()
    _burn(400_000)
    used = time.process_time() - start
    measured = meter.seconds()
    # both count the same work; the meter reads schedstat (ns), process_time reads the same clock
    assert used * 0.5 <= measured <= used * 1.5 + 0.02


def test_cpu_meter_falls_back_to_ticks_when_a_thread_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import harness

    readings = iter([100.0, 107.0])
    monkeypatch.setattr(harness, "cpu_seconds", lambda _pid: next(readings))
    # the threads as /proc lists them: a real thread's id can be reused by a new thread on a busy machine
    # (ids wrap around), so the two listings are given rather than read
    listings = iter([{(1, 1): 5_000_000, (1, 2): 1_000_000}, {(1, 1): 6_000_000}])
    monkeypatch.setattr(harness, "thread_cpu_ns", lambda _pid: next(listings))
    meter = harness.CpuMeter(1)
    # thread 2's schedstat entry vanished with it: the answer is the tick counts' difference
    assert meter.seconds() == 7.0


def test_cpu_meter_uses_thread_times_while_every_thread_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from benchmarks import harness

    readings = iter([100.0, 107.0])
    monkeypatch.setattr(harness, "cpu_seconds", lambda _pid: next(readings))
    meter = harness.CpuMeter(os.getpid())
    _burn(100_000)
    assert 0.0 < meter.seconds() < 7.0


def test_the_h2load_stream_is_one_full_exchange_in_grpc_frames() -> None:
    import struct

    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from benchmarks.extproc.h2load import grpc_framed_stream

    data = grpc_framed_stream(1024)
    kinds = []
    at = 0
    while at < len(data):
        compressed, size = data[at], struct.unpack(">I", data[at + 1 : at + 5])[0]
        assert compressed == 0
        kinds.append(pb.ProcessingRequest.FromString(data[at + 5 : at + 5 + size]).WhichOneof("request"))
        at += 5 + size
    assert at == len(data)
    assert kinds == ["request_headers", "request_body", "response_headers", "response_body"]


@pytest.mark.parametrize(
    ("finished", "rate"),
    [("finished in 2.20s, 908.77 req/s", 908.77), ("finished in 35.16ms, 568.83 req/s", 568.83)],
)
def test_h2load_report_is_read(finished: str, rate: float) -> None:
    from benchmarks.extproc.h2load import h2load_figures

    report = (
        f"{finished}, 2.03MB/s\n"
        "requests: 2000 total, 2000 started, 2000 done, 1990 succeeded, 10 failed, 0 errored, 0 timeout\n"
        "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx\n"
        "traffic: 4.47MB (4688289) total, 6.15KB (6300) headers (space savings 96.11%), "
        "4.31MB (4493420) data\n"
    )
    figures = h2load_figures(report)
    assert figures == {
        "streams": 1990,
        "failed": 10,
        "streams_per_s": rate,
        "reply_bytes_per_stream": 4493420 / 1990,
    }
    with pytest.raises(RuntimeError, match="unexpected h2load output"):
        h2load_figures("h2load: connection refused")


def test_bench_stream_drives_whole_streams_through_the_service() -> None:
    from prometheus_client import generate_latest

    from benchmarks.bench_stream import MESSAGES, build_service
    from benchmarks.bench_stream import run as run_stream

    service = build_service()
    doc = run_stream(quick=True, repeat=1, counts=(40, 3), service=service)
    assert set(doc["cold_us"]) == set(MESSAGES)
    assert all(v > 0 for v in doc["cold_us"].values())
    assert doc["warm_us_per_stream"] > 0
    # every stream was routed, completed and closed: nothing left in flight, each one counted
    assert service.datastore.inflight_total() == 0
    text = generate_latest(service.telemetry.registry).decode()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("inference_objective_request_total{")
    )
    assert total == 40 + 40 + 3  # warm-up, one warm block, one cold block


def test_the_header_only_stream_is_the_request_headers_alone() -> None:
    import struct

    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from benchmarks.extproc.h2load import grpc_framed_stream
    from benchmarks.extproc.workload import HEADER_ONLY, MODEL, MODEL_HEADER

    data = grpc_framed_stream(1024, HEADER_ONLY)
    size = struct.unpack(">I", data[1:5])[0]
    assert len(data) == 5 + size
    message = pb.ProcessingRequest.FromString(data[5:])
    assert message.WhichOneof("request") == "request_headers"
    assert not message.request_headers.end_of_stream  # a body follows upstream, not to the EPP
    headers = {h.key: h.raw_value.decode() for h in message.request_headers.headers.headers}
    assert headers[MODEL_HEADER] == MODEL
    assert headers["x-picker-prompt-tokens"].isdigit()


def test_bench_stream_header_only_routes_each_request_in_one_message() -> None:
    from prometheus_client import generate_latest

    from benchmarks.bench_stream import HEADER_ONLY_MESSAGES, build_service
    from benchmarks.bench_stream import run as run_stream

    service = build_service(header_only=True)
    doc = run_stream(quick=True, repeat=1, counts=(40, 3), service=service, header_only=True)
    assert set(doc["cold_us"]) == set(HEADER_ONLY_MESSAGES)
    assert service.datastore.inflight_total() == 0
    text = generate_latest(service.telemetry.registry).decode()
    assert 'inference_objective_request_total{model_name="meta-llama/Llama-3.1-8B-Instruct"' in text


def test_bench_stream_fresh_every_publishes_a_new_snapshot_for_every_kth_stream() -> None:
    from benchmarks.bench_stream import build_service
    from benchmarks.bench_stream import run as run_stream

    service = build_service(header_only=True)
    datastore = service.datastore
    built: list[object] = []
    publish = datastore.publish

    def counting_publish() -> bool:
        wrote = publish()
        built.append(datastore.snapshot())
        return wrote

    datastore.publish = counting_publish  # type: ignore[method-assign]
    doc = run_stream(quick=True, repeat=1, counts=(40, 4), service=service, header_only=True, fresh_every=4)
    assert doc["fresh_every"] == 4
    # the first scrape of every endpoint, then warm-up (40), one warm block (40) and one cold block (4)
    # with a landed scrape every 4th stream: each a new snapshot
    assert len(built) == 1 + 10 + 10 + 1
    assert len({id(m) for m in built}) == len(built)
    assert datastore.inflight_total() == 0
    assert not any(math.isnan(w) for w in datastore.snapshot().waiting)


def test_the_header_only_headline_and_its_targets() -> None:
    from benchmarks.extproc.report import header_only_headline

    def phase(cpu: float, rate: float = 0.0, p99: float = 0.0) -> dict[str, float]:
        return {
            "cpu_us_per_stream": cpu,
            "streams_per_s": rate,
            "request_p50_ms": p99 / 2,
            "request_p99_ms": p99,
        }

    doc = {
        "phases": {
            "cpu_header_only": {"ours_header": phase(400.0), "floor": phase(350.0)},
            "cpu_header_only_request_path": {"ours_header_noscrape": phase(420.0), "floor": phase(330.0)},
            "cpu": {"floor": phase(1300.0)},
            "max_one": {"ours_header": phase(0, 1200.0), "floor": phase(0, 1400.0)},
            "max": {"floor": phase(0, 800.0)},
            "half_max_one": {"ours_header": phase(0, p99=1.5), "floor": phase(0, p99=1.0)},
        },
        "paired": {"header_only_cpu_ratio": 1.14, "header_only_cpu_ratio_request_path": 1.27},
    }
    header_only_headline(doc)
    assert doc["header_only_cpu_us_per_request"] == 420.0  # the worse variant
    assert doc["one_message_floor_cpu_us"] == 340.0
    assert doc["full_stream_floor_cpu_us"] == 1300.0
    assert doc["header_only_cpu_ratio"] == 1.27
    assert doc["header_only_p99_ms_at_half_max"] == 1.5
    assert doc["targets"] == {
        "header_only_cpu_le_450us": True,
        "header_only_cpu_le_1.25x_one_message_floor": False,
        "header_only_p99_le_2ms_at_half_max": True,
    }


def test_paired_ratios_are_medians_of_per_run_ratios() -> None:
    from benchmarks.extproc.run import per_run, ratio

    def runs(*cpu: float) -> list[dict[str, float]]:
        return [{"cpu_us_per_stream": c, "streams_per_s": 2 * c} for c in cpu]

    results = {"cpu": {"ours": runs(110.0, 300.0, 120.0), "floor": runs(100.0, 100.0, 0.0)}}
    assert per_run(results, "cpu", "ours") == [110.0, 300.0, 120.0]
    assert per_run(results, "cpu", "nobody") == []
    # run by run 1.1 and 3.0; the third run's zero baseline is left out, not divided by
    assert ratio(results, "cpu", "ours", "floor") == 2.05
    assert ratio(results, "cpu", "ours", "floor", "streams_per_s") == 2.05
    assert math.isnan(ratio(results, "max", "ours", "floor"))
