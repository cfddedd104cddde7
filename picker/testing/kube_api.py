"""A small Kubernetes API server emulator speaking real HTTP on 127.0.0.1 (aiohttp), for tests.

Why our own and not ``kmock``'s ``KubernetesEmulator``: kmock 0.8 answers every list with the placeholder
resourceVersion ``"..."``, replays all objects as ``ADDED`` on every watch regardless of the requested
resourceVersion, ignores label/field selectors, ``timeoutSeconds`` and ``allowWatchBookmarks``, never
answers 410 Gone and merges updates without optimistic concurrency. The watchers and the lease elector
depend on exactly those semantics, so a fake without them would let the interesting bugs through.

What this emulator implements, as the real API server does:

* one cluster-wide, monotonically increasing resourceVersion (etcd revision); every write bumps it;
* list (``GET`` collection) with ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``, exists,
  ``!key``) and ``fieldSelector`` (``metadata.name``, ``metadata.namespace``), returning the collection's
  resourceVersion;
* watch (``?watch=true``) from a resourceVersion: replays the change history after it, then live changes;
  ``resourceVersion`` unset or ``"0"`` starts with synthetic ``ADDED`` events for the current objects.
  Selector transitions are reported as the API server does (an object that stops matching arrives as
  ``DELETED``, one that starts matching as ``ADDED``). ``timeoutSeconds`` ends the stream;
  ``allowWatchBookmarks`` gets periodic ``BOOKMARK`` events. A resourceVersion older than the compacted
  history gets an ``ERROR`` event with a 410 ``Expired`` Status (how a watch-cache-backed server answers);
* get, create (409 ``AlreadyExists``), update with optimistic concurrency (409 ``Conflict`` on a stale
  ``metadata.resourceVersion``), JSON merge patch, delete (objects with finalizers get a
  ``deletionTimestamp`` instead);
* Status error bodies with ``code``/``reason``, and ``Retry-After`` on injected 429/5xx;
* ``create`` of ``tokenreviews`` and ``subjectaccessreviews`` answered from :attr:`KubeApiEmulator.access`
  (tokens → users, RBAC-like grants on non-resource URLs: :mod:`picker.testing.kube_auth`); nothing is
  stored, as on the real server.

Fault injection for tests: :meth:`KubeApiEmulator.fail` (next N requests of a verb answer an error),
:meth:`compact` (history dropped → resuming watches get 410), :meth:`expire_watches` (every open watch
gets 410 now), :meth:`freeze_watches` (open streams go silent without closing, like a half-open TCP
connection), :meth:`stop`/:meth:`start` (API-server restart on the same port; the stored objects persist,
as they do in etcd).

Deliberate simplifications: callers are not authenticated, no admission/defaulting/validation beyond what
is listed, a client-provided ``metadata.creationTimestamp`` is kept (tests use it to order objects),
pagination (``limit``/``continue``) is ignored, and there is a single version per resource.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import json
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from picker.testing.kube_auth import ACCESS_REVIEW_PATH, TOKEN_REVIEW_PATH, AccessPolicy
from picker.testing.web import start_app

JsonObj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One REST resource (group, version, plural) and what its objects look like."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"


PODS = ResourceType("", "v1", "pods", "Pod")
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap")
EVENTS = ResourceType("", "v1", "events", "Event")
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")
INFERENCE_POOLS = ResourceType("inference.networking.k8s.io", "v1", "inferencepools", "InferencePool")
INFERENCE_POOLS_V1ALPHA2 = ResourceType(
    "inference.networking.x-k8s.io", "v1alpha2", "inferencepools", "InferencePool"
)
INFERENCE_OBJECTIVES = ResourceType(
    "inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives", "InferenceObjective"
)
INFERENCE_MODEL_REWRITES = ResourceType(
    "inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites", "InferenceModelRewrite"
)
DEPLOYMENTS = ResourceType("apps", "v1", "deployments", "Deployment")
STATEFULSETS = ResourceType("apps", "v1", "statefulsets", "StatefulSet")
HPAS = ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
#: a CRD: not served unless a test lists it (as a cluster without the CRD installed would not)
LEADER_WORKER_SETS = ResourceType("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", "LeaderWorkerSet")
DEFAULT_RESOURCES = (
    PODS,
    CONFIGMAPS,
    EVENTS,
    LEASES,
    INFERENCE_POOLS,
    INFERENCE_POOLS_V1ALPHA2,
    INFERENCE_OBJECTIVES,
    INFERENCE_MODEL_REWRITES,
    DEPLOYMENTS,
    STATEFULSETS,
    HPAS,
)
#: resources with a ``scale`` subresource (``spec.replicas`` / ``status.replicas`` / a label selector)
SCALABLE = frozenset({DEPLOYMENTS, STATEFULSETS, LEADER_WORKER_SETS})
#: API groups served by the API server itself; every other group is a CRD (no strategic merge patch)
BUILTIN_GROUPS = frozenset({"", "apps", "autoscaling", "coordination.k8s.io", "events.k8s.io"})

_VERBS = frozenset({"list", "watch", "get", "create", "update", "patch", "delete"})


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the emulator understood it (for assertions on what the client sent)."""

    method: str
    path: str
    verb: str
    plural: str
    namespace: str | None
    name: str | None
    query: Mapping[str, str]
    subresource: str | None = None


@dataclass(slots=True)
class _Change:
    rv: int
    type: str
    obj: JsonObj
    old: JsonObj | None


@dataclass(slots=True)
class _Fault:
    verb: str
    plural: str | None
    status: int
    remaining: int
    retry_after: float | None
    message: str


@dataclass(slots=True, eq=False)
class _Watch:
    resource: ResourceType
    namespace: str | None
    labels: Callable[[Mapping[str, str]], bool]
    fields: Callable[[JsonObj], bool]
    queue: asyncio.Queue[_Change | str] = field(default_factory=asyncio.Queue)
    frozen: bool = False


class _StatusError(Exception):
    def __init__(self, code: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


def status_body(code: int, reason: str, message: str, *, retry_after: float | None = None) -> JsonObj:
    """A ``metav1.Status`` failure object as the API server writes it."""
    body: JsonObj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": int(retry_after)}
    return body


def _now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------------------------------ selectors
_SET_TERM = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split a selector on commas that are not inside ``(...)``."""
    terms: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return [t.strip() for t in terms if t.strip()]


LabelCheck = Callable[[Mapping[str, str]], bool]


def _label_term(term: str) -> LabelCheck:
    m = _SET_TERM.match(term)
    if m:
        key, op, raw = m.group(1), m.group(2), m.group(3)
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        want = op == "in"
        return lambda lb: (lb.get(key) in values) == want
    if "!=" in term:
        key, value = (s.strip() for s in term.split("!=", 1))
        return lambda lb: lb.get(key) != value
    if "=" in term:
        key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
        return lambda lb: lb.get(key) == value
    if term.startswith("!"):
        absent = term[1:].strip()
        return lambda lb: absent not in lb
    return lambda lb: term in lb


def label_matcher(selector: str | None) -> LabelCheck:
    """Compile a Kubernetes label selector string into a predicate over a label map."""
    checks = [_label_term(t) for t in _split_terms(selector or "")]
    return lambda labels: all(c(labels) for c in checks)


def field_matcher(selector: str | None) -> Callable[[JsonObj], bool]:
    """Compile a field selector (``metadata.name`` / ``metadata.namespace``, ``=``/``==``/``!=``)."""
    checks: list[Callable[[JsonObj], bool]] = []
    for term in _split_terms(selector or ""):
        negate = "!=" in term
        path, value = (s.strip() for s in term.replace("!=", "=").replace("==", "=").split("=", 1))
        if path not in {"metadata.name", "metadata.namespace"}:
            raise _StatusError(400, "BadRequest", f'field label not supported: "{path}"')
        attr = path.split(".", 1)[1]

        def check(obj: JsonObj, a: str = attr, v: str = value, neg: bool = negate) -> bool:
            return bool((obj.get("metadata", {}).get(a) == v) != neg)

        checks.append(check)
    return lambda obj: all(c(obj) for c in checks)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic-merge requests: no list merging)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _check_patch_type(r: ResourceType, content_type: str) -> None:
    """Custom resources take JSON merge patches only: a strategic merge patch is a 415, as on a real server"""
    strategic = content_type.startswith("application/strategic-merge-patch+json")
    if r.group not in BUILTIN_GROUPS and strategic:
        raise _StatusError(
            415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
        )


# ------------------------------------------------------------------------------------------- server
class KubeApiEmulator:
    """In-memory Kubernetes API server over real HTTP. See the module docstring for the semantics.

    Tests drive state directly (``create``/``apply``/``patch``/``delete``/``get``/``list_objects`` are
    plain methods on the loop, like ``kubectl`` acting from elsewhere) and let the code under test talk
    to :attr:`url` through the official ``kubernetes`` client.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        resources: Iterable[ResourceType] = DEFAULT_RESOURCES,
        bookmark_interval: float | None = 1.0,
        history_limit: int = 10_000,
    ) -> None:
        self._host = host
        self._port = port
        self._resources = {(r.group, r.version, r.plural): r for r in resources}
        self._bookmark_interval = bookmark_interval
        self._history_limit = history_limit
        self._rv = 1
        self._objects: dict[ResourceType, dict[tuple[str, str], JsonObj]] = {
            r: {} for r in self._resources.values()
        }
        self._history: dict[ResourceType, deque[_Change]] = {r: deque() for r in self._resources.values()}
        #: changes at or below this revision are gone from the history (per resource)
        self._compacted: dict[ResourceType, int] = dict.fromkeys(self._resources.values(), 0)
        self._watches: set[_Watch] = set()
        self._faults: list[_Fault] = []
        self._runner: web.AppRunner | None = None
        self.requests: list[RecordedRequest] = []
        #: the authenticator and authorizer behind TokenReview and SubjectAccessReview
        self.access = AccessPolicy()
        #: called after every stored change as ``(resource, type, object, old)`` (controllers hook in here)
        self.listeners: list[Callable[[ResourceType, str, JsonObj, JsonObj | None], None]] = []

    # ------------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("emulator not started")
        return f"http://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Listen (again) on the same port; stored objects and history survive a stop/start."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner, self._port = await start_app(app, self._host, self._port)

    async def stop(self) -> None:
        """Stop listening and drop every connection, as a crashing API server would."""
        runner, self._runner = self._runner, None
        for w in tuple(self._watches):
            w.queue.put_nowait("close")
        if runner is not None:
            await runner.cleanup()

    async def restart(self, *, compact: bool = False) -> None:
        """Stop and start on the same port; ``compact`` also drops the watch history (410 on resume)."""
        await self.stop()
        if compact:
            self.compact()
        await self.start()

    async def __aenter__(self) -> KubeApiEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig that points at this emulator (JSON is valid YAML)."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "emulator",
        }
        path.write_text(json.dumps(doc))
        return path

    # ----------------------------------------------------------------------------- fault injection
    def fail(
        self,
        verb: str,
        *,
        plural: str | None = None,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        message: str = "injected failure",
    ) -> None:
        """Answer the next ``times`` requests of ``verb`` (optionally for one resource) with an error."""
        if verb not in _VERBS:
            raise ValueError(f"unknown verb {verb!r}")
        self._faults.append(_Fault(verb, plural, status, times, retry_after, message))

    def compact(self) -> None:
        """Drop the change history: a watch resuming from any older resourceVersion gets 410 Gone."""
        for r, hist in self._history.items():
            hist.clear()
            self._compacted[r] = self._rv

    def expire_watches(self) -> int:
        """Send 410 ``Expired`` to every open watch now and end it. Returns how many were open."""
        n = 0
        for w in tuple(self._watches):
            w.queue.put_nowait("expire")
            n += 1
        return n

    def freeze_watches(self) -> int:
        """Open watches stop receiving anything, and stay open (a silently dead connection)."""
        n = 0
        for w in self._watches:
            if not w.frozen:
                w.frozen = True
                n += 1
        return n

    def open_watches(self, plural: str | None = None) -> int:
        """How many watch streams are currently being served (optionally for one resource)."""
        return sum(1 for w in self._watches if not w.frozen and plural in {None, w.resource.plural})

    def count(self, verb: str, plural: str | None = None) -> int:
        """How many requests of ``verb`` (for ``plural``) were received so far."""
        return sum(1 for r in self.requests if r.verb == verb and plural in {None, r.plural})

    # ------------------------------------------------------------------------- direct state access
    @property
    def resource_version(self) -> int:
        return self._rv

    def resource(self, api_version: str, kind: str) -> ResourceType:
        for r in self._resources.values():
            if r.api_version == api_version and r.kind == kind:
                return r
        raise KeyError(f"unknown resource {api_version} {kind}")

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> JsonObj | None:
        obj = self._objects[self.resource(api_version, kind)].get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[JsonObj]:
        store = self._objects[self.resource(api_version, kind)]
        return [copy.deepcopy(o) for (ns, _), o in sorted(store.items()) if namespace in {None, ns}]

    def create(self, obj: Mapping[str, Any]) -> JsonObj:
        r = self.resource(obj["apiVersion"], obj["kind"])
        ns = obj.get("metadata", {}).get("namespace", "default") if r.namespaced else ""
        return copy.deepcopy(self._create(r, ns, copy.deepcopy(dict(obj))))

    def apply(self, obj: Mapping[str, Any]) -> JsonObj:
        """Create or replace (no resourceVersion check), like ``kubectl apply`` of a whole object."""
        r = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if r.namespaced else ""
        body = copy.deepcopy(dict(obj))
        body.setdefault("metadata", {}).pop("resourceVersion", None)
        if (ns, meta["name"]) in self._objects[r]:
            return copy.deepcopy(self._update(r, ns, meta["name"], body))
        return copy.deepcopy(self._create(r, ns, body))

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> JsonObj:
        r = self.resource(api_version, kind)
        return copy.deepcopy(self._patch(r, namespace, name, dict(patch)))

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> JsonObj:
        r = self.resource(api_version, kind)
        return copy.deepcopy(self._delete(r, namespace, name))

    # ------------------------------------------------------------------------------ storage core
    def _existing(self, r: ResourceType, ns: str, name: str) -> JsonObj:
        """The stored object, or the API server's 404."""
        obj = self._objects[r].get((ns, name))
        if obj is None:
            raise _StatusError(404, "NotFound", f'{r.plural} "{name}" not found')
        return obj

    def _bump(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, r: ResourceType, type_: str, obj: JsonObj, old: JsonObj | None) -> None:
        change = _Change(int(obj["metadata"]["resourceVersion"]), type_, copy.deepcopy(obj), old)
        hist = self._history[r]
        hist.append(change)
        while len(hist) > self._history_limit:
            self._compacted[r] = hist.popleft().rv
        for w in self._watches:
            if w.resource == r and not w.frozen:
                w.queue.put_nowait(change)
        for listener in tuple(self.listeners):
            listener(r, type_, obj, old)

    def _create(self, r: ResourceType, ns: str, obj: JsonObj) -> JsonObj:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise _StatusError(422, "Invalid", f"{r.kind} is invalid: metadata.name: Required value")
        if (ns, name) in self._objects[r]:
            raise _StatusError(409, "AlreadyExists", f'{r.plural} "{name}" already exists')
        obj["apiVersion"], obj["kind"] = r.api_version, r.kind
        if r.namespaced:
            meta["namespace"] = ns
        meta["uid"] = str(uuid.uuid4())
        meta.setdefault("creationTimestamp", _now_rfc3339())
        meta["generation"] = 1
        meta["resourceVersion"] = str(self._bump())
        self._objects[r][(ns, name)] = obj
        self._record(r, "ADDED", obj, None)
        return obj

    def _update(self, r: ResourceType, ns: str, name: str, obj: JsonObj) -> JsonObj:
        old = self._existing(r, ns, name)
        meta = obj.setdefault("metadata", {})
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise _StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {r.plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )
        obj["apiVersion"], obj["kind"] = r.api_version, r.kind
        for kept in ("uid", "creationTimestamp", "namespace", "name"):
            if kept in old["metadata"]:
                meta[kept] = old["metadata"][kept]
        meta["generation"] = old["metadata"].get("generation", 1) + (
            1 if obj.get("spec") != old.get("spec") else 0
        )
        meta["resourceVersion"] = str(self._bump())
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(r, ns, name, obj)
        self._objects[r][(ns, name)] = obj
        self._record(r, "MODIFIED", obj, old)
        return obj

    def _patch(self, r: ResourceType, ns: str, name: str, patch: JsonObj) -> JsonObj:
        old = self._existing(r, ns, name)
        merged = merge_patch(old, patch)
        if "resourceVersion" not in patch.get("metadata", {}):
            merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        return self._update(r, ns, name, merged)

    def _delete(self, r: ResourceType, ns: str, name: str) -> JsonObj:
        obj = self._existing(r, ns, name)
        if obj["metadata"].get("finalizers"):
            if obj["metadata"].get("deletionTimestamp"):
                return obj
            return self._patch(r, ns, name, {"metadata": {"deletionTimestamp": _now_rfc3339()}})
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._bump())
        return self._remove(r, ns, name, gone)

    def _remove(self, r: ResourceType, ns: str, name: str, last: JsonObj) -> JsonObj:
        old = self._objects[r].pop((ns, name))
        self._record(r, "DELETED", last, old)
        return last

    # -------------------------------------------------------------------------------------- HTTP
    def _parse_path(self, path: str) -> tuple[ResourceType, str | None, str | None, str | None]:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise _StatusError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise _StatusError(404, "NotFound", f"the server could not find the requested resource ({path})")
        r = self._resources.get((group, version, rest[0]))
        if r is None or (
            len(rest) == 3
            and (rest[2] not in {"scale", "status"} or (rest[2] == "scale" and r not in SCALABLE))
        ):
            raise _StatusError(404, "NotFound", f"the server could not find the requested resource ({path})")
        return r, namespace, rest[1] if len(rest) >= 2 else None, rest[2] if len(rest) == 3 else None

    @staticmethod
    def _verb(method: str, name: str | None, query: Mapping[str, str]) -> str:
        if method == "GET":
            if name is not None:
                return "get"
            return "watch" if query.get("watch") in {"true", "1"} else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "?")

    def _raise_fault(self, verb: str, plural: str) -> None:
        """Raise the injected error for this request, if one is armed."""
        for f in self._faults:
            if f.verb == verb and f.plural in {None, plural} and f.remaining > 0:
                f.remaining -= 1
                if f.remaining == 0:
                    self._faults.remove(f)
                reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
                raise _StatusError(f.status, reasons.get(f.status, "InternalError"), f.message, f.retry_after)

    async def _serve_review(self, request: web.Request, plural: str) -> web.StreamResponse:
        """``create`` of a TokenReview or SubjectAccessReview: answered, never stored."""
        self.requests.append(RecordedRequest(request.method, request.path, "create", plural, None, None, {}))
        if request.method != "POST":
            raise _StatusError(405, "MethodNotAllowed", f"{request.method} is not supported on {plural}")
        self._raise_fault("create", plural)
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise _StatusError(400, "BadRequest", f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise _StatusError(400, "BadRequest", "body must be a JSON object")
        review = (
            self.access.token_review(body)
            if plural == "tokenreviews"
            else self.access.subject_access_review(body)
        )
        return web.json_response(review, status=201)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.path in {TOKEN_REVIEW_PATH, ACCESS_REVIEW_PATH}:
                return await self._serve_review(request, request.path.rsplit("/", 1)[1])
            r, ns, name, sub = self._parse_path(request.path)
            query = dict(request.query)
            verb = self._verb(request.method, name, query)
            self.requests.append(
                RecordedRequest(request.method, request.path, verb, r.plural, ns, name, query, sub)
            )
            self._raise_fault(verb, r.plural if sub is None else f"{r.plural}/{sub}")
            if verb == "patch":
                _check_patch_type(r, request.headers.get("Content-Type", ""))
            if verb == "watch":
                return await self._serve_watch(request, r, ns, query)
            if sub == "scale":
                assert name is not None
                return await self._serve_scale(request, verb=verb, r=r, ns=ns or "", name=name)
            return await self._serve(request, verb=verb, r=r, ns=ns, name=name, query=query)
        except _StatusError as exc:
            headers = {} if exc.retry_after is None else {"Retry-After": str(int(exc.retry_after))}
            body = status_body(exc.code, exc.reason, exc.message, retry_after=exc.retry_after)
            return web.json_response(body, status=exc.code, headers=headers)

    async def _serve(
        self,
        request: web.Request,
        *,
        verb: str,
        r: ResourceType,
        ns: str | None,
        name: str | None,
        query: Mapping[str, str],
    ) -> web.StreamResponse:
        ns_key = ns or ""
        if verb == "list":
            return web.json_response(self._list_body(r, ns, query))
        if verb == "get":
            assert name is not None
            return web.json_response(self._existing(r, ns_key, name))
        if verb == "delete":
            assert name is not None
            return web.json_response(self._delete(r, ns_key, name))
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise _StatusError(400, "BadRequest", f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise _StatusError(400, "BadRequest", "body must be a JSON object")
        if verb == "create":
            return web.json_response(self._create(r, ns_key, body), status=201)
        assert name is not None
        if verb == "update":
            meta = body.get("metadata", {})
            if meta.get("name") not in {None, name}:
                raise _StatusError(400, "BadRequest", "the name of the object does not match the URL")
            return web.json_response(self._update(r, ns_key, name, body))
        if verb == "patch":
            return web.json_response(self._patch(r, ns_key, name, body))
        raise _StatusError(405, "MethodNotAllowed", f"{request.method} is not supported")

    # ------------------------------------------------------------------------------ scale subresource
    @staticmethod
    def scale_of(obj: JsonObj) -> JsonObj:
        """The ``autoscaling/v1`` Scale view of a workload (spec.replicas, status.replicas, selector)."""
        meta = obj["metadata"]
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        labels = ((spec.get("selector") or {}).get("matchLabels")) or {}
        selector = status.get("hpaPodSelector") or ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
                "creationTimestamp": meta.get("creationTimestamp"),
            },
            "spec": {"replicas": int(spec.get("replicas", 1))},
            "status": {"replicas": int(status.get("replicas", 0)), "selector": selector},
        }

    async def _serve_scale(
        self, request: web.Request, *, verb: str, r: ResourceType, ns: str, name: str
    ) -> web.StreamResponse:
        obj = self._objects[r].get((ns, name))
        if obj is None:
            raise _StatusError(404, "NotFound", f'{r.plural}.{r.group} "{name}" not found')
        if verb == "get":
            return web.json_response(self.scale_of(obj))
        if verb not in {"update", "patch"}:
            raise _StatusError(405, "MethodNotAllowed", f"{request.method} is not supported on scale")
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise _StatusError(400, "BadRequest", f"invalid JSON body: {exc}") from exc
        if not isinstance(body, dict):
            raise _StatusError(400, "BadRequest", "body must be a JSON object")
        current = self.scale_of(obj)
        scale = merge_patch(current, body) if verb == "patch" else body
        sent_rv = (scale.get("metadata") or {}).get("resourceVersion")
        if verb == "update" and sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            raise _StatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {r.plural} "{name}": '
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise _StatusError(
                422,
                "Invalid",
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: '
                "Invalid value: must be greater than or equal to 0",
            )
        updated = self._patch(r, ns, name, {"spec": {"replicas": replicas}})
        return web.json_response(self.scale_of(updated))

    def _select(self, r: ResourceType, ns: str | None, query: Mapping[str, str]) -> list[JsonObj]:
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"))
        return [
            o
            for (ons, _), o in sorted(self._objects[r].items())
            if (ns is None or ons == ns) and labels(o["metadata"].get("labels") or {}) and fields(o)
        ]

    def _list_body(self, r: ResourceType, ns: str | None, query: Mapping[str, str]) -> JsonObj:
        return {
            "apiVersion": r.api_version,
            "kind": f"{r.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": self._select(r, ns, query),
        }

    async def _serve_watch(
        self, request: web.Request, r: ResourceType, ns: str | None, query: Mapping[str, str]
    ) -> web.StreamResponse:
        labels = label_matcher(query.get("labelSelector"))
        fields = field_matcher(query.get("fieldSelector"))
        bookmarks = query.get("allowWatchBookmarks") in {"true", "1"}
        lifetime = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
        rv_param = query.get("resourceVersion") or ""
        watch = _Watch(r, ns, labels, fields)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        def visible(obj: JsonObj | None) -> bool:
            if obj is None:
                return False
            in_ns = ns is None or obj["metadata"].get("namespace") == ns
            return in_ns and labels(obj["metadata"].get("labels") or {}) and fields(obj)

        async def send(type_: str, obj: JsonObj) -> None:
            await resp.write(json.dumps({"type": type_, "object": obj}).encode() + b"\n")

        async def send_change(ch: _Change) -> None:
            now, before = visible(ch.obj) if ch.type != "DELETED" else False, visible(ch.old)
            if ch.type == "DELETED":
                if before:
                    await send("DELETED", ch.obj)
            elif now and before:
                await send("MODIFIED", ch.obj)
            elif now:
                await send("ADDED", ch.obj)
            elif before:
                await send("DELETED", ch.obj)

        async def send_gone(from_rv: int) -> None:
            msg = f"too old resource version: {from_rv} ({self._compacted[r]})"
            await send("ERROR", status_body(410, "Expired", msg))

        self._watches.add(watch)
        try:
            if rv_param in {"", "0"}:
                for obj in self._select(r, ns, query):
                    await send("ADDED", obj)
            else:
                from_rv = int(rv_param)
                if from_rv < self._compacted[r]:
                    await send_gone(from_rv)
                    await resp.write_eof()
                    return resp
                for ch in [c for c in self._history[r] if c.rv > from_rv]:
                    await send_change(ch)
            if not await self._pump(
                watch,
                resp,
                send_change,
                send_gone,
                bookmarks=bookmarks,
                lifetime=lifetime,
                gone=lambda: request.transport is None or request.transport.is_closing(),
            ):
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self._watches.discard(watch)
        return resp

    async def _pump(
        self,
        watch: _Watch,
        resp: web.StreamResponse,
        send_change: Callable[[_Change], Awaitable[None]],
        send_gone: Callable[[int], Awaitable[None]],
        *,
        bookmarks: bool,
        lifetime: float | None,
        gone: Callable[[], bool],
    ) -> bool:
        """Stream live changes; True when the stream should end cleanly, False to drop the connection.

        ``gone``: the client closed its connection. aiohttp does not cancel a handler when its client goes
        away, and a quiet watch writes nothing that would fail, so the pump asks every half second; without
        it a closed watch stays open here (and counted by :meth:`open_watches`) until the next event."""
        loop = asyncio.get_running_loop()
        deadline = None if lifetime is None else loop.time() + lifetime
        interval = self._bookmark_interval if bookmarks else None
        next_bookmark = None if interval is None else loop.time() + interval
        while True:
            if gone():
                return False
            now = loop.time()
            if deadline is not None and now >= deadline and not watch.frozen:
                return True
            # a bookmark promises "nothing below this revision is still coming": only with an empty queue
            if next_bookmark is not None and interval is not None and now >= next_bookmark:
                if watch.queue.empty() and not watch.frozen:
                    await self._bookmark(watch, resp)
                next_bookmark = now + interval
            waits = [0.5]
            if deadline is not None:
                waits.append(deadline - now)
            if next_bookmark is not None:
                waits.append(next_bookmark - now)
            try:
                item = await asyncio.wait_for(watch.queue.get(), timeout=max(0.0, min(waits)))
            except TimeoutError:
                continue
            if item == "close":
                return False
            if watch.frozen:
                continue
            if item == "expire":
                await send_gone(self._rv)
                return True
            assert isinstance(item, _Change)
            await send_change(item)

    async def _bookmark(self, watch: _Watch, resp: web.StreamResponse) -> None:
        event = {
            "type": "BOOKMARK",
            "object": {
                "apiVersion": watch.resource.api_version,
                "kind": watch.resource.kind,
                "metadata": {"resourceVersion": str(self._rv)},
            },
        }
        await resp.write(json.dumps(event).encode() + b"\n")
