"""InferencePool + Pods → datastore membership, through KubeSources and the real client."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.kube import KubeSources
from picker.state.datastore import Datastore
from picker.state.objectives import Objective
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import (
    inference_objective,
    inference_pool,
    inference_pool_v1alpha2,
    pod,
    ready_patch,
)
from tests.integration.kube.conftest import FAST_WATCH

pytestmark = pytest.mark.integration

NS = "inference"
POOL = "qwen"
SEL = {"app": "vllm-qwen"}
POOL_API = "inference.networking.k8s.io/v1"


class Harness:
    """One KubeSources on a fresh datastore, with the synced transitions it reported."""

    def __init__(self, api: k8s_client.ApiClient, **kw: Any) -> None:
        self.ds = Datastore()
        self.synced_calls: list[bool] = []
        self.sources = KubeSources(
            api, self.ds, namespace=NS, on_synced=self.synced_calls.append, **{"watch": FAST_WATCH, **kw}
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> Harness:
        self.task = asyncio.create_task(self.sources.run())
        return self

    def names(self) -> set[str]:
        return {e.name for e in self.ds.endpoints()}

    def addresses(self) -> set[str]:
        return {e.address for e in self.ds.endpoints()}

    async def stop(self) -> None:
        await self.sources.close()
        if self.task is not None:
            await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def harness(api: k8s_client.ApiClient) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kw: Any) -> Harness:
        h = Harness(api, **kw)
        made.append(h)
        return h.start()

    yield make
    for h in made:
        await h.stop()


def _pod(name: str, ip: str, **kw: Any) -> dict[str, Any]:
    return pod(name, NS, labels=kw.pop("labels", SEL), ip=ip, **kw)


async def test_ready_pods_of_the_pool_become_endpoints(emulator: KubeApiEmulator, harness, eventually):
    emulator.create(inference_pool(POOL, NS, selector=SEL, ports=(8000, 8001)))
    emulator.create(
        _pod("p1", "10.0.0.1", labels={**SEL, "inference.networking.k8s.io/engine-type": "sglang"})
    )
    emulator.create(_pod("p2", "10.0.0.2"))
    emulator.create(_pod("starting", "10.0.0.3", ready=False))
    emulator.create(_pod("pending", "", ready=False))
    emulator.create(_pod("foreign", "10.0.0.9", labels={"app": "other"}))
    h = harness(pool_name=POOL)
    await eventually(lambda: h.ds.synced)
    assert h.synced_calls == [True]
    assert h.names() == {"p1-rank-0", "p1-rank-1", "p2-rank-0", "p2-rank-1"}
    assert h.addresses() == {"10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "10.0.0.2:8001"}
    p1 = h.ds.status("p1-rank-1")
    assert p1 is not None
    assert p1.endpoint.engine == "sglang"
    assert p1.endpoint.pod == "p1"
    assert h.ds.pool is not None
    assert tuple(h.ds.pool.target_ports) == (8000, 8001)
    assert h.ds.pool.app_protocol == "http"
    # only our pool by name, only our pods by label: the API server filtered for us
    pool_list = next(q for q in emulator.requests if q.plural == "inferencepools")
    assert pool_list.query["fieldSelector"] == f"metadata.name={POOL}"
    pods_list = next(q for q in emulator.requests if q.plural == "pods")
    assert pods_list.query["labelSelector"] == "app=vllm-qwen"


async def test_unready_or_deleted_pod_is_removed_within_one_event(emulator, harness, eventually):
    emulator.create(inference_pool(POOL, NS, selector=SEL))
    for i in range(1, 4):
        emulator.create(_pod(f"p{i}", f"10.0.0.{i}"))
    h = harness(pool_name=POOL)
    await eventually(lambda: len(h.ds) == 3)
    version = h.ds.membership_version

    emulator.patch("v1", "Pod", NS, "p1", ready_patch(False))
    await eventually(lambda: h.ds.membership_version > version)
    assert h.names() == {"p2-rank-0", "p3-rank-0"}  # the very next membership change removed it

    version = h.ds.membership_version
    emulator.delete("v1", "Pod", NS, "p2")
    await eventually(lambda: h.ds.membership_version > version)
    assert h.names() == {"p3-rank-0"}

    version = h.ds.membership_version
    emulator.patch("v1", "Pod", NS, "p3", {"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}})
    await eventually(lambda: h.ds.membership_version > version)
    assert h.names() == set()  # terminating pods get no new requests

    emulator.patch("v1", "Pod", NS, "p1", ready_patch(True))
    await eventually(lambda: h.names() == {"p1-rank-0"})
    emulator.patch("v1", "Pod", NS, "p1", {"metadata": {"labels": {"app": "moved"}}})
    await eventually(lambda: h.names() == set(), what="a pod leaving the selector arrives as DELETED")


async def test_active_ports_annotation_restricts_ranks(emulator, harness, eventually):
    emulator.create(inference_pool(POOL, NS, selector=SEL, ports=(8000, 8001, 8002)))
    annotation = "inference.networking.k8s.io/active-ports"
    emulator.create(_pod("p1", "10.0.0.1", annotations={annotation: "8000, 8002, junk"}))
    h = harness(pool_name=POOL)
    await eventually(lambda: h.ds.synced)
    assert h.names() == {"p1-rank-0", "p1-rank-2"}  # ranks keep their index in targetPorts
    emulator.patch("v1", "Pod", NS, "p1", {"metadata": {"annotations": {annotation: "8001"}}})
    await eventually(lambda: h.names() == {"p1-rank-1"})
    emulator.patch("v1", "Pod", NS, "p1", {"metadata": {"annotations": {annotation: None}}})
    await eventually(lambda: h.names() == {"p1-rank-0", "p1-rank-1", "p1-rank-2"})


async def test_selector_change_resyncs_and_port_change_recomputes(emulator, harness, eventually):
    emulator.create(inference_pool(POOL, NS, selector=SEL))
    emulator.create(_pod("old", "10.0.0.1"))
    emulator.create(_pod("new", "10.0.0.2", labels={"app": "vllm-qwen-v2"}))
    h = harness(pool_name=POOL)
    await eventually(lambda: h.names() == {"old-rank-0"})
    states: list[set[str]] = []
    h.ds.add_listener(lambda: states.append(h.names()))

    emulator.patch(
        POOL_API, "InferencePool", NS, POOL, {"spec": {"selector": {"matchLabels": {"app": "vllm-qwen-v2"}}}}
    )
    await eventually(lambda: h.names() == {"new-rank-0"})
    # the old endpoints stay until the new list replaces them, in one step: never empty, never mixed
    assert states[-1] == {"new-rank-0"}
    assert all(s in ({"old-rank-0"}, {"new-rank-0"}) for s in states), states

    def last_pod_watch_selector() -> str:
        watches = [q for q in emulator.requests if q.plural == "pods" and q.verb == "watch"]
        return watches[-1].query["labelSelector"]

    await eventually(lambda: last_pod_watch_selector() == "app=vllm-qwen-v2")

    pod_lists = emulator.count("list", "pods")
    emulator.patch(
        POOL_API,
        "InferencePool",
        NS,
        POOL,
        {"spec": {"targetPorts": [{"number": 9000}, {"number": 9001}], "appProtocol": "kubernetes.io/h2c"}},
    )
    await eventually(lambda: h.addresses() == {"10.0.0.2:9000", "10.0.0.2:9001"})
    assert h.ds.pool is not None
    assert h.ds.pool.app_protocol == "kubernetes.io/h2c"
    assert emulator.count("list", "pods") == pod_lists, "same selector: recomputed from the cache"


async def test_pool_deleted_unloads_everything_and_recreation_restores_it(emulator, harness, eventually):
    emulator.create(inference_pool(POOL, NS, selector=SEL))
    emulator.create(_pod("p1", "10.0.0.1"))
    emulator.create(inference_objective("critical", NS, pool=POOL, priority=10))
    h = harness(pool_name=POOL)
    await eventually(lambda: h.ds.synced and h.ds.objectives.get("critical") is not None)

    emulator.delete(POOL_API, "InferencePool", NS, POOL)
    await eventually(lambda: not h.ds.synced)
    assert len(h.ds) == 0
    assert h.ds.pool is None
    assert h.ds.objectives.get("critical") is None
    assert h.synced_calls == [True, False]

    emulator.create(inference_pool(POOL, NS, selector=SEL))
    await eventually(lambda: h.ds.synced and h.names() == {"p1-rank-0"})
    assert h.ds.objectives.get("critical") == Objective("critical", 10), "restored from the watcher's cache"
    assert h.synced_calls == [True, False, True]


async def test_missing_pool_waits_and_invalid_pool_keeps_the_last_good(emulator, harness, eventually, caplog):
    caplog.set_level(logging.INFO, logger="picker.kube")
    emulator.create(_pod("p1", "10.0.0.1"))
    h = harness(pool_name=POOL)
    await eventually(lambda: any("not found; waiting" in m for m in caplog.messages))
    assert not h.ds.synced
    emulator.create(inference_pool(POOL, NS, selector=SEL))
    await eventually(lambda: h.names() == {"p1-rank-0"})
    emulator.patch(POOL_API, "InferencePool", NS, POOL, {"spec": {"targetPorts": []}})
    await eventually(lambda: any("is invalid, keeping the last good one" in m for m in caplog.messages))
    assert h.ds.synced
    assert h.names() == {"p1-rank-0"}


async def test_v1alpha2_pool(emulator, harness, eventually):
    emulator.create(inference_pool_v1alpha2(POOL, NS, selector=SEL, port=8080))
    emulator.create(
        inference_pool(POOL, NS, selector={"app": "nothing"}, ports=(1234,))
    )  # the v1 one: ignored
    emulator.create(_pod("p1", "10.0.0.1"))
    h = harness(pool_name=POOL, pool_group="inference.networking.x-k8s.io")
    await eventually(lambda: h.ds.synced)
    assert h.addresses() == {"10.0.0.1:8080"}
    assert h.ds.pool is not None
    assert h.ds.pool.group == "inference.networking.x-k8s.io"


async def test_standalone_selector_without_crds(emulator, harness, eventually):
    emulator.create(_pod("p1", "10.0.0.1"))
    emulator.create(_pod("p2", "fd00::2"))
    h = harness(endpoint_selector="app=vllm-qwen", target_ports=(8000, 8001), standalone_name="qwen-epp")
    await eventually(lambda: len(h.ds) == 4)
    assert "[fd00::2]:8001" in h.addresses()
    assert h.ds.pool is not None
    assert h.ds.pool.name == "qwen-epp"
    assert {q.plural for q in emulator.requests} == {"pods"}, "standalone mode reads no CRDs"


async def test_watch_expiry_and_api_server_restart_lose_no_endpoint(emulator, harness, eventually, caplog):
    caplog.set_level(logging.WARNING, logger="picker.kube")
    emulator.create(inference_pool(POOL, NS, selector=SEL))
    for i in range(1, 4):
        emulator.create(_pod(f"p{i}", f"10.0.0.{i}"))
    no_rotation = dataclasses.replace(FAST_WATCH, watch_timeout_s=60.0)  # no watch ends mid-test
    h = harness(pool_name=POOL, watch=no_rotation)
    await eventually(lambda: len(h.ds) == 3)
    seen: list[set[str]] = []
    h.ds.add_listener(lambda: seen.append(h.names()))
    survivors = {"p1-rank-0", "p2-rank-0"}

    # 410 on every open watch, with history compacted: everything relists and reconciles
    await eventually(lambda: emulator.open_watches() == 4, what="pool, pods, objectives, rewrites watched")
    emulator.compact()
    assert emulator.expire_watches() == 4
    await eventually(lambda: emulator.count("list", "pods") >= 2 and emulator.open_watches("pods") == 1)
    assert h.names() == {"p1-rank-0", "p2-rank-0", "p3-rank-0"}

    # the API server goes away; the cluster changes meanwhile; it comes back with its history compacted
    await emulator.stop()
    await eventually(lambda: sum("failing" in m for m in caplog.messages) >= 4, what="every watch noticed")
    assert h.ds.synced, "an unreachable API server changes nothing"
    assert len(h.ds) == 3, "an unreachable API server changes nothing"
    emulator.delete("v1", "Pod", NS, "p3")
    emulator.create(_pod("p4", "10.0.0.4"))
    await emulator.restart(compact=True)
    await eventually(lambda: h.names() == {*survivors, "p4-rank-0"})
    assert all(survivors <= names for names in seen), f"a surviving endpoint disappeared: {seen}"
    assert h.synced_calls == [True]
