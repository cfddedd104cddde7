"""The scaler's hands: the target workload's ``scale`` subresource, its HPA, pod deletion costs, Events.

:class:`ScaleTargetClient` satisfies :class:`picker.scaler.ports.ReplicaActuator` structurally (the scaler
declares what it needs; the app wires this in). Every call is one blocking client request on a worker
thread (:func:`picker.kube._threads.run_in_thread`), foreign errors translated to :class:`KubeError`.

* **Replicas change only through the scale subresource** (``deployments/scale``, ``statefulsets/scale``,
  ``leaderworkersets/scale``), so RBAC can grant exactly that and nothing else on the workload.
* **HPA**: when a HorizontalPodAutoscaler targets the workload, the scaler must not fight it; it moves the
  HPA's ``minReplicas`` / ``maxReplicas`` instead (:meth:`set_hpa_bounds`).
* **The victim** gets ``controller.kubernetes.io/pod-deletion-cost: "-2147483648"`` (the lowest int32) right
  before the count is lowered, so the ReplicaSet deletes *that* pod; :meth:`unmark_victim` removes the
  annotation again when a drain is cancelled or the removal failed. StatefulSets and LeaderWorkerSets
  ignore the annotation (they remove the highest ordinal), which the scaler knows.
* **LeaderWorkerSet** is a CRD (``leaderworkerset.x-k8s.io/v1``): a 404 on the resource itself is reported
  as "CRD not installed".

Patches are sent as JSON merge patches (``application/merge-patch+json``): the API server accepts them for
built-in kinds and CRDs alike (a strategic merge patch on a CRD is a 415).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s_client

from picker.kube._threads import run_in_thread
from picker.kube.client import DEFAULT_REQUEST_TIMEOUT, JsonObj, KubeError, KubeNotFoundError, call_json
from picker.kube.configmap import EventRecorder

log = logging.getLogger(__name__)

DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
#: the lowest value the annotation takes (int32): deleted before any pod without it (cost 0)
VICTIM_DELETION_COST = str(-(2**31))
MERGE_PATCH = "application/merge-patch+json"
LWS_GROUP, LWS_VERSION, LWS_PLURAL = "leaderworkerset.x-k8s.io", "v1", "leaderworkersets"
KINDS = ("Deployment", "StatefulSet", "LeaderWorkerSet")


@dataclass(frozen=True, slots=True)
class HpaBounds:
    """The HPA that targets the workload, as last read."""

    name: str
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    """One read of the target."""

    replicas: int  #: spec.replicas
    ready: int  #: status.readyReplicas
    selector: str  #: label selector of its pods (leaders only for a LeaderWorkerSet)
    hpa: HpaBounds | None
    ordered_removal: bool  #: the controller removes the highest ordinal (StatefulSet, LeaderWorkerSet)


def _selector(obj: Mapping[str, Any], kind: str) -> str:
    if kind == "LeaderWorkerSet":
        text = (obj.get("status") or {}).get("hpaPodSelector")
        if text:
            return str(text)
        name = (obj.get("metadata") or {}).get("name", "")
        return f"leaderworkerset.sigs.k8s.io/name={name},leaderworkerset.sigs.k8s.io/worker-index=0"
    labels = (((obj.get("spec") or {}).get("selector") or {}).get("matchLabels")) or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _int(value: object, default: int = 0) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else default


class ScaleTargetClient:
    """One target workload. Constructing it does no I/O."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        namespace: str,
        kind: str,
        name: str,
        recorder: EventRecorder | None = None,
        timeout: tuple[float, float] = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"cannot scale a {kind!r}; supported: {', '.join(KINDS)}")
        self.namespace = namespace
        self.kind = kind
        self.name = name
        self._apps = k8s_client.AppsV1Api(api)
        self._custom = k8s_client.CustomObjectsApi(api)
        self._core = k8s_client.CoreV1Api(api)
        self._hpa = k8s_client.AutoscalingV2Api(api)
        self._recorder = recorder
        self._timeout = timeout
        self._last: JsonObj | None = None

    @property
    def description(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    # ------------------------------------------------------------------------------------ plumbing
    async def _call(self, fn: Callable[..., Any], *args: Any, what: str, patch: bool = False) -> JsonObj:
        call = functools.partial(fn, _content_type=MERGE_PATCH) if patch else fn
        return await run_in_thread(lambda: call_json(call, *args, timeout=self._timeout), name=f"kube-{what}")

    def _not_found(self, exc: KubeNotFoundError) -> KubeError:
        hint = " (or the LeaderWorkerSet CRD is not installed)" if self.kind == "LeaderWorkerSet" else ""
        return KubeNotFoundError(f"{self.description} not found{hint}: {exc.message}", status=404)

    # ------------------------------------------------------------------------------------ reading
    async def read(self) -> WorkloadStatus:
        """The workload's replicas, readiness and pod selector, and the HPA targeting it (if any)."""
        try:
            if self.kind == "Deployment":
                obj = await self._call(
                    self._apps.read_namespaced_deployment, self.name, self.namespace, what="get"
                )
            elif self.kind == "StatefulSet":
                obj = await self._call(
                    self._apps.read_namespaced_stateful_set, self.name, self.namespace, what="get"
                )
            else:
                obj = await self._call(
                    self._custom.get_namespaced_custom_object,
                    LWS_GROUP,
                    LWS_VERSION,
                    self.namespace,
                    LWS_PLURAL,
                    self.name,
                    what="get",
                )
        except KubeNotFoundError as exc:
            raise self._not_found(exc) from exc
        self._last = obj
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        return WorkloadStatus(
            replicas=_int(spec.get("replicas"), 1),
            ready=_int(status.get("readyReplicas")),
            selector=_selector(obj, self.kind),
            hpa=await self._find_hpa(),
            ordered_removal=self.kind != "Deployment",
        )

    async def _find_hpa(self) -> HpaBounds | None:
        doc = await self._call(
            self._hpa.list_namespaced_horizontal_pod_autoscaler, self.namespace, what="list-hpa"
        )
        for item in doc.get("items") or ():
            spec = item.get("spec") or {}
            ref = spec.get("scaleTargetRef") or {}
            if ref.get("kind") == self.kind and ref.get("name") == self.name:
                return HpaBounds(
                    name=str((item.get("metadata") or {}).get("name")),
                    min_replicas=_int(spec.get("minReplicas"), 1),
                    max_replicas=_int(spec.get("maxReplicas"), 1),
                )
        return None

    async def existing_pods(self, selector: str) -> frozenset[str]:
        """Names of the workload's pods that are not terminating."""
        doc = await run_in_thread(
            lambda: call_json(
                functools.partial(self._core.list_namespaced_pod, label_selector=selector),
                self.namespace,
                timeout=self._timeout,
            ),
            name="kube-list-pods",
        )
        return frozenset(
            str(p["metadata"]["name"])
            for p in doc.get("items") or ()
            if not (p.get("metadata") or {}).get("deletionTimestamp")
        )

    # ------------------------------------------------------------------------------------ writing
    async def set_replicas(self, replicas: int) -> None:
        """Write ``spec.replicas`` through the scale subresource."""
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        body = {"spec": {"replicas": replicas}}
        try:
            if self.kind == "Deployment":
                fn: Callable[..., Any] = self._apps.patch_namespaced_deployment_scale
                await self._call(fn, self.name, self.namespace, body, what="scale", patch=True)
            elif self.kind == "StatefulSet":
                fn = self._apps.patch_namespaced_stateful_set_scale
                await self._call(fn, self.name, self.namespace, body, what="scale", patch=True)
            else:
                await self._call(
                    self._custom.patch_namespaced_custom_object_scale,
                    LWS_GROUP,
                    LWS_VERSION,
                    self.namespace,
                    LWS_PLURAL,
                    self.name,
                    body,
                    what="scale",
                    patch=True,
                )
        except KubeNotFoundError as exc:
            raise self._not_found(exc) from exc

    async def set_hpa_bounds(self, hpa: str, min_replicas: int, max_replicas: int) -> None:
        if not 1 <= min_replicas <= max_replicas:
            raise ValueError("an HPA needs 1 <= minReplicas <= maxReplicas")
        body = {"spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas}}
        await self._call(
            self._hpa.patch_namespaced_horizontal_pod_autoscaler,
            hpa,
            self.namespace,
            body,
            what="hpa",
            patch=True,
        )

    async def mark_victim(self, pod: str) -> None:
        """Make ``pod`` the first one the ReplicaSet deletes."""
        await self._annotate(pod, VICTIM_DELETION_COST)

    async def unmark_victim(self, pod: str) -> None:
        """Remove the mark (a pod that is gone already is fine)."""
        with contextlib.suppress(KubeNotFoundError):
            await self._annotate(pod, None)

    async def _annotate(self, pod: str, value: str | None) -> None:
        body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: value}}}
        await self._call(
            self._core.patch_namespaced_pod, pod, self.namespace, body, what="pod-cost", patch=True
        )

    async def post_event(self, *, type_: str, reason: str, message: str) -> None:
        """An Event on the workload (best effort; needs one successful :meth:`read` for the object's uid)."""
        if self._recorder is None:
            return
        involved = self._last or {
            "apiVersion": "apps/v1" if self.kind != "LeaderWorkerSet" else f"{LWS_GROUP}/{LWS_VERSION}",
            "kind": self.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
        }
        await self._recorder.post(involved, type_=type_, reason=reason, message=message)
