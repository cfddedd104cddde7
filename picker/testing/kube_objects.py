"""Builders for the Kubernetes objects the EPP consumes, as plain JSON (for :mod:`picker.testing.kube_api`).

The shapes follow the published APIs (core/v1 Pod and ConfigMap, InferencePool v1 and v1alpha2,
InferenceObjective and InferenceModelRewrite v1alpha2) with only the fields the EPP reads filled in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

JsonObj = dict[str, Any]

POOL_V1 = "inference.networking.k8s.io/v1"
POOL_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"
X_K8S_V1ALPHA2 = "inference.networking.x-k8s.io/v1alpha2"


def inference_pool(
    name: str,
    namespace: str = "default",
    *,
    selector: Mapping[str, str],
    ports: Sequence[int] = (8000,),
    app_protocol: str | None = None,
    epp_service: str = "epp",
    epp_port: int = 9002,
) -> JsonObj:
    """An InferencePool ``inference.networking.k8s.io/v1``; ``epp_port``: the EPP Service port its gateway
    dials (one EPP serving several pools tells them apart by it)."""
    spec: JsonObj = {
        "selector": {"matchLabels": dict(selector)},
        "targetPorts": [{"number": p} for p in ports],
        "endpointPickerRef": {"name": epp_service, "kind": "Service", "port": {"number": epp_port}},
    }
    if app_protocol is not None:
        spec["appProtocol"] = app_protocol
    return {
        "apiVersion": POOL_V1,
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def inference_pool_v1alpha2(
    name: str,
    namespace: str = "default",
    *,
    selector: Mapping[str, str],
    port: int = 8000,
    epp_service: str = "epp",
) -> JsonObj:
    """An InferencePool ``inference.networking.x-k8s.io/v1alpha2`` (plain selector map, one port)."""
    return {
        "apiVersion": POOL_V1ALPHA2,
        "kind": "InferencePool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": dict(selector),
            "targetPortNumber": port,
            "extensionRef": {"name": epp_service, "portNumber": 9002},
        },
    }


def pod(
    name: str,
    namespace: str = "default",
    *,
    labels: Mapping[str, str],
    ip: str | None = "10.0.0.1",
    ready: bool = True,
    annotations: Mapping[str, str] | None = None,
    terminating: bool = False,
) -> JsonObj:
    """A Pod with a ``Ready`` condition; ``ip=None`` is a pod not scheduled/started yet."""
    meta: JsonObj = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    status: JsonObj = {
        "phase": "Running" if ip else "Pending",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
        "status": status,
    }


def ready_patch(ready: bool) -> JsonObj:
    """A merge patch flipping a pod's Ready condition (conditions is replaced as a whole)."""
    return {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pool_ref(pool: str, group: str | None = "inference.networking.k8s.io") -> JsonObj:
    ref: JsonObj = {"name": pool}
    if group is not None:
        ref["group"] = group
    return ref


def inference_objective(
    name: str, namespace: str = "default", *, pool: str, priority: int | None = None, group: str | None = None
) -> JsonObj:
    spec: JsonObj = {"poolRef": pool_ref(pool, group)}
    if priority is not None:
        spec["priority"] = priority
    return {
        "apiVersion": X_K8S_V1ALPHA2,
        "kind": "InferenceObjective",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def inference_model_rewrite(
    name: str,
    namespace: str = "default",
    *,
    pool: str,
    rules: Sequence[tuple[Sequence[str], Sequence[tuple[str, int]]]],
    created: str | None = None,
    group: str | None = None,
) -> JsonObj:
    """``rules``: ``[(matched models (empty = generic), [(target model, weight), ...]), ...]``."""
    meta: JsonObj = {"name": name, "namespace": namespace}
    if created is not None:
        meta["creationTimestamp"] = created
    return {
        "apiVersion": X_K8S_V1ALPHA2,
        "kind": "InferenceModelRewrite",
        "metadata": meta,
        "spec": {
            "poolRef": pool_ref(pool, group),
            "rules": [
                {
                    "matches": [{"model": {"type": "Exact", "value": m}} for m in matches],
                    "targets": [{"modelRewrite": t, **({"weight": w} if w else {})} for t, w in targets],
                }
                for matches, targets in rules
            ],
        },
    }


def config_map(name: str, namespace: str = "default", *, data: Mapping[str, str]) -> JsonObj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": dict(data),
    }


def _template(labels: Mapping[str, str]) -> JsonObj:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
    }


def deployment(
    name: str, namespace: str = "default", *, labels: Mapping[str, str], replicas: int = 1
) -> JsonObj:
    """An ``apps/v1`` Deployment whose pods carry ``labels`` (also its selector)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": _template(labels),
        },
    }


def statefulset(
    name: str, namespace: str = "default", *, labels: Mapping[str, str], replicas: int = 1
) -> JsonObj:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(labels)},
            "template": _template(labels),
        },
    }


def leader_worker_set(
    name: str, namespace: str = "default", *, labels: Mapping[str, str], replicas: int = 1, size: int = 1
) -> JsonObj:
    """A ``leaderworkerset.x-k8s.io/v1`` LeaderWorkerSet (groups of ``size`` pods, the leader serving)."""
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "leaderWorkerTemplate": {
                "size": size,
                "leaderTemplate": _template(labels),
                "workerTemplate": _template(labels),
            },
        },
    }


def hpa(
    name: str,
    namespace: str = "default",
    *,
    target_kind: str,
    target: str,
    min_replicas: int,
    max_replicas: int,
) -> JsonObj:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler on a CPU target (the metric is never evaluated here)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1"
                if target_kind != "LeaderWorkerSet"
                else "leaderworkerset.x-k8s.io/v1",
                "kind": target_kind,
                "name": target,
            },
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }
