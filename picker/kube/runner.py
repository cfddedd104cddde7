"""Composition of the Kubernetes sources for the app: one object, ``run()`` / ``close()``.

What runs, by mode:

* **CRD mode** (``pool_name``): InferencePool watcher → pod watcher; InferenceObjective and
  InferenceModelRewrite watchers filtered by poolRef;
* **standalone** (``endpoint_selector`` + ``target_ports``): a synthetic pool and the pod watcher only (no
  CRDs, as in the reference);
* **ConfigMap** (``configmap``): the scoring-document watcher, in either mode;
* **leader election** (``leader_election``): a Lease elector; the pool watchers above run only while this
  replica leads. On losing the lease they stop and the pool is unloaded (datastore cleared,
  ``on_synced(False)``), so readiness is NOT_SERVING on standbys — the reference's behaviour, where
  reconcilers run on the leader only and a standby never loads the pool. The ConfigMap watcher runs on
  every replica: it is cheap and keeps a standby's config current for an instant takeover. With several
  pools in one process (``--pool``) only the first pool's sources elect; the others :meth:`KubeSources.follow`
  them, so the process leads all its pools or none.

Health wiring for the app (§1.12): liveness is always SERVING; readiness = ``datastore.synced`` and, with
leader election, ``is_leader``. ``on_synced`` and ``on_leader_change`` report the transitions so the app
can flip its health servicer without polling.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from kubernetes import client as k8s_client

from picker.kube.configmap import DEFAULT_KEY, ConfigMapWatcher, ConfigSink, EventRecorder
from picker.kube.leader import LeaderElector, default_identity, lease_name
from picker.kube.objectives import ObjectiveWatcher, RewriteWatcher
from picker.kube.pods import ENGINE_LABEL, PodWatcher, standalone_pool
from picker.kube.pool import PoolWatcher, pool_resource
from picker.kube.reflector import DEFAULT_WATCH, POOL_GROUP_V1, WatchSettings
from picker.state.datastore import Datastore
from picker.state.endpoints import PoolInfo

log = logging.getLogger(__name__)


class _Runnable(Protocol):
    async def run(self) -> None: ...

    async def close(self) -> None: ...


async def _run_until(source: _Runnable, stop: asyncio.Event) -> None:
    """Run ``source`` until ``stop`` is set (then close it) or until it ends by itself (a crash)."""
    task = asyncio.create_task(source.run())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        await source.close()
        await task  # re-raises what crashed it


class _PoolTerm:
    """The pool-side sources for one leadership term (or for the process, without leader election)."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        datastore: Datastore,
        *,
        namespace: str,
        pool_name: str,
        pool_group: str,
        standalone: PoolInfo | None,
        metrics_port: int | None,
        on_synced: Callable[[bool], None] | None,
        watch: WatchSettings,
        engine_label: Callable[[], str],
    ) -> None:
        self._on_synced = on_synced
        self._standalone = standalone
        self.pods = PodWatcher(
            api,
            datastore,
            namespace=namespace,
            metrics_port=metrics_port,
            on_synced=self._synced_changed,
            engine_label=engine_label,
            watch=watch,
        )
        self._scoped: list[ObjectiveWatcher | RewriteWatcher] = []
        self._sources: list[_Runnable] = [self.pods]
        if standalone is None:
            self._scoped = [
                kind(
                    api,
                    datastore,
                    namespace=namespace,
                    pool_name=pool_name,
                    pool_group=pool_group,
                    watch=watch,
                )
                for kind in (ObjectiveWatcher, RewriteWatcher)
            ]
            pool = PoolWatcher(
                api, self.pods, namespace=namespace, name=pool_name, group=pool_group, watch=watch
            )
            self._sources += [pool, *self._scoped]

    async def run(self) -> None:
        if self._standalone is not None:
            self.pods.retarget(self._standalone)
        try:
            async with asyncio.TaskGroup() as tg:
                for source in self._sources:
                    tg.create_task(source.run())
        finally:
            self.pods.retarget(None)  # the datastore must not serve a pool nobody watches any more

    async def close(self) -> None:
        for source in self._sources:
            await source.close()

    def _synced_changed(self, synced: bool) -> None:
        if synced:
            for watcher in self._scoped:
                watcher.reapply()
        if self._on_synced is not None:
            self._on_synced(synced)


class KubeSources:
    """Every Kubernetes-driven input of one EPP. Constructing it starts nothing; ``run()`` until closed."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        datastore: Datastore,
        config_store: ConfigSink | None = None,
        *,
        namespace: str,
        pool_name: str = "",
        pool_group: str = POOL_GROUP_V1,
        endpoint_selector: Mapping[str, str] | str | None = None,
        target_ports: Sequence[int] = (),
        standalone_name: str = "standalone",
        metrics_port: int | None = None,
        configmap: str | None = None,
        configmap_key: str = DEFAULT_KEY,
        leader_election: bool = False,
        identity: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_leader_change: Callable[[bool], None] | None = None,
        on_synced: Callable[[bool], None] | None = None,
        watch: WatchSettings = DEFAULT_WATCH,
        engine_label: Callable[[], str] = lambda: ENGINE_LABEL,
    ) -> None:
        """``engine_label`` gives the pod label naming the engine (``engineLabelKey``), read whenever pods
        become endpoints; call :meth:`engine_label_changed` after it changes."""
        if bool(pool_name) == bool(endpoint_selector):
            raise ValueError("set exactly one of pool_name and endpoint_selector")
        if configmap and config_store is None:
            raise ValueError("a ConfigMap source needs a config store")
        self._standalone: PoolInfo | None = None
        if endpoint_selector:
            # flags are validated here, at construction, not at the first leadership term
            self._standalone = standalone_pool(standalone_name, namespace, endpoint_selector, target_ports)
        else:
            pool_resource(pool_group)  # validates the group
        self._api = api
        self._ds = datastore
        self._config_store = config_store
        self._namespace = namespace
        self._pool_name = pool_name
        self._pool_group = pool_group
        self._display_name = pool_name or standalone_name
        self._metrics_port = metrics_port
        self._configmap = configmap
        self._configmap_key = configmap_key
        self._leader_election = leader_election
        self.identity = identity or default_identity()
        self._lease_timings = (lease_duration, renew_deadline, retry_period)
        self._on_leader_change = on_leader_change
        self._on_synced = on_synced
        self._engine_label = engine_label
        self._terms: list[_PoolTerm] = []
        self._watch = watch
        self._elector: LeaderElector | None = None
        #: whose lease this pool follows instead of electing on its own (:meth:`follow`)
        self._lease_of: KubeSources | None = None
        self._followers: list[Callable[[bool], None]] = []
        self._leading = asyncio.Event()
        self._following = asyncio.Event()
        self._closed = asyncio.Event()
        self._started = False
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------------------------ public
    @property
    def is_leader(self) -> bool:
        """True when this replica may serve: always without leader election, else while it holds the lease."""
        if self._lease_of is not None:
            return self._lease_of.is_leader
        return not self._leader_election or (self._elector is not None and self._elector.is_leader)

    def follow(self, leader: KubeSources) -> None:
        """Load and unload this pool with ``leader``'s leadership instead of electing on a Lease of its
        own: several pools in one process are one candidate, so a replica leads all of them or none (its
        readiness is one per Pod). Call before :meth:`run`; without leader election it changes nothing."""
        if self._started:
            raise RuntimeError("KubeSources.follow() after run()")
        if self._leader_election and leader is not self:
            self._lease_of = leader
            leader._followers.append(self._leader_changed)

    def engine_label_changed(self) -> None:
        """The engine label key was reloaded: recompute the endpoints of the pods already known."""
        for term in self._terms:
            term.pods.relabel()

    @property
    def lease_name(self) -> str:
        return lease_name(self._namespace, self._display_name)

    async def run(self) -> None:
        """Run every source until :meth:`close`; an unexpected crash of any of them propagates."""
        if self._started:
            raise RuntimeError("KubeSources.run() called twice")
        self._started = True
        try:
            async with asyncio.TaskGroup() as tg:
                if self._configmap and self._config_store is not None:
                    cm = ConfigMapWatcher(
                        self._api,
                        self._config_store,
                        namespace=self._namespace,
                        name=self._configmap,
                        key=self._configmap_key,
                        recorder=EventRecorder(self._api, instance=self.identity),
                        watch=self._watch,
                    )
                    tg.create_task(_run_until(cm, self._closed), name="kube:configmap")
                if self._lease_of is not None:
                    if self._lease_of.is_leader:  # it was elected before this pool started
                        self._leader_changed(True)
                    tg.create_task(self._follow_leadership(), name="kube:pool-while-leading")
                elif self._leader_election:
                    duration, deadline, period = self._lease_timings
                    self._elector = LeaderElector(
                        self._api,
                        namespace=self._namespace,
                        name=self.lease_name,
                        identity=self.identity,
                        lease_duration=duration,
                        renew_deadline=deadline,
                        retry_period=period,
                        on_change=self._leader_changed,
                    )
                    tg.create_task(_run_until(self._elector, self._closed), name="kube:leader-election")
                    tg.create_task(self._follow_leadership(), name="kube:pool-while-leading")
                else:
                    tg.create_task(_run_until(self._term(), self._closed), name="kube:pool")
        finally:
            self._stopped.set()

    async def close(self) -> None:
        """Stop every source (a leader releases its lease) and wait for ``run()`` to return."""
        self._closed.set()
        if self._started:
            await self._stopped.wait()

    # ------------------------------------------------------------------------------------ internals
    def _term(self) -> _PoolTerm:
        del self._terms[:-1]  # only the newest term is live
        term = _PoolTerm(
            self._api,
            self._ds,
            namespace=self._namespace,
            pool_name=self._pool_name,
            pool_group=self._pool_group,
            standalone=self._standalone,
            metrics_port=self._metrics_port,
            on_synced=self._on_synced,
            watch=self._watch,
            engine_label=self._engine_label,
        )
        self._terms.append(term)
        return term

    def _leader_changed(self, leader: bool) -> None:
        if leader:
            self._following.clear()
            self._leading.set()
        else:
            self._leading.clear()
            self._following.set()
        if self._on_leader_change is not None:
            self._on_leader_change(leader)
        for follower in self._followers:
            follower(leader)

    async def _follow_leadership(self) -> None:
        """Run the pool sources during each leadership term; between terms the pool stays unloaded."""
        while not self._closed.is_set():
            if not await _first_of(self._leading, self._closed):
                return
            log.info("leading: loading pool %s/%s", self._namespace, self._display_name)
            term_over = asyncio.Event()
            term = asyncio.create_task(_run_until(self._term(), term_over))
            await _first_of(self._following, self._closed, task=term)
            term_over.set()
            await term
            if not self._closed.is_set():
                log.info("standing by: pool %s/%s unloaded", self._namespace, self._display_name)


async def _first_of(
    event: asyncio.Event, stop: asyncio.Event, *, task: asyncio.Task[None] | None = None
) -> bool:
    """Wait for ``event``, ``stop`` or the end of ``task``; True only when ``event`` came first."""
    waiters: set[asyncio.Future[Any]] = {asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())}
    if task is not None:
        waiters.add(task)
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            if w is not task:
                w.cancel()
    return event.is_set() and not stop.is_set()
