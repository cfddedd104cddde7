"""Parameters of the plugin types that configure the service rather than scheduling: the metrics source,
the metrics extractor (per-engine metric names), parsers, the served verifier (reference types) and the
outlier detector (ours)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel
from picker.config.values import check_metric_spec
from picker.metricspec import is_label_name
from scoring.durations import parse_duration
from scoring.matrix import ENGINE_NAMES

METRICS_DATA_SOURCE = "metrics-data-source"
CORE_METRICS_EXTRACTOR = "core-metrics-extractor"
PARSER_TYPES = frozenset({"openai-parser", "passthrough-parser", "vllmgrpc-parser"})
DEFAULT_PARSER = "openai-parser"
SERVED_VERIFIER = "destination-endpoint-served-verifier"
REQUEST_ATTRIBUTE_REPORTER = "request-attribute-reporter"
OUTLIER_DETECTOR = "outlier-detector"
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
    max_batch_total_tokens: int | None = Field(default=None, gt=0, le=2**31 - 1)
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


def _positive_duration(value: object, *, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a duration such as 30s, got {value!r}")  # noqa: TRY004 - pydantic wants ValueError
    seconds = parse_duration(value)
    if not 0 < seconds <= maximum:
        raise ValueError(f"must be > 0 and at most {maximum:g}s")
    return seconds


class OutlierDetectorParams(StrictModel):
    """``outlier-detector`` parameters (ours): passive health from the outcomes of routed requests, with
    Envoy's outlier-detection field names. Active without a plugin entry (every default below); an entry
    tunes it, ``enabled: false`` switches it off. Semantics and where they differ from Envoy:
    ``picker/state/health.py``."""

    #: false: no endpoint is ever ejected (every ejected one is reinstated at once on reload)
    enabled: bool = True
    #: failures in a row (status >= 500, no response, retried elsewhere) that eject; 0 = rule off
    consecutive_5xx: int = Field(default=5, ge=0, le=1_000_000, alias="consecutive5xx")
    #: percent of one interval's outcomes failed that ejects; 0 = rule off (Envoy's default: off, 85)
    failure_percentage_threshold: float = Field(default=50.0, ge=0.0, le=100.0)
    #: outcomes an endpoint needs within one interval for the percentage rule (Envoy: 50)
    failure_percentage_request_volume: int = Field(default=20, ge=0, le=1_000_000)
    #: the percentage window and the ejection multiplier's decay period (duration, at most 1h; Envoy: 10s)
    interval: float = 10.0
    #: first ejection's length; the n-th in a row lasts n times this (duration, at most 1d; Envoy: 30s)
    base_ejection_time: float = 30.0
    #: cap of the ejection time (duration, at most 1d; Envoy: 300s)
    max_ejection_time: float = 300.0
    #: most of the pool ejected at once, percent; one endpoint always may be (Envoy: 10)
    max_ejection_percent: float = Field(default=50.0, ge=0.0, le=100.0)

    @field_validator("interval", mode="before")
    @classmethod
    def _interval(cls, v: object) -> float:
        return _positive_duration(v, maximum=3600.0)

    @field_validator("base_ejection_time", "max_ejection_time", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return _positive_duration(v, maximum=86_400.0)


class _NoParams(StrictModel):
    """Parameters of plugin types that take none (parsers, served verifier)."""


SERVICE_PARAM_MODELS: Mapping[str, type[StrictModel]] = {
    METRICS_DATA_SOURCE: MetricsDataSourceParams,
    CORE_METRICS_EXTRACTOR: CoreMetricsExtractorParams,
    SERVED_VERIFIER: _NoParams,
    OUTLIER_DETECTOR: OutlierDetectorParams,
    **dict.fromkeys(PARSER_TYPES, _NoParams),
}
