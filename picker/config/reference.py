"""The reference ``EndpointPickerConfig`` document, decoded strictly like the reference (unknown fields are
errors). Scheduling plugins are validated by :mod:`scoring`; service plugins' parameters by
:mod:`picker.config.plugins`."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, field_validator

from picker.config.base import StrictModel
from picker.config.values import parse_quantity
from scoring.durations import parse_duration

REFERENCE_API_VERSION: Final = "inference.networking.x-k8s.io/v1alpha1"
REFERENCE_KIND: Final = "EndpointPickerConfig"

#: Feature gates the reference defines; ``dataLayer`` is a legacy no-op it still accepts.
KNOWN_FEATURE_GATES = frozenset({"flowControl", "enableLegacyMetrics", "dataLayer"})
#: flow-control bounds: queued bytes (1Ti), queued requests and the longest wait in a queue
MAX_QUEUED_BYTES: Final = 1 << 40
MAX_QUEUED_REQUESTS: Final = 10**9
MAX_REQUEST_TTL_S: Final = 86_400.0


def _bounded_quantity(value: object, maximum: int) -> int:
    n = parse_quantity(value)
    if n > maximum:
        raise ValueError(f"must be at most {maximum}, got {n}")
    return n


class PluginConfig(StrictModel):
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


class ProfilePluginRef(StrictModel):
    """One plugin of a scheduling profile."""

    #: name of a plugin defined in ``plugins``
    plugin_ref: str
    #: scorer weight (not normalized), 0..1,000,000; unset = 1 (reference). Ignored for filters and pickers.
    weight: float | None = Field(default=None, ge=0, le=1_000_000, allow_inf_nan=False)


class SchedulingProfileConfig(StrictModel):
    """One ``schedulingProfiles[]`` entry."""

    #: profile name (required, unique); checked by the scheduler builder with the reference's message
    name: str = ""
    #: filters, scorers and one picker, in run order
    plugins: tuple[ProfilePluginRef, ...] = ()


class PluginRef(StrictModel):
    #: name of a plugin defined in ``plugins``
    plugin_ref: str


class DataLayerSource(StrictModel):
    #: a ``metrics-data-source`` plugin
    plugin_ref: str
    #: ``core-metrics-extractor`` plugins that read this source
    extractors: tuple[PluginRef, ...] = ()


class DataLayerConfig(StrictModel):
    #: metric sources; this picker scrapes one metrics endpoint per model server, so at most one
    sources: tuple[DataLayerSource, ...] = ()


class PriorityBandConfig(StrictModel):
    """A flow-control priority band: ``maxRequests``/``maxBytes`` bound its queue (picker.tenants.flow);
    the fairness policy is round robin between flows and the ordering FCFS, whatever the refs name."""

    #: an InferenceObjective priority (the CRD's int32)
    priority: int | None = Field(default=None, ge=-(2**31), le=2**31 - 1)
    #: bytes or quantity, at most 1Ti; reference default 1G
    max_bytes: int | str | None = None
    max_requests: int | None = Field(default=None, ge=0, le=MAX_QUEUED_REQUESTS)
    fairness_policy_ref: str | None = None
    ordering_policy_ref: str | None = None

    @field_validator("max_bytes")
    @classmethod
    def _quantity(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            _bounded_quantity(v, MAX_QUEUED_BYTES)
        return v


class FlowControlConfig(StrictModel):
    """The reference ``flowControl`` block, enforced when the ``flowControl`` feature gate is on
    (:mod:`picker.tenants.flow`): ``maxRequests``/``maxBytes`` bound the queues, ``defaultRequestTTL``
    the wait (unset: 30 s; 0: until the client goes away); ``usageLimitPolicyPluginRef`` is not
    supported (the saturation detector's 1.0 is the limit of every band)."""

    max_bytes: int | str | None = None
    max_requests: int | str | None = None
    #: Go duration; 0 = wait until the client cancels
    default_request_ttl: str | float | None = Field(default=None, alias="defaultRequestTTL")
    default_priority_band: PriorityBandConfig | None = None
    priority_bands: tuple[PriorityBandConfig, ...] = ()
    usage_limit_policy_plugin_ref: str | None = None

    @field_validator("max_bytes")
    @classmethod
    def _bytes(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            _bounded_quantity(v, MAX_QUEUED_BYTES)
        return v

    @field_validator("max_requests")
    @classmethod
    def _requests(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            _bounded_quantity(v, MAX_QUEUED_REQUESTS)
        return v

    @field_validator("default_request_ttl")
    @classmethod
    def _duration(cls, v: str | float | None) -> str | float | None:
        if v is not None and parse_duration(v) > MAX_REQUEST_TTL_S:
            raise ValueError(f"must be at most {MAX_REQUEST_TTL_S:g}s (a day)")
        return v


class EndpointPickerDocument(StrictModel):
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
