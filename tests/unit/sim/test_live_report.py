"""The live benchmark's pure parts: request building, token counting, capacity, summary and report.

No router or fake server runs here: the records are synthetic, with known answers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import bench_live
from benchmarks.live.report import markdown_report, summarize_live
from benchmarks.live.routers import count_tokens
from benchmarks.live.workload import (
    LiveConfig,
    Record,
    build_requests,
    capacity_rps,
    prompt_text,
    trace_slice,
)
from benchmarks.sim.metrics import Slo
from benchmarks.sim.traces import Workload
from picker.testing.fake_load import LoadParams
from picker.testing.fake_openai import CHARS_PER_TOKEN


def workload(units: tuple[tuple[int, ...], ...] = ()) -> Workload:
    n = 4
    return Workload(
        name="tiny",
        arrival_s=np.array([0.0, 1.0, 1.5, 4.0]),
        prompt_tokens=np.array([10, 700, 1030, 1], dtype=np.int64),
        output_tokens=np.array([5, 1, 30, 2], dtype=np.int64),
        units=units or tuple(() for _ in range(n)),
        unit_tokens=512 if units else 0,
        adapter=np.full(n, -1, dtype=np.int64),
    )


def record(index: int, sent: float, first: float, end: float, tokens: int) -> Record:
    return Record(
        index, sent_s=sent, first_byte_s=first, end_s=end, status=200, tokens=tokens, expected_tokens=tokens
    )


def test_prompts_have_the_trace_length_in_the_fake_servers_token_unit() -> None:
    w = workload()
    for k in range(len(w)):
        text = prompt_text(w, k)
        assert -(-len(text) // CHARS_PER_TOKEN) == w.prompt_tokens[k]
    assert prompt_text(w, 1) != prompt_text(w, 2)[: len(prompt_text(w, 1))], "no accidental sharing"


def test_prompts_share_text_exactly_where_the_trace_shares_prefix_units() -> None:
    w = workload(units=((1, 2), (1, 3), (4,), (1, 2)))
    a, b, c, d = (prompt_text(w, k) for k in range(4))
    assert d == a[: len(d)]
    assert b[: len(a)] == a, "requests 0 and 1 share unit 1"
    unit = 512 * CHARS_PER_TOKEN
    other = prompt_text(workload(units=((1, 2), (1, 2), (4,), (1, 2))), 1)
    assert b[:unit] == other[:unit]
    assert b[unit:] != other[unit : len(b)], "unit 3 is not unit 2"
    assert c[:10] != a[:10]


def test_requests_replay_the_trace_pattern_at_the_asked_rate() -> None:
    w = workload()
    reqs = build_requests(w, rate_wall=3.0)
    gaps = np.diff([r.at_s for r in reqs])
    assert (len(reqs) - 1) / (reqs[-1].at_s - reqs[0].at_s) == pytest.approx(3.0)
    assert gaps.tolist() == pytest.approx((np.diff(w.arrival_s) * w.mean_rate / 3.0).tolist())
    body = json.loads(reqs[2].body)
    assert body["max_tokens"] == 30
    assert body["stream"] is True
    assert reqs[2].output_tokens == 30


def test_trace_slice_caps_outputs_and_fits_the_engine() -> None:
    params = LoadParams()
    cfg = LiveConfig(max_output_tokens=64, offset=100)
    w = trace_slice(cfg, params, 300)
    assert len(w) == 300
    assert w.arrival_s[0] == 0.0
    assert int(w.output_tokens.max()) <= 64
    assert int((w.prompt_tokens + w.output_tokens).max()) < params.max_model_len


def test_capacity_halves_on_an_engine_twice_as_slow() -> None:
    w = trace_slice(LiveConfig(max_output_tokens=64), LoadParams(), 400)
    fast = capacity_rps(LoadParams(jitter=0.0), w, sample=200)
    slow = capacity_rps(LoadParams(jitter=0.0).slower(2.0), w, sample=200)
    assert fast > 0
    assert slow == pytest.approx(fast / 2, rel=0.02)


def test_token_events_are_counted_without_usage_or_done() -> None:
    body = (
        b'data: {"choices":[{"index":0,"text":" a","finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"text":" b","finish_reason":"length"}]}\n\n'
        b'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert count_tokens(body) == 2


def test_summary_in_model_seconds_with_goodput_and_errors() -> None:
    scale = 0.5  # wall seconds per model second: every wall interval doubles
    records = [
        record(0, sent=0.0, first=0.1, end=1.1, tokens=11),  # TTFT 0.2, TPOT 0.2 → misses the TPOT SLO
        record(1, sent=0.5, first=0.6, end=0.7, tokens=3),  # TTFT 0.2, TPOT 0.1 → meets both
        record(2, sent=1.0, first=2.0, end=2.0, tokens=1),  # TTFT 2.0 → misses; one token: no TPOT
        Record(3, sent_s=1.5, status=503, error="", expected_tokens=4),
        Record(4, sent_s=1.6, status=200, tokens=2, expected_tokens=9, first_byte_s=1.7, end_s=1.9),
        Record(5, sent_s=1.7, error="timeout: unfinished at the end of the drain", expected_tokens=3),
    ]
    stats = [
        {"prompt_tokens": 100, "generation_tokens": 20, "prefix_queries": 100, "prefix_hits": 25},
        {"prompt_tokens": 20, "prefix_queries": 20, "prefix_hits": 5, "preemptions": 2},
    ]
    row = summarize_live(records, time_scale=scale, slo=Slo(1.0, 0.1), fleet_stats=stats)
    assert row["requests"] == 6
    assert row["completed"] == 3
    assert row["errors"] == 3
    assert row["error_kinds"] == {"status 503": 1, "incomplete stream": 1, "timeout": 1}
    assert row["ttft_p50_s"] == pytest.approx(0.2)
    assert row["tpot_p50_s"] == pytest.approx(0.15)
    assert row["makespan_s"] == pytest.approx(4.0)  # (2.0 - 0.0) wall / 0.5
    assert row["goodput_rps"] == pytest.approx(1 / 4.0)
    assert row["slo_attainment"] == pytest.approx(1 / 6)
    assert row["output_tok_per_s"] == pytest.approx(15 / 4.0)
    assert row["prefix_hit_rate"] == pytest.approx(30 / 120)
    assert row["load_imbalance"] == pytest.approx(120 / 70)
    assert row["preemptions"] == 2
    assert math.isnan(row["pick_mean_us"])


def test_summary_of_a_router_that_completed_nothing_is_all_unknown() -> None:
    row = summarize_live([Record(0, sent_s=0.0, error="ClientError: refused")], time_scale=1.0, slo=Slo())
    assert row["completed"] == 0
    assert math.isnan(row["ttft_p99_s"])
    assert math.isnan(row["goodput_rps"])


def test_markdown_report_has_every_router_and_the_baseline_ratios() -> None:
    good = [record(i, sent=i * 0.1, first=i * 0.1 + 0.05, end=i * 0.1 + 0.5, tokens=10) for i in range(20)]
    slow = [record(i, sent=i * 0.1, first=i * 0.1 + 0.2, end=i * 0.1 + 0.9, tokens=10) for i in range(20)]
    slo = Slo()
    doc = {
        "command": "python -m benchmarks.bench_live --quick",
        "config": {
            "trace": "azure-conv",
            "servers": 4,
            "load": 0.9,
            "offset": 0,
            "max_output_tokens": 256,
            "time_scale": 1.0,
            "slo": {"ttft_s": 1.0, "tpot_s": 0.1},
        },
        "requests": 20,
        "offered_rps_wall": 10.0,
        "offered_rps_model": 10.0,
        "capacity_rps_per_server": 2.5,
        "routers": {
            "epp": summarize_live(good, time_scale=1.0, slo=slo),
            "round-robin": summarize_live(slow, time_scale=1.0, slo=slo),
        },
        "unavailable": {"vllm-router": "vllm-router exited: boom"},
        "machine": {"cpus": 2, "load_average_1m_at_start": 0.5},
        "wall_s": 12.0,
    }
    text = markdown_report(doc)
    assert "| epp |" in text
    assert "| round-robin |" in text
    assert "0.25x" in text  # epp's p99 TTFT (50 ms) against round-robin's (200 ms)
    assert "`vllm-router` did not run: vllm-router exited: boom" in text


def test_unknown_routers_are_refused_before_anything_starts() -> None:
    with pytest.raises(SystemExit, match="unknown router"):
        bench_live.main(["--routers", "epp,nginx", "--no-write"])
