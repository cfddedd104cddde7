"""Engine auto-detection from family prefixes, on every real page and on edge cases."""

from __future__ import annotations

import pytest

from picker.scrape import detect_engine

REAL = {
    "vllm-v0-aibrix-runtime-doc.txt": "vllm",
    "vllm-mixed-v0-v1-datadog-fixture.txt": "vllm",
    "vllm-v1-lmswitch-spec-decode.txt": "vllm",
    "sglang-docs-production-metrics.txt": "sglang",
    "triton-trtllm-inflight-batcher-readme.txt": "triton-tensorrt-llm",
    # Triton without the TensorRT-LLM metrics: nothing to route on
    "triton-core-metrics-readme.txt": None,
    "tgi-datadog-fixture.txt": "tgi",
    "dcgm-exporter-datadog-fixture.txt": None,
}


def test_every_real_page_is_listed(pages: dict[str, bytes]) -> None:
    assert set(pages) == set(REAL)


@pytest.mark.parametrize(("name", "engine"), sorted(REAL.items()))
def test_real_pages(name: str, engine: str | None, pages: dict[str, bytes]) -> None:
    assert detect_engine(pages[name]) == engine
    assert detect_engine(pages[name].decode()) == engine
    assert detect_engine(pages[name].replace(b"\n", b"\r\n")) == engine


@pytest.mark.parametrize(
    ("page", "engine"),
    [
        (b"trtllm_num_requests_waiting 1\n", "trtllm-serve"),
        (b"# HELP x\nprocess_cpu_seconds_total 1\ntrtllm_kv_cache_utilization 0.5\n", "trtllm-serve"),
        (b"# TYPE sglang:token_usage gauge\n", "sglang"),
        (b"# HELP tgi_queue_size Current queue size\n", "tgi"),
        (b"  vllm:num_requests_waiting 0\n", "vllm"),
        (b'x 1\n\tnv_trt_llm_request_metrics{request_type="waiting"} 1\n', "triton-tensorrt-llm"),
        # the first engine prefix on the page wins
        (b"tgi_queue_size 1\nvllm:num_requests_waiting 2\n", "tgi"),
        (b"vllm:num_requests_waiting 2\ntgi_queue_size 1\n", "vllm"),
        # mentions that are not family names
        (b'# HELP other Sum of vllm:num_requests_waiting.\nother{engine="vllm:x"} 1\n', None),
        (b"xvllm:num_requests_waiting 1\nmy_tgi_queue 1\ntrtllmx 1\n", None),
        (b"# vllm:foo is great\n", None),
        (b"nv_inference_count 1\n", None),
        (b"", None),
        (b"\xff\xfe\x00" * 100, None),
    ],
)
def test_edge_cases(page: bytes, engine: str | None) -> None:
    assert detect_engine(page) == engine
    assert detect_engine(bytearray(page)) == engine
