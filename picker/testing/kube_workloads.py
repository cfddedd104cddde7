"""Workload controllers for the Kubernetes API emulator: Deployments, StatefulSets, LeaderWorkerSets, HPAs.

What the real control plane does and this module reproduces, because the scaler depends on it:

* **Pods follow ``spec.replicas``** (set directly or through the ``scale`` subresource). New pods get an IP
  from the test's list, start **not Ready** and turn Ready after ``warmup_s`` (a model loading). The
  workload's ``status`` (``replicas``, ``readyReplicas``, ``availableReplicas``) follows.
* **Which pod a scale-down deletes** (the ReplicaSet controller's ranking, ``ActivePodsWithRanks``, minus the
  node terms): pods without an IP first, then not-Ready before Ready, then the **lower**
  ``controller.kubernetes.io/pod-deletion-cost``, then the more recently Ready, then the newer. A
  StatefulSet removes its highest ordinal; a LeaderWorkerSet its highest group (leader and workers).
* **Deletion is graceful**: a deleted pod gets a ``deletionTimestamp`` at once and disappears
  ``termination_s`` later. A pod deleted from outside is replaced (a ReplicaSet keeps its count).
* **An HPA keeps its target within** ``[minReplicas, maxReplicas]``: whenever the HPA or its target changes,
  the target's replicas are clamped. Without a metrics pipeline the recommendation is the current count;
  a test sets :attr:`WorkloadController.recommendation` to play the metrics.

Simplifications: pods are owned by the workload directly (no ReplicaSet objects, no rollouts), StatefulSet
pods are created in parallel (``podManagementPolicy: Parallel``), and nothing is scheduled to nodes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from picker.testing.kube_api import (
    DEPLOYMENTS,
    HPAS,
    LEADER_WORKER_SETS,
    PODS,
    STATEFULSETS,
    JsonObj,
    KubeApiEmulator,
    ResourceType,
)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"
LWS_GROUP = "leaderworkerset.sigs.k8s.io/group-index"
LWS_WORKER = "leaderworkerset.sigs.k8s.io/worker-index"
_WORKLOADS = (DEPLOYMENTS, STATEFULSETS, LEADER_WORKER_SETS)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cost(pod: JsonObj) -> int:
    raw = ((pod["metadata"].get("annotations") or {}).get(DELETION_COST)) or "0"
    try:
        return int(raw)
    except ValueError:
        return 0


def _seconds(stamp: str) -> float:
    """RFC 3339 (with or without fractions) to epoch seconds; 0 when absent or unparsable."""
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(stamp, fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    return 0.0


def _ready_since(pod: JsonObj) -> str:
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready" and c.get("status") == "True":
            return str(c.get("lastTransitionTime") or "")
    return ""


def deletion_rank(pod: JsonObj) -> tuple[Any, ...]:
    """Sort key: the pod a ReplicaSet deletes first sorts first (module docstring)."""
    status = pod.get("status") or {}
    since = _ready_since(pod)
    return (
        bool(status.get("podIP")),
        bool(since),
        _cost(pod),
        -_seconds(since),  # more recently ready first
        -_seconds(pod["metadata"].get("creationTimestamp", "")),  # then newer first
        pod["metadata"]["name"],
    )


class WorkloadController:
    """Attach to an emulator; reconciles asynchronously after every relevant change (like a controller)."""

    def __init__(
        self,
        api: KubeApiEmulator,
        *,
        ips: Iterable[str] | None = None,
        warmup_s: float = 0.0,
        termination_s: float = 0.0,
    ) -> None:
        self.api = api
        self._ips: Iterator[str] = (
            iter(ips) if ips is not None else (f"10.9.{i // 250}.{i % 250 + 1}" for i in itertools.count())
        )
        self.warmup_s = warmup_s
        self.termination_s = termination_s
        #: (namespace, hpa name) -> replicas the "metrics" recommend (default: keep the current count)
        self.recommendation: dict[tuple[str, str], int] = {}
        #: pod names deleted by scale-downs, in order (assertions on the victim)
        self.deleted: list[str] = []
        self._pending = False
        self._seq = itertools.count(1)
        self._timers: set[asyncio.TimerHandle] = set()
        api.listeners.append(self._changed)

    def close(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        if self._changed in self.api.listeners:
            self.api.listeners.remove(self._changed)

    # ------------------------------------------------------------------------------------ triggers
    def _changed(self, r: ResourceType, type_: str, _obj: JsonObj, _old: JsonObj | None) -> None:
        if r in _WORKLOADS or r == HPAS or (r == PODS and type_ == "DELETED"):
            self.kick()

    def kick(self) -> None:
        """Reconcile soon (once, however many changes arrive meanwhile)."""
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self.reconcile)

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            fn(*args)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    # ------------------------------------------------------------------------------------ reconcile
    def reconcile(self) -> None:
        self._pending = False
        for hpa in self.api.list_objects("autoscaling/v2", "HorizontalPodAutoscaler"):
            self._apply_hpa(hpa)
        for r in _WORKLOADS:
            try:
                workloads = self.api.list_objects(r.api_version, r.kind)
            except KeyError:
                continue  # CRD not installed
            for w in workloads:
                self._reconcile(r, w)

    def _apply_hpa(self, hpa: JsonObj) -> None:
        spec = hpa.get("spec") or {}
        ref = spec.get("scaleTargetRef") or {}
        ns = hpa["metadata"]["namespace"]
        kind, name = ref.get("kind"), ref.get("name")
        r = next((w for w in _WORKLOADS if w.kind == kind), None)
        if r is None or not isinstance(name, str):
            return
        try:
            target = self.api.get(r.api_version, r.kind, ns, name)
        except KeyError:
            return
        if target is None:
            return
        lo, hi = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
        current = int((target.get("spec") or {}).get("replicas", 1))
        wanted = self.recommendation.get((ns, hpa["metadata"]["name"]), current)
        desired = min(max(wanted, lo), hi)
        if desired != current:
            self.api.patch(r.api_version, r.kind, ns, name, {"spec": {"replicas": desired}})
        status = {"currentReplicas": current, "desiredReplicas": desired}
        if (hpa.get("status") or {}) != status:
            self.api.patch(
                "autoscaling/v2", "HorizontalPodAutoscaler", ns, hpa["metadata"]["name"], {"status": status}
            )

    def _owned(self, w: JsonObj) -> list[JsonObj]:
        uid = w["metadata"]["uid"]
        return [
            p
            for p in self.api.list_objects("v1", "Pod", w["metadata"]["namespace"])
            if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or ())
        ]

    def _reconcile(self, r: ResourceType, w: JsonObj) -> None:
        desired = int((w.get("spec") or {}).get("replicas", 1))
        pods = [p for p in self._owned(w) if not p["metadata"].get("deletionTimestamp")]
        if r == DEPLOYMENTS:
            self._reconcile_deployment(w, pods, desired)
        else:
            self._reconcile_groups(r, w, pods, desired)
        self._update_status(r, w)

    def _reconcile_deployment(self, w: JsonObj, pods: list[JsonObj], desired: int) -> None:
        for _ in range(desired - len(pods)):
            self._create_pod(w, f"{w['metadata']['name']}-{next(self._seq):05x}", {})
        excess = len(pods) - desired
        if excess > 0:
            for pod in sorted(pods, key=deletion_rank)[:excess]:
                self._terminate(pod)

    def _group_size(self, r: ResourceType, w: JsonObj) -> int:
        if r != LEADER_WORKER_SETS:
            return 1
        return int(((w.get("spec") or {}).get("leaderWorkerTemplate") or {}).get("size", 1))

    def _reconcile_groups(self, r: ResourceType, w: JsonObj, pods: list[JsonObj], desired: int) -> None:
        name = w["metadata"]["name"]
        size = self._group_size(r, w)
        existing = {p["metadata"]["name"]: p for p in pods}
        wanted: dict[str, dict[str, str]] = {}
        for i in range(desired):
            for j in range(size):
                pod_name = f"{name}-{i}" if j == 0 else f"{name}-{i}-{j}"
                labels = {} if r == STATEFULSETS else {LWS_NAME: name, LWS_GROUP: str(i), LWS_WORKER: str(j)}
                wanted[pod_name] = labels
        for pod_name, labels in wanted.items():
            if pod_name not in existing:
                self._create_pod(w, pod_name, labels)
        doomed = [p for n, p in existing.items() if n not in wanted]
        for pod in sorted(doomed, key=lambda p: p["metadata"]["name"], reverse=True):
            self._terminate(pod)

    def _create_pod(self, w: JsonObj, name: str, extra_labels: dict[str, str]) -> None:
        template = (w.get("spec") or {}).get("template") or (
            ((w.get("spec") or {}).get("leaderWorkerTemplate") or {}).get("leaderTemplate") or {}
        )
        meta = template.get("metadata") or {}
        ns = w["metadata"]["namespace"]
        ip = next(self._ips)
        self.api.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {**(meta.get("labels") or {}), **extra_labels},
                    "annotations": dict(meta.get("annotations") or {}),
                    "creationTimestamp": _now(),
                    "ownerReferences": [
                        {
                            "apiVersion": w["apiVersion"],
                            "kind": w["kind"],
                            "name": w["metadata"]["name"],
                            "uid": w["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": template.get("spec")
                or {"containers": [{"name": "server", "image": "vllm/vllm-openai"}]},
                "status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": _now()}],
                },
            }
        )
        self._later(self.warmup_s, self._become_ready, ns, name)

    def _become_ready(self, ns: str, name: str) -> None:
        pod = self.api.get("v1", "Pod", ns, name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": _now()}]
        self.api.patch("v1", "Pod", ns, name, {"status": {"conditions": conditions}})
        self.kick()

    def _terminate(self, pod: JsonObj) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.deleted.append(name)
        self.api.patch("v1", "Pod", ns, name, {"metadata": {"deletionTimestamp": _now()}})
        self._later(self.termination_s, self._remove, ns, name)

    def _remove(self, ns: str, name: str) -> None:
        if self.api.get("v1", "Pod", ns, name) is not None:
            self.api.delete("v1", "Pod", ns, name)

    def _update_status(self, r: ResourceType, w: JsonObj) -> None:
        live = [p for p in self._owned(w) if not p["metadata"].get("deletionTimestamp")]
        size = self._group_size(r, w)
        ready = sum(1 for p in live if _ready_since(p))
        status: JsonObj = {
            "replicas": len(live) // size,
            "readyReplicas": ready // size,
            "availableReplicas": ready // size,
            "updatedReplicas": len(live) // size,
            "observedGeneration": w["metadata"].get("generation", 1),
        }
        if r == LEADER_WORKER_SETS:
            status["hpaPodSelector"] = f"{LWS_NAME}={w['metadata']['name']},{LWS_WORKER}=0"
        if (w.get("status") or {}) != status:
            self.api.patch(
                r.api_version, r.kind, w["metadata"]["namespace"], w["metadata"]["name"], {"status": status}
            )
