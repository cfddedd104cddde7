"""InferenceObjectives and InferenceModelRewrites of our pool → datastore stores, via the real client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.kube import KubeSources
from picker.state.datastore import Datastore
from picker.state.objectives import Objective
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import inference_model_rewrite, inference_objective, inference_pool, pod
from tests.integration.kube.conftest import FAST_WATCH

pytestmark = pytest.mark.integration

NS = "inference"
POOL = "qwen"
X_K8S = "inference.networking.x-k8s.io/v1alpha2"


@pytest.fixture
async def ds(
    emulator: KubeApiEmulator, api: k8s_client.ApiClient, eventually: Any
) -> AsyncIterator[Datastore]:
    emulator.create(inference_pool(POOL, NS, selector={"app": "q"}))
    emulator.create(pod("p1", NS, labels={"app": "q"}))
    store = Datastore()
    sources = KubeSources(
        api,
        store,
        namespace=NS,
        pool_name=POOL,
        watch=FAST_WATCH,
    )
    task = asyncio.create_task(sources.run())
    await eventually(lambda: store.synced)
    yield store
    await sources.close()
    await asyncio.wait_for(task, 5)


async def test_objectives_are_filtered_by_pool_ref_and_drive_priorities(emulator, ds, eventually):
    emulator.create(inference_objective("critical", NS, pool=POOL, priority=100))
    emulator.create(inference_objective("batch", NS, pool=POOL, priority=-1))
    emulator.create(inference_objective("standard", NS, pool=POOL, group=None))  # default group, no priority
    emulator.create(inference_objective("theirs", NS, pool="another-pool", priority=50))
    emulator.create(
        inference_objective("alpha-group", NS, pool=POOL, priority=7, group="inference.networking.x-k8s.io")
    )
    emulator.create(inference_objective("elsewhere", "other-ns", pool=POOL, priority=9))
    await eventually(lambda: set(ds.objectives.all()) == {"critical", "batch", "standard"})
    assert ds.objectives.priority("critical") == 100
    assert ds.objectives.priority("batch") == -1
    assert ds.objectives.get("standard") == Objective("standard", 0)
    assert ds.objectives.priority("theirs") == 0
    assert ds.objectives.priority(None) == 0

    emulator.patch(X_K8S, "InferenceObjective", NS, "critical", {"spec": {"priority": 5}})
    await eventually(lambda: ds.objectives.priority("critical") == 5)
    emulator.patch(X_K8S, "InferenceObjective", NS, "batch", {"spec": {"poolRef": {"name": "another-pool"}}})
    await eventually(lambda: ds.objectives.get("batch") is None, what="poolRef moved away")
    emulator.patch(X_K8S, "InferenceObjective", NS, "theirs", {"spec": {"poolRef": {"name": POOL}}})
    await eventually(lambda: ds.objectives.priority("theirs") == 50, what="poolRef moved in")
    emulator.delete(X_K8S, "InferenceObjective", NS, "standard")
    await eventually(lambda: ds.objectives.get("standard") is None)


async def test_rewrites_apply_with_reference_precedence(emulator, ds, eventually):
    rng = random.Random(7)
    emulator.create(
        inference_model_rewrite(
            "generic-new",
            NS,
            pool=POOL,
            created="2025-03-01T00:00:00Z",
            rules=[((), [("fallback-new", 0)])],
        )
    )
    emulator.create(
        inference_model_rewrite(
            "generic-old",
            NS,
            pool=POOL,
            created="2025-01-01T00:00:00Z",
            rules=[((), [("fallback-old", 0)])],
        )
    )
    emulator.create(
        inference_model_rewrite(
            "canary",
            NS,
            pool=POOL,
            created="2025-06-01T00:00:00Z",
            rules=[(("small-lora",), [("small-lora-v1", 90), ("small-lora-v2", 10)])],
        )
    )
    emulator.create(
        inference_model_rewrite(
            "theirs",
            NS,
            pool="other",
            created="2024-01-01T00:00:00Z",
            rules=[(("small-lora",), [("nope", 0)])],
        )
    )
    await eventually(lambda: {r.name for r in ds.rewrites.all()} == {"generic-new", "generic-old", "canary"})

    picks = [ds.rewrites.resolve("small-lora", rng) for _ in range(400)]
    assert {p.rewrite_name for p in picks if p} == {"canary"}, "exact beats generic, whatever the age"
    share_v1 = sum(1 for p in picks if p and p.target_model == "small-lora-v1") / len(picks)
    assert 0.8 < share_v1 < 0.97, share_v1  # 90/10 weights (seeded draw)
    other = ds.rewrites.resolve("unknown-model", rng)
    assert other is not None, "oldest generic wins"
    assert other.rewrite_name == "generic-old", "oldest generic wins"

    emulator.delete(X_K8S, "InferenceModelRewrite", NS, "generic-old")
    await eventually(
        lambda: (c := ds.rewrites.resolve("x", rng)) is not None and c.target_model == "fallback-new"
    )


async def test_an_unsupported_rewrite_rule_is_ignored_not_widened(emulator, ds, eventually, caplog):
    bad = inference_model_rewrite("bad", NS, pool=POOL, rules=[(("m",), [("t", 0)])])
    bad["spec"]["rules"][0]["matches"][0]["model"]["type"] = "RegularExpression"
    emulator.create(bad)
    emulator.create(inference_model_rewrite("good", NS, pool=POOL, rules=[(("n",), [("u", 0)])]))
    await eventually(lambda: {r.name for r in ds.rewrites.all()} == {"good"})
    await eventually(lambda: any("InferenceModelRewrite bad is invalid" in m for m in caplog.messages))
    assert ds.rewrites.resolve("m", random.Random(1)) is None
