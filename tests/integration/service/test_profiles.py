"""Objective-aware profiles through the real service: the profile handler picks one profile per request
from its InferenceObjective, its priority or a header; /debug/explain says which and why; a reload
changes the choice."""

from __future__ import annotations

import pytest

from tests.integration.service.conftest import (
    P0,
    P2,
    PICKER_DOCUMENT,
    Pod,
    StartService,
    completion,
    req_llm,
)

pytestmark = pytest.mark.integration

#: two profiles that disagree on the pool below: "short-queue" picks P0 (empty queue, full KV),
#: "free-kv" picks P2 (long queue, empty KV)
PROFILES = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
- name: by-objective
  type: objective-profile-handler
  parameters:
    rules:
    - {objective: my-model, profile: free-kv}
    - {minPriority: 4, profile: free-kv}
schedulingProfiles:
- name: short-queue
  plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]
- name: free-kv
  plugins: [{pluginRef: kv-cache-utilization-scorer}, {pluginRef: max-score-picker}]
saturationDetector: {pluginRef: utilization-detector}
---
"""
POOL = (Pod(queue=0, kv=0.9), Pod(queue=3, kv=0.5), Pod(queue=6, kv=0.1))


async def test_the_handler_chooses_a_profile_per_request(start_service: StartService) -> None:
    svc = await start_service(config=PROFILES + PICKER_DOCUMENT)
    await svc.set_metrics(*POOL)
    cases = [
        ("sql-lora", {}, P0),  # priority 2, no rule: the first profile
        ("my-model", {}, P2),  # its objective's rule
        ("inference-objective-with-priority-4", {}, P2),  # its priority's rule
        ("my-model", {"x-picker-profile": "short-queue"}, P0),  # the header first
        ("sql-lora", {"x-picker-profile": "no-such-profile"}, P0),  # an unknown name is ignored
    ]
    for objective, extra, expected in cases:
        request = req_llm("hello", objective, "m")
        request.headers.extend(extra.items())
        result = await svc.exchange(request)
        assert result.destination == expected, (objective, extra)


async def test_explain_names_the_profile_and_why(start_service: StartService) -> None:
    svc = await start_service(config=PROFILES + PICKER_DOCUMENT)
    await svc.set_metrics(*POOL)
    for headers, profile, why in [
        ({"x-gateway-inference-objective": "my-model"}, "free-kv", "rule 0"),
        ({"x-gateway-inference-objective": "sql-lora"}, "short-queue", "default"),
        ({"x-picker-profile": "free-kv"}, "free-kv", "header"),
    ]:
        status, doc = await svc.post_json(
            "/debug/explain", {"path": "/v1/completions", "headers": headers, "body": completion().decode()}
        )
        assert status == 200
        assert doc["profile"] == {"name": profile, "chosen_by": why}
        assert doc["decision"]["profile"] == profile
    config = await svc.get_json("/config")
    scheduler = config["config"]["effective"]["scheduler"]
    assert scheduler["profileHandler"] == "objective-profile-handler"
    assert [p["name"] for p in scheduler["profiles"]] == ["short-queue", "free-kv"]


async def test_a_rule_naming_no_profile_is_rejected_and_the_last_good_config_kept(
    start_service: StartService,
) -> None:
    svc = await start_service(config=PROFILES + PICKER_DOCUMENT)
    bad = PROFILES.replace("profile: free-kv}\n    - {minPriority", "profile: fastest}\n    - {minPriority")
    result = svc.service.config_store.apply_text(bad + PICKER_DOCUMENT, source="test")
    assert not result.ok
    assert "names profile 'fastest', which is not defined" in result.message
    assert len(svc.service.config_store.active.profiles) == 2
