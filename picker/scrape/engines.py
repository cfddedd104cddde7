"""Per-engine metric mappings: which spec feeds which :class:`~picker.state.metrics.EndpointMetrics` field.

The built-in table follows the reference EPP (§3.3 of the compatibility notes) plus two additions it
lacks: vLLM's pre-v1 KV gauge as a fallback, and TGI. Operators override an engine the reference way
(``engineConfigs`` entries, each a *full replacement* of that engine's mapping), so a config written
for the reference EPP behaves the same here. See ``picker/scrape/README.md`` for the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from picker.metricspec import MetricSpec, is_label_name, parse_spec

# Wrong *types* in a config document raise ValueError too (the TRY004 noqa's below): pydantic turns
# only ValueError into a validation error, and configuration is where these functions are called.
__all__ = ["BUILTIN_ENGINES", "DEFAULT_ENGINE", "EngineSpec", "Specs", "engine_specs"]

#: Alternatives tried in order; the first one the page reports a usable value for wins. () = disabled.
Specs = tuple[MetricSpec, ...]

#: The engine assumed for pods without an engine label (reference ``defaultEngine``).
DEFAULT_ENGINE = "vllm"
#: Reserved by the reference for "the default engine's mapping"; not usable as an engine name.
_RESERVED_NAME = "default"
_DEFAULT_BLOCK_SIZE_LABEL = "block_size"
_DEFAULT_NUM_BLOCKS_LABEL = "num_gpu_blocks"

# reference engineConfigs key → our field. Spec-valued keys accept a string or a list of strings.
_SPEC_KEYS = {
    "queuedRequestsSpec": "queued",
    "runningRequestsSpec": "running",
    "kvUsageSpec": "kv_usage",
    "loraSpec": "lora",
    "cacheInfoSpec": "cache_info",
    "cacheBlockSizeSpec": "cache_block_size",
    "cacheNumBlocksSpec": "cache_num_blocks",
    "kvTokensSpec": "kv_tokens",
}
_LABEL_KEYS = {
    "cacheBlockSizeLabelName": ("cache_block_size_label", _DEFAULT_BLOCK_SIZE_LABEL),
    "cacheNumBlocksLabelName": ("cache_num_blocks_label", _DEFAULT_NUM_BLOCKS_LABEL),
}
_ALLOWED_KEYS = frozenset({"name", "maxBatchTotalTokens", *_SPEC_KEYS, *_LABEL_KEYS})


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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("engine name must be a non-empty string")
        if self.name == _RESERVED_NAME:
            raise ValueError(f"engine name {_RESERVED_NAME!r} is reserved")
        for field in (
            "queued",
            "running",
            "kv_usage",
            "lora",
            "cache_info",
            "cache_block_size",
            "cache_num_blocks",
            "kv_tokens",
        ):
            value = getattr(self, field)
            if not isinstance(value, tuple) or not all(isinstance(s, MetricSpec) for s in value):
                raise ValueError(f"engine {self.name!r}: {field} must be a tuple of MetricSpec")
        for field in ("cache_block_size_label", "cache_num_blocks_label"):
            label = getattr(self, field)
            if not is_label_name(label):
                raise ValueError(f"engine {self.name!r}: {field} {label!r} is not a label name")
        m = self.max_batch_total_tokens
        if m is not None and (
            isinstance(m, bool) or not isinstance(m, int | float) or not math.isfinite(m) or m <= 0
        ):
            raise ValueError(
                f"engine {self.name!r}: maxBatchTotalTokens must be a positive number, got {m!r}"
            )

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any]) -> EngineSpec:
        """Build from one reference-style ``engineConfigs`` entry (camelCase keys).

        Unset spec keys mean "not scraped" (full replacement, as in the reference); unset label names
        default to ``block_size`` / ``num_gpu_blocks`` (as in the reference). Spec keys take a string
        or, our extension, a list of strings tried in order. Unknown keys are errors, not ignored,
        so a typo cannot silently disable a field.
        """
        if not isinstance(params, Mapping):
            raise ValueError(f"engine config must be a mapping, got {type(params).__name__}")  # noqa: TRY004
        name = params.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"engine config needs a non-empty string 'name', got {name!r}")
        unknown = sorted(str(k) for k in params if k not in _ALLOWED_KEYS)
        if unknown:
            raise ValueError(f"engine {name!r}: unknown keys {unknown} (allowed: {sorted(_ALLOWED_KEYS)})")
        kwargs: dict[str, Any] = {"name": name}
        for key, field in _SPEC_KEYS.items():
            kwargs[field] = _parse_specs(name, key, params.get(key))
        for key, (field, default) in _LABEL_KEYS.items():
            label = params.get(key)
            if label is None or label == "":
                label = default
            if not is_label_name(label):
                raise ValueError(f"engine {name!r}: {key} must be a label name, got {label!r}")
            kwargs[field] = label
        kwargs["max_batch_total_tokens"] = params.get("maxBatchTotalTokens")
        return cls(**kwargs)


def _parse_specs(engine: str, key: str, raw: object) -> Specs:
    if raw is None:
        return ()
    texts: Sequence[object]
    if isinstance(raw, str):
        texts = (raw,)
    elif isinstance(raw, list | tuple):
        texts = raw
    else:
        raise ValueError(f"engine {engine!r}: {key} must be a string or a list of strings, got {raw!r}")  # noqa: TRY004
    specs: list[MetricSpec] = []
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"engine {engine!r}: {key} entries must be strings, got {text!r}")  # noqa: TRY004
        try:
            spec = parse_spec(text)
        except ValueError as exc:
            raise ValueError(f"engine {engine!r}: {key}: {exc}") from exc
        if spec is not None and spec not in specs:
            specs.append(spec)
    return tuple(specs)


def _specs(*texts: str) -> Specs:
    return tuple(s for s in map(parse_spec, texts) if s is not None)


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
        if not isinstance(spec, EngineSpec):
            raise ValueError(f"engine override must be an EngineSpec, got {type(spec).__name__}")  # noqa: TRY004
        if spec.name in seen:
            raise ValueError(f"engine {spec.name!r} is configured twice")
        seen.add(spec.name)
        merged[spec.name] = spec
    return MappingProxyType(merged)
