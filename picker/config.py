"""The scoring / pool configuration document: load, validate, default, explain.

A configuration text holds one or two YAML documents separated by ``---``:

1. **The reference ``EndpointPickerConfig``** (``apiVersion: inference.networking.x-k8s.io/v1alpha1``,
   ``kind: EndpointPickerConfig``), decoded strictly like the reference (unknown fields are errors)::

       featureGates: [flowControl]            # known: flowControl, enableLegacyMetrics, dataLayer (no-op)
       plugins:                               # name defaults to type
       - {type: queue-scorer}
       - {name: picker, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
       - {type: metrics-data-source, parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}}
       - type: core-metrics-extractor
         parameters:
           defaultEngine: vllm
           engineLabelKey: inference.networking.k8s.io/engine-type
           engineConfigs:                     # full replacement of one engine's metric names
           - {name: tgi, queuedRequestsSpec: tgi_queue_size, runningRequestsSpec: tgi_batch_current_size,
              kvTokensSpec: tgi_batch_current_max_tokens, maxBatchTotalTokens: 32000}
       schedulingProfiles:
       - name: default
         plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: picker}]
       saturationDetector: {pluginRef: utilization-detector}
       dataLayer:
         sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
       flowControl: {maxBytes: 10Gi, ...}      # accepted and kept; flow control is not implemented
       parser: {pluginRef: openai-parser}

   Scheduling plugins (filters, scorers, pickers, detectors, profile handler) are validated and built by
   :mod:`scoring`; the others configure the service and are validated here: ``metrics-data-source``,
   ``core-metrics-extractor``, the parsers ``openai-parser`` / ``passthrough-parser`` /
   ``vllmgrpc-parser``, ``destination-endpoint-served-verifier``, ``request-attribute-reporter``.
   ``engineConfigs`` entries take the reference keys plus ours for TGI (``maxBatchTotalTokens``, and
   ``kvTokensSpec``: a gauge of tokens in use, divided by ``maxBatchTotalTokens`` to approximate KV usage).

2. **Our ``PickerConfig``** (``apiVersion: picker.dev/v1alpha1``, optional) for what the reference keeps in
   CRDs or lacks::

       apiVersion: picker.dev/v1alpha1
       kind: PickerConfig
       objectives: [{name: batch-jobs, priority: -1}]          # standalone mode (no CRDs)
       modelRewrites:                                          # InferenceModelRewrite spec shape
       - name: canary
         rules:
         - matches: [{model: {type: Exact, value: small-lora}}]
           targets: [{modelRewrite: small-lora-v1, weight: 90}, {modelRewrite: small-lora-v2, weight: 10}]
       request: {maxBodyBytes: 16Mi}                           # bytes or a Kubernetes quantity
       stalenessThreshold: 2s                                  # pool gauges / ready-pods freshness

No text (or only blank documents) means the built-in default (:func:`default_config`). Every problem is a
:class:`picker.errors.ConfigError` whose message names the document, the field path and what is wrong;
loading builds the scheduler once, so an invalid document is rejected before it can be swapped in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from picker.durations import format_duration, parse_duration
from picker.errors import ConfigError
from picker.metricspec import parse_spec
from scoring import ConfigurationError, PluginSpec, ProfileSpec, Registry, Scheduler, build_scheduler
from scoring.matrix import ENGINE_NAMES
from scoring.registry import default_specs, reference_default_specs

REFERENCE_API_VERSION: Final = "inference.networking.x-k8s.io/v1alpha1"
REFERENCE_KIND: Final = "EndpointPickerConfig"
PICKER_API_VERSION: Final = "picker.dev/v1alpha1"
PICKER_KIND: Final = "PickerConfig"

#: Feature gates the reference defines; ``dataLayer`` is a legacy no-op it still accepts.
KNOWN_FEATURE_GATES = frozenset({"flowControl", "enableLegacyMetrics", "dataLayer"})

METRICS_DATA_SOURCE = "metrics-data-source"
CORE_METRICS_EXTRACTOR = "core-metrics-extractor"
PARSER_TYPES = frozenset({"openai-parser", "passthrough-parser", "vllmgrpc-parser"})
DEFAULT_PARSER = "openai-parser"
SERVED_VERIFIER = "destination-endpoint-served-verifier"
REQUEST_ATTRIBUTE_REPORTER = "request-attribute-reporter"
#: Engines with a built-in metric mapping (``picker/scrape``); ``engineConfigs`` may add others.
BUILTIN_ENGINES = frozenset(ENGINE_NAMES[1:])
DEFAULT_ENGINE_LABEL = "inference.networking.k8s.io/engine-type"

_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?\s*")
_QUANTITY_FACTORS = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def parse_quantity(value: object) -> int:
    """Bytes from an integer or a Kubernetes quantity (``16Mi``, ``10Gi``, ``500k``, ``1e6``); rounds up.

    Raises ``ValueError`` for anything else (pydantic validators turn only ValueError into field errors).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid quantity {value!r}")  # noqa: TRY004 - see docstring
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"quantity must not be negative, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid quantity {value!r}")
        return math.ceil(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid quantity {value!r}")  # noqa: TRY004 - see docstring
    m = _QUANTITY.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid quantity {value!r} (use e.g. 16Mi, 10Gi, 500k or a number of bytes)")
    try:
        number = float(m.group(1)) * 10.0 ** int(m.group(2) or 0) * _QUANTITY_FACTORS[m.group(3)]
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"quantity {value!r} is too large")
    return math.ceil(number)


def check_metric_spec(text: str) -> str:
    """Validate a reference metric spec (``name{label=value,...}``; empty = disabled) and return it.

    The same parser the scraper uses (:mod:`picker.metricspec`), so a spec that loads here can never fail
    later in the scraper. Only ``=`` matchers are accepted: the reference silently drops the others, which
    widens the selection without telling anyone, so here they are an error.
    """
    parse_spec(text)
    return text


def _describe_errors(where: str, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return f"{where}: " + "; ".join(parts)


class _Model(BaseModel):
    """Strict, immutable, camelCase on the wire (the reference's field names), snake_case in Python."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        # Python code may construct models by field name; documents are validated by alias only
        # (``by_name=False`` at every document entry point), so a snake_case key in YAML is an unknown
        # field, as in the reference's decoder.
        validate_by_name=True,
        validate_by_alias=True,
        protected_namespaces=(),
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: object) -> object:
        """``key:`` with no value (YAML null) means "not set", as in Kubernetes manifests: use the default."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data


# ---------------------------------------------------------------------------------------------- reference
class PluginConfig(_Model):
    """One ``plugins[]`` entry."""

    #: unique plugin name used by references; defaults to ``type`` (reference rule)
    name: str = ""
    #: reference plugin type string, e.g. ``queue-scorer``
    type: str = Field(min_length=1)
    #: type-specific parameters; validated by the plugin (scheduling) or by this module (service types)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @property
    def effective_name(self) -> str:
        return self.name or self.type


class ProfilePluginRef(_Model):
    """One plugin of a scheduling profile."""

    #: name of a plugin defined in ``plugins``
    plugin_ref: str
    #: scorer weight (not normalized); unset = 1 (reference). Ignored for filters and pickers.
    weight: float | None = None


class SchedulingProfileConfig(_Model):
    """One ``schedulingProfiles[]`` entry."""

    #: profile name (required, unique); checked by the scheduler builder with the reference's message
    name: str = ""
    #: filters, scorers and one picker, in run order
    plugins: tuple[ProfilePluginRef, ...] = ()


class PluginRef(_Model):
    #: name of a plugin defined in ``plugins``
    plugin_ref: str


class DataLayerSource(_Model):
    #: a ``metrics-data-source`` plugin
    plugin_ref: str
    #: ``core-metrics-extractor`` plugins that read this source
    extractors: tuple[PluginRef, ...] = ()


class DataLayerConfig(_Model):
    #: metric sources; this picker scrapes one metrics endpoint per model server, so at most one
    sources: tuple[DataLayerSource, ...] = ()


class PriorityBandConfig(_Model):
    """A flow-control priority band (kept for display; flow control is not implemented)."""

    priority: int | None = None
    #: bytes or quantity; reference default 1G
    max_bytes: int | str | None = None
    max_requests: int | None = Field(default=None, ge=0)
    fairness_policy_ref: str | None = None
    ordering_policy_ref: str | None = None

    @field_validator("max_bytes")
    @classmethod
    def _quantity(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_quantity(v)
        return v


class FlowControlConfig(_Model):
    """The reference ``flowControl`` block: accepted, validated and kept, but not acted on (see flag
    :attr:`PickerConfig.flow_control_requested`)."""

    max_bytes: int | str | None = None
    max_requests: int | str | None = None
    #: Go duration; 0 = wait until the client cancels
    default_request_ttl: str | float | None = Field(default=None, alias="defaultRequestTTL")
    default_priority_band: PriorityBandConfig | None = None
    priority_bands: tuple[PriorityBandConfig, ...] = ()
    usage_limit_policy_plugin_ref: str | None = None

    @field_validator("max_bytes", "max_requests")
    @classmethod
    def _quantity(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_quantity(v)
        return v

    @field_validator("default_request_ttl")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_duration(v)
        return v


class EndpointPickerDocument(_Model):
    """The reference ``EndpointPickerConfig`` document, as written (defaults are applied downstream)."""

    api_version: Literal["inference.networking.x-k8s.io/v1alpha1"]
    kind: Literal["EndpointPickerConfig"]
    #: optional behaviours; unknown names are errors (reference)
    feature_gates: tuple[str, ...] = ()
    plugins: tuple[PluginConfig, ...] = ()
    #: empty → one profile ``default`` with every filter/scorer/picker plugin (reference)
    scheduling_profiles: tuple[SchedulingProfileConfig, ...] = ()
    #: unset → ``utilization-detector`` (reference); an empty pluginRef is an error
    saturation_detector: PluginRef | None = None
    data_layer: DataLayerConfig | None = None
    flow_control: FlowControlConfig | None = None
    #: unset → the only parser plugin defined, else ``openai-parser``
    parser: PluginRef | None = None

    @field_validator("feature_gates")
    @classmethod
    def _gates(cls, gates: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(gates) - KNOWN_FEATURE_GATES)
        if unknown:
            known = ", ".join(sorted(KNOWN_FEATURE_GATES))
            raise ValueError(f"unknown feature gate(s) {', '.join(unknown)} (known: {known})")
        return gates


# ---------------------------------------------------------------------------------------------- service
class MetricsDataSourceParams(_Model):
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


class EngineConfig(_Model):
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
        if v and _LABEL_NAME.fullmatch(v) is None:
            raise ValueError(f"{v!r} is not a Prometheus label name")
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


class CoreMetricsExtractorParams(_Model):
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


class _NoParams(_Model):
    """Parameters of plugin types that take none (parsers, served verifier)."""


_SERVICE_PARAM_MODELS: Mapping[str, type[_Model]] = {
    METRICS_DATA_SOURCE: MetricsDataSourceParams,
    CORE_METRICS_EXTRACTOR: CoreMetricsExtractorParams,
    SERVED_VERIFIER: _NoParams,
    **dict.fromkeys(PARSER_TYPES, _NoParams),
}


# ---------------------------------------------------------------------------------------------- ours
class ObjectiveConfig(_Model):
    """An InferenceObjective for standalone mode (no CRDs): name → priority."""

    #: the value clients put in ``x-gateway-inference-objective``
    name: str = Field(min_length=1)
    #: higher is more important; negative = sheddable when saturated (unset → 0, as the CRD)
    priority: int = 0


class ModelMatch(_Model):
    #: only ``Exact`` exists in the CRD
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1)


class RewriteMatch(_Model):
    model: ModelMatch


class RewriteTarget(_Model):
    #: model name written into the request body
    model_rewrite: str = Field(min_length=1)
    #: relative weight 1..1,000,000; unset/0 everywhere → uniform (CRD semantics)
    weight: int | None = Field(default=None, ge=0, le=1_000_000)


class RewriteRule(_Model):
    #: OR of exact model matches; empty = matches every model (generic rule)
    matches: tuple[RewriteMatch, ...] = ()
    targets: tuple[RewriteTarget, ...] = Field(min_length=1)


class ModelRewriteConfig(_Model):
    """An InferenceModelRewrite spec for standalone mode; ``name`` is the object name (metrics label)."""

    name: str = Field(min_length=1)
    rules: tuple[RewriteRule, ...] = Field(min_length=1)


class RequestConfig(_Model):
    """Limits on what the picker accepts from clients."""

    #: largest request body we buffer, bytes (or a quantity such as 16Mi); larger → 413. The reference has
    #: no limit; 16Mi is well above long-context prompts (~1M tokens of text is ~4 MB) yet bounds memory.
    max_body_bytes: int = 16 * 2**20

    @field_validator("max_body_bytes", mode="before")
    @classmethod
    def _quantity(cls, v: object) -> int:
        n = parse_quantity(v)
        if n <= 0:
            raise ValueError("must be > 0")
        return n


class PickerSettingsDocument(_Model):
    """Our ``PickerConfig`` document (optional second document)."""

    api_version: Literal["picker.dev/v1alpha1"] = PICKER_API_VERSION
    kind: Literal["PickerConfig"] = PICKER_KIND
    #: standalone-mode objectives (with CRDs, InferenceObjective objects are watched instead)
    objectives: tuple[ObjectiveConfig, ...] = ()
    #: standalone-mode rewrites (with CRDs, InferenceModelRewrite objects are watched instead)
    model_rewrites: tuple[ModelRewriteConfig, ...] = ()
    request: RequestConfig = RequestConfig()
    #: whether the gateway is asked to skip the response phases of requests that do not need them
    #: (ext_proc ``mode_override``; the proxy honours it only with ``allow_mode_override: true``).
    #: ``Always`` (default): every response is processed, so every response-side metric is recorded.
    #: ``WhenNeeded``: a request's response is skipped unless its model was rewritten (the name must be
    #: put back), the conformance served-endpoint verifier is configured, or a request-attribute-reporter
    #: plugin is configured (usage reporting). Skipping saves two to four gRPC messages per request (the
    #: largest per-request cost of the EPP, see benchmarks/RESULTS.md) but loses, for skipped requests:
    #: inference_objective_request_duration_seconds, _response_sizes, _input_tokens, _output_tokens,
    #: _prompt_cached_tokens, _normalized_time_per_output_token_seconds and ModelServerError counts.
    #: Request counts and sizes, in-flight accounting and scheduling metrics are unaffected.
    response_processing: Literal["Always", "WhenNeeded"] = "Always"
    #: seconds (or a duration such as 2s): endpoints with older metrics are left out of the pool gauges
    #: and ``inference_pool_ready_pods``. Unset → the ``--metrics-staleness-threshold`` flag (default 2s);
    #: set here, it overrides the flag and follows reloads.
    staleness_threshold: float | None = None

    @field_validator("staleness_threshold", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"must be a duration such as 2s, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        seconds = parse_duration(v)
        if seconds <= 0:
            raise ValueError("must be > 0")
        return seconds

    @model_validator(mode="after")
    def _unique(self) -> PickerSettingsDocument:
        for what, names in (
            ("objectives", [o.name for o in self.objectives]),
            ("modelRewrites", [r.name for r in self.model_rewrites]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what}: duplicate name(s) {', '.join(duplicates)}")
        return self


# ---------------------------------------------------------------------------------------------- result
class PickerConfig(_Model):
    """A fully validated configuration: both documents plus what was derived from them.

    Build it with :func:`load_config_text`, :func:`load_config_file` or :func:`default_config`; the
    constructor alone does not validate plugin parameters or build the scheduler.
    """

    #: the reference document as written
    endpoint_picker: EndpointPickerDocument
    #: our document (defaults when absent)
    settings: PickerSettingsDocument = PickerSettingsDocument()
    #: the effective ``metrics-data-source`` parameters (defaults when none is configured)
    metrics_source: MetricsDataSourceParams = MetricsDataSourceParams()
    #: the effective ``core-metrics-extractor`` parameters
    metrics_extractor: CoreMetricsExtractorParams = CoreMetricsExtractorParams()
    #: the parser type in use: ``openai-parser``, ``passthrough-parser`` or ``vllmgrpc-parser``
    parser: str = DEFAULT_PARSER
    #: ``destination-endpoint-served-verifier`` configured (conformance: echo the served endpoint)
    served_verifier_enabled: bool = False
    #: ``request-attribute-reporter`` plugins, parameters kept as given
    request_attribute_reporters: tuple[PluginConfig, ...] = ()

    # -------------------------------------------------------------------------------- derived views
    @property
    def engine_configs(self) -> tuple[EngineConfig, ...]:
        return self.metrics_extractor.engine_configs

    @property
    def feature_gates(self) -> frozenset[str]:
        return frozenset(self.endpoint_picker.feature_gates)

    @property
    def flow_control_requested(self) -> bool:
        """True when the document asks for flow control, which is not implemented (log a warning)."""
        return "flowControl" in self.feature_gates or self.endpoint_picker.flow_control is not None

    @property
    def objectives(self) -> tuple[ObjectiveConfig, ...]:
        return self.settings.objectives

    @property
    def model_rewrites(self) -> tuple[ModelRewriteConfig, ...]:
        return self.settings.model_rewrites

    @property
    def max_body_bytes(self) -> int:
        return self.settings.request.max_body_bytes

    @property
    def may_skip_responses(self) -> bool:
        """True when a request whose model is not rewritten needs no response processing: the operator
        chose ``responseProcessing: WhenNeeded`` and no configured feature reads responses (the
        served-endpoint verifier echoes upstream metadata; request-attribute reporters report usage)."""
        return (
            self.settings.response_processing == "WhenNeeded"
            and not self.served_verifier_enabled
            and not self.request_attribute_reporters
        )

    @property
    def staleness_threshold(self) -> float | None:
        """The document's pool-gauge staleness threshold, or None to use the process flag."""
        return self.settings.staleness_threshold

    def plugin_specs(self) -> tuple[list[PluginSpec], list[ProfileSpec], str | None]:
        """The scheduling part of the reference document as :mod:`scoring` specs."""
        doc = self.endpoint_picker
        plugins = [PluginSpec(p.effective_name, p.type, p.parameters) for p in doc.plugins]
        profiles = [
            ProfileSpec(p.name, [(r.plugin_ref, r.weight) for r in p.plugins])
            for p in doc.scheduling_profiles
        ]
        detector = doc.saturation_detector.plugin_ref if doc.saturation_detector is not None else None
        return plugins, profiles, detector

    def build_scheduler(self, registry: Registry | None = None) -> Scheduler:
        """A new scheduler for this configuration. Raises ConfigError (same message as scoring's)."""
        plugins, profiles, detector = self.plugin_specs()
        try:
            return build_scheduler(plugins, profiles, saturation_detector=detector, registry=registry)
        except ConfigurationError as exc:
            raise ConfigError(f"{REFERENCE_KIND}: {exc}") from exc

    def to_dict(self, registry: Registry | None = None) -> dict[str, Any]:
        """The effective configuration as plain data (the ``/config`` admin endpoint)."""
        return config_to_dict(self, registry)


def config_to_dict(cfg: PickerConfig, registry: Registry | None = None) -> dict[str, Any]:
    """Plain data: both documents as written plus everything in effect after defaulting."""
    return {
        "endpointPickerConfig": cfg.endpoint_picker.model_dump(by_alias=True, mode="json", exclude_none=True),
        "pickerConfig": {
            **cfg.settings.model_dump(by_alias=True, mode="json"),
            "stalenessThreshold": (
                format_duration(cfg.staleness_threshold) if cfg.staleness_threshold is not None else None
            ),
        },
        "effective": {
            "scheduler": cfg.build_scheduler(registry).describe(),
            "metricsSource": cfg.metrics_source.model_dump(by_alias=True, mode="json"),
            "metricsExtractor": cfg.metrics_extractor.model_dump(
                by_alias=True, mode="json", exclude_none=True
            ),
            "parser": cfg.parser,
            "servedVerifierEnabled": cfg.served_verifier_enabled,
            "requestAttributeReporters": [
                p.model_dump(by_alias=True, mode="json") for p in cfg.request_attribute_reporters
            ],
            "featureGates": sorted(cfg.feature_gates),
            "flowControl": {"requested": cfg.flow_control_requested, "implemented": False},
        },
    }


# ---------------------------------------------------------------------------------------------- loading
def _service_params(plugin: PluginConfig) -> _Model | None:
    model = _SERVICE_PARAM_MODELS.get(plugin.type)
    if model is None:
        return None
    try:
        return model.model_validate(plugin.parameters, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ConfigError(
            _describe_errors(
                f"{REFERENCE_KIND}: plugin {plugin.effective_name!r} (type {plugin.type!r})", exc
            )
        ) from exc


def _pick_one(kind: str, plugins: Sequence[PluginConfig]) -> PluginConfig | None:
    if len(plugins) > 1:
        names = ", ".join(p.effective_name for p in plugins)
        raise ConfigError(
            f"{REFERENCE_KIND}: more than one {kind} plugin ({names}); reference one explicitly"
        )
    return plugins[0] if plugins else None


def _by_ref(
    by_name: Mapping[str, PluginConfig], ref: str, allowed: frozenset[str], field: str
) -> PluginConfig:
    plugin = by_name.get(ref)
    if plugin is None and ref in allowed:
        # the reference auto-instantiates these plugins under their type name, so a reference to the
        # bare type (``parser: {pluginRef: openai-parser}``) is valid without a plugins[] entry
        return PluginConfig(type=ref)
    if plugin is None:
        raise ConfigError(f"{REFERENCE_KIND}: {field}: pluginRef {ref!r} does not name a plugin")
    if plugin.type not in allowed:
        raise ConfigError(
            f"{REFERENCE_KIND}: {field}: plugin {ref!r} has type {plugin.type!r}, expected "
            f"{' or '.join(sorted(allowed))}"
        )
    return plugin


def _data_layer(
    doc: EndpointPickerDocument, by_name: Mapping[str, PluginConfig]
) -> tuple[PluginConfig | None, PluginConfig | None]:
    """The metrics source and extractor plugins in effect (None = built-in defaults)."""
    if doc.data_layer is not None and doc.data_layer.sources:
        sources = doc.data_layer.sources
        if len(sources) > 1:
            raise ConfigError(f"{REFERENCE_KIND}: dataLayer.sources: only one metrics source is supported")
        source = _by_ref(
            by_name, sources[0].plugin_ref, frozenset({METRICS_DATA_SOURCE}), "dataLayer.sources[0]"
        )
        extractors = [
            _by_ref(
                by_name,
                e.plugin_ref,
                frozenset({CORE_METRICS_EXTRACTOR}),
                f"dataLayer.sources[0].extractors[{i}]",
            )
            for i, e in enumerate(sources[0].extractors)
        ]
        return source, _pick_one(CORE_METRICS_EXTRACTOR, extractors)
    plugins = doc.plugins
    return (
        _pick_one(METRICS_DATA_SOURCE, [p for p in plugins if p.type == METRICS_DATA_SOURCE]),
        _pick_one(CORE_METRICS_EXTRACTOR, [p for p in plugins if p.type == CORE_METRICS_EXTRACTOR]),
    )


def _assemble(
    doc: EndpointPickerDocument, settings: PickerSettingsDocument, registry: Registry | None
) -> PickerConfig:
    by_name: dict[str, PluginConfig] = {}
    for p in doc.plugins:
        by_name.setdefault(p.effective_name, p)
    base = PickerConfig(endpoint_picker=doc, settings=settings)
    base.build_scheduler(registry)  # unknown types, dangling refs, bad scheduling parameters
    for p in doc.plugins:
        _service_params(p)
    source, extractor = _data_layer(doc, by_name)
    if doc.parser is not None:
        if not doc.parser.plugin_ref:
            raise ConfigError(f"{REFERENCE_KIND}: parser.pluginRef must not be empty")
        parser = _by_ref(by_name, doc.parser.plugin_ref, PARSER_TYPES, "parser").type
    else:
        defined = _pick_one("parser", [p for p in doc.plugins if p.type in PARSER_TYPES])
        parser = defined.type if defined is not None else DEFAULT_PARSER
    if parser == "vllmgrpc-parser":
        # Accepted by the reference for vLLM's gRPC engine API; we only route HTTP (OpenAI) or opaque bodies.
        raise ConfigError(
            f"{REFERENCE_KIND}: parser vllmgrpc-parser is not supported by this EPP; "
            "use openai-parser or passthrough-parser"
        )
    return base.model_copy(
        update={
            "metrics_source": _service_params(source) if source is not None else MetricsDataSourceParams(),
            "metrics_extractor": (
                _service_params(extractor) if extractor is not None else CoreMetricsExtractorParams()
            ),
            "parser": parser,
            "served_verifier_enabled": any(p.type == SERVED_VERIFIER for p in doc.plugins),
            "request_attribute_reporters": tuple(
                p for p in doc.plugins if p.type == REQUEST_ATTRIBUTE_REPORTER
            ),
        }
    )


def _classify(raw: Mapping[str, Any], index: int) -> str:
    api = raw.get("apiVersion")
    kind = raw.get("kind")
    if (api, kind) == (REFERENCE_API_VERSION, REFERENCE_KIND):
        return REFERENCE_KIND
    if (api, kind) == (PICKER_API_VERSION, PICKER_KIND):
        return PICKER_KIND
    raise ConfigError(
        f"document {index + 1}: apiVersion/kind {api!r}/{kind!r} is not "
        f"{REFERENCE_API_VERSION}/{REFERENCE_KIND} nor {PICKER_API_VERSION}/{PICKER_KIND}"
    )


def load_config_text(text: str, *, registry: Registry | None = None) -> PickerConfig:
    """Parse, default and fully validate a configuration text (one or two YAML documents).

    Raises :class:`~picker.errors.ConfigError` naming the document and field for any problem.
    """
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from exc
    found: dict[str, Mapping[str, Any]] = {}
    for i, raw in enumerate(documents):
        if not isinstance(raw, Mapping):
            raise ConfigError(f"document {i + 1}: expected a mapping, got {type(raw).__name__}")
        kind = _classify(raw, i)
        if kind in found:
            raise ConfigError(f"more than one {kind} document")
        found[kind] = raw
    if not found:
        return default_config()
    try:
        doc = (
            EndpointPickerDocument.model_validate(found[REFERENCE_KIND], by_alias=True, by_name=False)
            if REFERENCE_KIND in found
            else default_config().endpoint_picker
        )
    except ValidationError as exc:
        raise ConfigError(_describe_errors(REFERENCE_KIND, exc)) from exc
    try:
        settings = PickerSettingsDocument.model_validate(
            found.get(PICKER_KIND, {}), by_alias=True, by_name=False
        )
    except ValidationError as exc:
        raise ConfigError(_describe_errors(PICKER_KIND, exc)) from exc
    return _assemble(doc, settings, registry)


def load_config_file(path: str | Path, *, registry: Registry | None = None) -> PickerConfig:
    """:func:`load_config_text` on a file's contents (UTF-8); an unreadable file is a ConfigError too."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    return load_config_text(text, registry=registry)


def _document(plugins: list[PluginSpec], profiles: list[ProfileSpec]) -> EndpointPickerDocument:
    return EndpointPickerDocument(
        api_version=REFERENCE_API_VERSION,
        kind=REFERENCE_KIND,
        plugins=tuple(PluginConfig(name=p.name, type=p.type, parameters=dict(p.parameters)) for p in plugins),
        scheduling_profiles=tuple(
            SchedulingProfileConfig(
                name=p.name,
                plugins=tuple(ProfilePluginRef(plugin_ref=ref, weight=w) for ref, w in p.plugins),
            )
            for p in profiles
        ),
    )


def default_config() -> PickerConfig:
    """The built-in configuration used when none is given: our default profile
    (:func:`scoring.default_scheduler`; see ``scoring/README.md``), defaults for everything else."""
    return _assemble(_document(*default_specs()), PickerSettingsDocument(), None)


def reference_default_config() -> PickerConfig:
    """The reference EPP's built-in configuration (queue 2, KV 2, prefix 3), for strict compatibility."""
    return _assemble(_document(*reference_default_specs()), PickerSettingsDocument(), None)
