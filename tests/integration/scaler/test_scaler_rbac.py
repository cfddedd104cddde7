"""The scaler's RBAC is exactly what its actuator uses, in both install paths: the kustomize component
(``manifests/components/scaler``, through ``manifests/examples/scaler``) and the chart's ``scaler.enabled``
Role.

Every :class:`~picker.scaler.ports.ReplicaActuator` operation of
:class:`~picker.kube.scale.ScaleTargetClient` (read, list the pods, mark and unmark a victim, set the count,
move an HPA's bounds, post an Event) runs for every kind it scales (a Deployment with an HPA, a StatefulSet,
a LeaderWorkerSet) against the API emulator, which records each request. Then, for each install path: every
request is granted by the Roles bound to the EPP's ServiceAccount, and every verb the scaler's Role grants
was sent. The rules come from the real ``kubectl kustomize`` output and Helm's own rendering, as the base
RBAC's test (``tests/integration/kube_e2e/test_e2e_rbac.py``) does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client as k8s_client

from picker.kube.configmap import EventRecorder
from picker.kube.scale import ScaleTargetClient
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import deployment, hpa, leader_worker_set, statefulset
from picker.testing.kube_workloads import WorkloadController
from picker.testing.poll import eventually
from tests.integration.scaler.conftest import LABELS, NS
from tests.unit.manifests.conftest import kustomize_build

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
Grant = tuple[str, str]  # (resource[/subresource], verb); the scaler's rules name no resourceNames
Doc = dict[str, Any]


def _grants(docs: list[Doc], account: str, *, role: str | None = None) -> set[Grant]:
    """What the Roles bound to ``account`` grant (only the Role named ``role``, when given)."""
    bound = {
        d["roleRef"]["name"]
        for d in docs
        if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}
        and any(s["kind"] == "ServiceAccount" and s["name"] == account for s in d["subjects"])
    }
    out: set[Grant] = set()
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] not in {"Role", "ClusterRole"} or name not in bound or role not in {None, name}:
            continue
        for rule in doc["rules"]:
            assert "resourceNames" not in rule or role is None, f"{name}: resourceNames in a scaler rule"
            out.update((r, v) for r in rule.get("resources", ()) for v in rule["verbs"])
    return out


def _kustomize() -> tuple[set[Grant], set[Grant]]:
    """(everything the EPP's account gets, what the scaler Role grants) in ``examples/scaler``."""
    docs = kustomize_build(REPO / "manifests" / "examples" / "scaler").resources
    return _grants(docs, "picker"), _grants(docs, "picker", role="picker-scaler")


def _chart() -> tuple[set[Grant], set[Grant]]:
    values = {"inferencePool": {"modelServers": {"matchLabels": LABELS}}, "scaler": {"enabled": True}}
    with helm.Chart.load(str(REPO / "charts" / "picker")) as chart:
        out = chart.render(values, name="llama", namespace=NS, is_install=True)
    docs = [d for path, text in out.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    return _grants(docs, "llama-epp"), _grants(docs, "llama-epp", role="llama-epp-scaler")


async def _every_operation(api: k8s_client.ApiClient, kind: str, name: str) -> None:
    """Each ReplicaActuator operation once, as the scaler uses them on a scale-down with a victim."""
    target = ScaleTargetClient(
        api, namespace=NS, kind=kind, name=name, recorder=EventRecorder(api, instance="rbac")
    )
    status = await target.read()
    pods = await target.existing_pods(status.selector)
    victim = min(pods)
    await target.mark_victim(victim)
    await target.unmark_victim(victim)
    await target.set_replicas(status.replicas)
    if status.hpa is not None:
        await target.set_hpa_bounds(status.hpa.name, status.hpa.min_replicas, status.hpa.max_replicas)
    await target.post_event(type_="Normal", reason="ScaleDown", message=f"{kind} checked")


async def test_every_scaler_request_is_granted_and_every_scaler_grant_is_used(
    cluster: tuple[KubeApiEmulator, WorkloadController], api: k8s_client.ApiClient
) -> None:
    emu, _ = cluster
    emu.create(deployment("vllm", NS, labels=LABELS, replicas=2))
    emu.create(hpa("vllm", NS, target_kind="Deployment", target="vllm", min_replicas=1, max_replicas=4))
    emu.create(statefulset("db", NS, labels={"app": "db"}, replicas=1))
    emu.create(leader_worker_set("lws", NS, labels={"app": "lws"}, replicas=1, size=2))
    await eventually(lambda: len(emu.list_objects("v1", "Pod", NS)) == 5)  # 2 + 1 + a group of 2
    before = len(emu.requests)
    for kind, name in (("Deployment", "vllm"), ("StatefulSet", "db"), ("LeaderWorkerSet", "lws")):
        await _every_operation(api, kind, name)
    sent: set[Grant] = {
        (r.plural if r.subresource is None else f"{r.plural}/{r.subresource}", r.verb)
        for r in emu.requests[before:]
    }
    assert ("horizontalpodautoscalers", "patch") in sent  # the HPA was found and moved
    assert len(emu.list_objects("v1", "Event", NS)) == 3

    for source, (granted, scaler) in {"kustomize": _kustomize(), "chart": _chart()}.items():
        denied = sorted(sent - granted)
        assert denied == [], f"{source}: requests the scaler sends that its RBAC would refuse: {denied}"
        unused = sorted(scaler - sent)
        assert unused == [], f"{source}: the scaler Role grants what the scaler never sends: {unused}"
