"""The ``outlier-detector`` plugin: on with defaults when absent, tuned or switched off by a plugin entry,
strictly validated, one at most, not a scheduling plugin."""

from __future__ import annotations

import pytest

from picker.config import OutlierDetectorParams, default_config, load_config_text
from picker.errors import ConfigError
from picker.state.health import OutlierPolicy

EPP = "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"


def document(detector: str) -> str:
    return f"{EPP}plugins:\n- {{type: queue-scorer}}\n{detector}\n"


def test_on_by_default_with_envoy_like_defaults():
    params = default_config().outlier_detection
    assert params == OutlierDetectorParams()
    policy = OutlierPolicy.from_params(params)
    assert policy == OutlierPolicy()
    assert (policy.enabled, policy.consecutive_failures, policy.base_ejection_s) == (True, 5, 30.0)
    assert (policy.max_ejection_percent, policy.failure_percentage, policy.minimum_requests) == (
        50.0,
        50.0,
        20,
    )
    assert load_config_text(document("")).outlier_detection == params


def test_tuned_and_switched_off():
    cfg = load_config_text(
        document(
            "- {type: outlier-detector, parameters: {consecutive5xx: 3, interval: 5s, baseEjectionTime: 10s,"
            " maxEjectionTime: 1m, maxEjectionPercent: 25, failurePercentageThreshold: 0,"
            " failurePercentageRequestVolume: 5}}"
        )
    )
    policy = OutlierPolicy.from_params(cfg.outlier_detection)
    assert policy == OutlierPolicy(
        consecutive_failures=3,
        interval_s=5.0,
        base_ejection_s=10.0,
        max_ejection_s=60.0,
        max_ejection_percent=25.0,
        failure_percentage=0.0,
        minimum_requests=5,
    )
    effective = cfg.to_dict()["effective"]["outlierDetection"]
    assert (effective["interval"], effective["maxEjectionTime"], effective["consecutive5xx"]) == (
        "5s",
        "60s",
        3,
    )
    off = load_config_text(document("- {name: health, type: outlier-detector, parameters: {enabled: false}}"))
    assert not OutlierPolicy.from_params(off.outlier_detection).enabled


@pytest.mark.parametrize(
    ("detector", "message"),
    [
        ("- {type: outlier-detector, parameters: {consecutive5XX: 3}}", "consecutive5XX: Extra inputs"),
        (
            "- {type: outlier-detector, parameters: {consecutive5xx: -1}}",
            "consecutive5xx: Input should be greater",
        ),
        ("- {type: outlier-detector, parameters: {baseEjectionTime: 0s}}", "baseEjectionTime: must be > 0"),
        ("- {type: outlier-detector, parameters: {interval: soon}}", "interval"),
        ("- {type: outlier-detector, parameters: {maxEjectionPercent: 150}}", "maxEjectionPercent"),
        (
            "- {type: outlier-detector}\n- {name: again, type: outlier-detector}",
            "more than one outlier-detector",
        ),
    ],
)
def test_rejected_with_a_reason(detector: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config_text(document(detector))


def test_not_a_scheduling_plugin():
    text = document("- {type: outlier-detector}") + (
        "schedulingProfiles:\n- name: default\n"
        "  plugins: [{pluginRef: queue-scorer}, {pluginRef: outlier-detector}]\n"
    )
    with pytest.raises(ConfigError, match="cannot be used in a scheduling profile"):
        load_config_text(text)
