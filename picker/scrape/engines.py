"""Per-engine metric mappings: which spec feeds which :class:`~picker.state.metrics.EndpointMetrics` field.

The built-in table follows the reference EPP (§3.3 of the compatibility notes) plus two additions it
lacks: vLLM's pre-v1 KV gauge as a fallback, and TGI. Operators override an engine the reference way
(``engineConfigs`` entries, each a *full replacement* of that engine's mapping), so a config written
for the reference EPP behaves the same here. See ``picker/scrape/README.md`` for the table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from picker.config import CoreMetricsExtractorParams, EngineConfig, SpecText
from picker.metricspec import MetricSpec, parse_spec

__all__ = ["BUILTIN_ENGINES", "DEFAULT_ENGINE", "EngineSpec", "Specs", "engine_specs", "engine_specs_for"]

#: Alternatives tried in order; the first one the page reports a usable value for wins. () = disabled.
Specs = tuple[MetricSpec, ...]

#: The engine assumed for pods without an engine label (reference ``defaultEngine``).
DEFAULT_ENGINE = "vllm"
_DEFAULT_BLOCK_SIZE_LABEL = "block_size"
_DEFAULT_NUM_BLOCKS_LABEL = "num_gpu_blocks"


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """The mapping for one engine. Every spec field is a tuple of alternatives, ``()`` = not scraped.

    ``kv_tokens`` / ``max_batch_total_tokens`` exist for engines without a KV gauge (TGI): when
    ``kv_usage`` yields nothing, KV usage is approximated as tokens-in-batch / max batch tokens.
    """

    name: str
    queued: Specs = ()
    running: Specs = ()
    kv_usage: Specs = ()
    #: an info gauge whose *value* is a creation time and whose labels list adapters (vLLM)
    lora: Specs = ()
    #: an info gauge whose *labels* carry block size and block count (vLLM, SGLang)
    cache_info: Specs = ()
    cache_block_size_label: str = _DEFAULT_BLOCK_SIZE_LABEL
    cache_num_blocks_label: str = _DEFAULT_NUM_BLOCKS_LABEL
    #: plain gauges with block size / block count, used when ``cache_info`` yields nothing (TRT-LLM)
    cache_block_size: Specs = ()
    cache_num_blocks: Specs = ()
    #: TGI: the configured ``--max-batch-total-tokens`` of the server; None = unknown → no KV usage
    max_batch_total_tokens: float | None = None
    #: TGI: the gauge with the tokens the current batch may occupy
    kv_tokens: Specs = ()

    @classmethod
    def from_config(cls, config: EngineConfig) -> EngineSpec:
        """The mapping of one ``engineConfigs`` entry, already validated by :mod:`picker.config` (spec
        syntax, label names, the reserved name, token budget), so this only converts.

        Unset spec keys mean "not scraped" (full replacement, as in the reference); unset or empty label
        names default to ``block_size`` / ``num_gpu_blocks`` (as in the reference); a list of specs is
        tried in order (ours), empty entries dropped.
        """
        c = config
        return cls(
            name=c.name,
            queued=_from_text(c.queued_requests_spec),
            running=_from_text(c.running_requests_spec),
            kv_usage=_from_text(c.kv_usage_spec),
            lora=_from_text(c.lora_spec),
            cache_info=_from_text(c.cache_info_spec),
            cache_block_size_label=c.cache_block_size_label_name or _DEFAULT_BLOCK_SIZE_LABEL,
            cache_num_blocks_label=c.cache_num_blocks_label_name or _DEFAULT_NUM_BLOCKS_LABEL,
            cache_block_size=_from_text(c.cache_block_size_spec),
            cache_num_blocks=_from_text(c.cache_num_blocks_spec),
            max_batch_total_tokens=c.max_batch_total_tokens,
            kv_tokens=_from_text(c.kv_tokens_spec),
        )


def _from_text(text: SpecText | None) -> Specs:
    if text is None:
        return ()
    return _specs(*((text,) if isinstance(text, str) else text))


def _specs(*texts: str) -> Specs:
    """Parsed specs in order, empty ones ("disabled") and repeats dropped."""
    out: list[MetricSpec] = []
    for spec in map(parse_spec, texts):
        if spec is not None and spec not in out:
            out.append(spec)
    return tuple(out)


_TRITON_REQ = "nv_trt_llm_request_metrics"
_TRITON_KV = "nv_trt_llm_kv_cache_block_metrics"

#: The built-in engines, keyed by the value of the pod label ``inference.networking.k8s.io/engine-type``.
BUILTIN_ENGINES: Mapping[str, EngineSpec] = MappingProxyType(
    {
        "vllm": EngineSpec(
            name="vllm",
            queued=_specs("vllm:num_requests_waiting"),
            running=_specs("vllm:num_requests_running"),
            # v1 name first; vLLM ≤ v0.x / early v1 exported only the older GPU-cache gauge
            kv_usage=_specs("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
            lora=_specs("vllm:lora_requests_info"),
            cache_info=_specs("vllm:cache_config_info"),
        ),
        "sglang": EngineSpec(
            name="sglang",
            queued=_specs("sglang:num_queue_reqs"),
            running=_specs("sglang:num_running_reqs"),
            kv_usage=_specs("sglang:token_usage"),
            cache_info=_specs("sglang:cache_config_info"),
            cache_block_size_label="page_size",
            cache_num_blocks_label="num_pages",
        ),
        "trtllm-serve": EngineSpec(
            name="trtllm-serve",
            queued=_specs("trtllm_num_requests_waiting"),
            running=_specs("trtllm_num_requests_running"),
            kv_usage=_specs("trtllm_kv_cache_utilization"),
            cache_block_size=_specs("trtllm_kv_cache_tokens_per_block"),
            cache_num_blocks=_specs("trtllm_kv_cache_max_blocks"),
        ),
        "triton-tensorrt-llm": EngineSpec(
            name="triton-tensorrt-llm",
            queued=_specs(f"{_TRITON_REQ}{{request_type=waiting}}"),
            running=_specs(f"{_TRITON_REQ}{{request_type=scheduled}}"),
            kv_usage=_specs(f"{_TRITON_KV}{{kv_cache_block_type=fraction}}"),
            cache_block_size=_specs(f"{_TRITON_KV}{{kv_cache_block_type=tokens_per}}"),
            cache_num_blocks=_specs(f"{_TRITON_KV}{{kv_cache_block_type=max}}"),
        ),
        "tgi": EngineSpec(
            name="tgi",
            queued=_specs("tgi_queue_size"),
            running=_specs("tgi_batch_current_size"),
            # no KV gauge: approximated from the batch's token budget (README, "TGI")
            kv_tokens=_specs("tgi_batch_current_max_tokens"),
        ),
    }
)


def engine_specs(overrides: Iterable[EngineSpec] = ()) -> Mapping[str, EngineSpec]:
    """The built-ins with ``overrides`` replacing (wholesale) or adding engines, read-only.

    Two overrides with the same name are a configuration error (ambiguous), not "last one wins".
    """
    merged = dict(BUILTIN_ENGINES)
    seen: set[str] = set()
    for spec in overrides:
        if spec.name in seen:
            raise ValueError(f"engine {spec.name!r} is configured twice")
        seen.add(spec.name)
        merged[spec.name] = spec
    return MappingProxyType(merged)


def engine_specs_for(extractor: CoreMetricsExtractorParams) -> Mapping[str, EngineSpec]:
    """The engine table in effect for a validated ``core-metrics-extractor`` configuration."""
    return engine_specs(EngineSpec.from_config(c) for c in extractor.engine_configs)
