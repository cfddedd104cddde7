"""What the cluster says about requests, end to end: InferenceObjective priorities (shedding),
InferenceModelRewrites (body rewrite + decision metric) and the scoring ConfigMap (live weights, rejected
edits). Load reaches the EPP the production way: fake pods report gauges on ``/metrics``, the EPP
scrapes them.
"""

from __future__ import annotations

import json

import pytest

from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import config_map, inference_model_rewrite, inference_objective
from picker.testing.poll import eventually
from tests.integration.kube_e2e.conftest import (
    MODEL,
    NS,
    POOL,
    X_K8S_API,
    FakePods,
    Gauges,
    StartEpp,
    create_pool,
    wait_routing_to,
    wait_serving,
)

pytestmark = pytest.mark.integration

#: one queue signal and the reference's utilization detector (queue ≥ 5 or KV ≥ 0.8 is saturated), with
#: a staleness bound loose enough that a busy test machine cannot make fresh gauges look stale
SHEDDING_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: max-score-picker}
- type: utilization-detector
  parameters: {queueDepthThreshold: 5, kvCacheUtilThreshold: 0.8, metricsStalenessThreshold: 10s}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 1}, {pluginRef: max-score-picker}]
saturationDetector: {pluginRef: utilization-detector}
"""

SHED_BODY = b"inference error: ResourceExhausted - system saturated, sheddable request dropped"


async def test_objective_priority_decides_who_is_shed_when_the_pool_is_saturated(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    pods = [await fake_pods.add(f"vllm-{i}", gauges=Gauges()) for i in range(2)]
    create_pool(emulator, fake_pods)
    for p in pods:
        emulator.create(p.manifest())
    emulator.create(inference_objective("batch", NS, pool=POOL, priority=-1))
    emulator.create(inference_objective("chat", NS, pool=POOL, priority=10))
    # an objective of another pool in the namespace: its priority must not apply to our requests
    emulator.create(inference_objective("other-batch", NS, pool="other-pool", priority=-1))
    epp = await start_epp(config_text=SHEDDING_CONFIG)
    await wait_serving(epp)
    addresses = {p.address for p in pods}

    async def batch_routed() -> bool:
        return (await epp.send(objective="batch")).immediate is None

    # not saturated (once the first scrapes landed: unknown load counts as saturated): even the
    # sheddable objective is routed
    await eventually(batch_routed, what="sheddable routed while the pool is not saturated")
    await wait_routing_to(epp, addresses, objective="batch")

    # every pod reports a long queue: the pool is saturated
    for p in pods:
        assert p.gauges is not None
        p.gauges.set(waiting=12)

    async def batch_shed() -> bool:
        r = await epp.send(objective="batch")
        return r.immediate is not None and r.immediate.status == 429

    await eventually(batch_shed, what="sheddable objective shed once the scrapes show saturation")
    shed = await epp.send(objective="batch")
    assert shed.immediate is not None
    assert (shed.immediate.status, shed.immediate.body) == (429, SHED_BODY)
    assert shed.destination is None
    for objective in ("chat", "other-batch", "unknown-objective", None):
        r = await epp.send(objective=objective)
        assert r.immediate is None, f"objective {objective!r} must not be shed: {r.immediate}"
        assert r.destination in addresses
    assert (
        await epp.admin.metric("inference_objective_request_error_total", error_code="ResourceExhausted") >= 2
    )

    # priorities are live: the batch objective is promoted, the chat objective demoted
    emulator.patch(X_K8S_API, "InferenceObjective", NS, "batch", {"spec": {"priority": 5}})
    emulator.patch(X_K8S_API, "InferenceObjective", NS, "chat", {"spec": {"priority": -3}})

    async def swapped() -> bool:
        batch, chat = await epp.send(objective="batch"), await epp.send(objective="chat")
        return batch.immediate is None and chat.immediate is not None and chat.immediate.status == 429

    await eventually(swapped, what="edited priorities applied")

    # a deleted objective falls back to priority 0 (never shed)
    emulator.delete(X_K8S_API, "InferenceObjective", NS, "chat")

    async def chat_default() -> bool:
        return (await epp.send(objective="chat")).immediate is None

    await eventually(chat_default, what="deleted objective no longer sheds")

    # re-created as sheddable: shed again while the pool stays saturated ...
    emulator.create(inference_objective("chat", NS, pool=POOL, priority=-1))

    async def chat_shed() -> bool:
        r = await epp.send(objective="chat")
        return r.immediate is not None and r.immediate.status == 429

    await eventually(chat_shed, what="re-created sheddable objective applied")

    # ... and routed once the queues drain: saturation, not the priority alone, is what sheds
    for p in pods:
        assert p.gauges is not None
        p.gauges.set(waiting=0)

    async def chat_routed() -> bool:
        return (await epp.send(objective="chat")).immediate is None

    await eventually(chat_routed, what="sheddable routed again once the queues drained")
    await wait_routing_to(epp, addresses, objective="chat")


async def test_model_rewrite_is_applied_to_the_body_and_counted(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    p = await fake_pods.add("vllm-0")
    create_pool(emulator, fake_pods)
    emulator.create(p.manifest())
    emulator.create(
        inference_model_rewrite(
            "canary",
            NS,
            pool=POOL,
            rules=[(["food-review"], [("food-review-v1", 1), ("food-review-v2", 1)])],
        )
    )
    emulator.create(
        inference_model_rewrite("elsewhere", NS, pool="other-pool", rules=[([MODEL], [("not-for-us", 0)])])
    )
    epp = await start_epp()
    await wait_serving(epp)

    async def rewritten_model() -> str:
        r = await epp.send("food-review")
        assert r.immediate is None, r.immediate
        assert r.destination == p.address
        return str(json.loads(r.request_body)["model"])

    async def is_rewritten() -> bool:
        return await rewritten_model() != "food-review"

    # the rewrite may arrive just after the pool: wait for the first rewritten body
    await eventually(is_rewritten, what="rewrite loaded")

    async def decisions(target: str) -> float:
        return await epp.admin.metric(
            "inference_extension_model_rewrite_decisions_total",
            model_rewrite_name="canary",
            model_name="food-review",
            target_model=target,
        )

    before = {t: await decisions(t) for t in ("food-review-v1", "food-review-v2")}
    targets = [await rewritten_model() for _ in range(40)]
    assert set(targets) == {"food-review-v1", "food-review-v2"}, "a 1:1 split uses both targets"
    # every decision is counted once, by rewrite, incoming model and target
    for target, counted in before.items():
        assert await decisions(target) - counted == targets.count(target)

    # other models, and another pool's rewrite, leave the body alone: the bytes are forwarded untouched
    untouched = await epp.send(MODEL)
    assert untouched.immediate is None
    assert json.loads(untouched.request_body)["model"] == MODEL
    assert (
        await epp.admin.metric(
            "inference_extension_model_rewrite_decisions_total", model_rewrite_name="elsewhere"
        )
        == 0
    )

    # an edit of the rule is live
    emulator.patch(
        X_K8S_API,
        "InferenceModelRewrite",
        NS,
        "canary",
        {
            "spec": {
                "rules": [
                    {
                        "matches": [{"model": {"type": "Exact", "value": "food-review"}}],
                        "targets": [{"modelRewrite": "food-review-v3"}],
                    }
                ]
            }
        },
    )

    async def only_v3() -> bool:
        return await rewritten_model() == "food-review-v3"

    await eventually(only_v3, what="edited rewrite applied")


def weights_config(*, queue: int, kv: int, kv_scorer: str = "kv-cache-utilization-scorer") -> str:
    """Two signals pulling in opposite directions here; which one wins depends only on the weights."""
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: queue-scorer}}
- {{type: {kv_scorer}}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: {queue}}}
  - {{pluginRef: {kv_scorer}, weight: {kv}}}
  - {{pluginRef: max-score-picker}}
"""


CM = "picker-config"
KEY = "config.yaml"


async def test_configmap_edits_change_weights_live_and_a_bad_edit_is_rejected(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    # short queue but a full KV cache, versus a long queue and an empty KV cache
    short_queue = await fake_pods.add("short-queue", gauges=Gauges(waiting=0, kv_usage=0.9))
    free_kv = await fake_pods.add("free-kv", gauges=Gauges(waiting=1000, kv_usage=0.1))
    create_pool(emulator, fake_pods)
    for p in (short_queue, free_kv):
        emulator.create(p.manifest())
    emulator.create(config_map(CM, NS, data={KEY: weights_config(queue=10, kv=1)}))
    epp = await start_epp(config_configmap=CM)
    await wait_serving(epp)

    async def only(address: str) -> bool:
        return set(await epp.destinations(8)) == {address}

    async def loaded_from_configmap() -> bool:
        return bool((await epp.admin.json("/config"))["source"] == f"configmap/{NS}/{CM}")

    await eventually(loaded_from_configmap, what="ConfigMap loaded")
    first = await epp.admin.json("/config")
    # the queue weighs most: everything to the short queue (once its gauges were scraped)
    await eventually(lambda: only(short_queue.address), what="queue-weighted routing")

    # kubectl edit: the KV weight now dominates, and routing follows without a restart
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {KEY: weights_config(queue=1, kv=10)}})
    await eventually(lambda: only(free_kv.address), what="KV-weighted routing after the edit")
    good = await epp.admin.json("/config")
    assert good["digest"] != first["digest"]
    assert await epp.admin.metric("picker_config_reload_total", result="applied") >= 2

    # a broken edit (unknown scorer) is rejected: the active config stays, and so does the routing
    broken = weights_config(queue=10, kv=1, kv_scorer="no-such-scorer")
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {KEY: broken}})

    async def rejected() -> bool:
        return await epp.admin.metric("picker_config_reload_total", result="rejected") >= 1

    await eventually(rejected, what="rejection counted")
    after = await epp.admin.json("/config")
    assert after["digest"] == good["digest"]
    assert after["last_reload"]["result"] == "rejected"
    assert set(await epp.destinations(20)) == {free_kv.address}

    # ... and explained to whoever runs `kubectl describe configmap`
    events = await eventually(
        lambda: [
            e
            for e in emulator.list_objects("v1", "Event", NS)
            if e["involvedObject"]["kind"] == "ConfigMap" and e["involvedObject"]["name"] == CM
        ],
        what="a Kubernetes Event about the rejected ConfigMap",
    )
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "ConfigRejected")]
    assert "no-such-scorer" in events[0]["message"]

    # the watch survived the rejection: the next good edit applies
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {KEY: weights_config(queue=10, kv=1)}})
    await eventually(lambda: only(short_queue.address), what="good edit after a rejected one")
