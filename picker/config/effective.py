"""The validated result: both documents plus what was derived from them (:class:`PickerConfig`)."""

from __future__ import annotations

from typing import Any

from picker.config.base import StrictModel
from picker.config.document import (
    ModelRewriteConfig,
    ObjectiveConfig,
    PickerSettingsDocument,
)
from picker.config.plugins import (
    DEFAULT_PARSER,
    CoreMetricsExtractorParams,
    EngineConfig,
    MetricsDataSourceParams,
    OutlierDetectorParams,
)
from picker.config.reference import REFERENCE_KIND, EndpointPickerDocument, PluginConfig
from picker.config.scaling import ScalingConfig
from picker.errors import ConfigError
from scoring import ConfigurationError, PluginSpec, Profiles, ProfileSpec, Registry, Scheduler, build_profiles
from scoring.durations import format_duration

#: the flow-control policies :mod:`picker.tenants.flow` implements (see ``PickerConfig.flow_control_caveats``)
_FAIRNESS = "round-robin-fairness-policy"
_ORDERING = "fcfs-ordering-policy"


class PickerConfig(StrictModel):
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
    #: the effective ``outlier-detector`` parameters (passive health; on with defaults when not configured)
    outlier_detection: OutlierDetectorParams = OutlierDetectorParams()
    #: header-only mode: the request header carrying the model (the document's ``request.modelHeader``,
    #: else the ``--model-header`` flag); "" = off (:mod:`picker.config.header_only`)
    model_header: str = ""

    # -------------------------------------------------------------------------------- derived views
    @property
    def engine_configs(self) -> tuple[EngineConfig, ...]:
        return self.metrics_extractor.engine_configs

    @property
    def feature_gates(self) -> frozenset[str]:
        return frozenset(self.endpoint_picker.feature_gates)

    @property
    def flow_control_requested(self) -> bool:
        """True when the document has the ``flowControl`` gate or block (enforced with the gate, as the
        reference: ``picker.tenants.flow``)."""
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
    def prompt_tokens_header(self) -> str:
        """Header-only mode: the header carrying the gateway's prompt-token estimate."""
        return self.settings.request.prompt_tokens_header

    @property
    def scaling(self) -> ScalingConfig | None:
        """The ``scaling`` section, or None when scaling is off."""
        return self.settings.scaling

    @property
    def avoid_stale_endpoints(self) -> bool:
        """True when endpoints with stale metrics are left out of picks while fresh ones exist."""
        return self.settings.stale_endpoints == "Avoid"

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

    def build_profiles(self, registry: Registry | None = None) -> Profiles:
        """New scheduling profiles and handler for this configuration. Raises ConfigError (same message as
        scoring's)."""
        plugins, profiles, detector = self.plugin_specs()
        try:
            return build_profiles(plugins, profiles, saturation_detector=detector, registry=registry)
        except ConfigurationError as exc:
            raise ConfigError(f"{REFERENCE_KIND}: {exc}") from exc

    @property
    def flow_control_caveats(self) -> tuple[str, ...]:
        """What the ``flowControl`` block asks for that is not implemented, one line each (logged when the
        config is applied, shown in ``/config``). Flow control serves the flows of a band round robin and a
        flow's requests first come, first served, against saturation 1.0: a band naming another fairness or
        ordering policy, or a usage-limit policy, is accepted (reference documents load unchanged) but must
        not be silently ignored."""
        fc = self.endpoint_picker.flow_control
        if fc is None:
            return ()
        types = {p.name or p.type: p.type for p in self.endpoint_picker.plugins}
        bands = [("defaultPriorityBand", fc.default_priority_band)] if fc.default_priority_band else []
        bands += [(f"priorityBands[{i}]", band) for i, band in enumerate(fc.priority_bands)]
        caveats: list[str] = []
        for where, band in bands:
            assert band is not None
            for field, ref, implemented, instead in (
                (
                    "fairnessPolicyRef",
                    band.fairness_policy_ref,
                    _FAIRNESS,
                    "its flows are served round robin",
                ),
                (
                    "orderingPolicyRef",
                    band.ordering_policy_ref,
                    _ORDERING,
                    "a flow is served first come, first served",
                ),
            ):
                kind = types.get(ref, ref) if ref else implemented
                if kind != implemented:
                    caveats.append(f"flowControl.{where}.{field}: {kind!r} is not implemented; {instead}")
        if fc.usage_limit_policy_plugin_ref:
            caveats.append(
                "flowControl.usageLimitPolicyPluginRef: not implemented; every band dispatches until the "
                "saturation detector reaches 1.0"
            )
        return tuple(caveats)

    def build_scheduler(self, registry: Registry | None = None) -> Scheduler:
        """The scheduler of the default profile (the only one unless a profile handler chooses between
        several), newly built. Raises ConfigError."""
        return self.build_profiles(registry).default

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
            "scheduler": cfg.build_profiles(registry).describe(),
            "metricsSource": cfg.metrics_source.model_dump(by_alias=True, mode="json"),
            "metricsExtractor": cfg.metrics_extractor.model_dump(
                by_alias=True, mode="json", exclude_none=True
            ),
            "parser": cfg.parser,
            "modelHeader": cfg.model_header,
            "servedVerifierEnabled": cfg.served_verifier_enabled,
            "outlierDetection": {
                **cfg.outlier_detection.model_dump(by_alias=True, mode="json"),
                **{
                    key: format_duration(getattr(cfg.outlier_detection, field))
                    for key, field in (
                        ("interval", "interval"),
                        ("baseEjectionTime", "base_ejection_time"),
                        ("maxEjectionTime", "max_ejection_time"),
                    )
                },
            },
            "requestAttributeReporters": [
                p.model_dump(by_alias=True, mode="json") for p in cfg.request_attribute_reporters
            ],
            "featureGates": sorted(cfg.feature_gates),
            "flowControl": {
                "requested": cfg.flow_control_requested,
                "enabled": "flowControl" in cfg.feature_gates,
                "notImplemented": list(cfg.flow_control_caveats),
            },
        },
    }
