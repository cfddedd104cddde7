"""Properties of extraction: it never raises, whatever the bytes, and what it returns is in range.

Plus a model-based property: a well-formed vLLM page generated from random per-rank gauges (random
label order, tricky label values, timestamps, exemplars, CRLF, comments) reads back exactly the sum /
mean the README promises, or "unknown" when any rank reports junk.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picker.config import EngineConfig
from picker.scrape import BUILTIN_ENGINES, EngineSpec, Extractor, MetricSpec, detect_engine, parse_spec
from picker.state.metrics import EndpointMetrics


def engine(params: dict[str, Any]) -> EngineSpec:
    """An ``engineConfigs`` entry as the service builds it: validated by the config, then converted."""
    return EngineSpec.from_config(EngineConfig.model_validate(params, by_alias=True, by_name=False))


PAGES = {
    p.name: p.read_bytes()
    for p in sorted((Path(__file__).resolve().parents[2] / "data" / "metrics").glob("*.txt"))
}
EXTRACTORS = [Extractor(spec) for spec in BUILTIN_ENGINES.values()] + [
    Extractor(dataclasses.replace(BUILTIN_ENGINES["tgi"], max_batch_total_tokens=4096)),
    Extractor(
        engine(
            {
                "name": "custom",
                "queuedRequestsSpec": 'vllm:num_requests_waiting{engine="0"}',
                "runningRequestsSpec": ["nope", 'vllm:num_requests_running{engine="1",model_name="m"}'],
                "kvUsageSpec": 'vllm:kv_cache_usage_perc{a="x\\"y"}',
                "loraSpec": "vllm:lora_requests_info",
                "cacheInfoSpec": "vllm:cache_config_info{engine=0}",
                "cacheBlockSizeSpec": "vllm:num_requests_running",
                "cacheNumBlocksSpec": "vllm:num_requests_waiting",
                "kvTokensSpec": "vllm:num_requests_waiting",
                "maxBatchTotalTokens": 7,
            }
        )
    ),
]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Fragments that make random bytes look like (broken) Prometheus text, so the parser's branches get hit.
FRAGMENTS = [
    b"vllm:num_requests_waiting",
    b"vllm:num_requests_running",
    b"vllm:kv_cache_usage_perc",
    b"vllm:gpu_cache_usage_perc",
    b"vllm:lora_requests_info",
    b"vllm:cache_config_info",
    b"sglang:token_usage",
    b"tgi_queue_size",
    b"tgi_batch_current_max_tokens",
    b"nv_trt_llm_request_metrics",
    b"trtllm_kv_cache_max_blocks",
    b"_by_reason",
    b"{",
    b"}",
    b'"',
    b"=",
    b",",
    b" ",
    b"\t",
    b"\n",
    b"\r\n",
    b"\\",
    b'\\"',
    b"#",
    b"# TYPE ",
    b"# HELP ",
    b' # {trace_id="1"} 1',
    b"engine",
    b'engine="0"',
    b'engine="1"',
    b'model_name="m"',
    b'request_type="waiting"',
    b"block_size",
    b"num_gpu_blocks",
    b'="16"',
    b"running_lora_adapters",
    b'="a, b"',
    b'max_lora="2"',
    b"0",
    b"1",
    b"1.5",
    b"0.25",
    b"-1",
    b"NaN",
    b"+Inf",
    b"-Inf",
    b"1e400",
    b"1_0",
    b"1700000000000",
    b"\xff",
    b"\x00",
]
near_pages = st.lists(st.sampled_from(FRAGMENTS), max_size=80).map(b"".join)


def check(m: EndpointMetrics) -> None:
    for name in ("waiting", "running"):
        v = getattr(m, name)
        assert math.isnan(v) or (math.isfinite(v) and v >= 0), (name, v)
    assert math.isnan(m.kv_usage) or 0.0 <= m.kv_usage <= 1.0
    assert math.isnan(m.max_lora) or (
        math.isfinite(m.max_lora) and m.max_lora >= 0 and m.max_lora.is_integer()
    )
    for name in ("block_size", "num_blocks"):
        v = getattr(m, name)
        assert math.isnan(v) or (math.isfinite(v) and v >= 1), (name, v)
    assert (m.lora_active is None) == (m.lora_waiting is None)
    for adapters in (m.lora_active, m.lora_waiting):
        if adapters is not None:
            assert all(isinstance(a, str) and a and a == a.strip() and "," not in a for a in adapters)
            assert len(set(adapters)) == len(adapters)


def check_all(page: bytes | str) -> None:
    for x in EXTRACTORS:
        check(x.extract(page))
    engine = detect_engine(page)
    assert engine is None or engine in BUILTIN_ENGINES


@SETTINGS
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(page: bytes) -> None:
    check_all(page)


@SETTINGS
@given(
    st.text(alphabet=st.one_of(st.characters(), st.sampled_from('{}"=,\\\n\r#\ud800\udfff')), max_size=500)
)
def test_arbitrary_text(page: str) -> None:
    check_all(page)


@SETTINGS
@given(near_pages)
def test_almost_prometheus(page: bytes) -> None:
    check_all(page)


mutation = st.tuples(
    st.sampled_from(["delete", "insert", "flip", "truncate", "duplicate"]),
    st.floats(0, 1),
    st.floats(0, 1),
    st.binary(min_size=1, max_size=8) | st.sampled_from(FRAGMENTS),
)


def mutate(page: bytes, op: str, a: float, b: float, data: bytes) -> bytes:
    i, j = sorted((int(a * len(page)), int(b * len(page))))
    if op == "delete":
        return page[:i] + page[j : j + 1 + (j - i) % 64]
    if op == "insert":
        return page[:i] + data + page[i:]
    if op == "flip":
        return page[:i] + bytes([page[i] ^ data[0]]) + page[i + 1 :] if i < len(page) else page
    if op == "truncate":
        return page[:i]
    return page[:j] + page[i:j] + page[j:]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(PAGES)), st.lists(mutation, min_size=1, max_size=6))
def test_mutated_real_pages(name: str, mutations: list[tuple[str, float, float, bytes]]) -> None:
    page = PAGES[name]
    for op, a, b, data in mutations:
        page = mutate(page, op, a, b, data)
    check_all(page)


# ----------------------------------------------------------------------------------------- model-based

count = st.one_of(st.integers(0, 10_000).map(float), st.floats(0, 1e6, allow_nan=False))
junk = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.5])
fraction = st.floats(0, 1.5, allow_nan=False)
label_value = st.text(alphabet=st.sampled_from('ab ,{}="\\\n#é'), max_size=6)


def render(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@st.composite
def vllm_pages(draw: st.DrawFn) -> tuple[bytes, list[float], list[float], list[float]]:
    ranks = draw(st.integers(1, 4))
    waiting = draw(st.lists(st.one_of(count, count, count, junk), min_size=ranks, max_size=ranks))
    running = draw(st.lists(count, min_size=ranks, max_size=ranks))
    kv = draw(st.lists(st.one_of(fraction, fraction, junk), min_size=ranks, max_size=ranks))
    extra = draw(label_value)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    lines = ["# HELP vllm:num_requests_waiting_by_reason Sum equals vllm:num_requests_waiting 5"]
    for family, values in (
        ("vllm:num_requests_waiting", waiting),
        ("vllm:num_requests_running", running),
        ("vllm:kv_cache_usage_perc", kv),
    ):
        if draw(st.booleans()):
            lines += [f'# HELP {family} help text {{with}} "quotes"', f"# TYPE {family} gauge"]
        for rank, v in enumerate(values):
            labels = [f'engine="{rank}"', 'model_name="m"', f'extra="{escape(extra)}"']
            labels = draw(st.permutations(labels))
            suffix = draw(st.sampled_from(["", " 1700000000000", ' # {trace_id="x"} 1.0']))
            lines.append(f"{family}{{{','.join(labels)}}} {render(v)}{suffix}")
        lines.append(f'{family}_by_reason{{engine="0"}} 99')
        lines.append(f'{family}_created{{engine="0"}} 1.7e9')
    return eol.join(lines).encode() + eol.encode(), waiting, running, kv


@SETTINGS
@given(vllm_pages())
def test_generated_vllm_pages_read_back_exactly(
    case: tuple[bytes, list[float], list[float], list[float]],
) -> None:
    page, waiting, running, kv = case
    m = Extractor(BUILTIN_ENGINES["vllm"]).extract(page)

    def valid(vs: list[float]) -> bool:
        return all(0 <= v < math.inf for v in vs)

    if valid(waiting):
        assert math.isclose(m.waiting, sum(waiting), rel_tol=1e-12)
    else:
        assert math.isnan(m.waiting)
    assert math.isclose(m.running, sum(running), rel_tol=1e-12)
    if valid(kv):
        assert math.isclose(m.kv_usage, sum(min(v, 1.0) for v in kv) / len(kv), rel_tol=1e-12, abs_tol=1e-15)
    else:
        assert math.isnan(m.kv_usage)
    assert detect_engine(page) == "vllm"


# ----------------------------------------------------------------------------------------- specs

names = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(lambda s: s != "__name__")


@SETTINGS
@given(names, st.dictionaries(label_names, st.text(max_size=8), max_size=4))
def test_spec_text_round_trips(name: str, labels: dict[str, str]) -> None:
    spec = MetricSpec(name, tuple(sorted(labels.items())))
    assert parse_spec(str(spec)) == spec


@SETTINGS
@given(st.text(max_size=40))
def test_parse_spec_returns_or_raises_value_error_only(text: str) -> None:
    try:
        spec = parse_spec(text)
    except ValueError:
        return
    assert spec is None or parse_spec(str(spec)) == spec
