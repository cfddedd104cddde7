"""Lease-based leader election (coordination.k8s.io/v1 Lease), as client-go's leaderelection does it.

One Lease per pool, named ``epp-<namespace>-<pool>.gateway-api-inference-extension.sigs.k8s.io`` in the
pool namespace (the reference's ID), so our replicas and reference replicas would exclude each other.

Algorithm (our own words for client-go's ``tryAcquireOrRenew``):

* read the Lease; absent → create it with us as holder (a 409 means another replica won the race);
* held by someone else → leave it alone unless it *expired*: no change to the record was observed for
  ``leaseDurationSeconds``. Expiry is measured on our monotonic clock from when *we* saw the record
  change, never from the timestamps in it, so clock skew between nodes cannot cause two leaders;
* otherwise write it back with us as holder and a fresh ``renewTime``, sending the ``resourceVersion`` we
  read: if anyone wrote in between, the API server answers 409 and we simply try again next round;
* a leader renews every ``retry_period``; if no renewal succeeded for ``renew_deadline`` (or it sees
  another holder) it steps down at once — before the lease can expire for the others
  (``renew_deadline < lease_duration``), so two replicas never both believe they lead;
* on :meth:`LeaderElector.close` the leader releases: holder cleared and ``leaseDurationSeconds: 1``, so a
  standby takes over on its next retry instead of waiting out the full lease.

Deviation: controller-runtime exits the process when leadership is lost. Here the elector steps down and
keeps competing; :class:`picker.kube.runner.KubeSources` unloads the pool, so readiness goes NOT_SERVING
on its own — the same effect on traffic without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client as k8s_client

from picker.kube._threads import run_in_thread
from picker.kube.client import JsonObj, KubeConflictError, KubeError, KubeNotFoundError, call_json

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_NAME_SUFFIX = ".gateway-api-inference-extension.sigs.k8s.io"
#: client-go's JitterFactor for the candidates' retry period
JITTER_FACTOR = 1.2


def lease_name(namespace: str, pool: str) -> str:
    """The reference EPP's lease ID for a pool."""
    return f"epp-{namespace}-{pool}{LEASE_NAME_SUFFIX}"


def default_identity() -> str:
    """``<hostname>_<uuid>`` (controller-runtime's form): unique even if two pods share a hostname."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def _micro_time(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Competes for one Lease; ``on_change(is_leader)`` fires on every transition, on the loop."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        rng: random.Random | None = None,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period * JITTER_FACTOR > 0:
            raise ValueError("leader election needs lease_duration > renew_deadline > 1.2 x retry_period > 0")
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        self._api = k8s_client.CoordinationV1Api(api)
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._lease_duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry_period = retry_period
        self._on_change = on_change
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        #: per-request timeout: a hung call must not outlive the renew deadline
        self._timeout = max(0.1, renew_deadline / 2)
        self._leader = False
        self._last_renew = -math.inf
        self._observed_key: tuple[str, str, str] | None = None
        self._observed_at = -math.inf
        self._held_by_other = False
        self._failing = False
        self._release_on_close = True
        self._closed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False

    @property
    def is_leader(self) -> bool:
        return self._leader

    @property
    def lease(self) -> str:
        return f"{self._namespace}/{self._name}"

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("LeaderElector.run() called twice")
        self._started = True
        log.info("leader election: %s competing for lease %s", self.identity, self.lease)
        try:
            while not self._closed.is_set():
                ok = await self._attempt()
                now = self._clock()
                if ok:
                    self._last_renew = now
                    self._set_leader(True)
                elif self._leader and (self._held_by_other or now - self._last_renew >= self._renew_deadline):
                    log.warning("leader election: %s lost lease %s", self.identity, self.lease)
                    self._set_leader(False)
                period = self._retry_period
                if not self._leader:
                    period *= 1.0 + self._rng.random() * JITTER_FACTOR
                await self._pause(period)
        finally:
            if self._leader and self._release_on_close:
                await self._release()
            self._set_leader(False)
            self._stopped.set()

    async def close(self, *, release: bool = True) -> None:
        """Stop competing. ``release=False`` leaves the lease to expire (what a crashed replica does)."""
        self._release_on_close = release
        self._closed.set()
        if self._started:
            await self._stopped.wait()

    # ------------------------------------------------------------------------------------- internals
    def _set_leader(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        if leader:
            log.info("leader election: %s acquired lease %s", self.identity, self.lease)
        if self._on_change is not None:
            self._on_change(leader)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout=seconds)

    def _call(self, fn: Callable[..., Any], *args: Any) -> JsonObj:
        """Blocking API call (worker thread) → parsed JSON, foreign errors translated."""
        return call_json(fn, *args, timeout=(self._timeout, self._timeout))

    async def _read(self) -> JsonObj | None:
        try:
            return await run_in_thread(
                lambda: self._call(self._api.read_namespaced_lease, self._name, self._namespace),
                name="kube-lease-get",
            )
        except KubeNotFoundError:
            return None

    async def _write(self, body: JsonObj, *, create: bool) -> JsonObj:
        if create:
            return await run_in_thread(
                lambda: self._call(self._api.create_namespaced_lease, self._namespace, body),
                name="kube-lease-create",
            )
        return await run_in_thread(
            lambda: self._call(self._api.replace_namespaced_lease, self._name, self._namespace, body),
            name="kube-lease-update",
        )

    def _observe(self, lease: Mapping[str, Any]) -> Mapping[str, Any]:
        spec = lease.get("spec") or {}
        meta = lease.get("metadata") or {}
        key = (
            str(spec.get("holderIdentity") or ""),
            str(spec.get("renewTime") or ""),
            str(meta.get("resourceVersion") or ""),
        )
        if key != self._observed_key:
            self._observed_key = key
            self._observed_at = self._clock()
        return spec

    def _body(
        self, spec: Mapping[str, Any], resource_version: str | None, *, release: bool = False
    ) -> JsonObj:
        now = _micro_time(self._wall_clock())
        held = spec.get("holderIdentity") == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        meta: JsonObj = {"name": self._name, "namespace": self._namespace}
        if resource_version:
            meta["resourceVersion"] = resource_version
        new_spec: JsonObj = {
            "holderIdentity": "" if release else self.identity,
            "leaseDurationSeconds": 1 if release else max(1, math.ceil(self._lease_duration)),
            "acquireTime": spec.get("acquireTime")
            if held and not release and spec.get("acquireTime")
            else now,
            "renewTime": now,
            "leaseTransitions": transitions if held or release or not spec else transitions + 1,
        }
        return {"apiVersion": LEASE_API_VERSION, "kind": "Lease", "metadata": meta, "spec": new_spec}

    async def _attempt(self) -> bool:
        """One tryAcquireOrRenew round; True when we hold the lease afterwards."""
        self._held_by_other = False
        try:
            lease = await self._read()
            if lease is None:
                self._observe(await self._write(self._body({}, None), create=True))
            else:
                spec = self._observe(lease)
                holder = str(spec.get("holderIdentity") or "")
                duration = float(spec.get("leaseDurationSeconds") or self._lease_duration)
                if holder and holder != self.identity and self._clock() < self._observed_at + duration:
                    self._held_by_other = True
                    self._ok()
                    return False
                rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
                self._observe(await self._write(self._body(spec, rv), create=False))
        except KubeConflictError:
            self._ok()  # someone else wrote first: the API server is fine, we lost this round
            return False
        except KubeError as exc:
            if not self._failing:
                self._failing = True
                log.warning("leader election: cannot reach lease %s: %s", self.lease, exc)
            return False
        self._ok()
        return True

    def _ok(self) -> None:
        if self._failing:
            self._failing = False
            log.info("leader election: lease %s reachable again", self.lease)

    async def _release(self) -> None:
        try:
            lease = await self._read()
            if lease is None:
                return
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            await self._write(self._body(spec, rv, release=True), create=False)
            log.info("leader election: %s released lease %s", self.identity, self.lease)
        except KubeError as exc:
            log.warning("leader election: could not release lease %s (it will expire): %s", self.lease, exc)
