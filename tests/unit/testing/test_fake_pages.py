"""Live metric pages: they parse as Prometheus text, the live values read back exactly, every other line is
the captured page's, and ``name[]`` filtering behaves like prometheus_client's."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from picker.testing.fake_load import LoadSnapshot
from picker.testing.fake_pages import (
    ENGINES,
    LORA_HISTORY,
    PageLibrary,
    PageTemplate,
    engine_spec,
    format_go_float,
    format_integral,
)

DATA = Path(__file__).parents[2] / "data" / "metrics"
MODEL = 'acme/model-"7b"'

SNAP = LoadSnapshot(
    version=3,
    running=7,
    waiting=11,
    waiting_lora_deferred=4,
    prefilling=2,
    used_blocks=321,
    num_blocks=1000,
    block_size=16,
    used_tokens=5000,
    reserved_tokens=9100,
    step_prefill_tokens=640,
    max_num_seqs=24,
    max_lora=3,
    running_adapters=("sql", "chat"),
    waiting_adapters=("fr",),
    requests_total=77,
    prompt_tokens_total=12_345_678,
    generation_tokens_total=4321,
    finished_stop=40,
    finished_length=12,
    finished_abort=5,
    preemptions_total=2,
    prefix_queries_total=8000,
    prefix_hits_total=2000,
    steps_total=999,
)

#: engine -> (sample name, labels that must match, expected value)
EXPECTED: dict[str, list[tuple[str, dict[str, str], float]]] = {
    "vllm": [
        ("vllm:num_requests_running", {}, 7),
        ("vllm:num_requests_waiting", {}, 11),
        ("vllm:num_requests_waiting_by_reason", {"reason": "capacity"}, 7),
        ("vllm:num_requests_waiting_by_reason", {"reason": "deferred"}, 4),
        ("vllm:kv_cache_usage_perc", {}, 0.321),
        ("vllm:prompt_tokens_total", {}, 12_345_678),
        ("vllm:generation_tokens_total", {}, 4321),
        ("vllm:request_success_total", {"finished_reason": "stop"}, 40),
        ("vllm:request_success_total", {"finished_reason": "length"}, 12),
        ("vllm:request_success_total", {"finished_reason": "abort"}, 5),
        ("vllm:num_preemptions_total", {}, 2),
        ("vllm:prefix_cache_queries_total", {}, 8000),
        ("vllm:prefix_cache_hits_total", {}, 2000),
    ],
    "vllm-v0": [
        ("vllm:num_requests_running", {}, 7),
        ("vllm:num_requests_waiting", {}, 11),
        ("vllm:gpu_cache_usage_perc", {}, 0.321),
        ("vllm:num_preemptions_total", {}, 2),
        ("vllm:prompt_tokens_total", {}, 12_345_678),
        ("vllm:generation_tokens_total", {}, 4321),
        ("vllm:request_success_total", {"finished_reason": "stop"}, 40),
        ("vllm:request_success_total", {"finished_reason": "length"}, 12),
    ],
    "sglang": [
        ("sglang:num_running_reqs", {}, 7),
        ("sglang:num_queue_reqs", {}, 11),
        ("sglang:token_usage", {}, 0.321),
        ("sglang:num_used_tokens", {}, 5000),
        ("sglang:cache_hit_rate", {}, 0.25),
        ("sglang:prompt_tokens_total", {}, 12_345_678),
        ("sglang:generation_tokens_total", {}, 4321),
    ],
    "tgi": [
        ("tgi_queue_size", {}, 11),
        ("tgi_batch_current_size", {}, 7),
        ("tgi_batch_current_max_tokens", {}, 9100),
        # prometheus_client's parser names these counters with a _total suffix
        ("tgi_request_count_total", {}, 77),
        ("tgi_request_success_total", {}, 52),
    ],
    "trtllm": [
        ("nv_trt_llm_request_metrics", {"request_type": "waiting"}, 11),
        ("nv_trt_llm_request_metrics", {"request_type": "scheduled"}, 7),
        ("nv_trt_llm_request_metrics", {"request_type": "context"}, 2),
        ("nv_trt_llm_request_metrics", {"request_type": "active"}, 7),
        ("nv_trt_llm_request_metrics", {"request_type": "max"}, 24),
        ("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "fraction"}, 0.321),
        ("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "tokens_per"}, 16),
        ("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "used"}, 321),
        ("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "free"}, 679),
        ("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": "max"}, 1000),
        (
            "nv_trt_llm_inflight_batcher_metrics",
            {"inflight_batcher_specific_metric": "generation_requests"},
            5,
        ),
        (
            "nv_trt_llm_inflight_batcher_metrics",
            {"inflight_batcher_specific_metric": "total_context_tokens"},
            640,
        ),
        ("nv_trt_llm_general_metrics", {"general_type": "iteration_counter"}, 999),
    ],
}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def render(engine: str, *, lora: bool = True, snap: LoadSnapshot = SNAP, **kw: object) -> str:
    page = PageTemplate.load(engine).bind(model=MODEL, block_size=16, num_blocks=1000, lora=lora)
    return page.render(snap, now=1.8e9, **kw).decode()  # type: ignore[arg-type]


def find(parsed: list[tuple[str, dict[str, str], float]], name: str, labels: dict[str, str]) -> list[float]:
    return [v for n, lab, v in parsed if n == name and all(lab.get(k) == x for k, x in labels.items())]


@pytest.mark.parametrize("engine", sorted(EXPECTED))
def test_live_values_read_back_exactly(engine: str) -> None:
    parsed = samples(render(engine))
    for name, labels, expected in EXPECTED[engine]:
        assert find(parsed, name, labels) == [expected], (name, labels)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_other_sample_is_the_captured_one(engine: str) -> None:
    spec = engine_spec(engine)
    captured = samples((DATA / spec.page).read_text())
    live = samples(render(engine, lora=False))
    touched = {name for name, _, _ in EXPECTED[engine]} | {
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
    }
    touched |= {"vllm:prompt_tokens_cached_total"}

    def key(name: str, labels: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
        if spec.template_model is not None and labels.get("model_name") == spec.template_model:
            labels = {**labels, "model_name": MODEL}
        return name, tuple(sorted(labels.items()))

    want = {key(n, lab): v for n, lab, v in captured if n not in touched}
    got = {key(n, lab): v for n, lab, v in live if n not in touched}
    assert got == want
    assert len(live) >= len(captured)


def test_model_name_label_is_the_served_model_everywhere() -> None:
    parsed = samples(render("vllm"))
    names = {lab["model_name"] for _, lab, _ in parsed if "model_name" in lab}
    assert names == {MODEL}


@pytest.mark.parametrize("engine", ["vllm", "vllm-v0"])
def test_cache_config_carries_the_kv_geometry(engine: str) -> None:
    (labels,) = [lab for n, lab, _ in samples(render(engine)) if n == "vllm:cache_config_info"]
    assert labels["block_size"] == "16"
    assert labels["num_gpu_blocks"] == "1000"


def test_v1_page_has_a_lora_family_only_when_lora_is_enabled() -> None:
    assert not find(samples(render("vllm", lora=False)), "vllm:lora_requests_info", {})
    parsed = samples(render("vllm", lora=True))
    (value,) = find(parsed, "vllm:lora_requests_info", {})
    (labels,) = [lab for n, lab, _ in parsed if n == "vllm:lora_requests_info"]
    assert labels == {"max_lora": "3", "running_lora_adapters": "sql,chat", "waiting_lora_adapters": "fr"}
    assert value == 1.8e9


def test_v0_page_keeps_its_lora_family_with_max_lora_zero_when_disabled() -> None:
    parsed = samples(render("vllm-v0", lora=False))
    (labels,) = [lab for n, lab, _ in parsed if n == "vllm:lora_requests_info"]
    assert labels["max_lora"] == "0"


def test_older_lora_combinations_keep_the_last_time_they_were_current() -> None:
    page = PageTemplate.load("vllm").bind(model="m", block_size=16, num_blocks=100, lora=True)

    def state(version: int, running: tuple[str, ...], waiting: tuple[str, ...] = ()) -> LoadSnapshot:
        return LoadSnapshot(version=version, max_lora=2, running_adapters=running, waiting_adapters=waiting)

    page.render(state(1, ("a",)), now=100.0)
    page.render(state(2, ("a",)), now=150.0)  # still current: refreshed
    page.render(state(3, ("b",), ("a",)), now=200.0)
    parsed = samples(page.render(state(4, ("b",), ("a",)), now=300.0).decode())
    series = {
        (lab["running_lora_adapters"], lab["waiting_lora_adapters"]): v
        for n, lab, v in parsed
        if n == "vllm:lora_requests_info"
    }
    assert series == {("a", ""): 150.0, ("b", "a"): 300.0}
    # an unchanged state re-serves the same bytes, stamp included
    assert page.render(state(4, ("b",), ("a",)), now=999.0) == page.render(state(4, ("b",), ("a",)), now=1.0)


def test_lora_history_is_bounded() -> None:
    page = PageTemplate.load("vllm").bind(model="m", block_size=16, num_blocks=100, lora=True)
    for i in range(3 * LORA_HISTORY):
        text = page.render(LoadSnapshot(version=i, running_adapters=(f"a{i}",)), now=float(i)).decode()
    assert len(find(samples(text), "vllm:lora_requests_info", {})) == LORA_HISTORY


@pytest.mark.parametrize(
    ("engine", "names"),
    [
        ("vllm", {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:lora_requests_info"}),
        ("vllm", {"vllm:prompt_tokens_total"}),
        ("vllm", {"vllm:request_success_total", "vllm:cache_config_info"}),
        ("vllm-v0", {"vllm:gpu_cache_usage_perc", "vllm:num_requests_running"}),
        ("sglang", {"sglang:num_queue_reqs", "sglang:token_usage", "sglang:num_running_reqs"}),
    ],
)
def test_name_filter_returns_exactly_the_named_samples(engine: str, names: set[str]) -> None:
    text = render(engine, names=frozenset(names))
    got = {n for n, _, _ in samples(text)}
    assert got == names
    full = samples(render(engine))
    for name in names:
        assert sorted(v for n, _, v in samples(text) if n == name) == sorted(
            v for n, _, v in full if n == name
        )


def test_name_filter_for_an_unknown_name_returns_an_empty_page() -> None:
    assert render("vllm", names=frozenset({"no_such_metric"})) == ""


@pytest.mark.parametrize("engine", ["tgi", "trtllm"])
def test_engines_without_prometheus_client_ignore_the_filter(engine: str) -> None:
    assert render(engine, names=frozenset({"tgi_queue_size"})) == render(engine)


def test_rendering_is_cached_per_snapshot_version() -> None:
    page = PageTemplate.load("vllm").bind(model="m", block_size=16, num_blocks=100, lora=False)
    a = page.render(LoadSnapshot(version=1, running=1), now=0.0)
    assert page.render(LoadSnapshot(version=1, running=1), now=0.0) is a
    b = page.render(LoadSnapshot(version=2, running=5), now=0.0)
    assert find(samples(b.decode()), "vllm:num_requests_running", {}) == [5.0]


def test_gzipped_page_is_the_plain_page_compressed() -> None:
    page = PageTemplate.load("sglang").bind(model="m", block_size=16, num_blocks=100, lora=False)
    plain = page.render(SNAP, now=0.0)
    assert gzip.decompress(page.render(SNAP, now=0.0, gzipped=True)) == plain


def test_library_parses_each_capture_once_and_knows_aliases() -> None:
    pages = PageLibrary()
    assert pages.get("trtllm") is pages.get("triton-tensorrt-llm")
    assert pages.get("vllm") is not pages.get("vllm-v0")


def test_unknown_engine_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="sglang"):
        engine_spec("ollama")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.0"),
        (1.0, "1.0"),
        (3_675_428.0, "3.675428e+06"),
        (1e7, "1e+07"),
        (1.7888602775040734e9, "1.7888602775040734e+09"),
        (1.0777853952e10, "1.0777853952e+10"),
        (0.4875, "0.4875"),
        (-2.5, "-2.5"),
        (math.inf, "+Inf"),
        (math.nan, "NaN"),
    ],
)
def test_go_float_format(value: float, text: str) -> None:
    assert format_go_float(value) == text


@given(st.floats(allow_nan=False))
def test_go_float_format_matches_prometheus_client(value: float) -> None:
    assert format_go_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(("value", "text"), [(0.0, "0"), (512.0, "512"), (0.4875, "0.4875"), (1e20, "1e+20")])
def test_integral_format_of_rust_and_cpp_exporters(value: float, text: str) -> None:
    assert format_integral(value) == text
