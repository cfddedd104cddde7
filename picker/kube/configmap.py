"""The scoring document from a ConfigMap watched through the API (``--config-configmap NAME``).

Every version of the ConfigMap's key (``config.yaml`` by default) goes to
``ConfigStore.apply_text_off_loop``, which parses, validates and builds in a worker thread (a document of
up to 1 MiB must not stall routing and health checks) and swaps atomically on the loop, keeping the last
good config on failure and telling its listeners (log, ``picker_config_reload_total``). What this module
adds is the cluster-facing side: a rejected document also becomes a ``Warning`` Event on the ConfigMap
(reason ``ConfigRejected``), so ``kubectl describe configmap`` shows why the edit did not take effect.

Why through the API and not only the mounted file: a mounted ConfigMap reaches the pod after the
kubelet's sync period (up to a minute or more); a watch delivers the edit within one event. The
mounted-file mode stays available for clusters where the EPP may not read ConfigMaps.

A deleted ConfigMap, or one without the key, keeps the active configuration (fail static).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kubernetes import client as k8s_client

from picker.kube._threads import run_in_thread
from picker.kube.client import KubeError, call_json
from picker.kube.reflector import CONFIGMAPS, DEFAULT_WATCH, EventType, ListWatch, WatchEvent, WatchSettings

log = logging.getLogger(__name__)

DEFAULT_KEY = "config.yaml"
REJECTED_REASON = "ConfigRejected"
#: events.k8s.io limits ``note`` to 1 kB; stay within it for the core/v1 message too
MAX_EVENT_MESSAGE = 1024


class ReloadOutcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def result(self) -> str: ...

    @property
    def message(self) -> str: ...


class ConfigSink(Protocol):
    """The one method of :class:`picker.state.config_store.ConfigStore` this watcher needs."""

    async def apply_text_off_loop(self, text: str, *, source: str) -> ReloadOutcome: ...


class EventRecorder:
    """Posts core/v1 Events about objects (best effort: a failure is logged once, never raised)."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        *,
        component: str = "picker",
        instance: str = "",
        wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._core = k8s_client.CoreV1Api(api)
        self._component = component
        self._instance = instance
        self._wall_clock = wall_clock
        self._failing = False

    def _body(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
        meta = involved.get("metadata") or {}
        now = self._wall_clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "v1",
            "kind": "Event",
            # the client-go recorder's naming: <object>.<unix nanos in hex>
            "metadata": {
                "name": f"{meta.get('name')}.{time.time_ns():x}",
                "namespace": meta.get("namespace"),
            },
            "involvedObject": {
                "apiVersion": involved.get("apiVersion", "v1"),
                "kind": involved.get("kind", ""),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:MAX_EVENT_MESSAGE],
            "source": {"component": self._component},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    async def post(self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str) -> bool:
        """Create the Event; True on success."""
        body = self._body(involved, type_, reason, message)
        namespace = str(body["metadata"]["namespace"])

        try:
            await run_in_thread(
                lambda: call_json(self._core.create_namespaced_event, namespace, body), name="kube-event"
            )
        except KubeError as exc:
            if not self._failing:
                self._failing = True
                log.warning("cannot post Kubernetes events (%s); continuing without them", exc)
            return False
        if self._failing:
            self._failing = False
            log.info("posting Kubernetes events works again")
        return True


class ConfigMapWatcher:
    """Feeds one ConfigMap key to a :class:`ConfigSink`; posts a Warning Event when it is rejected."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        sink: ConfigSink,
        *,
        namespace: str,
        name: str,
        key: str = DEFAULT_KEY,
        recorder: EventRecorder | None = None,
        watch: WatchSettings = DEFAULT_WATCH,
    ) -> None:
        if not name:
            raise ValueError("the ConfigMap name is empty")
        self._sink = sink
        self._namespace = namespace
        self._name = name
        self._key = key
        self._source = f"configmap/{namespace}/{name}"
        self._recorder = recorder if recorder is not None else EventRecorder(api)
        source = ListWatch(api, CONFIGMAPS, namespace, field_selector=f"metadata.name={name}")
        self._reflector = watch.reflector(source, self._handle)
        #: (uid, resourceVersion) of the last version we reacted to: relists never repeat an Event
        self._seen: tuple[str, str] | None = None
        self._missing_logged = False

    @property
    def source(self) -> str:
        """The ``source`` string passed to ``apply_text_off_loop`` (``configmap/<ns>/<name>``)."""
        return self._source

    async def run(self) -> None:
        await self._reflector.run()

    async def close(self) -> None:
        await self._reflector.close()

    async def _handle(self, event: WatchEvent) -> None:
        if event.type is EventType.SYNCED:
            if self._name not in event.objects and not self._missing_logged:
                self._missing_logged = True
                log.warning(
                    "ConfigMap %s/%s not found; keeping the active configuration", self._namespace, self._name
                )
            return
        if event.name != self._name:
            return
        if event.type is EventType.DELETED:
            log.warning(
                "ConfigMap %s/%s deleted; keeping the active configuration", self._namespace, self._name
            )
            self._seen = None
            return
        self._missing_logged = False
        meta = event.obj.get("metadata") or {}
        version = (str(meta.get("uid")), str(meta.get("resourceVersion")))
        if version == self._seen:
            return
        self._seen = version
        text = (event.obj.get("data") or {}).get(self._key)
        if not isinstance(text, str):
            message = f"ConfigMap {self._namespace}/{self._name} has no key {self._key!r}"
            log.warning("%s; keeping the active configuration", message)
            await self._recorder.post(event.obj, type_="Warning", reason=REJECTED_REASON, message=message)
            return
        outcome = await self._sink.apply_text_off_loop(text, source=self._source)
        if outcome.ok:
            level = logging.DEBUG if outcome.result == "unchanged" else logging.INFO
            log.log(level, "config %s: %s", self._source, outcome.result)
        else:
            log.error("config %s rejected, keeping the active config: %s", self._source, outcome.message)
            await self._recorder.post(
                event.obj, type_="Warning", reason=REJECTED_REASON, message=outcome.message
            )
