"""build_scheduler: the reference defaulting rules and every validation error, and the registry itself."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    Kind,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    Registry,
    build_scheduler,
    default_registry,
    default_scheduler,
    default_specs,
    reference_default_scheduler,
)
from scoring.filters import ConcurrencyDetector, UtilizationDetector
from scoring.plugin import Plugin
from scoring.registry import DEFAULT_WEIGHTS
from scoring.scorers import QueueScorer


def spec(type_: str, name: str = "", **params: Any) -> PluginSpec:
    return PluginSpec(name, type_, params)


# ------------------------------------------------------------------------------------ defaults
def test_plugin_name_defaults_to_type_and_scorer_weight_to_one() -> None:
    s = build_scheduler([spec("queue-scorer")], [ProfileSpec("x", [("queue-scorer", None)])])
    assert s.plugins[0] == ("queue-scorer", "queue-scorer", 1.0)


def test_no_profiles_means_one_default_profile_with_all_filters_scorers_and_pickers() -> None:
    s = build_scheduler(
        [
            spec("queue-scorer"),
            spec("metrics-staleness-filter"),
            spec("utilization-detector"),  # a detector: not silently added as a filter
            spec("random-picker"),
            spec("metrics-data-source"),  # a service plugin: ignored by the scheduler
            spec("single-profile-handler"),
        ],
        [],
    )
    assert s.profile_name == "default"
    assert [p[1] for p in s.plugins] == ["metrics-staleness-filter", "queue-scorer", "random-picker"]
    assert isinstance(s.saturation_detector, UtilizationDetector)


def test_profile_without_picker_reuses_the_first_defined_picker() -> None:
    s = build_scheduler(
        [spec("queue-scorer"), spec("weighted-random-picker", "w"), spec("random-picker", "r")],
        [ProfileSpec("p", [("queue-scorer", 2.0)])],
    )
    assert s.picker.name == "w"


def test_profile_without_any_picker_gets_max_score_picker() -> None:
    s = build_scheduler([spec("queue-scorer")], [ProfileSpec("p", [("queue-scorer", 2.0)])])
    assert s.picker.type_name == "max-score-picker"
    assert s.max_endpoints == 1


def test_default_handler_and_detector() -> None:
    s = build_scheduler([spec("queue-scorer")], [])
    assert s.profile_handler == "single-profile-handler"
    assert s.saturation_detector.name == "utilization-detector"
    assert s.saturation_detector.parameters["queueDepthThreshold"] == 5


def test_a_defined_utilization_detector_is_the_default_detector_with_its_parameters() -> None:
    s = build_scheduler([spec("queue-scorer"), spec("utilization-detector", queueDepthThreshold=9)], [])
    assert s.saturation_detector.parameters["queueDepthThreshold"] == 9


def test_explicit_detector_reference() -> None:
    s = build_scheduler(
        [spec("queue-scorer"), spec("concurrency-detector", "cd", maxConcurrency=7)],
        [ProfileSpec("p", [("queue-scorer", 1.0)])],
        saturation_detector="cd",
    )
    assert isinstance(s.saturation_detector, ConcurrencyDetector)
    assert s.saturation_detector.max_concurrency == 7
    # a detector type named without a plugins[] entry is auto-instantiated (reference default behaviour)
    s = build_scheduler([spec("queue-scorer")], [], saturation_detector="concurrency-detector")
    assert isinstance(s.saturation_detector, ConcurrencyDetector)


def test_a_detector_can_be_used_as_a_filter_when_referenced() -> None:
    s = build_scheduler(
        [spec("utilization-detector"), spec("queue-scorer")],
        [ProfileSpec("p", [("utilization-detector", None), ("queue-scorer", 1.0)])],
    )
    assert s.filters[0].type_name == "utilization-detector"
    assert s.saturation_detector is s.filters[0]


def test_reference_default_scheduler() -> None:
    s = reference_default_scheduler()
    assert s.weights == {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    assert s.picker.type_name == "max-score-picker"
    assert s.max_endpoints == 1
    assert s.saturation_detector.type_name == "utilization-detector"
    assert s.filters == ()


def test_our_default_scheduler() -> None:
    s = default_scheduler()
    assert dict(s.weights) == dict(DEFAULT_WEIGHTS)
    assert s.picker.type_name == "max-score-picker"
    plugins, profiles = default_specs()
    assert len(profiles) == 1
    assert {p.type for p in plugins} >= set(DEFAULT_WEIGHTS)


def test_our_default_prefers_the_adapter_and_the_idle_gpu() -> None:
    rows = [
        EndpointRow(
            "plain",
            "10.0.0.1:1",
            waiting=0.0,
            running=2.0,
            kv_usage=0.3,
            gpu_util=0.2,
            max_lora=1.0,
            lora_active=("other",),
            scraped_at=0.0,
        ),
        EndpointRow(
            "adapter",
            "10.0.0.2:1",
            waiting=0.0,
            running=2.0,
            kv_usage=0.3,
            gpu_util=0.2,
            max_lora=1.0,
            lora_active=("a",),
            scraped_at=0.0,
        ),
        EndpointRow(
            "busy-gpu",
            "10.0.0.3:1",
            waiting=0.0,
            running=2.0,
            kv_usage=0.3,
            gpu_util=0.9,
            max_lora=1.0,
            lora_active=("a",),
            scraped_at=0.0,
        ),
    ]
    m = EndpointMatrix.from_rows(rows)
    result = default_scheduler().schedule(
        m, PickRequest(target_model="a"), now=0.0, rng=np.random.default_rng(0)
    )
    assert m.names[result.primary] == "adapter"


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("plugins", "profiles", "detector", "message"),
    [
        ([spec("no-such-scorer")], [], None, "unknown plugin type 'no-such-scorer'"),
        ([spec("prefix-cache-affinity-filter")], [], None, "not supported by this picker"),
        ([spec("predicted-latency-producer")], [], None, "latency predictor"),
        ([spec("latency-scorer", scoringStrategy="least")], [], None, "unknown parameter"),
        ([PluginSpec("x", "", {})], [], None, "type is required"),
        ([spec("queue-scorer"), spec("queue-scorer")], [], None, "duplicate plugin name 'queue-scorer'"),
        ([spec("queue-scorer")], [ProfileSpec("", [("queue-scorer", 1.0)])], None, "profile #1 has no name"),
        (
            [spec("queue-scorer")],
            [ProfileSpec("a", [("queue-scorer", 1.0)]), ProfileSpec("a", [])],
            None,
            "duplicate scheduling profile name 'a'",
        ),
        (
            [spec("queue-scorer")],
            [ProfileSpec("a", [("queue-scorer", 1.0)]), ProfileSpec("b", [])],
            None,
            "exactly one scheduling profile, got 2",
        ),
        (
            [spec("queue-scorer")],
            [ProfileSpec("p", [("kv", 1.0)])],
            None,
            "pluginRef 'kv' does not name a plugin",
        ),
        (
            [spec("queue-scorer")],
            [ProfileSpec("p", [("", 1.0)])],
            None,
            "pluginRef must be a non-empty string",
        ),
        (
            [spec("queue-scorer")],
            [ProfileSpec("p", [("queue-scorer", 1.0), ("queue-scorer", 2.0)])],
            None,
            "referenced twice",
        ),
        ([spec("queue-scorer")], [ProfileSpec("p", [("queue-scorer", -1.0)])], None, "must be a number >= 0"),
        ([spec("queue-scorer")], [ProfileSpec("p", [("queue-scorer", True)])], None, "must be a number >= 0"),
        (
            [spec("random-picker", "a"), spec("max-score-picker", "b")],
            [ProfileSpec("p", [("a", None), ("b", None)])],
            None,
            "more than one picker",
        ),
        (
            [spec("single-profile-handler"), spec("queue-scorer")],
            [ProfileSpec("p", [("single-profile-handler", None)])],
            None,
            "cannot be used in a scheduling profile",
        ),
        (
            [spec("openai-parser")],
            [ProfileSpec("p", [("openai-parser", None)])],
            None,
            "cannot be used in a scheduling profile",
        ),
        (
            [spec("single-profile-handler", "a"), spec("single-profile-handler", "b")],
            [],
            None,
            "more than one profile handler",
        ),
        ([spec("queue-scorer")], [], "", "saturationDetector.pluginRef must not be empty"),
        ([spec("queue-scorer")], [], "nope", "saturationDetector.pluginRef 'nope' does not name a plugin"),
        ([spec("queue-scorer")], [], "queue-scorer", "is not a saturation detector"),
        ([spec("max-score-picker", maxNumOfEndpoints="3")], [], None, "maxNumOfEndpoints"),
        ([spec("single-profile-handler", x=1)], [], None, "takes no parameters"),
    ],
)
def test_validation_errors(
    plugins: list[PluginSpec], profiles: list[ProfileSpec], detector: str | None, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        build_scheduler(plugins, profiles, saturation_detector=detector)


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


# ------------------------------------------------------------------------------------ registry
def test_default_registry_is_a_new_instance_each_time() -> None:
    class Custom(QueueScorer):
        type_name = "custom-queue-scorer"

    def factory(name: str, params: Mapping[str, Any]) -> Plugin:
        return Custom(name, params)

    mine = default_registry()
    mine.register("custom-queue-scorer", factory, Kind.SCORER)
    assert "custom-queue-scorer" in mine
    assert "custom-queue-scorer" not in default_registry()
    s = build_scheduler([spec("custom-queue-scorer")], [], registry=mine)
    assert s.plugins[0][1] == "custom-queue-scorer"
    with pytest.raises(ConfigurationError, match="unknown plugin type"):
        build_scheduler([spec("custom-queue-scorer")], [])


def test_registering_a_type_twice_is_an_error() -> None:
    r = Registry()
    r.register("queue-scorer", QueueScorer, Kind.SCORER)
    with pytest.raises(ValueError, match="already registered"):
        r.register_service("queue-scorer")


def test_registry_lists_types_by_role() -> None:
    r = default_registry()
    assert set(r.types(Kind.PICKER)) == {"max-score-picker", "random-picker", "weighted-random-picker"}
    assert set(r.types(Kind.SATURATION_DETECTOR)) == {"utilization-detector", "concurrency-detector"}
    assert "predicted-latency-producer" not in r.types()
    assert "predicted-latency-producer" in r
    assert "latency-scorer" in r.types(Kind.SCORER)
    assert {"prefill-queue-scorer", "token-load-scorer"} <= set(r.types(Kind.SCORER))
    assert "metrics-data-source" in r.types(Kind.SERVICE)
