"""Pods of the pool → endpoints in the datastore.

Rules (reference §3.2): a pod is an endpoint only when it has a pod IP, condition ``Ready=True`` and no
``deletionTimestamp``; it gets one endpoint per pool target port, named ``<pod>-rank-<i>`` where ``i`` is
the port's index in ``targetPorts`` (stable when the annotation below changes); the annotation
``inference.networking.k8s.io/active-ports: "8000,8001"`` restricts which of those ports are active; the
label ``inference.networking.k8s.io/engine-type`` names the engine (else the scraper auto-detects); the
``picker.dev/*`` annotations are kept on the endpoint (its prices, ``picker.state.prices``).

The watch carries the pool's label selector, so the API server filters for us and reports a pod whose
labels stop matching as ``DELETED``. When the selector changes the watch is restarted with the new one;
the datastore keeps the old endpoints until the new list has arrived, then swaps them in one step (no
empty window). When only the ports or the app protocol change, the endpoints are recomputed from the
cached pods without touching the API server.

The pool is written to the datastore (``Datastore.set_pool``, i.e. "synced") only after the first pod list
has been applied, so readiness never reports SERVING for a pool whose pods are still unknown. (The
reference marks the pool synced first and lists pods right after; the gap is short but real.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from kubernetes import client as k8s_client

from picker.kube.reflector import (
    DEFAULT_WATCH,
    PODS,
    EventType,
    ListWatch,
    Reflector,
    WatchEvent,
    WatchSettings,
)
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo

log = logging.getLogger(__name__)

ACTIVE_PORTS_ANNOTATION = "inference.networking.k8s.io/active-ports"
#: annotations kept on an endpoint (``picker.state.prices`` reads the price ones); others are not kept
OWN_ANNOTATION_PREFIX = "picker.dev/"
ENGINE_LABEL = "inference.networking.k8s.io/engine-type"
MAX_TARGET_PORTS = 8


def parse_selector(text: str) -> dict[str, str]:
    """Parse ``--endpoint-selector``: ``k=v,k2=v2`` (equality only, like a Service selector)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        term = raw.strip()
        if not term:
            continue
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or "!" in key or value.startswith("="):
            raise ValueError(f"invalid selector term {term!r}: expected key=value")
        out[key] = value
    if not out:
        raise ValueError("the endpoint selector is empty")
    return out


def format_selector(selector: Mapping[str, str]) -> str:
    """A label selector string for the API (sorted, so equal maps give equal strings)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def check_target_ports(ports: Iterable[int]) -> tuple[int, ...]:
    """Validate target ports (1 to 8, each 1..65535, unique), as the CRD's CEL rules do."""
    out = tuple(int(p) for p in ports)
    if not 0 < len(out) <= MAX_TARGET_PORTS:
        raise ValueError(f"a pool needs 1 to {MAX_TARGET_PORTS} target ports, got {len(out)}")
    if any(not 0 < p < 65536 for p in out):
        raise ValueError(f"target port out of range in {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate target ports in {list(out)}")
    return out


def standalone_pool(
    name: str, namespace: str, selector: Mapping[str, str] | str, target_ports: Iterable[int]
) -> PoolInfo:
    """The synthetic pool of standalone mode (``--endpoint-selector`` + ``--endpoint-target-ports``)."""
    sel = parse_selector(selector) if isinstance(selector, str) else dict(selector)
    if not sel:
        raise ValueError("the endpoint selector is empty")
    ports = tuple(dict.fromkeys(target_ports))  # the reference de-duplicates this flag
    return PoolInfo(
        name=name, namespace=namespace, selector=MappingProxyType(sel), target_ports=check_target_ports(ports)
    )


def pod_is_ready(pod: Mapping[str, Any]) -> bool:
    """Ready := condition ``Ready=True``, no ``deletionTimestamp``, and a pod IP to send traffic to."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP"):
        return False
    return any(
        isinstance(c, dict) and c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )


def _active_ports(annotations: Mapping[str, Any], target_ports: tuple[int, ...]) -> frozenset[int]:
    raw = annotations.get(ACTIVE_PORTS_ANNOTATION)
    if raw is None:
        return frozenset(target_ports)
    active: set[int] = set()
    for raw_token in str(raw).split(","):
        token = raw_token.strip()
        if token.isdigit():
            active.add(int(token))
        elif token:
            log.debug("ignoring invalid port %r in %s", token, ACTIVE_PORTS_ANNOTATION)
    return frozenset(active)


def pod_endpoints(
    pod: Mapping[str, Any],
    pool: PoolInfo,
    *,
    metrics_port: int | None = None,
    engine_label: str = ENGINE_LABEL,
) -> tuple[Endpoint, ...]:
    """The endpoints a pod contributes to the pool right now (empty when not ready or not selected).
    ``engine_label`` is the label naming the engine (``core-metrics-extractor``'s ``engineLabelKey``)."""
    if not pod_is_ready(pod):
        return ()
    meta = pod.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    if any(labels.get(k) != v for k, v in pool.selector.items()):
        return ()
    name = str(meta.get("name") or "")
    ip = str((pod.get("status") or {}).get("podIP"))
    annotations = meta.get("annotations") or {}
    active = _active_ports(annotations, pool.target_ports)
    engine = labels.get(engine_label) or None
    frozen_labels = MappingProxyType(labels)
    own = MappingProxyType(
        {str(k): str(v) for k, v in annotations.items() if str(k).startswith(OWN_ANNOTATION_PREFIX)}
    )
    single = metrics_port if metrics_port and len(pool.target_ports) == 1 else None
    return tuple(
        Endpoint(
            name=f"{name}-rank-{i}",
            ip=ip,
            port=port,
            pod=name,
            namespace=str(meta.get("namespace") or pool.namespace),
            engine=engine,
            labels=frozen_labels,
            metrics_port=single,
            annotations=own,
        )
        for i, port in enumerate(pool.target_ports)
        if port in active
    )


class PodWatcher:
    """Watches the pool's pods and keeps ``Datastore`` membership (and the pool itself) in step.

    Driven by :meth:`retarget` (from the InferencePool watcher, or once in standalone mode); ``run()``
    owns the pod watch and restarts it when the selector changes. ``on_synced(True)`` fires when a pool
    is loaded (first pod list applied), ``on_synced(False)`` when it is unloaded.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient,
        datastore: Datastore,
        *,
        namespace: str,
        metrics_port: int | None = None,
        on_synced: Callable[[bool], None] | None = None,
        engine_label: Callable[[], str] = lambda: ENGINE_LABEL,
        watch: WatchSettings = DEFAULT_WATCH,
    ) -> None:
        self._api = api
        self._ds = datastore
        self._namespace = namespace
        self._metrics_port = metrics_port
        self._on_synced = on_synced
        #: read each time pods are turned into endpoints, so a reloaded ``engineLabelKey`` applies
        self._engine_label = engine_label
        self._watch_settings = watch
        self._target: PoolInfo | None = None
        self._active: PoolInfo | None = None
        self._by_pod: dict[str, tuple[Endpoint, ...]] = {}
        self._reflector: Reflector | None = None
        self._selector: Mapping[str, str] | None = None
        self._generation = 0
        #: the generation (watch) whose first list has been applied; incremental events count from then
        self._listed_generation = -1
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def loaded(self) -> PoolInfo | None:
        """The pool currently loaded into the datastore (None until the first pod list is applied)."""
        return self._active

    def retarget(self, pool: PoolInfo | None) -> None:
        """Serve ``pool`` from now on (None: the pool is gone → clear the datastore now)."""
        previous, self._target = self._target, pool
        if pool is None:
            self._unload()
        elif (reflector := self._reflector) is not None and dict(pool.selector) == dict(self._selector or {}):
            # same pods: recompute from the cache (ports/protocol changed, or the pool came back)
            if reflector.synced and pool != self._active:
                if self._active is not None:
                    log.info(
                        "pool %s/%s changed (ports %s, protocol %s); recomputing endpoints",
                        pool.namespace,
                        pool.name,
                        list(pool.target_ports),
                        pool.app_protocol,
                    )
                self._by_pod = self._compute(reflector.objects().values(), pool)
                self._publish(pool)
            return
        elif previous is not None:
            log.info(
                "pool %s/%s selector changed to %s; re-listing pods",
                pool.namespace,
                pool.name,
                format_selector(pool.selector),
            )
        self._wake.set()

    def relabel(self) -> None:
        """The engine label key changed: recompute the loaded pool's endpoints from the cached pods."""
        reflector, pool = self._reflector, self._active
        if reflector is not None and reflector.synced and pool is not None:
            self._by_pod = self._compute(reflector.objects().values(), pool)
            self._publish(pool)

    async def run(self) -> None:
        try:
            while not self._closed:
                target = self._target
                if target is None:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                await self._watch(target)
        finally:
            self._closed = True

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        reflector = self._reflector
        if reflector is not None:
            await reflector.close()

    # ------------------------------------------------------------------------------------- internals
    async def _watch(self, target: PoolInfo) -> None:
        """Run one pod watch for ``target``'s selector until the selector changes or we close."""
        self._generation += 1
        generation = self._generation
        selector = MappingProxyType(dict(target.selector))

        async def handle(event: WatchEvent) -> None:
            if generation == self._generation:
                self._on_event(event, generation)

        source = ListWatch(self._api, PODS, self._namespace, label_selector=format_selector(selector))
        reflector = self._watch_settings.reflector(source, handle)
        self._reflector, self._selector = reflector, selector
        task = asyncio.create_task(reflector.run(), name=f"pods:{source.description}")
        waiter = asyncio.create_task(self._until_selector_changes(selector))
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            await reflector.close()
            self._reflector = self._selector = None
            await task  # re-raises a handler bug instead of swallowing it

    async def _until_selector_changes(self, selector: Mapping[str, str]) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self._target
            if self._closed or target is None or dict(target.selector) != dict(selector):
                return

    def _compute(self, pods: Iterable[Mapping[str, Any]], pool: PoolInfo) -> dict[str, tuple[Endpoint, ...]]:
        out: dict[str, tuple[Endpoint, ...]] = {}
        label = self._engine_label()
        for pod in pods:
            eps = pod_endpoints(pod, pool, metrics_port=self._metrics_port, engine_label=label)
            if eps:
                out[eps[0].pod] = eps
        return out

    def _on_event(self, event: WatchEvent, generation: int) -> None:
        target = self._target
        if target is None:
            return
        if event.type is EventType.SYNCED:
            self._listed_generation = generation
            self._by_pod = self._compute(event.objects.values(), target)
            self._publish(target)
            return
        if self._active is None or self._listed_generation != generation:
            return  # this watch's first list is still arriving; its SYNCED publishes the whole set
        eps = (
            ()
            if event.type is EventType.DELETED
            else pod_endpoints(
                event.obj, target, metrics_port=self._metrics_port, engine_label=self._engine_label()
            )
        )
        if eps == self._by_pod.get(event.name, ()):
            return
        if eps:
            self._by_pod[event.name] = eps
        else:
            self._by_pod.pop(event.name, None)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("pod %s: %d endpoint(s)", event.name, len(eps))
        self._ds.replace_endpoints(itertools.chain.from_iterable(self._by_pod.values()))

    def _publish(self, pool: PoolInfo) -> None:
        first = self._active is None
        self._active = pool
        if self._ds.pool != pool:
            self._ds.set_pool(pool)
        self._ds.replace_endpoints(itertools.chain.from_iterable(self._by_pod.values()))
        if first:
            log.info(
                "pool %s/%s synced: %d ready pod(s), %d endpoint(s)",
                pool.namespace,
                pool.name,
                len(self._by_pod),
                sum(len(e) for e in self._by_pod.values()),
            )
            if self._on_synced is not None:
                self._on_synced(True)

    def _unload(self) -> None:
        was = self._active
        self._active = None
        self._by_pod = {}
        if self._ds.pool is not None:
            self._ds.set_pool(None)
        if was is not None:
            log.info(
                "pool %s/%s unloaded: endpoints, objectives and rewrites cleared", was.namespace, was.name
            )
            if self._on_synced is not None:
                self._on_synced(False)
