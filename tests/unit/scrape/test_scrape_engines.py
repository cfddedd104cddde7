"""Engine mappings: the built-in table (reference §3.3 plus TGI) and reference-style overrides."""

from __future__ import annotations

import re
from typing import Any

import pytest

from picker.config import BUILTIN_ENGINES as CONFIG_ENGINES
from picker.config import CoreMetricsExtractorParams, EngineConfig
from picker.scrape import BUILTIN_ENGINES, DEFAULT_ENGINE, EngineSpec, MetricSpec, engine_specs, parse_spec
from picker.scrape.engines import engine_specs_for


def engine(params: dict[str, Any]) -> EngineSpec:
    """An ``engineConfigs`` entry as the service builds it: validated by the config, then converted."""
    return EngineSpec.from_config(EngineConfig.model_validate(params, by_alias=True, by_name=False))


def spec_texts(specs: tuple[MetricSpec, ...]) -> list[str]:
    return [str(s) for s in specs]


def test_builtin_names_and_default() -> None:
    assert set(BUILTIN_ENGINES) == {"vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", "tgi"}
    # the configuration accepts exactly these as built-in ``defaultEngine`` values
    assert set(BUILTIN_ENGINES) == CONFIG_ENGINES
    assert DEFAULT_ENGINE == "vllm"
    for name, spec in BUILTIN_ENGINES.items():
        assert spec.name == name


def test_builtins_are_read_only() -> None:
    with pytest.raises(TypeError):
        BUILTIN_ENGINES["vllm"] = BUILTIN_ENGINES["sglang"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        BUILTIN_ENGINES["vllm"].queued = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("engine", "field", "texts"),
    [
        ("vllm", "queued", ["vllm:num_requests_waiting"]),
        ("vllm", "running", ["vllm:num_requests_running"]),
        ("vllm", "kv_usage", ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]),
        ("vllm", "lora", ["vllm:lora_requests_info"]),
        ("vllm", "cache_info", ["vllm:cache_config_info"]),
        ("sglang", "queued", ["sglang:num_queue_reqs"]),
        ("sglang", "running", ["sglang:num_running_reqs"]),
        ("sglang", "kv_usage", ["sglang:token_usage"]),
        ("sglang", "lora", []),
        ("sglang", "cache_info", ["sglang:cache_config_info"]),
        ("trtllm-serve", "queued", ["trtllm_num_requests_waiting"]),
        ("trtllm-serve", "running", ["trtllm_num_requests_running"]),
        ("trtllm-serve", "kv_usage", ["trtllm_kv_cache_utilization"]),
        ("trtllm-serve", "cache_block_size", ["trtllm_kv_cache_tokens_per_block"]),
        ("trtllm-serve", "cache_num_blocks", ["trtllm_kv_cache_max_blocks"]),
        ("triton-tensorrt-llm", "queued", ['nv_trt_llm_request_metrics{request_type="waiting"}']),
        ("triton-tensorrt-llm", "running", ['nv_trt_llm_request_metrics{request_type="scheduled"}']),
        (
            "triton-tensorrt-llm",
            "kv_usage",
            ['nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}'],
        ),
        (
            "triton-tensorrt-llm",
            "cache_block_size",
            ['nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per"}'],
        ),
        (
            "triton-tensorrt-llm",
            "cache_num_blocks",
            ['nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max"}'],
        ),
        ("tgi", "queued", ["tgi_queue_size"]),
        ("tgi", "running", ["tgi_batch_current_size"]),
        ("tgi", "kv_usage", []),
        ("tgi", "kv_tokens", ["tgi_batch_current_max_tokens"]),
    ],
)
def test_builtin_table(engine: str, field: str, texts: list[str]) -> None:
    assert spec_texts(getattr(BUILTIN_ENGINES[engine], field)) == texts


def test_builtin_cache_labels() -> None:
    assert (
        BUILTIN_ENGINES["vllm"].cache_block_size_label,
        BUILTIN_ENGINES["vllm"].cache_num_blocks_label,
    ) == (
        "block_size",
        "num_gpu_blocks",
    )
    assert (
        BUILTIN_ENGINES["sglang"].cache_block_size_label,
        BUILTIN_ENGINES["sglang"].cache_num_blocks_label,
    ) == (
        "page_size",
        "num_pages",
    )
    assert BUILTIN_ENGINES["tgi"].max_batch_total_tokens is None


def test_an_override_is_a_full_replacement_with_reference_label_defaults() -> None:
    spec = engine({"name": "vllm", "queuedRequestsSpec": "my_queue{pool=a}"})
    assert spec_texts(spec.queued) == ['my_queue{pool="a"}']
    # nothing inherited from the built-in vllm mapping
    assert spec.running == spec.kv_usage == spec.lora == spec.cache_info == ()
    assert (spec.cache_block_size_label, spec.cache_num_blocks_label) == ("block_size", "num_gpu_blocks")


def test_every_key_converts() -> None:
    params: dict[str, Any] = {
        "name": "custom",
        "queuedRequestsSpec": "q",
        "runningRequestsSpec": "r{a=1}",
        "kvUsageSpec": ["kv_new", "kv_old"],
        "loraSpec": "lora_info",
        "cacheInfoSpec": "cc_info",
        "cacheBlockSizeLabelName": "page_size",
        "cacheNumBlocksLabelName": "pages",
        "cacheBlockSizeSpec": "bs",
        "cacheNumBlocksSpec": "nb",
        "maxBatchTotalTokens": 16000,
        "kvTokensSpec": "tok",
    }
    spec = engine(params)
    assert spec.name == "custom"
    assert spec_texts(spec.running) == ['r{a="1"}']
    assert spec_texts(spec.kv_usage) == ["kv_new", "kv_old"]
    assert spec.cache_block_size_label == "page_size"
    assert spec.cache_num_blocks_label == "pages"
    assert spec_texts(spec.cache_block_size) == ["bs"]
    assert spec_texts(spec.cache_num_blocks) == ["nb"]
    assert spec.max_batch_total_tokens == 16000
    assert spec_texts(spec.kv_tokens) == ["tok"]


def test_unset_and_empty_values_disable_or_default() -> None:
    """Null and unset keys use the default; empty strings disable a spec, as in the reference."""
    spec = engine(
        {
            "name": "x",
            "queuedRequestsSpec": "",
            "kvUsageSpec": None,
            "cacheBlockSizeLabelName": None,
            "cacheNumBlocksLabelName": "",
            "maxBatchTotalTokens": None,
            "runningRequestsSpec": ["", "r"],
        }
    )
    assert spec.queued == spec.kv_usage == ()
    assert spec_texts(spec.running) == ["r"]
    assert spec.cache_num_blocks_label == "num_gpu_blocks"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "  "}, "must not be blank"),
        ({"name": 3}, "name"),
        ({"name": "default"}, "reserved"),
        ({"name": "x", "queuedRequestSpec": "q"}, "queuedRequestSpec"),
        ({"name": "x", "kvUsageSpec": "kv{a!=b}"}, "matcher '!=' on label 'a' is not supported"),
        ({"name": "x", "loraSpec": 5}, "loraSpec"),
        ({"name": "x", "loraSpec": ["a", 5]}, "loraSpec"),
        ({"name": "x", "cacheBlockSizeLabelName": "bad-label"}, "not a Prometheus label name"),
        ({"name": "x", "maxBatchTotalTokens": 0}, "maxBatchTotalTokens"),
        ({"name": "x", "maxBatchTotalTokens": "big"}, "maxBatchTotalTokens"),
        ({"name": "x", "maxBatchTotalTokens": True}, "got a boolean"),
        ({"name": "x", "maxBatchTotalTokens": float("inf")}, "maxBatchTotalTokens"),
        ({"name": "x", "maxBatchTotalTokens": 1.5}, "maxBatchTotalTokens"),
    ],
)
def test_the_config_rejects_what_could_not_convert(params: dict[str, Any], message: str) -> None:
    # every check happens once, in the configuration; EngineSpec.from_config only converts
    with pytest.raises(ValueError, match=re.escape(message)):
        engine(params)


def test_engine_specs_overrides_replace_and_add() -> None:
    vllm = engine({"name": "vllm", "queuedRequestsSpec": "q"})
    new = engine({"name": "my-engine", "runningRequestsSpec": "r"})
    merged = engine_specs([vllm, new])
    assert merged["vllm"] is vllm
    assert merged["my-engine"] is new
    assert merged["sglang"] is BUILTIN_ENGINES["sglang"]
    assert BUILTIN_ENGINES["vllm"] is not vllm  # the built-ins are untouched
    with pytest.raises(TypeError):
        merged["x"] = new  # type: ignore[index]
    assert engine_specs() == BUILTIN_ENGINES


def test_engine_specs_rejects_duplicates() -> None:
    a = EngineSpec(name="a", queued=(parse_spec("q"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="configured twice"):
        engine_specs([a, a])


def test_engine_specs_for_a_validated_extractor() -> None:
    extractor = CoreMetricsExtractorParams.model_validate(
        {"defaultEngine": "mine", "engineConfigs": [{"name": "mine", "queuedRequestsSpec": "q"}]},
        by_alias=True,
        by_name=False,
    )
    table = engine_specs_for(extractor)
    assert spec_texts(table["mine"].queued) == ["q"]
    assert table["vllm"] is BUILTIN_ENGINES["vllm"]
    assert engine_specs_for(CoreMetricsExtractorParams()) == BUILTIN_ENGINES
