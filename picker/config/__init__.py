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
       flowControl: {maxBytes: 10Gi, ...}      # enforced with the flowControl gate (picker.tenants.flow)
       parser: {pluginRef: openai-parser}

   Scheduling plugins (filters, scorers, pickers, detectors, profile handler) are validated and built by
   :mod:`scoring`; the others configure the service and are validated here: ``metrics-data-source``,
   ``core-metrics-extractor``, the parsers ``openai-parser`` / ``passthrough-parser`` /
   ``vllmgrpc-parser``, ``destination-endpoint-served-verifier``, ``request-attribute-reporter``, and ours,
   ``outlier-detector`` (passive health; active with its defaults when absent, ``enabled: false`` turns it
   off: :class:`~picker.config.plugins.OutlierDetectorParams`).
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
       # request: {modelHeader: x-ai-eg-model}                 # header-only mode (picker.config.header_only)
       stalenessThreshold: 2s                                  # pool gauges / ready-pods freshness

No text (or only blank documents) means the built-in default (:func:`default_config`). Every problem is a
:class:`picker.errors.ConfigError` whose message names the document, the field path and what is wrong;
loading builds the scheduler once, so an invalid document is rejected before it can be swapped in.

This package is the public surface; its modules hold one concern each: :mod:`~picker.config.reference`
(the reference document's schema), :mod:`~picker.config.plugins` (service plugins' parameters),
:mod:`~picker.config.document` (our document's schema: new sections go there),
:mod:`~picker.config.effective` (the validated result), :mod:`~picker.config.loader` (parsing, cross-checks,
defaults), :mod:`~picker.config.header_only` (what header-only mode may hold),
:mod:`~picker.config.values` (quantities, metric specs), :mod:`~picker.config.base` (the strict
model base).
"""

from __future__ import annotations

from picker.config.document import (
    PICKER_API_VERSION,
    PICKER_KIND,
    ModelMatch,
    ModelRewriteConfig,
    ObjectiveConfig,
    PickerSettingsDocument,
    RequestConfig,
    RewriteMatch,
    RewriteRule,
    RewriteTarget,
)
from picker.config.effective import (
    PickerConfig,
    config_to_dict,
)
from picker.config.loader import (
    MAX_CONFIG_BYTES,
    default_config,
    load_config_file,
    load_config_text,
    read_config_file,
    reference_default_config,
)
from picker.config.plugins import (
    BUILTIN_ENGINES,
    CORE_METRICS_EXTRACTOR,
    DEFAULT_ENGINE_LABEL,
    DEFAULT_PARSER,
    METRICS_DATA_SOURCE,
    OUTLIER_DETECTOR,
    PARSER_TYPES,
    REQUEST_ATTRIBUTE_REPORTER,
    SERVED_VERIFIER,
    CoreMetricsExtractorParams,
    EngineConfig,
    MetricsDataSourceParams,
    OutlierDetectorParams,
    SpecText,
)
from picker.config.reference import (
    KNOWN_FEATURE_GATES,
    REFERENCE_API_VERSION,
    REFERENCE_KIND,
    DataLayerConfig,
    DataLayerSource,
    EndpointPickerDocument,
    FlowControlConfig,
    PluginConfig,
    PluginRef,
    PriorityBandConfig,
    ProfilePluginRef,
    SchedulingProfileConfig,
)
from picker.config.values import (
    check_metric_spec,
    parse_quantity,
)

__all__ = [
    "BUILTIN_ENGINES",
    "CORE_METRICS_EXTRACTOR",
    "DEFAULT_ENGINE_LABEL",
    "DEFAULT_PARSER",
    "KNOWN_FEATURE_GATES",
    "MAX_CONFIG_BYTES",
    "METRICS_DATA_SOURCE",
    "OUTLIER_DETECTOR",
    "PARSER_TYPES",
    "PICKER_API_VERSION",
    "PICKER_KIND",
    "REFERENCE_API_VERSION",
    "REFERENCE_KIND",
    "REQUEST_ATTRIBUTE_REPORTER",
    "SERVED_VERIFIER",
    "CoreMetricsExtractorParams",
    "DataLayerConfig",
    "DataLayerSource",
    "EndpointPickerDocument",
    "EngineConfig",
    "FlowControlConfig",
    "MetricsDataSourceParams",
    "ModelMatch",
    "ModelRewriteConfig",
    "ObjectiveConfig",
    "OutlierDetectorParams",
    "PickerConfig",
    "PickerSettingsDocument",
    "PluginConfig",
    "PluginRef",
    "PriorityBandConfig",
    "ProfilePluginRef",
    "RequestConfig",
    "RewriteMatch",
    "RewriteRule",
    "RewriteTarget",
    "SchedulingProfileConfig",
    "SpecText",
    "check_metric_spec",
    "config_to_dict",
    "default_config",
    "load_config_file",
    "load_config_text",
    "parse_quantity",
    "read_config_file",
    "reference_default_config",
]
