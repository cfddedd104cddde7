"""The InferencePool this EPP serves: watched by name, parsed, handed to the pod watcher.

Two API versions are understood, chosen by ``--pool-group`` as in the reference:

* ``inference.networking.k8s.io/v1`` (GA): ``spec.selector.matchLabels``, ``spec.targetPorts[].number``,
  ``spec.appProtocol`` (default ``http``);
* ``inference.networking.x-k8s.io/v1alpha2``: ``spec.selector`` (a plain map) and the single
  ``spec.targetPortNumber``; no appProtocol field (always ``http``).

The watch uses the field selector ``metadata.name=<pool>`` so only our object is ever transferred. A pool
that is deleted, marked for deletion, or absent from a (re)list unloads the datastore (endpoints,
objectives and rewrites cleared; readiness goes NOT_SERVING). A pool whose spec does not parse is logged
and ignored: the last good pool stays in force, as it would with an invalid ConfigMap.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from kubernetes import client as k8s_client

from picker.kube.pods import PodWatcher, check_target_ports
from picker.kube.reflector import (
    DEFAULT_WATCH,
    INFERENCE_POOLS_V1,
    INFERENCE_POOLS_V1ALPHA2,
    POOL_GROUP_V1,
    POOL_GROUP_V1ALPHA2,
    EventType,
    ListWatch,
    Resource,
    WatchEvent,
    WatchSettings,
)
from picker.state.endpoints import PoolInfo

log = logging.getLogger(__name__)


def pool_resource(group: str) -> Resource:
    """The InferencePool resource for ``--pool-group``."""
    if group == POOL_GROUP_V1:
        return INFERENCE_POOLS_V1
    if group == POOL_GROUP_V1ALPHA2:
        return INFERENCE_POOLS_V1ALPHA2
    raise ValueError(f"unsupported pool group {group!r} (use {POOL_GROUP_V1} or {POOL_GROUP_V1ALPHA2})")


def _str_map(value: Any, what: str) -> dict[str, str]:
    if (
        not isinstance(value, Mapping)
        or not value
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        raise ValueError(f"{what} must be a non-empty map of strings")
    return dict(value)


def parse_pool(obj: Mapping[str, Any], *, group: str) -> PoolInfo:
    """Parse an InferencePool object of ``group``'s version. Raises ValueError when unusable."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise ValueError("spec must be an object")  # noqa: TRY004 - caught as "invalid object"
    if group == POOL_GROUP_V1:
        selector = _str_map((spec.get("selector") or {}).get("matchLabels"), "spec.selector.matchLabels")
        raw_ports = spec.get("targetPorts") or []
        if not isinstance(raw_ports, list) or not all(isinstance(p, Mapping) for p in raw_ports):
            raise ValueError("spec.targetPorts must be a list of {number: port}")
        try:
            ports = check_target_ports(int(p["number"]) for p in raw_ports)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"spec.targetPorts: {exc}") from exc
        app_protocol = str(spec.get("appProtocol") or "http")
    elif group == POOL_GROUP_V1ALPHA2:
        selector = _str_map(spec.get("selector"), "spec.selector")
        number = spec.get("targetPortNumber")
        if not isinstance(number, int):
            raise ValueError("spec.targetPortNumber must be an integer")
        ports = check_target_ports((number,))
        app_protocol = "http"
    else:
        pool_resource(group)  # raises
        raise AssertionError("unreachable")
    return PoolInfo(
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or ""),
        selector=MappingProxyType(selector),
        target_ports=ports,
        app_protocol=app_protocol,
        group=group,
    )


class PoolWatcher:
    """Watches one InferencePool and retargets the :class:`PodWatcher` on every relevant change."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        pods: PodWatcher,
        *,
        namespace: str,
        name: str,
        group: str = POOL_GROUP_V1,
        watch: WatchSettings = DEFAULT_WATCH,
    ) -> None:
        if not name:
            raise ValueError("the pool name is empty")
        self._pods = pods
        self._name = name
        self._namespace = namespace
        self._group = group
        source = ListWatch(api, pool_resource(group), namespace, field_selector=f"metadata.name={name}")
        self._reflector = watch.reflector(source, self._handle)
        self._current: PoolInfo | None = None
        self._bad_rv: str | None = None
        self._waiting_logged = False

    @property
    def pool(self) -> PoolInfo | None:
        return self._current

    async def run(self) -> None:
        await self._reflector.run()

    async def close(self) -> None:
        await self._reflector.close()

    async def _handle(self, event: WatchEvent) -> None:
        if event.type is EventType.SYNCED:
            if self._name not in event.objects:
                if not self._waiting_logged:
                    self._waiting_logged = True
                    log.info(
                        "InferencePool %s/%s (%s) not found; waiting for it",
                        self._namespace,
                        self._name,
                        self._group,
                    )
                self._set(None)
            return
        if event.name != self._name:
            return
        if event.type is EventType.DELETED or (event.obj.get("metadata") or {}).get("deletionTimestamp"):
            self._set(None)
            return
        try:
            pool = parse_pool(event.obj, group=self._group)
        except ValueError as exc:
            rv = str((event.obj.get("metadata") or {}).get("resourceVersion"))
            if rv != self._bad_rv:
                self._bad_rv = rv
                log.warning(
                    "InferencePool %s/%s is invalid, keeping the last good one: %s",
                    self._namespace,
                    self._name,
                    exc,
                )
            return
        self._set(pool)

    def _set(self, pool: PoolInfo | None) -> None:
        if pool == self._current:
            return
        if pool is None:
            log.info("InferencePool %s/%s is gone", self._namespace, self._name)
        elif self._current is None:
            self._waiting_logged = False
            log.info(
                "InferencePool %s/%s found: selector %s, target ports %s, protocol %s",
                pool.namespace,
                pool.name,
                dict(pool.selector),
                list(pool.target_ports),
                pool.app_protocol,
            )
        self._current = pool
        self._pods.retarget(pool)
