"""List → watch → (410) relist for one resource, with typed events delivered on the event loop.

The loop, per resource (what client-go's reflector and kopf do, in our own words):

1. **list** the collection; remember its ``resourceVersion``; reconcile against the local cache: emit
   ``ADDED``/``MODIFIED`` for new or changed objects, ``DELETED`` for objects that vanished while we were
   not watching (a 410 gap or an outage), then one ``SYNCED`` carrying the complete set;
2. **watch** from that resourceVersion with ``allowWatchBookmarks=true`` and a server-side
   ``timeoutSeconds``; every event and bookmark advances the resourceVersion, so a watch that ends (server
   timeout, connection reset, API-server restart, client inactivity timeout) resumes exactly where it
   stopped, without a relist;
3. **410 Gone** (an ``ERROR`` event with code 410, or an HTTP 410) → relist and reconcile (step 1);
4. any other failure → capped, jittered exponential backoff, at least the server's ``Retry-After``.

Threading: the blocking list/watch calls run on daemon threads (see :mod:`picker.kube._threads`); the
watch thread only parses lines and posts them to an ``asyncio.Queue`` with ``call_soon_threadsafe``.
All state (cache, resourceVersion) and every handler call live on the loop. :meth:`Reflector.close`
shuts the socket of the open watch down, which unblocks the thread at once.

Why one module of this size: list, watch, relist and backoff share one loop's resourceVersion and cache;
the stream plumbing that posts watch lines to the loop is the other half of the same thread handoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Protocol

import urllib3
from kubernetes import client as k8s_client

from picker.kube._threads import post_to_loop, run_in_thread
from picker.kube.client import (
    DEFAULT_REQUEST_TIMEOUT,
    JsonObj,
    KubeError,
    KubeGoneError,
    KubeUnavailableError,
    call_json,
    error_from_status,
    translate,
)

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# ------------------------------------------------------------------------------------------ resources
@dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced REST resource we list and watch."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"


PODS = Resource("", "v1", "pods", "Pod")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
POOL_GROUP_V1 = "inference.networking.k8s.io"
POOL_GROUP_V1ALPHA2 = "inference.networking.x-k8s.io"
INFERENCE_POOLS_V1 = Resource(POOL_GROUP_V1, "v1", "inferencepools", "InferencePool")
INFERENCE_POOLS_V1ALPHA2 = Resource(POOL_GROUP_V1ALPHA2, "v1alpha2", "inferencepools", "InferencePool")
INFERENCE_OBJECTIVES = Resource(POOL_GROUP_V1ALPHA2, "v1alpha2", "inferenceobjectives", "InferenceObjective")
INFERENCE_MODEL_REWRITES = Resource(
    POOL_GROUP_V1ALPHA2, "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"
)

_CORE_LISTERS = {"pods": "list_namespaced_pod", "configmaps": "list_namespaced_config_map"}


class Source(Protocol):
    """The two blocking calls a reflector needs (called on worker threads, never on the loop)."""

    description: str

    def list(self) -> tuple[list[JsonObj], str]:
        """Return (items, collection resourceVersion). Raises :class:`KubeError`."""
        ...

    def watch(
        self, resource_version: str, *, timeout_seconds: int, read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        """Open a watch stream (headers received, body not read). Raises :class:`KubeError`."""
        ...


class ListWatch:
    """:class:`Source` for one resource in one namespace, through the official client."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        resource: Resource,
        namespace: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector or None
        self.field_selector = field_selector or None
        sel = ",".join(s for s in (self.label_selector, self.field_selector) if s)
        self.description = f"{resource.plural}.{resource.group or 'core'} in {namespace}" + (
            f" ({sel})" if sel else ""
        )
        if resource.group:
            custom = k8s_client.CustomObjectsApi(api)
            g, v, p = resource.group, resource.version, resource.plural

            def call(**kw: Any) -> Any:
                return custom.list_namespaced_custom_object(g, v, namespace, p, **kw)
        else:
            method = getattr(k8s_client.CoreV1Api(api), _CORE_LISTERS[resource.plural])

            def call(**kw: Any) -> Any:
                return method(namespace, **kw)

        self._call = call

    def _selectors(self) -> dict[str, str]:
        kw = {}
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        if self.field_selector:
            kw["field_selector"] = self.field_selector
        return kw

    def list(self) -> tuple[list[JsonObj], str]:
        body = call_json(functools.partial(self._call, **self._selectors()))
        items = body.get("items") or []
        rv = (body.get("metadata") or {}).get("resourceVersion") or ""
        return [i for i in items if isinstance(i, dict)], str(rv)

    def watch(
        self, resource_version: str, *, timeout_seconds: int, read_timeout: float
    ) -> urllib3.BaseHTTPResponse:
        try:
            resp: urllib3.BaseHTTPResponse = self._call(
                **self._selectors(),
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=timeout_seconds,
                _preload_content=False,
                _request_timeout=(DEFAULT_REQUEST_TIMEOUT[0], read_timeout),
            )
        except Exception as exc:
            raise translate(exc) from exc
        return resp


# ------------------------------------------------------------------------------------------- events
class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    #: after every (re)list: ``objects`` is the complete current set
    SYNCED = "SYNCED"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    name: str = ""
    #: the object (for DELETED: its last known state); raw JSON as the API server sent it
    obj: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    #: SYNCED only: every object after the (re)list, by name
    objects: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _EMPTY)


Handler = Callable[[WatchEvent], Awaitable[None]]


def object_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def object_rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Backoff:
    """Capped exponential backoff with "equal jitter" (half fixed, half random), honouring Retry-After."""

    def __init__(
        self,
        *,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        max_retry_after: float = 120.0,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or cap < initial or factor < 1:
            raise ValueError("backoff needs 0 < initial <= cap and factor >= 1")
        self._initial = initial
        self._cap = cap
        self._factor = factor
        self._max_retry_after = max_retry_after
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.attempts = 0

    def next(self, retry_after: float | None = None) -> float:
        """The next delay in seconds; at least ``retry_after`` (bounded by ``max_retry_after``)."""
        base = min(self._cap, self._initial * self._factor**self.attempts)
        self.attempts += 1
        delay = base / 2 + self._rng.uniform(0, base / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._max_retry_after))
        return delay

    def reset(self) -> None:
        self.attempts = 0


# ------------------------------------------------------------------------------------------ streaming
@dataclass(slots=True)
class _End:
    error: KubeError | None


class _Opened:
    """Posted once the watch request got its 200 response headers."""


class _StreamCall:
    """The open watch response, shared between its thread and the loop (which may abort it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._resp: urllib3.BaseHTTPResponse | None = None
        self.aborted = False

    def attach(self, resp: urllib3.BaseHTTPResponse) -> bool:
        with self._lock:
            if not self.aborted:
                self._resp = resp
                return True
        return False

    def detach(self) -> None:
        with self._lock:
            self._resp = None

    def abort(self) -> None:
        """Unblock the reading thread: shut the socket down for reading (urllib3 ≥ 2.3)."""
        with self._lock:
            self.aborted = True
            resp, self._resp = self._resp, None
        if resp is not None:
            try:
                resp.shutdown()
            except (ValueError, RuntimeError, OSError):
                resp.close()


def _pump_stream(call: _StreamCall, resp: urllib3.BaseHTTPResponse, post: Callable[[object], bool]) -> None:
    """Thread body: split the chunked body into lines, parse JSON, post each event to the loop."""
    buf = b""
    complete = False
    try:
        for chunk in resp.stream(amt=None, decode_content=True):
            buf += chunk
            while (nl := buf.find(b"\n")) >= 0:
                line, buf = buf[:nl], buf[nl + 1 :]
                if line.strip():
                    event = json.loads(line)
                    if not isinstance(event, dict) or not post(event):
                        return
        complete = True
        post(_End(None))
    except Exception as exc:  # noqa: BLE001 - translated; an abort is a normal end
        post(_End(None if call.aborted else translate(exc)))
    finally:
        call.detach()
        if not complete:
            # an abort only shut the socket down for reading: a connection put back in the pool like that
            # stays open, and the API server keeps serving the watch until it is reused or collected
            resp.close()
        resp.release_conn()


class Reflector:
    """Keeps a local cache of one resource and calls ``handler`` for every change, on the loop.

    ``run()`` loops until :meth:`close`; it never returns on API errors (it backs off and retries, logging
    one line when a failure streak starts and one when it ends). Handlers run sequentially in event
    order; a handler exception propagates out of ``run()`` (a bug must not be swallowed).
    """

    def __init__(
        self,
        source: Source,
        handler: Handler,
        *,
        watch_timeout_s: float = 290.0,
        inactivity_timeout_s: float | None = None,
        min_watch_s: float = 1.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._source = source
        self._handler = handler
        self._watch_timeout = watch_timeout_s
        #: client-side read timeout of the stream: a silent connection (half-open TCP) is dropped after
        #: it. Default: the server-side timeout of that watch + 30 s, so an idle but healthy watch that
        #: gets no bookmark ends by the server's timeout, never by ours
        self._inactivity = inactivity_timeout_s
        self._min_watch = min_watch_s
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._cache: dict[str, Mapping[str, Any]] = {}
        self._rv: str | None = None
        self._closed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._started = False
        self._call: _StreamCall | None = None
        self._failing = False
        self.synced = False
        #: completed (re)lists; a test and debug aid
        self.lists = 0

    @property
    def description(self) -> str:
        return self._source.description

    @property
    def resource_version(self) -> str | None:
        return self._rv

    def objects(self) -> Mapping[str, Mapping[str, Any]]:
        """The current cache (read-only view), by object name."""
        return MappingProxyType(self._cache)

    async def close(self) -> None:
        """Stop: abort the open watch and wait until ``run()`` has returned (if it was started)."""
        self._closed.set()
        call = self._call
        if call is not None:
            call.abort()
        if self._started:
            await self._stopped.wait()

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("Reflector.run() called twice")
        self._started = True
        last_relist = -1e9
        try:
            while not self._closed.is_set():
                try:
                    if self._rv is None:
                        last_relist = self._clock()
                        await self._relist()
                        self._recovered()
                        continue
                    started = self._clock()
                    delivered = await self._watch_once(self._rv)
                    if not delivered and self._clock() - started < self._min_watch:
                        # a watch that ends at once with nothing in it would otherwise spin
                        await self._pause(self._backoff.next())
                except KubeGoneError:
                    log.debug("watch of %s expired (410); relisting", self.description)
                    self._rv = None
                    if self._clock() - last_relist < self._min_watch:
                        await self._pause(self._backoff.next())
                except KubeError as exc:
                    self._failed(exc)
                    await self._pause(self._backoff.next(exc.retry_after))
        finally:
            self._stopped.set()

    # ------------------------------------------------------------------------------------- internals
    def _recovered(self) -> None:
        self._backoff.reset()
        if self._failing:
            self._failing = False
            log.info("kubernetes watch of %s recovered", self.description)

    def _failed(self, exc: KubeError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("kubernetes watch of %s failing, retrying with backoff: %s", self.description, exc)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout=seconds)

    async def _relist(self) -> None:
        items, rv = await run_in_thread(self._source.list, name=f"kube-list-{self._source.description}")
        if self._closed.is_set():
            return
        if not rv:  # without it the watch could not resume anywhere; relisting at once would spin
            raise KubeUnavailableError(f"list of {self.description} returned no resourceVersion")
        fresh: dict[str, Mapping[str, Any]] = {}
        for item in items:
            name = object_name(item)
            if name:
                fresh[name] = item
        events: list[WatchEvent] = []
        for name, obj in fresh.items():
            old = self._cache.get(name)
            if old is None:
                events.append(WatchEvent(EventType.ADDED, name, obj))
            elif object_rv(old) != object_rv(obj):
                events.append(WatchEvent(EventType.MODIFIED, name, obj))
        events.extend(WatchEvent(EventType.DELETED, n, o) for n, o in self._cache.items() if n not in fresh)
        self._cache = fresh
        self._rv = rv
        self.lists += 1
        for ev in events:
            await self._handler(ev)
        self.synced = True
        await self._handler(WatchEvent(EventType.SYNCED, objects=MappingProxyType(dict(fresh))))

    async def _watch_once(self, rv: str) -> int:
        """One watch request; returns the number of object events it delivered."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        call = _StreamCall()
        self._call = call
        # jittered so that many watchers (and replicas) do not all reconnect in the same second
        timeout_seconds = max(1, int(self._watch_timeout * (1.0 + 0.25 * self._rng.random())))
        read_timeout = self._inactivity or timeout_seconds + 30.0
        source = self._source

        def post(item: object) -> bool:
            return post_to_loop(loop, queue.put_nowait, item)

        def blocking() -> None:
            try:
                resp = source.watch(rv, timeout_seconds=timeout_seconds, read_timeout=read_timeout)
            except KubeError as exc:
                post(_End(exc))
                return
            if not call.attach(resp):
                # closed between the response headers and here: close the connection (as _pump_stream
                # does after an abort), else it goes back to the pool with the watch still being served
                resp.close()
                resp.release_conn()
                post(_End(None))
                return
            post(_Opened())
            _pump_stream(call, resp, post)

        threading.Thread(target=blocking, name=f"kube-watch-{source.description}", daemon=True).start()
        delivered = 0
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return delivered
                if isinstance(item, _Opened):
                    self._recovered()
                    continue
                assert isinstance(item, dict)
                if await self._apply(item):
                    delivered += 1
        finally:
            call.abort()
            self._call = None

    async def _apply(self, event: dict[str, Any]) -> bool:
        type_ = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            return False
        if type_ == "BOOKMARK":
            self._rv = object_rv(obj) or self._rv
            return False
        if type_ == "ERROR":
            code = obj.get("code")
            raise error_from_status(int(code) if isinstance(code, int) else 500, obj)
        name = object_name(obj)
        if type_ not in {"ADDED", "MODIFIED", "DELETED"} or not name:
            log.debug("ignoring watch event %s for %s", type_, self.description)
            return False
        self._rv = object_rv(obj) or self._rv
        if type_ == "DELETED":
            self._cache.pop(name, None)
        else:
            self._cache[name] = obj
        await self._handler(WatchEvent(EventType(type_), name, obj))
        return True


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How every watcher of one process times its watches, passed once to each watcher.

    ``watch_timeout_s`` is the server-side ``timeoutSeconds`` of one watch (jittered up by 25 %);
    ``inactivity_timeout_s`` the client-side read timeout that drops a silent (half-open) connection (default:
    that watch's timeout + 30 s); ``backoff`` makes each reflector's own :class:`Backoff`.
    """

    watch_timeout_s: float = 290.0
    inactivity_timeout_s: float | None = None
    backoff: Callable[[], Backoff] = Backoff

    def reflector(self, source: Source, handler: Handler) -> Reflector:
        """A :class:`Reflector` of ``source`` timed by these settings (it starts nothing)."""
        return Reflector(
            source,
            handler,
            watch_timeout_s=self.watch_timeout_s,
            inactivity_timeout_s=self.inactivity_timeout_s,
            backoff=self.backoff(),
        )


#: the settings of a watcher given none
DEFAULT_WATCH: Final = WatchSettings()
