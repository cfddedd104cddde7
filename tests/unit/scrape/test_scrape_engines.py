"""Engine mappings: the built-in table (reference §3.3 plus TGI) and reference-style overrides."""

from __future__ import annotations

import re
from typing import Any

import pytest

from picker.scrape import BUILTIN_ENGINES, DEFAULT_ENGINE, EngineSpec, MetricSpec, engine_specs, parse_spec


def spec_texts(specs: tuple[MetricSpec, ...]) -> list[str]:
    return [str(s) for s in specs]


def test_builtin_names_and_default() -> None:
    assert set(BUILTIN_ENGINES) == {"vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", "tgi"}
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


def test_from_mapping_is_a_full_replacement_with_reference_label_defaults() -> None:
    spec = EngineSpec.from_mapping({"name": "vllm", "queuedRequestsSpec": "my_queue{pool=a}"})
    assert spec_texts(spec.queued) == ['my_queue{pool="a"}']
    # nothing inherited from the built-in vllm mapping
    assert spec.running == spec.kv_usage == spec.lora == spec.cache_info == ()
    assert (spec.cache_block_size_label, spec.cache_num_blocks_label) == ("block_size", "num_gpu_blocks")


def test_from_mapping_all_keys() -> None:
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
    spec = EngineSpec.from_mapping(params)
    assert spec.name == "custom"
    assert spec_texts(spec.running) == ['r{a="1"}']
    assert spec_texts(spec.kv_usage) == ["kv_new", "kv_old"]
    assert spec.cache_block_size_label == "page_size"
    assert spec.cache_num_blocks_label == "pages"
    assert spec_texts(spec.cache_block_size) == ["bs"]
    assert spec_texts(spec.cache_num_blocks) == ["nb"]
    assert spec.max_batch_total_tokens == 16000
    assert spec_texts(spec.kv_tokens) == ["tok"]


def test_from_mapping_accepts_what_the_config_model_dumps() -> None:
    """Unset keys arrive as None (pydantic ``model_dump``); empty strings disable, as in the reference."""
    spec = EngineSpec.from_mapping(
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
        ({}, "non-empty string 'name'"),
        ({"name": ""}, "non-empty string 'name'"),
        ({"name": 3}, "non-empty string 'name'"),
        ({"name": "default"}, "reserved"),
        ({"name": "x", "queuedRequestSpec": "q"}, "unknown keys ['queuedRequestSpec']"),
        ({"name": "x", "kvUsageSpec": "kv{a!=b}"}, "engine 'x': kvUsageSpec: invalid metric spec"),
        ({"name": "x", "loraSpec": 5}, "loraSpec must be a string or a list"),
        ({"name": "x", "loraSpec": ["a", 5]}, "loraSpec entries must be strings"),
        (
            {"name": "x", "cacheBlockSizeLabelName": "bad-label"},
            "cacheBlockSizeLabelName must be a label name",
        ),
        ({"name": "x", "maxBatchTotalTokens": 0}, "maxBatchTotalTokens must be a positive number"),
        ({"name": "x", "maxBatchTotalTokens": "big"}, "maxBatchTotalTokens must be a positive number"),
        ({"name": "x", "maxBatchTotalTokens": True}, "maxBatchTotalTokens must be a positive number"),
        ({"name": "x", "maxBatchTotalTokens": float("inf")}, "maxBatchTotalTokens must be a positive number"),
    ],
)
def test_from_mapping_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        EngineSpec.from_mapping(params)


def test_from_mapping_rejects_non_mappings() -> None:
    with pytest.raises(ValueError, match="must be a mapping"):
        EngineSpec.from_mapping(["name", "x"])  # type: ignore[arg-type]


def test_engine_spec_constructor_validates() -> None:
    with pytest.raises(ValueError, match="tuple of MetricSpec"):
        EngineSpec(name="x", queued=["q"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        EngineSpec(name=" ")
    with pytest.raises(ValueError, match="is not a label name"):
        EngineSpec(name="x", cache_num_blocks_label="num-blocks")
    with pytest.raises(ValueError, match="reserved"):
        EngineSpec(name="default")


def test_engine_specs_overrides_replace_and_add() -> None:
    vllm = EngineSpec.from_mapping({"name": "vllm", "queuedRequestsSpec": "q"})
    new = EngineSpec.from_mapping({"name": "my-engine", "runningRequestsSpec": "r"})
    merged = engine_specs([vllm, new])
    assert merged["vllm"] is vllm
    assert merged["my-engine"] is new
    assert merged["sglang"] is BUILTIN_ENGINES["sglang"]
    assert BUILTIN_ENGINES["vllm"] is not vllm  # the built-ins are untouched
    with pytest.raises(TypeError):
        merged["x"] = new  # type: ignore[index]
    assert engine_specs() == BUILTIN_ENGINES


def test_engine_specs_rejects_duplicates_and_junk() -> None:
    a = EngineSpec(name="a", queued=(parse_spec("q"),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="configured twice"):
        engine_specs([a, a])
    with pytest.raises(ValueError, match="must be an EngineSpec"):
        engine_specs([{"name": "a"}])  # type: ignore[list-item]
