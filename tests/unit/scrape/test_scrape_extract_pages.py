"""Extraction from the real pages in tests/data/metrics (provenance and quirks: tests/data/SOURCES.md).

Expected values were read off the pages by hand; ``prometheus_client``'s full parser, with the same
documented selection rules applied on top, serves as an independent oracle for every page and engine.
The real pages are mostly idle (zeros), so some tests edit one value in a real page to prove the right
line is read among its neighbours (``_by_reason``, v0/v1 twins, other request types).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import pytest

from picker.scrape import BUILTIN_ENGINES, EngineSpec, Extractor
from picker.state.metrics import EndpointMetrics
from picker.testing.extract_oracle import comparable, oracle
from tests.unit.scrape.conftest import extract

V0 = "vllm-v0-aibrix-runtime-doc.txt"
MIXED = "vllm-mixed-v0-v1-datadog-fixture.txt"
V1 = "vllm-v1-lmswitch-spec-decode.txt"
SGLANG = "sglang-docs-production-metrics.txt"
TRITON = "triton-trtllm-inflight-batcher-readme.txt"
TRITON_CORE = "triton-core-metrics-readme.txt"
TGI = "tgi-datadog-fixture.txt"
DCGM = "dcgm-exporter-datadog-fixture.txt"

#: page → (its engine, the fields it reports). Everything not listed must come back unknown.
EXPECTED: dict[str, tuple[str, dict[str, Any]]] = {
    V0: (
        "vllm",
        {
            "waiting": 0.0,
            "running": 0.0,
            "kv_usage": 0.0,
            "lora_active": (),
            "lora_waiting": (),
            "max_lora": 0.0,
            "block_size": 16.0,
            "num_blocks": 81767.0,
        },
    ),
    MIXED: (
        "vllm",
        {"waiting": 0.0, "running": 0.0, "kv_usage": 0.0, "block_size": 16.0, "num_blocks": 7281.0},
    ),
    V1: ("vllm", {"waiting": 0.0, "running": 0.0, "kv_usage": 0.0, "block_size": 4.0, "num_blocks": 15998.0}),
    SGLANG: ("sglang", {"waiting": 2826.0, "running": 162.0, "kv_usage": 0.28}),
    TRITON: (
        "triton-tensorrt-llm",
        {"waiting": 1.0, "running": 1.0, "kv_usage": 0.4875, "block_size": 64.0, "num_blocks": 6239.0},
    ),
    TRITON_CORE: ("triton-tensorrt-llm", {}),
    TGI: ("tgi", {"waiting": 0.0, "running": 0.0}),
    DCGM: ("vllm", {}),
}

_FIELDS = [f.name for f in dataclasses.fields(EndpointMetrics)]


# ----------------------------------------------------------------------------------------- helpers


def set_value(page: bytes, line_start: bytes, value: bytes) -> bytes:
    """Replace the value of the single line starting with ``line_start`` (fails if not exactly one)."""
    pattern = re.compile(rb"^(" + re.escape(line_start) + rb"[^\n]*?[} ])[^ \n{}]+(\r?)$", re.MULTILINE)
    new, n = pattern.subn(lambda m: m.group(1) + value + m.group(2), page)
    assert n == 1, f"{line_start!r} matched {n} lines"
    return new


def duplicate_line(page: bytes, line_start: bytes, old: bytes, new: bytes, value: bytes) -> bytes:
    """Insert, after the line starting with ``line_start``, a copy with ``old``→``new`` and ``value``."""
    lines = page.split(b"\n")
    (i,) = [i for i, line in enumerate(lines) if line.startswith(line_start)]
    copy = set_value(lines[i].replace(old, new), line_start.replace(old, new), value)
    return b"\n".join([*lines[: i + 1], copy, *lines[i + 1 :]])


# ----------------------------------------------------------------------------------------- real pages


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_page_hand_read_values(name: str, pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    engine, fields = EXPECTED[name]
    expect(extract(engine, pages[name]), **fields)


@pytest.mark.parametrize("engine", sorted(BUILTIN_ENGINES))
def test_every_page_with_every_engine_agrees_with_the_oracle(engine: str, pages: dict[str, bytes]) -> None:
    spec = BUILTIN_ENGINES[engine]
    for name, page in pages.items():
        assert comparable(extract(spec, page)) == comparable(oracle(page.decode(), spec)), name


def test_tgi_page_with_max_batch_total_tokens(pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    spec = dataclasses.replace(BUILTIN_ENGINES["tgi"], max_batch_total_tokens=16384)
    expect(extract(spec, pages[TGI]), waiting=0.0, running=0.0, kv_usage=0.0)
    busy = set_value(pages[TGI], b"tgi_batch_current_max_tokens", b"4096")
    busy = set_value(busy, b"tgi_queue_size", b"3")
    busy = set_value(busy, b"tgi_batch_current_size", b"12")
    expect(extract(spec, busy), waiting=3.0, running=12.0, kv_usage=0.25)
    assert comparable(extract(spec, busy)) == comparable(oracle(busy.decode(), spec))


def test_v0_page_is_truncated_mid_histogram_and_still_read(pages: dict[str, bytes]) -> None:
    page = pages[V0]
    assert b'_bucket{le="+Inf"' not in page
    assert not page.rstrip().endswith(b"_count")
    assert extract("vllm", page).reported_fields() == 8


def test_v1_page_reads_the_exact_family_among_prefix_twins(
    pages: dict[str, bytes], expect: Callable[..., None]
) -> None:
    page = pages[V1]
    page = set_value(page, b'vllm:num_requests_waiting{engine="0"', b"3.0")
    page = set_value(
        page,
        b'vllm:num_requests_waiting_by_reason{engine="0",model_name="deepseek-v4-flash-vision-exp'
        b'-ablit-dual",reason="capacity"',
        b"5.0",
    )
    page = set_value(page, b'vllm:num_requests_running{engine="0"', b"7.0")
    page = set_value(page, b'vllm:kv_cache_usage_perc{engine="0"', b"0.42")
    expect(extract("vllm", page), waiting=3.0, running=7.0, kv_usage=0.42, block_size=4.0, num_blocks=15998.0)


def test_v1_page_with_two_engines_is_aggregated(pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    """A data-parallel vLLM reports one series per engine: queues add up, KV usage is averaged."""
    page = pages[V1]
    for family, v0, v1 in [
        (b"vllm:num_requests_waiting{", b"2", b"5"),
        (b"vllm:num_requests_running{", b"8", b"1"),
        (b"vllm:kv_cache_usage_perc{", b"0.2", b"0.6"),
    ]:
        start = family + b'engine="0"'
        page = set_value(page, start, v0)
        page = duplicate_line(page, start, b'engine="0"', b'engine="1"', v1)
    expect(extract("vllm", page), waiting=7.0, running=9.0, kv_usage=0.4, block_size=4.0, num_blocks=15998.0)
    assert comparable(extract("vllm", page)) == comparable(oracle(page.decode(), BUILTIN_ENGINES["vllm"]))


def test_mixed_page_prefers_the_v1_kv_gauge_then_falls_back(
    pages: dict[str, bytes], expect: Callable[..., None]
) -> None:
    page = set_value(pages[MIXED], b"vllm:kv_cache_usage_perc{", b"0.25")
    page = set_value(page, b"vllm:gpu_cache_usage_perc{", b"0.75")
    expect(extract("vllm", page), waiting=0.0, running=0.0, kv_usage=0.25, block_size=16.0, num_blocks=7281.0)
    without_v1 = re.sub(rb"(?m)^vllm:kv_cache_usage_perc\{.*\n", b"", page)
    expect(
        extract("vllm", without_v1),
        waiting=0.0,
        running=0.0,
        kv_usage=0.75,
        block_size=16.0,
        num_blocks=7281.0,
    )
    nan_v1 = set_value(page, b"vllm:kv_cache_usage_perc{", b"NaN")
    assert extract("vllm", nan_v1).kv_usage == 0.75


def test_v0_page_lora_state(pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    page = pages[V0].replace(
        b'max_lora="0",running_lora_adapters="",waiting_lora_adapters=""',
        b'max_lora="4",running_lora_adapters="sql-lora, chat-lora",waiting_lora_adapters="new-lora"',
    )
    m = extract("vllm", page)
    assert (m.lora_active, m.lora_waiting, m.max_lora) == (("sql-lora", "chat-lora"), ("new-lora",), 4.0)


def test_sglang_page_with_cache_config_info(pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    line = (
        b'sglang:cache_config_info{model_name="meta-llama/Llama-3.1-8B-Instruct",page_size="64",num_pages="2048"}'
        b" 1"
    )
    page = pages[SGLANG] + b"# TYPE sglang:cache_config_info gauge\n" + line + b"\n"
    expect(
        extract("sglang", page),
        waiting=2826.0,
        running=162.0,
        kv_usage=0.28,
        block_size=64.0,
        num_blocks=2048.0,
    )


def test_triton_page_two_models_are_summed(pages: dict[str, bytes], expect: Callable[..., None]) -> None:
    start = b'nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting"'
    page = duplicate_line(pages[TRITON], start, b'"tensorrt_llm"', b'"ensemble"', b"4")
    expect(
        extract("triton-tensorrt-llm", page),
        waiting=5.0,
        running=1.0,
        kv_usage=0.4875,
        block_size=64.0,
        num_blocks=6239.0,
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_crlf_line_ends_change_nothing(name: str, pages: dict[str, bytes]) -> None:
    engine = EXPECTED[name][0]
    assert comparable(extract(engine, pages[name].replace(b"\n", b"\r\n"))) == comparable(
        extract(engine, pages[name])
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_utf8_elsewhere_changes_nothing(name: str, pages: dict[str, bytes]) -> None:
    engine = EXPECTED[name][0]
    wanted = Extractor(BUILTIN_ENGINES[engine]).wanted_families()
    dirty = []
    for line in pages[name].split(b"\n"):
        if line.startswith(b"#"):
            dirty.append(b"# \xff\xfe\xc3(" + line[1:])
        elif _sample_name(line) not in wanted:
            dirty.append(line.replace(b'="', b'="\x80\xbf', 1))
        else:
            dirty.append(line)
    assert comparable(extract(engine, b"\n".join(dirty))) == comparable(extract(engine, pages[name]))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_str_and_bytes_like_pages_read_the_same(name: str, pages: dict[str, bytes]) -> None:
    engine = EXPECTED[name][0]
    want = comparable(extract(engine, pages[name]))
    x = Extractor(BUILTIN_ENGINES[engine])
    assert comparable(x.extract(pages[name].decode())) == want
    assert comparable(x.extract(bytearray(pages[name]))) == want
    assert comparable(x.extract(memoryview(pages[name]))) == want


def _sample_name(line: bytes) -> str:
    """The family a sample line or a ``# HELP`` / ``# TYPE`` line belongs to."""
    words = line.split()
    if line.startswith(b"#"):
        return words[2].decode() if len(words) > 2 else ""
    return re.split(rb"[{ ]", line, maxsplit=1)[0].decode()


def _only_wanted(page: bytes, wanted: tuple[str, ...]) -> bytes:
    """What a prometheus_client server sends for ``?name[]=...``: those families, nothing else."""
    return b"\n".join(line for line in page.split(b"\n") if _sample_name(line) in wanted) + b"\n"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_page_filtered_to_wanted_families_reads_the_same(name: str, pages: dict[str, bytes]) -> None:
    engine = EXPECTED[name][0]
    x = Extractor(BUILTIN_ENGINES[engine])
    filtered = _only_wanted(pages[name], x.wanted_families())
    assert len(filtered) < len(pages[name])
    assert comparable(x.extract(filtered)) == comparable(x.extract(pages[name]))


def test_wanted_families() -> None:
    assert Extractor(BUILTIN_ENGINES["vllm"]).wanted_families() == (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:gpu_cache_usage_perc",
        "vllm:lora_requests_info",
        "vllm:cache_config_info",
    )
    assert Extractor(BUILTIN_ENGINES["triton-tensorrt-llm"]).wanted_families() == (
        "nv_trt_llm_request_metrics",
        "nv_trt_llm_kv_cache_block_metrics",
    )
    assert Extractor(BUILTIN_ENGINES["tgi"]).wanted_families() == (
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_batch_current_max_tokens",
    )
    assert Extractor(EngineSpec(name="nothing")).wanted_families() == ()
