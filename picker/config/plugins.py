"""Parameters of the reference plugin types that configure the service rather than scheduling: the
metrics source, the metrics extractor (per-engine metric names), parsers and the served verifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel
from picker.config.values import check_metric_spec
from picker.metricspec import is_label_name
from scoring.matrix import ENGINE_NAMES

METRICS_DATA_SOURCE = "metrics-data-source"
CORE_METRICS_EXTRACTOR = "core-metrics-extractor"
PARSER_TYPES = frozenset({"openai-parser", "passthrough-parser", "vllmgrpc-parser"})
DEFAULT_PARSER = "openai-parser"
SERVED_VERIFIER = "destination-endpoint-served-verifier"
REQUEST_ATTRIBUTE_REPORTER = "request-attribute-reporter"
#: Engines with a built-in metric mapping (``picker/scrape``); ``engineConfigs`` may add others.
BUILTIN_ENGINES = frozenset(ENGINE_NAMES[1:])
DEFAULT_ENGINE_LABEL = "inference.networking.k8s.io/engine-type"


class MetricsDataSourceParams(StrictModel):
    """``metrics-data-source`` parameters: where a model server's metrics page is."""

    #: ``http`` or ``https`` (reference default http)
    scheme: Literal["http", "https"] = "http"
    #: page path (reference default ``/metrics``; TensorRT-LLM serve charts use ``/prometheus/metrics``)
    path: str = "/metrics"
    #: skip TLS verification for https (reference default true: model servers use self-signed certs)
    insecure_skip_verify: bool = True

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


SpecText = str | list[str]


class EngineConfig(StrictModel):
    """One ``engineConfigs[]`` entry: the metric names of an engine (a full replacement, as in the
    reference). Spec values are ``name{label=value}`` strings, or lists tried in order (ours); empty or
    unset = not scraped. ``model_dump(by_alias=True)`` is what ``picker/scrape`` consumes."""

    #: engine name, matched against the pod's engine label (``default`` is reserved)
    name: str = Field(min_length=1)
    queued_requests_spec: SpecText | None = None
    running_requests_spec: SpecText | None = None
    kv_usage_spec: SpecText | None = None
    lora_spec: SpecText | None = None
    cache_info_spec: SpecText | None = None
    #: label of ``cacheInfoSpec`` carrying the block size (reference default ``block_size``)
    cache_block_size_label_name: str | None = None
    #: label of ``cacheInfoSpec`` carrying the block count (reference default ``num_gpu_blocks``)
    cache_num_blocks_label_name: str | None = None
    cache_block_size_spec: SpecText | None = None
    cache_num_blocks_spec: SpecText | None = None
    #: ours (TGI): the server's ``--max-batch-total-tokens``, tokens; needed by ``kvTokensSpec``
    max_batch_total_tokens: int | None = Field(default=None, gt=0)
    #: ours (TGI): gauge of tokens in the current batch; KV usage ≈ value / maxBatchTotalTokens
    kv_tokens_spec: SpecText | None = None

    @field_validator(
        "queued_requests_spec",
        "running_requests_spec",
        "kv_usage_spec",
        "lora_spec",
        "cache_info_spec",
        "cache_block_size_spec",
        "cache_num_blocks_spec",
        "kv_tokens_spec",
    )
    @classmethod
    def _specs(cls, v: SpecText | None) -> SpecText | None:
        if isinstance(v, list):
            for text in v:
                check_metric_spec(text)
        elif v is not None:
            check_metric_spec(v)
        return v

    @field_validator("cache_block_size_label_name", "cache_num_blocks_label_name")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v and not is_label_name(v):
            raise ValueError(f"{v!r} is not a Prometheus label name")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("max_batch_total_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: object) -> object:
        if isinstance(v, bool):  # YAML ``true`` would otherwise count as 1 token
            raise ValueError("must be a positive integer, got a boolean")  # noqa: TRY004 - pydantic wants ValueError
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EngineConfig:
        if self.name == "default":
            raise ValueError("engine name 'default' is reserved")
        if self.kv_tokens_spec and self.max_batch_total_tokens is None:
            raise ValueError(
                "kvTokensSpec needs maxBatchTotalTokens (KV usage = tokens / maxBatchTotalTokens)"
            )
        return self


class CoreMetricsExtractorParams(StrictModel):
    """``core-metrics-extractor`` parameters: which metric names to read, per engine."""

    #: engine assumed for pods without the engine label (reference default ``vllm``)
    default_engine: str = "vllm"
    #: pod label naming the engine (reference default)
    engine_label_key: str = DEFAULT_ENGINE_LABEL
    #: per-engine overrides / additions
    engine_configs: tuple[EngineConfig, ...] = ()

    @model_validator(mode="after")
    def _engines(self) -> CoreMetricsExtractorParams:
        names = [e.name for e in self.engine_configs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"engineConfigs: duplicate engine name(s) {', '.join(duplicates)}")
        known = BUILTIN_ENGINES | set(names)
        if self.default_engine not in known:
            raise ValueError(
                f"defaultEngine {self.default_engine!r} is neither built in nor in engineConfigs "
                f"(known: {', '.join(sorted(known))})"
            )
        if not self.engine_label_key.strip():
            raise ValueError("engineLabelKey must not be empty")
        return self


class _NoParams(StrictModel):
    """Parameters of plugin types that take none (parsers, served verifier)."""


SERVICE_PARAM_MODELS: Mapping[str, type[StrictModel]] = {
    METRICS_DATA_SOURCE: MetricsDataSourceParams,
    CORE_METRICS_EXTRACTOR: CoreMetricsExtractorParams,
    SERVED_VERIFIER: _NoParams,
    **dict.fromkeys(PARSER_TYPES, _NoParams),
}
