"""Our ``PickerConfig`` document (``apiVersion: picker.dev/v1alpha1``, optional): what the reference keeps
in CRDs (objectives, rewrites, for standalone mode) or lacks (request limits, response processing,
staleness). A new configuration section goes here, as a field of :class:`PickerSettingsDocument`."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field, field_validator, model_validator

from picker.config.base import StrictModel
from picker.config.costs import (
    EndpointPricesConfig,
    ExternalEndpointConfig,
    SpilloverConfig,
    check_external,
)
from picker.config.scaling import ScalingConfig
from picker.config.tenants import TenantsConfig
from picker.config.values import parse_quantity
from picker.headers import header_name
from scoring.durations import parse_duration

PICKER_API_VERSION: Final = "picker.dev/v1alpha1"
PICKER_KIND: Final = "PickerConfig"
#: where header-only mode reads the gateway's prompt-token estimate, unless ``request.promptTokensHeader``
DEFAULT_PROMPT_TOKENS_HEADER: Final = "x-picker-prompt-tokens"
#: the longest staleness threshold (an hour-old metric is no load signal)
MAX_STALENESS_S: Final = 3600.0


class ObjectiveConfig(StrictModel):
    """An InferenceObjective for standalone mode (no CRDs): name → priority."""

    #: the value clients put in ``x-gateway-inference-objective`` (a Kubernetes object name's length)
    name: str = Field(min_length=1, max_length=253)
    #: higher is more important; negative = sheddable when saturated (unset → 0, as the CRD); a 32-bit
    #: integer, as the CRD's ``int32`` field
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)


class ModelMatch(StrictModel):
    #: only ``Exact`` exists in the CRD
    type: Literal["Exact"] = "Exact"
    value: str = Field(min_length=1)


class RewriteMatch(StrictModel):
    model: ModelMatch


class RewriteTarget(StrictModel):
    #: model name written into the request body
    model_rewrite: str = Field(min_length=1)
    #: relative weight 1..1,000,000; unset/0 everywhere → uniform (CRD semantics)
    weight: int | None = Field(default=None, ge=0, le=1_000_000)


class RewriteRule(StrictModel):
    #: OR of exact model matches; empty = matches every model (generic rule)
    matches: tuple[RewriteMatch, ...] = ()
    targets: tuple[RewriteTarget, ...] = Field(min_length=1)


class ModelRewriteConfig(StrictModel):
    """An InferenceModelRewrite spec for standalone mode; ``name`` is the object name (metrics label)."""

    name: str = Field(min_length=1)
    rules: tuple[RewriteRule, ...] = Field(min_length=1)


class RequestConfig(StrictModel):
    """Limits on what the picker accepts from clients."""

    #: largest request body we buffer, bytes (or a quantity such as 16Mi); larger → 413. The reference has
    #: no limit; 16Mi is well above long-context prompts (~1M tokens of text is ~4 MB) yet bounds memory.
    max_body_bytes: int = Field(16 * 2**20, le=2**30)
    #: all bodies buffered at once by the process, and separately its replies not yet written (bytes or a
    #: quantity); a request that would exceed it gets 503 at once, a reply waits for room. Unset →
    #: ``--max-buffered-body-bytes`` (256Mi); with ``--workers N`` each worker gets 1/N of it. With several
    #: pools (``--pool``) the flag bounds the process and this may only lower the pool's share: a larger
    #: value is capped at the flag with a warning (``picker.wiring.body_budget``).
    #: See :mod:`picker.extproc.budget`.
    max_buffered_bytes: int | None = Field(None, le=2**40)
    #: header-only mode: the request header that carries the model (e.g. ``x-ai-eg-model``, which Envoy AI
    #: Gateway sets). Set, the EPP routes at the request-headers message and asks the proxy to skip every
    #: later phase (one ext_proc message per request; the proxy should run with ``request_body_mode:
    #: NONE``). Unset (null) → the ``--model-header`` flag; ``""`` turns the mode off whatever the flag.
    #: Plugins that need the body or the response are rejected in this mode (``picker.config.header_only``).
    model_header: str | None = None
    #: header-only mode: the header carrying the gateway's estimate of the prompt's tokens (a non-negative
    #: integer), used for the token accounting the body would otherwise give; absent → 0 tokens, the
    #: request still counts as one request in flight.
    prompt_tokens_header: str = DEFAULT_PROMPT_TOKENS_HEADER

    @field_validator("model_header", mode="before")
    @classmethod
    def _model_header(cls, v: object) -> str | None:
        if v is None or v == "":
            return v  # None (inherit the flag) or "" (off)
        if not isinstance(v, str):
            raise ValueError(f"must be a header name, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        return header_name(v)

    @field_validator("prompt_tokens_header", mode="before")
    @classmethod
    def _tokens_header(cls, v: object) -> str:
        if not isinstance(v, str):
            raise ValueError(f"must be a header name, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        return header_name(v)

    @field_validator("max_body_bytes", "max_buffered_bytes", mode="before")
    @classmethod
    def _quantity(cls, v: object) -> int | None:
        if v is None:
            return None
        n = parse_quantity(v)
        if n <= 0:
            raise ValueError("must be > 0")
        return n


class PickerSettingsDocument(StrictModel):
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
    #: put back) or the conformance served-endpoint verifier is configured. Skipping saves two to four
    #: gRPC messages per request (the largest per-request cost of the EPP, see benchmarks/RESULTS.md) but
    #: loses, for skipped requests:
    #: inference_objective_request_duration_seconds, _response_sizes, _input_tokens, _output_tokens,
    #: _prompt_cached_tokens, _normalized_time_per_output_token_seconds and ModelServerError counts.
    #: Request counts and sizes, in-flight accounting and scheduling metrics are unaffected.
    response_processing: Literal["Always", "WhenNeeded"] = "Always"
    #: seconds (or a duration such as 2s; at most 1h): endpoints with older metrics are left out of the
    #: pool gauges and ``inference_pool_ready_pods``. Unset → the ``--metrics-staleness-threshold`` flag
    #: (default 2s); set here, it overrides the flag and follows reloads.
    staleness_threshold: float | None = None
    #: tenant metering, limits and budgets (:mod:`picker.config.tenants`); unset = off
    tenants: TenantsConfig | None = None
    #: the off-peak scale-down (and back up) scheduler (:mod:`picker.config.scaling`, ``picker/scaler``);
    #: unset = off. Runs on the leader in Kubernetes mode; dry run until ``dryRun: false``
    scaling: ScalingConfig | None = None
    #: ``Avoid`` (default): while at least one candidate endpoint has metrics fresher than the staleness
    #: threshold above, endpoints with older metrics, or never scraped, are not primary, only last-resort
    #: fallbacks (a killed or hung model server keeps its last gauges, which look idle); when every
    #: candidate is stale, requests are routed anyway (``picker.routing.avoid``). ``Allow``: the
    #: reference's behaviour, stale values are scored as they are.
    stale_endpoints: Literal["Avoid", "Allow"] = "Avoid"
    #: what serving costs on the pool's endpoints, for ``cost-scorer`` (:mod:`picker.config.costs`); a
    #: pod's own ``picker.dev/price-*-per-1m`` label or annotation wins; unset = only those
    endpoint_prices: EndpointPricesConfig | None = None
    #: capacity outside the pool (e.g. a Service forwarding to a managed API), used when the pool is
    #: saturated or unhealthy or when the objective asks (:mod:`picker.config.costs`); none by default
    external_endpoints: tuple[ExternalEndpointConfig, ...] = ()
    #: when requests go to ``externalEndpoints``
    spillover: SpilloverConfig = SpilloverConfig()

    @field_validator("staleness_threshold", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"must be a duration such as 2s, got {v!r}")  # noqa: TRY004 - pydantic wants ValueError
        seconds = parse_duration(v)
        if not 0 < seconds <= MAX_STALENESS_S:
            raise ValueError(f"must be > 0 and at most {MAX_STALENESS_S:g}s")
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
        check_external(self.external_endpoints, self.spillover.replicas)
        return self
