"""Several scheduling profiles and the profile handlers: which profile a request gets, and why."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import numpy as np
import pytest

from scoring import (
    ConfigurationError,
    EndpointMatrix,
    EndpointRow,
    PickRequest,
    PluginSpec,
    ProfileSpec,
    build_profiles,
    build_scheduler,
)
from scoring.profiles import PROFILE_HEADER, ObjectiveProfileHandler

PLUGINS = [
    PluginSpec("queue-scorer", "queue-scorer"),
    PluginSpec("running-requests-size-scorer", "running-requests-size-scorer"),
    PluginSpec("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
    PluginSpec("top2", "max-score-picker", {"maxNumOfEndpoints": 2}),
    PluginSpec("one", "max-score-picker"),
]
LATENCY = ProfileSpec(
    "latency", [("queue-scorer", 3.0), ("kv-cache-utilization-scorer", 1.0), ("top2", None)]
)
COST = ProfileSpec("cost", [("running-requests-size-scorer", 5.0), ("queue-scorer", 1.0), ("one", None)])
BALANCED = ProfileSpec("balanced", [("queue-scorer", 1.0), ("running-requests-size-scorer", 1.0)])


def handler(**params: Any) -> PluginSpec:
    return PluginSpec("choose", "objective-profile-handler", params)


RULES: list[dict[str, Any]] = [
    {"objective": "critical", "profile": "latency"},
    {"minPriority": 10, "profile": "latency"},
    {"maxPriority": -1, "profile": "cost", "external": "Never"},
    {"objective": "overflow", "profile": "balanced", "external": "Prefer"},
]


def profiles(**params: Any) -> Any:
    return build_profiles([*PLUGINS, handler(**params)], [BALANCED, LATENCY, COST])


def test_single_profile_handler_is_the_default_and_needs_one_profile() -> None:
    p = build_profiles(PLUGINS, [LATENCY])
    assert len(p) == 1
    assert p.handler.type_name == "single-profile-handler"
    choice = p.choose("anything", 5)
    assert (choice.profile, choice.reason, choice.external) == ("latency", "single", None)
    assert p.choose("", -1).external is None  # no rule: the service's spillover settings decide
    with pytest.raises(
        ConfigurationError, match="single-profile-handler needs exactly one scheduling profile"
    ):
        build_profiles(PLUGINS, [LATENCY, COST])
    with pytest.raises(ConfigurationError, match="needs exactly one"):
        build_profiles([*PLUGINS, PluginSpec("s", "single-profile-handler")], [LATENCY, COST])


@pytest.mark.parametrize(
    ("objective", "priority", "headers", "profile", "reason", "external"),
    [
        ("critical", 0, {}, "latency", "rule 0", None),
        ("", 10, {}, "latency", "rule 1", None),
        ("", 50, {}, "latency", "rule 1", None),
        ("batch", -1, {}, "cost", "rule 2", "Never"),
        ("overflow", 0, {}, "balanced", "rule 3", "Prefer"),
        ("", 0, {}, "balanced", "default", None),  # the first profile
        ("", 9, {}, "balanced", "default", None),
        # the header names a profile directly, before any rule
        ("critical", 0, {PROFILE_HEADER: "cost"}, "cost", "header", None),
        ("batch", -1, {PROFILE_HEADER: "latency"}, "latency", "header", None),
        # a header naming no profile is ignored
        ("critical", 0, {PROFILE_HEADER: "nope"}, "latency", "rule 0", None),
    ],
)
def test_objective_profile_handler_order(  # noqa: PLR0917 - parametrized test
    objective: str, priority: int, headers: dict[str, str], profile: str, reason: str, external: str | None
) -> None:
    choice = profiles(rules=RULES).choose(objective, priority, headers)
    policy = None if choice.external is None else choice.external.value
    assert (choice.profile, choice.reason, policy) == (profile, reason, external)
    # asked again: the same answer (memoized)
    assert profiles(rules=RULES).choose(objective, priority, headers).profile == profile


def test_default_profile_header_and_describe() -> None:
    p = profiles(rules=RULES, defaultProfile="cost", header="X-Route-Profile")
    assert p.choose("", 0).profile == "cost"
    assert p.default.profile_name == "cost"
    assert p.choose("", 0, {"x-route-profile": "latency"}).profile == "latency"
    assert p.choose("", 0, {PROFILE_HEADER: "latency"}).profile == "cost"  # only the configured header
    off = profiles(rules=RULES, header="")
    assert off.choose("", 0, {PROFILE_HEADER: "latency"}).profile == "balanced"
    described = p.describe()
    assert described["profileHandler"] == "objective-profile-handler"
    assert described["defaultProfile"] == "cost"
    assert [d["name"] for d in described["profiles"]] == ["balanced", "latency", "cost"]
    assert described["profileHandlerParameters"]["header"] == "x-route-profile"


def test_each_profile_picks_with_its_own_weights_and_picker() -> None:
    p = profiles(rules=RULES)
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("short-queue", "10.0.0.1:8000", waiting=0.0, kv_usage=0.1, running=9.0),
            EndpointRow("few-running", "10.0.0.2:8000", waiting=6.0, kv_usage=0.7, running=1.0),
        ]
    )
    rng = np.random.default_rng(0)
    req = PickRequest(prompt_tokens_estimate=1000)
    fast = p.choose("critical", 0).scheduler.schedule(m, req, now=0.0, rng=rng)
    cheap = p.choose("batch", -1).scheduler.schedule(m, req, now=0.0, rng=rng)
    assert [m.names[i] for i in fast.indices] == ["short-queue", "few-running"]  # latency: top 2
    assert [m.names[i] for i in cheap.indices] == ["few-running"]
    # one saturation detector for every profile
    assert (
        p.choose("critical", 0).scheduler.saturation_detector
        is p.choose("batch", -1).scheduler.saturation_detector
    )


def test_a_plugin_shared_by_profiles_is_one_instance() -> None:
    p = profiles(rules=RULES)
    queue = [ws.scorer for s in p.schedulers for ws in s.scorers if ws.scorer.name == "queue-scorer"]
    assert len(queue) == 3
    assert all(q is queue[0] for q in queue)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"rules": [{"objective": "x", "profile": "missing"}]},
            "names profile 'missing', which is not defined",
        ),
        ({"defaultProfile": "missing"}, "defaultProfile 'missing' is not defined"),
        ({"rules": [{"objective": "x"}]}, "'profile'"),
        ({"rules": [{"profile": "cost", "priority": 3}]}, "unknown key"),
        ({"rules": [{"profile": "cost", "minPriority": "high"}]}, "minPriority"),
        ({"rules": [{"profile": "cost", "minPriority": 5, "maxPriority": 1}]}, "matches nothing"),
        ({"rules": [{"profile": "cost", "maxPriority": 2**31}]}, "32-bit integer"),
        ({"rules": [{"profile": "cost", "objective": "o" * 254}]}, "1 to 253 characters"),
        ({"rules": [{"profile": "cost", "external": "Sometimes"}]}, "'external' must be one of"),
        ({"rules": "cost"}, "must be a list"),
        ({"header": "two words"}, "header name"),
        ({"profiles": []}, "unknown parameter"),
    ],
)
def test_objective_profile_handler_rejects(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        profiles(**params)


def test_several_profiles_need_a_handler_and_build_scheduler_wants_one() -> None:
    with pytest.raises(ConfigurationError, match="objective-profile-handler chooses between several"):
        build_profiles(PLUGINS, [LATENCY, COST])
    with pytest.raises(ConfigurationError, match="expected one scheduling profile"):
        build_scheduler([*PLUGINS, handler(rules=RULES)], [BALANCED, LATENCY, COST])
    with pytest.raises(ConfigurationError, match="more than one profile handler"):
        build_profiles([*PLUGINS, handler(), PluginSpec("h2", "objective-profile-handler")], [LATENCY])


@pytest.mark.parametrize("type_name", ["pd-profile-handler", "predicted-latency-profile-handler"])
def test_reference_handlers_we_do_not_implement_say_so(type_name: str) -> None:
    with pytest.raises(ConfigurationError, match="not supported by this picker"):
        build_profiles([*PLUGINS, PluginSpec("h", type_name)], [LATENCY, COST])


def test_handler_alone_with_one_profile_and_no_rules() -> None:
    p = build_profiles([*PLUGINS, handler()], [COST])
    assert p.choose("critical", 100).profile == "cost"
    assert isinstance(p.handler, ObjectiveProfileHandler)


def test_long_objective_names_from_requests_are_not_kept() -> None:
    """The objective is a request header: the handler's memo must not keep what a peer sent (64 distinct
    1 MiB names once stayed resident as memo keys)."""
    handler = ObjectiveProfileHandler("h", {"rules": [{"objective": "x", "profile": "cost"}]})
    assert handler.choose("x", 0, None)[0] == "cost"
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i in range(64):
            assert handler.choose(f"{i}" + "o" * (1 << 20), 0, None)[1] == "default"
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1 << 20, f"{(after - before) >> 20} MiB kept"
    assert handler.choose("x", 0, None)[0] == "cost"
