"""The configuration loader: both document kinds, the reference defaulting rules, every error case."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pydantic
import pytest

from picker.config import (
    PickerConfig,
    check_metric_spec,
    config_to_dict,
    default_config,
    load_config_file,
    load_config_text,
    parse_quantity,
    reference_default_config,
)
from picker.errors import ConfigError
from scoring import Registry
from scoring.registry import DEFAULT_WEIGHTS

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
OURS = "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"
EXTRACTOR = "plugins: [{{type: core-metrics-extractor, parameters: {{engineConfigs: {}}}}}]\n"

#: The reference's "all constructs" example (gie-epp.md §3.10), verbatim in structure.
REFERENCE_EXAMPLE = textwrap.dedent(
    """\
    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    featureGates: [flowControl]
    plugins:
    - type: queue-scorer
    - type: kv-cache-utilization-scorer
    - type: prefix-cache-scorer
    - type: lora-affinity-scorer
    - name: picker
      type: max-score-picker
      parameters: {maxNumOfEndpoints: 2}
    - type: utilization-detector
      parameters:
        {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 200ms, headroom: 0.2}
    - type: metrics-data-source
      parameters: {scheme: http, path: /metrics, insecureSkipVerify: true}
    - type: core-metrics-extractor
      parameters: {defaultEngine: vllm}
    schedulingProfiles:
    - name: default
      plugins:
      - {pluginRef: queue-scorer, weight: 2}
      - {pluginRef: kv-cache-utilization-scorer, weight: 2}
      - {pluginRef: prefix-cache-scorer, weight: 3}
      - {pluginRef: lora-affinity-scorer, weight: 1}
      - {pluginRef: picker}
    saturationDetector: {pluginRef: utilization-detector}
    dataLayer:
      sources:
      - pluginRef: metrics-data-source
        extractors: [{pluginRef: core-metrics-extractor}]
    flowControl:
      maxBytes: 10Gi
      defaultRequestTTL: 60s
      priorityBands:
      - {priority: 100, maxBytes: 5Gi, maxRequests: 500, fairnessPolicyRef: round-robin-fairness-policy,
         orderingPolicyRef: fcfs-ordering-policy}
    parser: {pluginRef: openai-parser}
    """
)


def load(body: str, ours: str | None = None) -> PickerConfig:
    text = HEADER + textwrap.dedent(body)
    if ours is not None:
        text += "---\n" + OURS + textwrap.dedent(ours)
    return load_config_text(text)


# ------------------------------------------------------------------------------------ documents
def test_reference_example_loads() -> None:
    cfg = load_config_text(REFERENCE_EXAMPLE)
    s = cfg.build_scheduler()
    assert s.weights == {
        "queue-scorer": 2.0,
        "kv-cache-utilization-scorer": 2.0,
        "prefix-cache-scorer": 3.0,
        "lora-affinity-scorer": 1.0,
    }
    assert s.max_endpoints == 2
    assert s.saturation_detector.parameters["headroom"] == 0.2
    assert cfg.parser == "openai-parser"
    assert cfg.flow_control_requested
    assert cfg.feature_gates == {"flowControl"}
    assert cfg.metrics_source.scheme == "http"
    assert cfg.metrics_extractor.default_engine == "vllm"
    assert cfg.endpoint_picker.flow_control is not None
    assert cfg.endpoint_picker.flow_control.default_request_ttl == "60s"
    assert not cfg.served_verifier_enabled


def test_no_configuration_is_the_default() -> None:
    for text in ("", "\n", "---\n---\n"):
        cfg = load_config_text(text)
        assert dict(cfg.build_scheduler().weights) == dict(DEFAULT_WEIGHTS)
        assert cfg.parser == "openai-parser"
        assert cfg.max_body_bytes == 16 * 2**20
        assert cfg.staleness_threshold is None  # the process flag decides
        assert not cfg.flow_control_requested


def test_reference_default_config() -> None:
    s = reference_default_config().build_scheduler()
    assert s.weights == {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}


def test_our_document_alone_keeps_the_default_scheduling() -> None:
    cfg = load_config_text(
        OURS
        + textwrap.dedent(
            """\
            objectives: [{name: batch, priority: -1}, {name: chat}]
            modelRewrites:
            - name: canary
              rules:
              - matches: [{model: {type: Exact, value: small-lora}}]
                targets:
                - {modelRewrite: small-lora-v1, weight: 90}
                - {modelRewrite: small-lora-v2, weight: 10}
              - targets: [{modelRewrite: base}]
            request: {maxBodyBytes: 2Mi}
            stalenessThreshold: 500ms
            """
        )
    )
    assert dict(cfg.build_scheduler().weights) == dict(DEFAULT_WEIGHTS)
    assert [(o.name, o.priority) for o in cfg.objectives] == [("batch", -1), ("chat", 0)]
    (rewrite,) = cfg.model_rewrites
    assert rewrite.rules[0].matches[0].model.value == "small-lora"
    assert [t.weight for t in rewrite.rules[0].targets] == [90, 10]
    assert rewrite.rules[1].matches == ()
    assert cfg.max_body_bytes == 2 * 2**20
    assert cfg.staleness_threshold == 0.5


def test_both_documents_in_either_order() -> None:
    ours = OURS + "request: {maxBodyBytes: 1000}\n"
    ref = HEADER + "plugins: [{type: queue-scorer}]\n"
    for text in (f"{ref}---\n{ours}", f"{ours}---\n{ref}"):
        cfg = load_config_text(text)
        assert cfg.max_body_bytes == 1000
        assert cfg.build_scheduler().weights == {"queue-scorer": 1.0}


# ------------------------------------------------------------------------------------ defaulting rules
def test_null_values_mean_not_set() -> None:
    cfg = load("""\
        featureGates:
        plugins:
        - {type: queue-scorer, parameters: null, name: null}
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: queue-scorer, weight: null}]
        parser:
        """)
    assert cfg.build_scheduler().weights == {"queue-scorer": 1.0}
    assert cfg.parser == "openai-parser"


def test_plugin_name_defaults_to_type() -> None:
    cfg = load(
        "plugins: [{type: queue-scorer}]\n"
        "schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]\n"
    )
    assert cfg.endpoint_picker.plugins[0].effective_name == "queue-scorer"


def test_no_profiles_gives_a_default_profile_with_every_scheduling_plugin() -> None:
    cfg = load("plugins: [{type: queue-scorer}, {type: lora-affinity-scorer}, {type: random-picker}]\n")
    s = cfg.build_scheduler()
    assert s.profile_name == "default"
    assert [p[1] for p in s.plugins] == ["queue-scorer", "lora-affinity-scorer", "random-picker"]


def test_unweighted_scorer_gets_weight_one_and_missing_picker_is_max_score() -> None:
    s = load("""\
        plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}]
        schedulingProfiles:
        - name: p
          plugins: [{pluginRef: queue-scorer}, {pluginRef: kv-cache-utilization-scorer, weight: 4}]
        """).build_scheduler()
    assert s.weights == {"queue-scorer": 1.0, "kv-cache-utilization-scorer": 4.0}
    assert s.picker.type_name == "max-score-picker"
    assert s.profile_handler == "single-profile-handler"


def test_profile_without_picker_reuses_a_configured_picker() -> None:
    s = load("""\
        plugins:
        - {type: queue-scorer}
        - {name: wr, type: weighted-random-picker, parameters: {maxNumOfEndpoints: 3}}
        schedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]
        """).build_scheduler()
    assert s.picker.name == "wr"
    assert s.max_endpoints == 3


def test_saturation_detector_defaults_and_references() -> None:
    assert load("plugins: [{type: queue-scorer}]\n").build_scheduler().saturation_detector.type_name == (
        "utilization-detector"
    )
    s = load("plugins: [{type: queue-scorer}]\nsaturationDetector: {pluginRef: concurrency-detector}\n")
    assert s.build_scheduler().saturation_detector.type_name == "concurrency-detector"


def test_parser_defaults() -> None:
    assert load("plugins: [{type: queue-scorer}]\n").parser == "openai-parser"
    # the only parser plugin defined is the parser
    assert (
        load("plugins: [{type: queue-scorer}, {type: passthrough-parser}]\n").parser == "passthrough-parser"
    )
    # a reference to a parser type without a plugins[] entry (auto-instantiated in the reference)
    assert load("parser: {pluginRef: passthrough-parser}\n").parser == "passthrough-parser"
    # known to the reference, not served here: a clear error instead of a silent fallback
    with pytest.raises(ConfigError, match="vllmgrpc-parser is not supported"):
        load("parser: {pluginRef: vllmgrpc-parser}\n")
    assert load("plugins: [{name: p, type: passthrough-parser}]\nparser: {pluginRef: p}\n").parser == (
        "passthrough-parser"
    )


def test_data_layer_defaults_and_plugins_without_data_layer_section() -> None:
    cfg = load("plugins: [{type: queue-scorer}]\n")
    assert (cfg.metrics_source.scheme, cfg.metrics_source.path, cfg.metrics_source.insecure_skip_verify) == (
        "http",
        "/metrics",
        True,
    )
    assert cfg.metrics_extractor.engine_label_key == "inference.networking.k8s.io/engine-type"
    cfg = load(
        "plugins: [{type: metrics-data-source, parameters: {scheme: https, path: /prometheus/metrics}}]\n"
    )
    assert cfg.metrics_source.scheme == "https"
    assert cfg.metrics_source.path == "/prometheus/metrics"


def test_engine_configs_with_tgi_extension() -> None:
    cfg = load("""\
        plugins:
        - type: core-metrics-extractor
          parameters:
            defaultEngine: tgi-custom
            engineLabelKey: example.com/engine
            engineConfigs:
            - name: tgi-custom
              queuedRequestsSpec: tgi_queue_size
              runningRequestsSpec: [tgi_batch_current_size, 'tgi_batch_size{kind="current"}']
              kvTokensSpec: tgi_batch_current_max_tokens
              maxBatchTotalTokens: 32000
            - name: vllm
              queuedRequestsSpec: vllm:num_requests_waiting{model_name="x"}
              cacheInfoSpec: vllm:cache_config_info
              cacheBlockSizeLabelName: block_size
        """)
    tgi, vllm = cfg.engine_configs
    dumped = tgi.model_dump(by_alias=True)
    assert set(dumped) == {
        "name",
        "queuedRequestsSpec",
        "runningRequestsSpec",
        "kvUsageSpec",
        "loraSpec",
        "cacheInfoSpec",
        "cacheBlockSizeLabelName",
        "cacheNumBlocksLabelName",
        "cacheBlockSizeSpec",
        "cacheNumBlocksSpec",
        "maxBatchTotalTokens",
        "kvTokensSpec",
    }
    assert dumped["maxBatchTotalTokens"] == 32000
    assert dumped["runningRequestsSpec"] == ["tgi_batch_current_size", 'tgi_batch_size{kind="current"}']
    assert vllm.model_dump(by_alias=True)["cacheBlockSizeLabelName"] == "block_size"
    assert cfg.metrics_extractor.default_engine == "tgi-custom"
    assert cfg.metrics_extractor.engine_label_key == "example.com/engine"


def test_service_plugins_are_exposed() -> None:
    cfg = load("""\
        plugins:
        - type: queue-scorer
        - type: destination-endpoint-served-verifier
        """)
    assert cfg.served_verifier_enabled
    assert cfg.build_scheduler().weights == {"queue-scorer": 1.0}


def test_the_request_attribute_reporter_is_rejected_with_a_reason() -> None:
    with pytest.raises(ConfigError, match=r"plugin 'cost': request-attribute-reporter .* is not supported"):
        load("""\
            plugins:
            - type: queue-scorer
            - name: cost
              type: request-attribute-reporter
              parameters: {attribute: x-cost, expression: usage.completion_tokens}
            """)


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("text", "message"),
    [
        # document level
        ("apiVersion: config.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n", "apiVersion/kind"),
        ("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: Other\n", "apiVersion/kind"),
        ("- a\n- b\n", "expected a mapping"),
        ("plugins: [\n", "invalid YAML"),
        (HEADER + "---\n" + HEADER, "more than one EndpointPickerConfig document"),
        (OURS + "---\n" + OURS, "more than one PickerConfig document"),
        # reference document: strict decode
        (HEADER + "plugin: []\n", "plugin: Extra inputs are not permitted"),
        (HEADER + "plugins: [{type: queue-scorer, weight: 2}]\n", "plugins.0.weight"),
        (
            HEADER + "schedulingProfiles: [{name: p, plugins: [{plugin_ref: x}]}]\n",
            "pluginRef: Field required",
        ),
        (HEADER + "featureGates: [fastMode]\n", "unknown feature gate"),
        (HEADER + "plugins: [{name: x}]\n", "plugins.0.type: Field required"),
        # scheduling (reported by scoring, wrapped)
        (HEADER + "plugins: [{type: magic-scorer}]\n", "unknown plugin type 'magic-scorer'"),
        (HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{plugins: []}]\n", "has no name"),
        (
            HEADER + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a}, {name: a}]\n",
            "duplicate scheduling profile name 'a'",
        ),
        (
            HEADER
            + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: a, plugins: [{pluginRef: q}]}]\n",
            "pluginRef 'q' does not name a plugin",
        ),
        (HEADER + "saturationDetector: {pluginRef: ''}\n", "saturationDetector.pluginRef must not be empty"),
        (
            HEADER + "plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: two}}]\n",
            "maxNumOfEndpoints",
        ),
        (HEADER + "plugins: [{type: queue-scorer}, {type: queue-scorer}]\n", "duplicate plugin name"),
        # service plugins
        (HEADER + "plugins: [{type: metrics-data-source, parameters: {scheme: ftp}}]\n", "scheme"),
        (
            HEADER + "plugins: [{type: metrics-data-source, parameters: {path: metrics}}]\n",
            "must start with '/'",
        ),
        (HEADER + "plugins: [{type: metrics-data-source, parameters: {port: 9}}]\n", "port"),
        (HEADER + "plugins: [{type: openai-parser, parameters: {strict: true}}]\n", "strict"),
        (
            HEADER
            + "plugins: [{type: core-metrics-extractor, parameters: {engineConfigs: [{name: default}]}}]\n",
            "reserved",
        ),
        (
            HEADER + EXTRACTOR.format("[{name: t, kvTokensSpec: x}]"),
            "needs maxBatchTotalTokens",
        ),
        (
            HEADER + EXTRACTOR.format("[{name: t, kvUsageSpec: 'a{b!=c}'}]"),
            "matcher '!=' on label 'b' is not supported, only '='",
        ),
        (
            HEADER + EXTRACTOR.format("[{name: t}, {name: t}]"),
            "duplicate engine name",
        ),
        (
            HEADER + "plugins: [{type: core-metrics-extractor, parameters: {defaultEngine: llama}}]\n",
            "defaultEngine 'llama'",
        ),
        (
            HEADER + EXTRACTOR.format("[{name: t, queueSpec: x}]"),
            "queueSpec",
        ),
        (
            HEADER + EXTRACTOR.format("[{name: t, cacheBlockSizeLabelName: 'a-b'}]"),
            "not a Prometheus label name",
        ),
        (HEADER + "plugins: [{type: queue-scorer}]\nparser: {pluginRef: queue-scorer}\n", "expected"),
        (HEADER + "parser: {pluginRef: nope}\n", "parser: pluginRef 'nope' does not name a plugin"),
        (HEADER + "parser: {pluginRef: ''}\n", "parser.pluginRef must not be empty"),
        (HEADER + "plugins: [{type: openai-parser}, {type: passthrough-parser}]\n", "more than one parser"),
        (HEADER + "dataLayer: {sources: [{pluginRef: src}]}\n", "pluginRef 'src' does not name a plugin"),
        (
            HEADER
            + "plugins: [{name: a, type: metrics-data-source}, {name: b, type: metrics-data-source}]\n"
            + "dataLayer: {sources: [{pluginRef: a}, {pluginRef: b}]}\n",
            "only one metrics source",
        ),
        (
            HEADER
            + "plugins: [{name: a, type: metrics-data-source}, {name: b, type: metrics-data-source}]\n",
            "more than one metrics-data-source",
        ),
        (
            HEADER
            + "plugins: [{type: metrics-data-source}, {type: queue-scorer}]\n"
            + "dataLayer: {sources: [{pluginRef: metrics-data-source,"
            + " extractors: [{pluginRef: queue-scorer}]}]}\n",
            "expected core-metrics-extractor",
        ),
        (HEADER + "flowControl: {maxBytes: lots}\n", "flowControl.maxBytes"),
        (HEADER + "flowControl: {defaultRequestTTL: soon}\n", "flowControl.defaultRequestTTL"),
        (HEADER + "flowControl: {queues: 3}\n", "flowControl.queues"),
        # our document
        (OURS + "request: {maxBodyBytes: lots}\n", "request.maxBodyBytes"),
        (OURS + "request: {maxBodyBytes: 0}\n", "must be > 0"),
        (OURS + "stalenessThreshold: 0s\n", "must be > 0"),
        (OURS + "stalenessThreshold: [1]\n", "stalenessThreshold"),
        (OURS + "objectives: [{name: a}, {name: a, priority: 2}]\n", "objectives: duplicate name"),
        (OURS + "objectives: [{name: ''}]\n", "objectives.0.name"),
        (OURS + "modelRewrites: [{name: r, rules: [{targets: []}]}]\n", "targets"),
        (OURS + "modelRewrites: [{name: r, rules: []}]\n", "rules"),
        (
            OURS
            + "modelRewrites: [{name: r, rules: [{matches: [{model: {type: Prefix, value: a}}],"
            + " targets: [{modelRewrite: b}]}]}]\n",
            "type",
        ),
        (
            OURS + "modelRewrites: [{name: r, rules: [{targets: [{modelRewrite: b, weight: 2000000}]}]}]\n",
            "weight",
        ),
        (OURS + "model_rewrites: []\n", "model_rewrites"),
    ],
)
def test_invalid_documents_are_rejected_with_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text)
    assert message in info.value.message
    assert info.value.code == "ConfigError"


def test_scoring_errors_are_wrapped_with_the_same_message() -> None:
    cfg = load("plugins: [{type: queue-scorer}]\n")
    with pytest.raises(ConfigError, match="unknown plugin type 'queue-scorer'") as info:
        cfg.build_scheduler(Registry())
    assert isinstance(info.value.__cause__, ValueError)


def test_config_is_immutable() -> None:
    cfg = default_config()
    with pytest.raises(pydantic.ValidationError):
        cfg.parser = "passthrough-parser"  # type: ignore[misc]


# ------------------------------------------------------------------------------------ files & output
def test_the_documented_example_loads() -> None:
    readme = Path(__file__).resolve().parents[3] / "scoring" / "README.md"
    example = re.search(r"```yaml\n(.*?)```", readme.read_text(encoding="utf-8"), re.DOTALL)
    assert example is not None
    cfg = load_config_text(example.group(1))
    assert cfg.build_scheduler().max_endpoints == 2
    assert cfg.engine_configs[0].max_batch_total_tokens == 32000
    assert cfg.objectives[0].priority == -1


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(REFERENCE_EXAMPLE, encoding="utf-8")
    assert load_config_file(path).build_scheduler().max_endpoints == 2
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")


def test_effective_config_as_plain_data() -> None:
    cfg = load_config_text(REFERENCE_EXAMPLE + "---\n" + OURS + "stalenessThreshold: 500ms\n")
    data = config_to_dict(cfg)
    assert data == cfg.to_dict()
    json.dumps(data)  # plain data all the way down
    scheduler = data["effective"]["scheduler"]
    assert [s["weight"] for s in scheduler["profiles"][0]["scorers"]] == [2.0, 2.0, 3.0, 1.0]
    assert scheduler["profiles"][0]["picker"]["parameters"] == {"maxNumOfEndpoints": 2}
    assert data["effective"]["flowControl"] == {"requested": True, "enabled": True, "notImplemented": []}
    assert data["effective"]["parser"] == "openai-parser"
    assert data["effective"]["metricsSource"] == {
        "scheme": "http",
        "path": "/metrics",
        "insecureSkipVerify": True,
    }
    assert data["pickerConfig"]["stalenessThreshold"] == "500ms"
    assert data["endpointPickerConfig"]["plugins"][4]["parameters"] == {"maxNumOfEndpoints": 2}


# ------------------------------------------------------------------------------------ helpers
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1024, 1024),
        ("16Mi", 16 * 2**20),
        ("10Gi", 10 * 2**30),
        ("500k", 500_000),
        ("1.5Ki", 1536),
        ("1e3", 1000),
        ("2M", 2_000_000),
        (" 7 ", 7),
        (0.5, 1),
    ],
)
def test_parse_quantity(value: object, expected: int) -> None:
    assert parse_quantity(value) == expected


@pytest.mark.parametrize("value", ["lots", "-1", "1Xi", "", -5, True, None, float("inf"), "1e400", "9e307Ei"])
def test_parse_quantity_rejects(value: object) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(value)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "vllm:num_requests_waiting",
        'nv_trt_llm_request_metrics{request_type="waiting"}',
        "nv_trt_llm_request_metrics{request_type=waiting}",
        "x{a='b', c=\"d\",}",
        '{__name__="x"}',
    ],
)
def test_valid_metric_specs(spec: str) -> None:
    assert check_metric_spec(spec) == spec


@pytest.mark.parametrize("spec", ["9metric", "x{a}", "x{a=~b}", "x{a!~b}", "{}", "x y", "x{a=b"])
def test_invalid_metric_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="spec"):
        check_metric_spec(spec)


def test_flow_policies_not_implemented_are_named_not_silently_ignored() -> None:
    """The reference example names the policies flow control implements: no caveat. A band naming EDF
    ordering (through a plugin of another name) or global strict fairness, or a usage-limit policy, is
    accepted but each is named, in ``/config`` too."""
    assert load_config_text(REFERENCE_EXAMPLE).flow_control_caveats == ()
    cfg = load(
        """\
        featureGates: [flowControl]
        plugins:
        - {name: deadline, type: edf-ordering-policy}
        - {type: global-strict-fairness-policy}
        flowControl:
          usageLimitPolicyPluginRef: some-limit
          defaultPriorityBand: {fairnessPolicyRef: global-strict-fairness-policy}
          priorityBands:
          - {priority: 1, orderingPolicyRef: deadline, fairnessPolicyRef: round-robin-fairness-policy}
        """
    )
    caveats = cfg.flow_control_caveats
    assert len(caveats) == 3
    assert caveats[0].startswith("flowControl.defaultPriorityBand.fairnessPolicyRef: 'global-strict-fairness")
    assert caveats[1].startswith("flowControl.priorityBands[0].orderingPolicyRef: 'edf-ordering-policy'")
    assert "usageLimitPolicyPluginRef" in caveats[2]
    assert config_to_dict(cfg)["effective"]["flowControl"]["notImplemented"] == list(caveats)
