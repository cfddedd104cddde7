"""Extraction rules on synthesized pages: aggregation, LoRA, cache info, TGI, overrides, and junk."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

from picker.config import EngineConfig
from picker.scrape import BUILTIN_ENGINES, EngineSpec, Extractor
from tests.unit.scrape.conftest import extract


def engine(params: dict[str, Any]) -> EngineSpec:
    """An ``engineConfigs`` entry as the service builds it: validated by the config, then converted."""
    return EngineSpec.from_config(EngineConfig.model_validate(params, by_alias=True, by_name=False))


Expect = Callable[..., None]


def tgi(max_tokens: float | None) -> EngineSpec:
    return dataclasses.replace(BUILTIN_ENGINES["tgi"], max_batch_total_tokens=max_tokens)


# ----------------------------------------------------------------------------------------- aggregation

VLLM_DP = b"""\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{engine="2",model_name="m"} 3.0
vllm:num_requests_waiting{engine="3",model_name="m"} 4.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 10.0
vllm:num_requests_running{engine="1",model_name="m"} 0.0
vllm:num_requests_running{engine="2",model_name="m"} 5.0
vllm:num_requests_running{engine="3",model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.1
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.2
vllm:kv_cache_usage_perc{engine="2",model_name="m"} 0.3
vllm:kv_cache_usage_perc{engine="3",model_name="m"} 0.4
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="1000"} 1.0
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="1000"} 1.0
"""


def test_vllm_data_parallel_ranks_sum_queues_and_average_kv(expect: Expect) -> None:
    expect(
        extract("vllm", VLLM_DP),
        waiting=10.0,
        running=20.0,
        kv_usage=0.25,
        block_size=16.0,
        num_blocks=1000.0,
    )


def test_one_bad_rank_makes_the_field_unknown_not_an_undercount(expect: Expect) -> None:
    page = VLLM_DP.replace(b'engine="2",model_name="m"} 3.0', b'engine="2",model_name="m"} NaN')
    page = page.replace(b'engine="3",model_name="m"} 0.4', b'engine="3",model_name="m"} -0.4')
    expect(extract("vllm", page), running=20.0, block_size=16.0, num_blocks=1000.0)


def test_sglang_dp_ranks(expect: Expect) -> None:
    page = b"""\
sglang:num_queue_reqs{dp_rank="0",model_name="m"} 7
sglang:num_queue_reqs{dp_rank="1",model_name="m"} 3
sglang:num_running_reqs{dp_rank="0",model_name="m"} 32
sglang:num_running_reqs{dp_rank="1",model_name="m"} 30
sglang:token_usage{dp_rank="0",model_name="m"} 0.5
sglang:token_usage{dp_rank="1",model_name="m"} 0.7
sglang:cache_config_info{dp_rank="0",page_size="1",num_pages="500000"} 1
"""
    expect(
        extract("sglang", page), waiting=10.0, running=62.0, kv_usage=0.6, block_size=1.0, num_blocks=500000.0
    )


def test_trtllm_serve_gauges(expect: Expect) -> None:
    page = b"""\
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{engine_type="trtllm",model_name="m"} 4.0
trtllm_num_requests_running{engine_type="trtllm",model_name="m"} 9.0
trtllm_kv_cache_utilization{engine_type="trtllm",model_name="m"} 0.875
trtllm_kv_cache_tokens_per_block{engine_type="trtllm",model_name="m"} 32.0
trtllm_kv_cache_max_blocks{engine_type="trtllm",model_name="m"} 4096.0
"""
    expect(
        extract("trtllm-serve", page),
        waiting=4.0,
        running=9.0,
        kv_usage=0.875,
        block_size=32.0,
        num_blocks=4096.0,
    )
    no_blocks = page.replace(
        b'tokens_per_block{engine_type="trtllm",model_name="m"} 32.0',
        b'tokens_per_block{engine_type="trtllm",model_name="m"} 0',
    )
    expect(extract("trtllm-serve", no_blocks), waiting=4.0, running=9.0, kv_usage=0.875, num_blocks=4096.0)


def test_triton_request_types_and_models(expect: Expect) -> None:
    page = b"""\
nv_trt_llm_request_metrics{model="a",request_type="waiting",version="1"} 2
nv_trt_llm_request_metrics{model="b",request_type="waiting",version="1"} 3
nv_trt_llm_request_metrics{model="a",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="a",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="a",request_type="active",version="1"} 6
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="a",version="1"} 0.5
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="b",version="1"} 0.25
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="a",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="a",version="1"} 6239
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="a",version="1"} 10
"""
    expect(
        extract("triton-tensorrt-llm", page),
        waiting=5.0,
        running=6.0,
        kv_usage=0.375,
        block_size=64.0,
        num_blocks=6239.0,
    )


# ----------------------------------------------------------------------------------------- TGI

TGI_PAGE = b"""\
# TYPE tgi_queue_size gauge
tgi_queue_size 3

# TYPE tgi_batch_current_max_tokens gauge
tgi_batch_current_max_tokens 8192

# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 5
"""


@pytest.mark.parametrize(
    ("max_tokens", "tokens", "kv"),
    [
        (32768, b"8192", 0.25),
        (8192, b"8192", 1.0),
        (4096, b"8192", 1.0),  # more than the configured budget: clamped, never > 1
        (32768, b"0", 0.0),
        (32768, b"NaN", math.nan),
        (32768, b"-5", math.nan),
        (None, b"8192", math.nan),  # not configured: unknown, never guessed
    ],
)
def test_tgi_kv_approximation(max_tokens: float | None, tokens: bytes, kv: float, expect: Expect) -> None:
    page = TGI_PAGE.replace(b"max_tokens 8192", b"max_tokens " + tokens)
    expect(extract(tgi(max_tokens), page), waiting=3.0, running=5.0, kv_usage=kv)


def test_tgi_max_batch_total_tokens_from_engine_configs(expect: Expect) -> None:
    spec = engine(
        {
            "name": "tgi",
            "queuedRequestsSpec": "tgi_queue_size",
            "runningRequestsSpec": "tgi_batch_current_size",
            "kvTokensSpec": "tgi_batch_current_max_tokens",
            "maxBatchTotalTokens": 16384,
        }
    )
    expect(extract(spec, TGI_PAGE), waiting=3.0, running=5.0, kv_usage=0.5)


def test_a_kv_gauge_wins_over_the_tgi_approximation(expect: Expect) -> None:
    spec = dataclasses.replace(tgi(16384), kv_usage=BUILTIN_ENGINES["sglang"].kv_usage)
    expect(extract(spec, TGI_PAGE + b"sglang:token_usage 0.1\n"), waiting=3.0, running=5.0, kv_usage=0.1)
    expect(extract(spec, TGI_PAGE), waiting=3.0, running=5.0, kv_usage=0.5)


# ----------------------------------------------------------------------------------------- LoRA


def lora_line(running: str, waiting: str, max_lora: str, value: str) -> bytes:
    return (
        f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{running}",'
        f'waiting_lora_adapters="{waiting}"}} {value}\n'
    ).encode()


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0)])
def test_lora_newest_series_wins(order: tuple[int, int, int]) -> None:
    lines = [
        lora_line("old", "", "2", "1.7382173358407154e+09"),
        lora_line(" a , b,,a ", "c", "4", "1.7382173400000000e+09"),  # the newest
        lora_line("mid", "x", "3", "1.738217336e+09"),
    ]
    page = b"# TYPE vllm:lora_requests_info gauge\n" + b"".join(lines[i] for i in order)
    m = extract("vllm", page)
    assert (m.lora_active, m.lora_waiting, m.max_lora) == (("a", "b"), ("c",), 4.0)


def test_lora_series_with_a_junk_value_is_ignored() -> None:
    page = (
        lora_line("new", "", "4", "NaN") + lora_line("kept", "", "2", "5") + lora_line("inf", "", "1", "+Inf")
    )
    m = extract("vllm", page)
    assert (m.lora_active, m.lora_waiting, m.max_lora) == (("kept",), (), 2.0)


@pytest.mark.parametrize(
    ("max_lora", "want"),
    [
        ("8", 8.0),
        ("0", 0.0),
        ("None", math.nan),
        ("2.5", math.nan),
        ("-1", math.nan),
        ("", math.nan),
        ("1e400", math.nan),
    ],
)
def test_lora_max_lora_parsing(max_lora: str, want: float, expect: Expect) -> None:
    expect(
        extract("vllm", lora_line("a", "", max_lora, "1")), lora_active=("a",), lora_waiting=(), max_lora=want
    )


def test_lora_labels_with_escapes_and_missing_labels(expect: Expect) -> None:
    page = b'vllm:lora_requests_info{running_lora_adapters="q\\"uote,comma\\\\,brace}"} 1\n'
    expect(extract("vllm", page), lora_active=('q"uote', "comma\\", "brace}"), lora_waiting=())


def test_lora_non_utf8_adapter_names_are_replaced_not_fatal() -> None:
    m = extract(
        "vllm", b'vllm:lora_requests_info{running_lora_adapters="a\xff,b",waiting_lora_adapters=""} 1\n'
    )
    assert m.lora_active == ("a\ufffd", "b")


def test_no_lora_family_means_unknown_not_empty() -> None:
    m = extract("vllm", VLLM_DP)
    assert m.lora_active is None
    assert m.lora_waiting is None
    assert math.isnan(m.max_lora)


# ----------------------------------------------------------------------------------------- cache info


@pytest.mark.parametrize(
    ("labels", "block_size", "num_blocks"),
    [
        ('block_size="16",num_gpu_blocks="81767"', 16.0, 81767.0),
        (
            'user_specified_block_size="8",block_size="16",mamba_block_size="4",num_gpu_blocks="99"',
            16.0,
            99.0,
        ),
        ('_block_size_resolved="True",block_size="4",num_gpu_blocks="15998"', 4.0, 15998.0),
        ('note="x,block_size=\\"7",block_size="32",num_gpu_blocks="1"', 32.0, 1.0),
        ('note="a,block_size=",block_size="32",num_gpu_blocks="2"', 32.0, 2.0),
        ('note="}{,",block_size="64",num_gpu_blocks="3"', 64.0, 3.0),
        ('block_size = "16" , num_gpu_blocks = "5"', 16.0, 5.0),
        ('block_size="16",num_gpu_blocks="None"', 16.0, math.nan),
        ('block_size="0",num_gpu_blocks="10"', math.nan, 10.0),
        ('block_size="16.5",num_gpu_blocks="-3"', math.nan, math.nan),
        ('cache_dtype="auto"', math.nan, math.nan),
    ],
)
def test_cache_config_info_labels(labels: str, block_size: float, num_blocks: float) -> None:
    m = extract("vllm", f"vllm:cache_config_info{{{labels}}} 1.0\n")
    assert m.block_size == block_size or (math.isnan(block_size) and math.isnan(m.block_size))
    assert m.num_blocks == num_blocks or (math.isnan(num_blocks) and math.isnan(m.num_blocks))


def test_cache_config_info_newest_timestamp_wins(expect: Expect) -> None:
    page = (
        b'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0 1700000000000\n'
        b'vllm:cache_config_info{block_size="32",num_gpu_blocks="200"} 1.0 1700000005000\n'
        b'vllm:cache_config_info{block_size="64",num_gpu_blocks="300"} 1.0\n'
    )
    expect(extract("vllm", page), block_size=32.0, num_blocks=200.0)
    untimed = b"".join(line.rsplit(b" ", 1)[0] + b"\n" for line in page.splitlines()[:2])
    expect(extract("vllm", untimed), block_size=16.0, num_blocks=100.0)  # ties: the first, as the reference


def test_custom_cache_label_names(expect: Expect) -> None:
    spec = engine(
        {
            "name": "e",
            "cacheInfoSpec": "e:info",
            "cacheBlockSizeLabelName": "page",
            "cacheNumBlocksLabelName": "pages",
        }
    )
    expect(extract(spec, b'e:info{page="8",pages="12",block_size="99"} 1\n'), block_size=8.0, num_blocks=12.0)


# ----------------------------------------------------------------------------------------- overrides


def test_engine_configs_override_with_label_matchers(expect: Expect) -> None:
    spec = engine(
        {
            "name": "vllm",
            "queuedRequestsSpec": "my:queue{pool=a}",
            "runningRequestsSpec": 'my:running{pool="a",zone="z1"}',
            "kvUsageSpec": ["my:kv{pool=a}", "vllm:kv_cache_usage_perc"],
        }
    )
    page = b"""\
my:queue{pool="a"} 3
my:queue{pool="b"} 100
my:queue{pool="a",shard="2"} 4
my:running{pool="a",zone="z1"} 5
my:running{pool="a",zone="z2"} 50
my:running{zone="z1"} 500
vllm:num_requests_waiting 1000
vllm:kv_cache_usage_perc 0.9
"""
    # full replacement: the built-in vllm names on the page are ignored except where listed
    expect(extract(spec, page), waiting=7.0, running=5.0, kv_usage=0.9)
    expect(extract(spec, page + b'my:kv{pool="a"} 0.3\n'), waiting=7.0, running=5.0, kv_usage=0.3)


def test_an_empty_label_matcher_also_matches_series_without_the_label(expect: Expect) -> None:
    spec = engine({"name": "e", "queuedRequestsSpec": 'q{shard=""}'})
    expect(extract(spec, b'q 1\nq{shard=""} 2\nq{shard="x"} 4\n'), waiting=3.0)


def test_a_spec_with_nothing_enabled_reads_nothing(expect: Expect) -> None:
    expect(extract(EngineSpec(name="off"), VLLM_DP))


# ----------------------------------------------------------------------------------------- syntax


def test_prefix_twins_suffixes_and_comments_are_not_read(expect: Expect) -> None:
    page = b"""\
# HELP vllm:num_requests_waiting 123
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting_by_reason{reason="capacity"} 9
vllm:num_requests_waiting_created 1.7e9
vllm:num_requests_waiting_total 5
vllm:num_requests_waitingx 6
xvllm:num_requests_waiting 7
#vllm:num_requests_waiting 8
other{label="vllm:num_requests_waiting 9"} 1
"""
    expect(extract("vllm", page))
    expect(extract("vllm", page + b"vllm:num_requests_waiting 2\n"), waiting=2.0)


def test_timestamps_exemplars_blanks_and_no_type(expect: Expect) -> None:
    page = (
        b'vllm:num_requests_waiting{engine="0"} 3 1700000000000\n'
        b'vllm:num_requests_waiting{engine="1"}\t4 # {trace_id="abc"} 1.0 1700000000.1\n'
        b'  vllm:num_requests_running { engine = "0" , }   6  \n'
        b"\tvllm:kv_cache_usage_perc 0.5e0"
    )
    expect(extract("vllm", page), waiting=7.0, running=6.0, kv_usage=0.5)


def test_a_page_starting_with_a_sample_and_without_a_final_newline(expect: Expect) -> None:
    expect(extract("vllm", b"vllm:num_requests_waiting 4"), waiting=4.0)
    expect(extract("vllm", b'vllm:num_requests_running{a="b"} 5\r'), running=5.0)


def test_duplicate_series_count_once_newest_timestamp_wins(expect: Expect) -> None:
    page = (
        b'vllm:num_requests_waiting{engine="0"} 3 100\n'
        b'vllm:num_requests_waiting{engine="0"} 5 200\n'
        b'vllm:num_requests_waiting{engine="0"} 4 150\n'
        b'vllm:num_requests_waiting{engine="1"} 1\n'
        b'vllm:num_requests_waiting{engine="1"} 9\n'
        b"vllm:num_requests_running 2\nvllm:num_requests_running 2\n"
    )
    expect(extract("vllm", page), waiting=6.0, running=2.0)


def test_escaped_quotes_commas_and_braces_in_labels(expect: Expect) -> None:
    page = (
        b'vllm:num_requests_waiting{a="x\\"} 99",engine="0"} 3\n'
        b'vllm:num_requests_waiting{a="{,}=\\\\",engine="1"} 4\n'
        b'vllm:num_requests_waiting{a="line\\nbreak",engine="2"} 5\n'
    )
    expect(extract("vllm", page), waiting=12.0)
    spec = engine({"name": "e", "queuedRequestsSpec": 'vllm:num_requests_waiting{a="x\\"} 99"}'})
    expect(extract(spec, page), waiting=3.0)
    spec = engine({"name": "e", "queuedRequestsSpec": 'vllm:num_requests_waiting{a="line\\nbreak"}'})
    expect(extract(spec, page), waiting=5.0)


@pytest.mark.parametrize(
    ("value", "waiting"),
    [
        (b"NaN", math.nan),
        (b"+Inf", math.nan),
        (b"-Inf", math.nan),
        (b"nan", math.nan),
        (b"-1", math.nan),
        (b"1_000", math.nan),
        (b"0x10", math.nan),
        (b"abc", math.nan),
        (b"1e400", math.nan),
        (b"-0", 0.0),
        (b"+3", 3.0),
        (b"2.5e1", 25.0),
    ],
)
def test_bad_values_make_only_that_field_unknown(value: bytes, waiting: float, expect: Expect) -> None:
    page = (
        b"vllm:num_requests_waiting "
        + value
        + b"\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n"
    )
    expect(extract("vllm", page), waiting=waiting, running=2.0, kv_usage=0.5)


@pytest.mark.parametrize(
    ("value", "kv"), [(b"1.0", 1.0), (b"1.25", 1.0), (b"0", 0.0), (b"-0.1", math.nan), (b"Inf", math.nan)]
)
def test_kv_usage_is_clamped_to_one_and_never_negative(value: bytes, kv: float, expect: Expect) -> None:
    expect(extract("vllm", b"vllm:kv_cache_usage_perc " + value + b"\n"), kv_usage=kv)


@pytest.mark.parametrize(
    "line",
    [
        b"vllm:num_requests_waiting",
        b"vllm:num_requests_waiting ",
        b'vllm:num_requests_waiting{a="b"}',
        b'vllm:num_requests_waiting{a="b} 1',
        b"vllm:num_requests_waiting 1 2 3",
        b"vllm:num_requests_waiting 1 ts",
        b'vllm:num_requests_waiting{a="\\"} 1',
        b'vllm:num_requests_waiting{a="b"\n} 1',
    ],
)
def test_malformed_sample_lines_are_skipped(line: bytes, expect: Expect) -> None:
    expect(extract("vllm", line + b"\nvllm:num_requests_running 2\n"), running=2.0)


@pytest.mark.parametrize(
    "page",
    [
        b"",
        b"\n\n\n",
        b"# EOF\n",
        b"\x00\xff" * 1000,
        b"{" * 5000,
        b'"' * 5000,
        b"vllm:" * 3000,
        b"vllm:num_requests_waiting{" + b'a="' * 2000,
        b"\\" * 4000 + b"\nvllm:num_requests_waiting{\\",
        "vllm:num_requests_waiting 1\udcff\n",
    ],
)
def test_junk_yields_nothing_and_never_raises(page: bytes | str, expect: Expect) -> None:
    for engine in BUILTIN_ENGINES:
        expect(extract(engine, page))


def test_every_truncation_of_a_page_is_safe() -> None:
    """Cut anywhere: no exception, values in range. Cut at a line end: what is read is what is there
    (a partial sum over the ranks that made it, the info gauges whole or not at all)."""
    page = VLLM_DP + lora_line("a", "", "2", "5")
    full = extract("vllm", page)
    for cut in range(len(page) + 1):
        m = extract("vllm", page[:cut])
        assert m.reported_fields() <= full.reported_fields()
        assert math.isnan(m.kv_usage) or 0.0 <= m.kv_usage <= 1.0
        if cut == len(page) or page[cut : cut + 1] == b"\n":
            for field in ("waiting", "running"):
                got = getattr(m, field)
                assert math.isnan(got) or 0.0 <= got <= getattr(full, field), (cut, field)
            for field in ("block_size", "num_blocks", "max_lora"):
                got = getattr(m, field)
                assert math.isnan(got) or got == getattr(full, field), (cut, field)
            assert m.lora_active in (None, full.lora_active)


@pytest.mark.parametrize(
    ("labels", "waiting"),
    [
        # the wanted pair itself is broken: never matches
        (b'request_type "waiting"', math.nan),
        (b'request_type=waiting"', math.nan),
        (b'x="request_type=\\"waiting\\""', math.nan),
        (b'request_type="wait\\"ing"x="1"', math.nan),
        (b'request_type="waiting\\",="1"', math.nan),  # escapes: the block is parsed whole, must be valid
        # lenient: an intact pair at a label boundary is read whatever junk sits next to it
        (b'request_type="waiting"x="1"', 7.0),
        (b'request_type="waiting",junk', 7.0),
        (b'="x",request_type="waiting"', 7.0),
    ],
)
def test_label_matchers_on_malformed_label_blocks(labels: bytes, waiting: float, expect: Expect) -> None:
    page = b"nv_trt_llm_request_metrics{" + labels + b"} 7\n"
    page += b'nv_trt_llm_request_metrics{request_type="scheduled"} 2\n'
    expect(extract("triton-tensorrt-llm", page), waiting=waiting, running=2.0)


@pytest.mark.parametrize(
    "labels",
    [
        b'running_lora_adapters="a"x="b"',
        b'="a"',
        b'running_lora_adapters "a"',
        b'running_lora_adapters="a",x',
        b'running_lora_adapters="a\\"b"c',
    ],
)
def test_malformed_lora_labels_mean_unknown_lora_state(labels: bytes, expect: Expect) -> None:
    expect(extract("vllm", b"vllm:lora_requests_info{" + labels + b"} 1\n"))


@pytest.mark.parametrize("stamp", [b"1.2.3", b"1e999", b"-1e999", b"."])
def test_unusable_timestamps_count_as_absent(stamp: bytes, expect: Expect) -> None:
    page = (
        b'vllm:cache_config_info{block_size="16",num_gpu_blocks="100"} 1.0 ' + stamp + b"\n"
        b'vllm:cache_config_info{block_size="32",num_gpu_blocks="200"} 1.0 5\n'
    )
    expect(extract("vllm", page), block_size=32.0, num_blocks=200.0)


def test_an_extractor_is_reusable_across_many_distinct_pages(expect: Expect) -> None:
    """It memoizes decoded info-gauge labels; the memo is bounded and never changes an answer."""
    x = Extractor(BUILTIN_ENGINES["vllm"])
    assert repr(x) == "Extractor('vllm')"
    for n in [*range(1, 1300), 1, 2, 3]:
        page = (
            f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{n}"}} 1\n'
            f'vllm:lora_requests_info{{max_lora="1",running_lora_adapters="a{n % 700}"}} 1\n'
        ).encode()
        expect(
            x.extract(page),
            block_size=16.0,
            num_blocks=float(n),
            max_lora=1.0,
            lora_active=(f"a{n % 700}",),
            lora_waiting=(),
        )
