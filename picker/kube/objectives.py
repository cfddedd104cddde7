"""InferenceObjectives (priority by name) and InferenceModelRewrites for our pool.

Both kinds live in ``inference.networking.x-k8s.io/v1alpha2`` and point at a pool with ``spec.poolRef``
``{group (default inference.networking.k8s.io), kind (default InferencePool), name}``. Only objects whose
poolRef names *our* pool (name and group) are kept — other pools in the namespace have their own EPPs.
An object whose poolRef moves away is removed, one that moves in is added.

Each watcher keeps its matching objects in a small cache and writes them to the datastore only while the
pool is loaded. Why: unloading the pool clears objectives and rewrites (reference behaviour), and when the
pool comes back :meth:`reapply` restores them from the cache. (The reference only repopulates them on
the objects' next change or resync, so a re-created pool briefly runs without priorities.)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from kubernetes import client as k8s_client

from picker.kube.reflector import (
    DEFAULT_WATCH,
    INFERENCE_MODEL_REWRITES,
    INFERENCE_OBJECTIVES,
    POOL_GROUP_V1,
    EventType,
    ListWatch,
    Resource,
    WatchEvent,
    WatchSettings,
)
from picker.state.datastore import Datastore
from picker.state.objectives import (
    ModelRewrite,
    Objective,
    ObjectiveStore,
    RewriteRule,
    RewriteStore,
    RewriteTarget,
)

log = logging.getLogger(__name__)

T = TypeVar("T", Objective, ModelRewrite)
T_contra = TypeVar("T_contra", contravariant=True)


def pool_ref_matches(obj: Mapping[str, Any], *, pool_name: str, pool_group: str) -> bool:
    """True when ``spec.poolRef`` names our pool (group defaults to ``inference.networking.k8s.io``)."""
    ref = (obj.get("spec") or {}).get("poolRef") or {}
    if not isinstance(ref, Mapping):
        return False
    return (
        ref.get("name") == pool_name
        and (ref.get("group") or POOL_GROUP_V1) == pool_group
        and (ref.get("kind") or "InferencePool") == "InferencePool"
    )


def parse_objective(obj: Mapping[str, Any]) -> Objective:
    """``spec.priority`` (may be negative; unset → 0, as in the reference)."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    priority = (obj.get("spec") or {}).get("priority")
    if priority is None:
        return Objective(name, 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"spec.priority must be an integer, got {priority!r}")  # noqa: TRY004 - caught as "invalid object"
    return Objective(name, priority)


def parse_timestamp(value: Any) -> float:
    """RFC 3339 (``2025-01-02T03:04:05Z``) → seconds since the epoch; 0.0 when absent or malformed."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return 0.0


def parse_rewrite(obj: Mapping[str, Any]) -> ModelRewrite:
    """Rules → :class:`ModelRewrite`. Raises ValueError for a rule we cannot honour exactly.

    A rule with a match of a type other than ``Exact`` (the only one defined) is rejected rather than
    dropped, so a rule meant for one model can never degrade into a catch-all.
    """
    meta = obj.get("metadata") or {}
    rules: list[RewriteRule] = []
    for i, raw in enumerate((obj.get("spec") or {}).get("rules") or ()):
        if not isinstance(raw, Mapping):
            raise ValueError(f"spec.rules[{i}] must be an object")  # noqa: TRY004 - caught as "invalid object"
        matches: list[str] = []
        for m in raw.get("matches") or ():
            model = (m or {}).get("model") or {}
            mtype = model.get("type") or "Exact"
            value = model.get("value")
            if mtype != "Exact" or not isinstance(value, str) or not value:
                raise ValueError(f"spec.rules[{i}]: unsupported match {m!r}")
            matches.append(value)
        targets: list[RewriteTarget] = []
        for t in raw.get("targets") or ():
            model_name = (t or {}).get("modelRewrite")
            weight = (t or {}).get("weight") or 0
            if not isinstance(model_name, str) or not model_name or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"spec.rules[{i}]: invalid target {t!r}")
            targets.append(RewriteTarget(model_name, weight))
        if not targets:
            raise ValueError(f"spec.rules[{i}] has no targets")
        rules.append(RewriteRule(tuple(matches), tuple(targets)))
    return ModelRewrite(
        str(meta.get("name") or ""), tuple(rules), parse_timestamp(meta.get("creationTimestamp"))
    )


class _Store(Protocol[T_contra]):
    """What ObjectiveStore and RewriteStore have in common."""

    def set(self, item: T_contra, /) -> None: ...

    def delete(self, name: str, /) -> None: ...

    def replace_all(self, items: Iterable[T_contra], /) -> None: ...


class _PoolScopedWatcher(Generic[T]):
    """Shared machinery: watch a kind, keep the objects that point at our pool, mirror them.

    A subclass names the kind (:attr:`resource`), how one object is parsed (:meth:`_parse`) and which
    datastore store mirrors it (:meth:`_store_for`).
    """

    resource: ClassVar[Resource]

    def __init__(
        self,
        api: k8s_client.ApiClient,
        datastore: Datastore,
        *,
        namespace: str,
        pool_name: str,
        pool_group: str = POOL_GROUP_V1,
        watch: WatchSettings = DEFAULT_WATCH,
    ) -> None:
        self._ds = datastore
        self._kind = self.resource.kind
        self._store: _Store[T] = self._store_for(datastore)
        self._pool_name = pool_name
        self._pool_group = pool_group
        self._matched: dict[str, T] = {}
        self._bad: dict[str, str] = {}
        self._reflector = watch.reflector(ListWatch(api, self.resource, namespace), self._handle)

    def _store_for(self, datastore: Datastore) -> _Store[T]:
        raise NotImplementedError

    def _parse(self, obj: Mapping[str, Any]) -> T:
        raise NotImplementedError

    @property
    def matched(self) -> Mapping[str, T]:
        """The objects that point at our pool (whether or not the pool is loaded right now)."""
        return dict(self._matched)

    async def run(self) -> None:
        await self._reflector.run()

    async def close(self) -> None:
        await self._reflector.close()

    def reapply(self) -> None:
        """Write every matching object to the datastore (after the pool was (re)loaded)."""
        if self._ds.pool is not None:
            self._store.replace_all(self._matched.values())

    async def _handle(self, event: WatchEvent) -> None:
        if event.type is EventType.SYNCED:
            self.reapply()
            return
        name = event.name
        item: T | None = None
        if event.type is not EventType.DELETED and pool_ref_matches(
            event.obj, pool_name=self._pool_name, pool_group=self._pool_group
        ):
            try:
                item = self._parse(event.obj)
            except ValueError as exc:
                rv = str((event.obj.get("metadata") or {}).get("resourceVersion"))
                if self._bad.get(name) != rv:
                    self._bad[name] = rv
                    log.warning("%s %s is invalid and ignored: %s", self._kind, name, exc)
        if item is None:
            if self._matched.pop(name, None) is not None and self._ds.pool is not None:
                self._store.delete(name)
            return
        self._bad.pop(name, None)
        self._matched[name] = item
        if self._ds.pool is not None:
            self._store.set(item)


class ObjectiveWatcher(_PoolScopedWatcher[Objective]):
    """InferenceObjectives of our pool → ``Datastore.objectives`` (priority by object name)."""

    resource = INFERENCE_OBJECTIVES

    def _store_for(self, datastore: Datastore) -> ObjectiveStore:
        return datastore.objectives

    def _parse(self, obj: Mapping[str, Any]) -> Objective:
        return parse_objective(obj)


class RewriteWatcher(_PoolScopedWatcher[ModelRewrite]):
    """InferenceModelRewrites of our pool → ``Datastore.rewrites`` (precedence lives in RewriteStore)."""

    resource = INFERENCE_MODEL_REWRITES

    def _store_for(self, datastore: Datastore) -> RewriteStore:
        return datastore.rewrites

    def _parse(self, obj: Mapping[str, Any]) -> ModelRewrite:
        return parse_rewrite(obj)
