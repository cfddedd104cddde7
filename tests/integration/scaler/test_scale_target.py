"""The scale actuator (``picker.kube.scale``) through the official client against the API emulator and its
workload controllers: scale subresource, pod-deletion-cost ordering, warm-up, HPA bounds, Events."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client as k8s_client

from picker.kube import load_api_client
from picker.kube.client import KubeNotFoundError
from picker.kube.configmap import EventRecorder
from picker.kube.scale import DELETION_COST_ANNOTATION, VICTIM_DELETION_COST, ScaleTargetClient
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import deployment, hpa, leader_worker_set, statefulset
from picker.testing.kube_workloads import WorkloadController
from picker.testing.poll import eventually
from tests.integration.scaler.conftest import LABELS, NS

pytestmark = pytest.mark.integration


def ready_replicas(emu: KubeApiEmulator, name: str = "vllm") -> int:
    obj = emu.get("apps/v1", "Deployment", NS, name) or {}
    return int((obj.get("status") or {}).get("readyReplicas", 0))


def pod_names(emu: KubeApiEmulator, *, live: bool = True) -> set[str]:
    return {
        p["metadata"]["name"]
        for p in emu.list_objects("v1", "Pod", NS)
        if not (live and p["metadata"].get("deletionTimestamp"))
    }


async def test_deployment_scales_through_the_subresource_and_deletes_the_marked_pod(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, ctl = cluster
    emu.create(deployment("vllm", NS, labels=LABELS, replicas=3))
    target = ScaleTargetClient(api, namespace=NS, kind="Deployment", name="vllm")
    await eventually(lambda: len(pod_names(emu)) == 3)
    status = await target.read()
    assert (status.replicas, status.selector, status.hpa, status.ordered_removal) == (
        3,
        "app=vllm",
        None,
        False,
    )
    await eventually(lambda: ready_replicas(emu) == 3)
    assert (await target.read()).ready == 3
    assert await target.existing_pods(status.selector) == pod_names(emu)

    # the oldest pod would never be the ReplicaSet's own choice (it prefers the newest): mark it
    victim = min(pod_names(emu))
    await target.mark_victim(victim)
    assert (
        emu.get("v1", "Pod", NS, victim)["metadata"]["annotations"][DELETION_COST_ANNOTATION]
        == VICTIM_DELETION_COST
    )  # type: ignore[index]
    await target.set_replicas(2)
    await eventually(lambda: victim not in pod_names(emu) and len(pod_names(emu)) == 2)
    assert ctl.deleted == [victim]
    assert [r.subresource for r in emu.requests if r.verb == "patch" and r.plural == "deployments"] == [
        "scale"
    ]
    await eventually(lambda: victim not in pod_names(emu, live=False))  # terminated, then gone

    # scale up: new pods are not Ready until their warm-up has passed
    await target.set_replicas(4)
    await eventually(lambda: len(pod_names(emu)) == 4)
    assert (await target.read()).ready == 2
    await eventually(lambda: ready_replicas(emu) == 4)

    await target.unmark_victim(min(pod_names(emu)))
    await target.unmark_victim("gone-already")  # no error for a pod that no longer exists


async def test_without_a_mark_the_newest_ready_pod_goes_first(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, ctl = cluster
    emu.create(deployment("vllm", NS, labels=LABELS, replicas=2))
    await eventually(lambda: ready_replicas(emu) == 2)
    emu.patch("apps/v1", "Deployment", NS, "vllm", {"spec": {"replicas": 3}})
    await eventually(lambda: len(pod_names(emu)) == 3)
    newest = max(pod_names(emu))  # names carry a sequence number
    emu.patch("apps/v1", "Deployment", NS, "vllm", {"spec": {"replicas": 2}})
    await eventually(lambda: len(pod_names(emu)) == 2)
    assert ctl.deleted == [newest]  # not ready yet: deleted first


async def test_statefulset_removes_its_highest_ordinal(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, ctl = cluster
    emu.create(statefulset("vllm", NS, labels=LABELS, replicas=3))
    await eventually(lambda: pod_names(emu) == {"vllm-0", "vllm-1", "vllm-2"})
    target = ScaleTargetClient(api, namespace=NS, kind="StatefulSet", name="vllm")
    assert (await target.read()).ordered_removal
    await target.mark_victim("vllm-0")  # ignored by the StatefulSet controller
    await target.set_replicas(2)
    await eventually(lambda: pod_names(emu) == {"vllm-0", "vllm-1"})
    assert ctl.deleted == ["vllm-2"]


async def test_leader_worker_set_scales_groups_when_the_crd_exists(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, _ = cluster
    emu.create(leader_worker_set("lws", NS, labels=LABELS, replicas=2, size=2))
    await eventually(lambda: pod_names(emu) == {"lws-0", "lws-0-1", "lws-1", "lws-1-1"})
    target = ScaleTargetClient(api, namespace=NS, kind="LeaderWorkerSet", name="lws")
    status = await target.read()
    assert status.replicas == 2
    assert status.ordered_removal
    assert await target.existing_pods(status.selector) == {"lws-0", "lws-1"}  # leaders only
    await target.set_replicas(1)
    await eventually(lambda: pod_names(emu) == {"lws-0", "lws-0-1"})
    # strategic merge on a CRD is refused by the API server; our merge patches are not
    assert not [
        r
        for r in emu.requests
        if r.verb == "patch" and r.plural == "leaderworkersets" and r.subresource != "scale"
    ]


async def test_leader_worker_set_without_the_crd_is_a_clear_error(
    emulator: KubeApiEmulator, tmp_path: Path
) -> None:
    client = load_api_client(emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))
    try:
        target = ScaleTargetClient(client, namespace=NS, kind="LeaderWorkerSet", name="lws")
        with pytest.raises(KubeNotFoundError, match="CRD is not installed"):
            await target.read()
    finally:
        client.close()


async def test_hpa_is_found_and_its_bounds_are_moved(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, _ = cluster
    emu.create(deployment("vllm", NS, labels=LABELS, replicas=3))
    emu.create(hpa("vllm", NS, target_kind="Deployment", target="vllm", min_replicas=2, max_replicas=6))
    emu.create(hpa("other", NS, target_kind="Deployment", target="else", min_replicas=1, max_replicas=2))
    target = ScaleTargetClient(api, namespace=NS, kind="Deployment", name="vllm")
    status = await target.read()
    assert status.hpa is not None
    assert (status.hpa.name, status.hpa.min_replicas, status.hpa.max_replicas) == (
        "vllm",
        2,
        6,
    )
    await target.set_hpa_bounds("vllm", 5, 8)  # the HPA raises the workload to its new minimum
    await eventually(lambda: len(pod_names(emu)) == 5)
    await target.set_hpa_bounds("vllm", 1, 2)
    await eventually(lambda: len(pod_names(emu)) == 2)
    with pytest.raises(ValueError, match="minReplicas"):
        await target.set_hpa_bounds("vllm", 0, 2)


async def test_events_go_to_the_workload(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, _ = cluster
    emu.create(deployment("vllm", NS, labels=LABELS, replicas=1))
    target = ScaleTargetClient(
        api, namespace=NS, kind="Deployment", name="vllm", recorder=EventRecorder(api, instance="t")
    )
    await target.read()
    await target.post_event(type_="Normal", reason="ScaledUp", message="scale-up 1->2 (demand)")
    events = emu.list_objects("v1", "Event", NS)
    assert [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) for e in events] == [
        ("Deployment", "vllm", "ScaledUp")
    ]
    assert (
        events[0]["involvedObject"]["uid"] == emu.get("apps/v1", "Deployment", NS, "vllm")["metadata"]["uid"]
    )  # type: ignore[index]
