"""Every number of every configuration section has a range: a value out of it rejects the document with a
reason naming the field, and the bound itself still loads. (A priority of 1e23 was once accepted and made
``/config`` answer 500 from then on; an infinite or year-long duration makes timers and sums overflow.)"""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from picker.config import load_config_text
from picker.config.scaling import ScalingConfig
from picker.errors import ConfigError
from picker.settings import Settings

HEADER = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
OURS = "apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\n"


def plugin(type_: str, parameters: str, *, profile: bool = True) -> str:
    """A reference document with one plugin (in the profile with a picker when it is a scheduling one)."""
    refs = "[{pluginRef: p}, {pluginRef: max-score-picker}]" if profile else "[{pluginRef: queue-scorer}]"
    return (
        HEADER
        + f"plugins: [{{name: p, type: {type_}, parameters: {parameters}}}, {{type: max-score-picker}},"
        + " {type: queue-scorer}]\n"
        + f"schedulingProfiles: [{{name: default, plugins: {refs}}}]\n"
    )


def detector(parameters: str) -> str:
    return (
        HEADER
        + f"plugins: [{{type: utilization-detector, parameters: {parameters}}}, {{type: queue-scorer}},"
        + " {type: max-score-picker}]\n"
        + "saturationDetector: {pluginRef: utilization-detector}\n"
    )


def weight(value: str) -> str:
    return (
        HEADER
        + "plugins: [{type: queue-scorer}, {type: max-score-picker}]\n"
        + f"schedulingProfiles: [{{name: default, plugins: [{{pluginRef: queue-scorer, weight: {value}}},"
        + " {pluginRef: max-score-picker}]}]\n"
    )


def ours(section: str) -> str:
    return OURS + section + "\n"


def tenants(section: str) -> str:
    return ours(f"tenants: {section}")


def outlier(parameters: str) -> str:
    return plugin("outlier-detector", parameters, profile=False)


def flow(section: str) -> str:
    return HEADER + "featureGates: [flowControl]\n" + f"flowControl: {section}\n"


#: (field, the document at the bound, the document just over it, what the reason says)
CASES: list[tuple[str, str, str, str]] = [
    # the reference document
    ("profile weight", weight("1000000"), weight("1000001"), "less than or equal to 1000000"),
    ("profile weight NaN", weight("1"), weight(".nan"), "finite number"),
    ("flowControl.maxBytes", flow("{maxBytes: 1Ti}"), flow("{maxBytes: 2Ti}"), "at most"),
    ("flowControl.maxRequests", flow("{maxRequests: 1G}"), flow("{maxRequests: 2G}"), "at most"),
    (
        "flowControl.defaultRequestTTL",
        flow("{defaultRequestTTL: 24h}"),
        flow("{defaultRequestTTL: 25h}"),
        "at most",
    ),
    (
        "priorityBands.priority",
        flow("{priorityBands: [{priority: 2147483647}]}"),
        flow("{priorityBands: [{priority: 2147483648}]}"),
        "less than or equal to 2147483647",
    ),
    (
        "priorityBands.maxRequests",
        flow("{priorityBands: [{priority: 1, maxRequests: 1000000000}]}"),
        flow("{priorityBands: [{priority: 1, maxRequests: 1000000001}]}"),
        "less than or equal to 1000000000",
    ),
    # scheduling plugin parameters (scoring._params: 32-bit integers, durations of at most a day)
    (
        "maxNumOfEndpoints",
        plugin("max-score-picker", "{maxNumOfEndpoints: 2147483647}", profile=False),
        plugin("max-score-picker", "{maxNumOfEndpoints: 2147483648}", profile=False),
        "must be <= 2147483647",
    ),
    (
        "queueDepthThreshold",
        detector("{queueDepthThreshold: 2147483647}"),
        detector("{queueDepthThreshold: 2147483648}"),
        "must be <= 2147483647",
    ),
    (
        "metricsStalenessThreshold",
        detector("{metricsStalenessThreshold: 24h}"),
        detector("{metricsStalenessThreshold: 25h}"),
        "must be at most",
    ),
    ("headroom", detector("{headroom: 100}"), detector("{headroom: 101}"), "must be <= 100"),
    (
        "latency-scorer halfLife",
        plugin("latency-scorer", "{halfLife: 24h}"),
        plugin("latency-scorer", "{halfLife: 25h}"),
        "must be at most",
    ),
    (
        "prefill-queue-scorer minRangeTokens",
        plugin("prefill-queue-scorer", "{minRangeTokens: 1000000000}"),
        plugin("prefill-queue-scorer", "{minRangeTokens: 1000000001}"),
        "must be <= 1e+09",
    ),
    # service plugins
    (
        "maxBatchTotalTokens",
        plugin(
            "core-metrics-extractor",
            "{engineConfigs: [{name: e, maxBatchTotalTokens: 2147483647}]}",
            profile=False,
        ),
        plugin(
            "core-metrics-extractor",
            "{engineConfigs: [{name: e, maxBatchTotalTokens: 2147483648}]}",
            profile=False,
        ),
        "less than or equal to 2147483647",
    ),
    (
        "consecutive5xx",
        outlier("{consecutive5xx: 1000000}"),
        outlier("{consecutive5xx: 1000001}"),
        "less than or equal to 1000000",
    ),
    (
        "failurePercentageRequestVolume",
        outlier("{failurePercentageRequestVolume: 1000000}"),
        outlier("{failurePercentageRequestVolume: 1000001}"),
        "less than or equal to 1000000",
    ),
    ("outlier interval", outlier("{interval: 1h}"), outlier("{interval: 61m}"), "at most 3600s"),
    (
        "baseEjectionTime",
        outlier("{baseEjectionTime: 24h}"),
        outlier("{baseEjectionTime: 25h}"),
        "at most 86400s",
    ),
    (
        "maxEjectionTime",
        outlier("{maxEjectionTime: 24h}"),
        outlier("{maxEjectionTime: 25h}"),
        "at most 86400s",
    ),
    # our document
    (
        "objective priority",
        ours("objectives: [{name: o, priority: -2147483648}]"),
        ours("objectives: [{name: o, priority: -2147483649}]"),
        "greater than or equal to -2147483648",
    ),
    ("stalenessThreshold", ours("stalenessThreshold: 1h"), ours("stalenessThreshold: 2h"), "at most 3600s"),
    (
        "request.maxBodyBytes",
        ours("request: {maxBodyBytes: 1Gi}"),
        ours("request: {maxBodyBytes: 2Gi}"),
        "less than or equal to",
    ),
    (
        "request.maxBufferedBytes",
        ours("request: {maxBufferedBytes: 1Ti}"),
        ours("request: {maxBufferedBytes: 2Ti}"),
        "less than or equal to",
    ),
    (
        "rewrite weight",
        ours("modelRewrites: [{name: r, rules: [{targets: [{modelRewrite: b, weight: 1000000}]}]}]"),
        ours("modelRewrites: [{name: r, rules: [{targets: [{modelRewrite: b, weight: 1000001}]}]}]"),
        "less than or equal to 1000000",
    ),
    # tenants
    (
        "tokensPerMinute",
        tenants("{tiers: [{name: t, limits: {tokensPerMinute: 1000000000000000}}]}"),
        tenants("{tiers: [{name: t, limits: {tokensPerMinute: 1000000000000001}}]}"),
        "less than or equal to",
    ),
    (
        "concurrent",
        tenants("{tiers: [{name: t, limits: {concurrent: 1000000000}}]}"),
        tenants("{tiers: [{name: t, limits: {concurrent: 1000000001}}]}"),
        "less than or equal to",
    ),
    (
        "costPerDay",
        tenants("{tiers: [{name: t, limits: {costPerDay: 1e9}}]}"),
        tenants("{tiers: [{name: t, limits: {costPerDay: 1.1e9}}]}"),
        "less than or equal to",
    ),
    (
        "outputPer1M",
        tenants("{prices: [{model: m, inputPer1M: 1, outputPer1M: 1e6}]}"),
        tenants("{prices: [{model: m, inputPer1M: 1, outputPer1M: 1.1e6}]}"),
        "less than or equal to",
    ),
    (
        "defaultOutputTokens",
        tenants("{defaultOutputTokens: 10000000}"),
        tenants("{defaultOutputTokens: 10000001}"),
        "less than or equal to",
    ),
    (
        "objective-profile-handler maxPriority",
        HEADER + "plugins: [{type: objective-profile-handler, parameters: {rules: [{profile: default, "
        "maxPriority: 2147483647}]}}, {type: queue-scorer}]\n",
        HEADER + "plugins: [{type: objective-profile-handler, parameters: {rules: [{profile: default, "
        "maxPriority: 2147483648}]}}, {type: queue-scorer}]\n",
        "32-bit integer",
    ),
]


@pytest.mark.parametrize(("at_bound", "over", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_number_out_of_its_range_is_rejected_with_a_reason(at_bound: str, over: str, message: str) -> None:
    load_config_text(at_bound)
    with pytest.raises(ConfigError) as info:
        load_config_text(over)
    assert message in info.value.message, info.value.message


SCALING: dict[str, Any] = {
    "target": {"kind": "Deployment", "name": "vllm"},
    "maxReplicas": 4,
    "replicaCapacity": {"requestsPerSecond": 10},
}

SCALING_CASES = [
    ("warmup", {"warmup": "24h"}, {"warmup": "25h"}),
    ("scaleDown.cooldown", {"scaleDown": {"cooldown": "24h"}}, {"scaleDown": {"cooldown": "25h"}}),
    ("scaleUp.backlogClear", {"scaleUp": {"backlogClear": "1h"}}, {"scaleUp": {"backlogClear": "61m"}}),
    (
        "forecast.timeout",
        {"forecast": {"prometheusUrl": "http://p", "timeout": "5m"}},
        {"forecast": {"prometheusUrl": "http://p", "timeout": "301s"}},
    ),
    (
        "forecast.refresh",
        {"forecast": {"prometheusUrl": "http://p", "refresh": "24h"}},
        {"forecast": {"prometheusUrl": "http://p", "refresh": "25h"}},
    ),
    (
        "forecast.sampleWindow",
        {"forecast": {"prometheusUrl": "http://p", "sampleWindow": "6h"}},
        {"forecast": {"prometheusUrl": "http://p", "sampleWindow": "6h1s"}},
    ),
    (
        "schedules.duration",
        {
            "schedules": [
                {"name": "w", "start": "0 22 * * *", "duration": "168h", "minReplicas": 0, "maxReplicas": 1}
            ]
        },
        {
            "schedules": [
                {"name": "w", "start": "0 22 * * *", "duration": "169h", "minReplicas": 0, "maxReplicas": 1}
            ]
        },
    ),
]


@pytest.mark.parametrize(
    ("at_bound", "over"), [c[1:] for c in SCALING_CASES], ids=[c[0] for c in SCALING_CASES]
)
def test_scaling_durations_have_a_range(at_bound: dict[str, Any], over: dict[str, Any]) -> None:
    ScalingConfig.model_validate({**SCALING, **at_bound}, by_alias=True, by_name=False)
    with pytest.raises(pydantic.ValidationError, match="at most"):
        ScalingConfig.model_validate({**SCALING, **over}, by_alias=True, by_name=False)


@pytest.mark.parametrize(
    ("field", "at_bound", "over"),
    [
        ("scrape_timeout", 600, float("inf")),
        ("refresh_metrics_interval", 3600, 3601),
        ("metrics_staleness_threshold", 3600, 1e300),
        ("scrape_concurrency", 100_000, 100_001),
        ("leader_retry_period", 3600, float("inf")),
        ("config_poll_interval", 3600, 3601),
        ("gpu_poll_interval", 3600, 3601),
    ],
)
def test_flags_have_a_range(field: str, at_bound: float, over: float) -> None:
    kwargs: dict[str, Any] = {field: at_bound}
    if field.startswith("leader_"):  # the three must also keep their order
        kwargs = {"leader_lease_duration": 3600, "leader_renew_deadline": 3599, "leader_retry_period": 2}
    Settings(static_endpoints="127.0.0.1:8000", **kwargs)
    with pytest.raises(pydantic.ValidationError, match="less than or equal to"):
        Settings(static_endpoints="127.0.0.1:8000", **{field: over})
