"""Reflector: list → watch(resourceVersion) → bookmarks → 410 relist → backoff, with the real client."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.kube import Backoff, KubeUnavailableError, Reflector, WatchEvent
from picker.kube.reflector import PODS, ListWatch
from picker.testing.kube_objects import config_map, pod

pytestmark = pytest.mark.integration

NS = "inference"
FAST: dict[str, Any] = {"watch_timeout_s": 3.0}

LABELS = {"app": "llm"}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.synced = 0

    async def __call__(self, event: WatchEvent) -> None:
        self.events.append((event.type.value, event.name))
        if event.type.value == "SYNCED":
            self.synced += 1


def _reflector(api: k8s_client.ApiClient, handler: Any, **kw: Any) -> Reflector:
    source = ListWatch(api, PODS, NS, label_selector="app=llm")
    kw.setdefault("backoff", Backoff(initial=0.05, cap=0.3))
    return Reflector(source, handler, **{**FAST, **kw})


async def _start(r: Reflector) -> asyncio.Task[None]:
    return asyncio.create_task(r.run())


async def _stop(r: Reflector, task: asyncio.Task[None]) -> None:
    await r.close()
    await asyncio.wait_for(task, 5)


async def test_list_then_watch_from_the_list_version_with_bookmarks(emulator, api, eventually):
    emulator.create(pod("a", NS, labels=LABELS))
    emulator.create(pod("other", NS, labels={"app": "else"}))
    listed_at = str(emulator.resource_version)
    rec = Recorder()
    r = _reflector(api, rec)
    task = await _start(r)
    await eventually(lambda: rec.synced == 1 and emulator.open_watches("pods") == 1)
    assert rec.events == [("ADDED", "a"), ("SYNCED", "")]
    list_req, watch_req = [q for q in emulator.requests if q.plural == "pods"][:2]
    assert list_req.verb == "list"
    assert list_req.query["labelSelector"] == "app=llm"
    assert watch_req.verb == "watch"
    assert watch_req.query["resourceVersion"] == listed_at
    assert watch_req.query["allowWatchBookmarks"] == "true"
    assert int(watch_req.query["timeoutSeconds"]) >= 1
    assert watch_req.query["labelSelector"] == "app=llm"

    emulator.create(pod("b", NS, labels=LABELS))
    await eventually(lambda: ("ADDED", "b") in rec.events)
    # writes elsewhere advance the global revision; only a bookmark can tell the reflector about it
    emulator.create(config_map("unrelated", NS, data={"k": "v"}))
    target = str(emulator.resource_version)
    await eventually(lambda: r.resource_version == target, what="bookmark advanced the resourceVersion")

    # a dropped connection resumes from the bookmarked version, without a relist
    await emulator.restart()
    await eventually(lambda: emulator.open_watches("pods") == 1)
    resumed = [q for q in emulator.requests if q.verb == "watch" and q.plural == "pods"][-1]
    assert resumed.query["resourceVersion"] == target
    assert r.lists == 1
    await _stop(r, task)


async def test_410_after_a_gap_relists_and_reports_what_vanished(emulator, api, eventually):
    emulator.create(pod("a", NS, labels=LABELS))
    emulator.create(pod("b", NS, labels=LABELS))
    rec = Recorder()
    r = _reflector(api, rec)
    task = await _start(r)
    await eventually(lambda: rec.synced == 1)
    await emulator.stop()
    emulator.delete("v1", "Pod", NS, "b")
    emulator.create(pod("c", NS, labels=LABELS))
    emulator.patch("v1", "Pod", NS, "a", {"metadata": {"annotations": {"x": "1"}}})
    emulator.compact()  # the history of the gap is gone: resuming must fail with 410
    before = len(emulator.requests)
    await emulator.start()
    await eventually(lambda: rec.synced == 2, what="relist after 410")
    after = rec.events[rec.events.index(("SYNCED", "")) + 1 :]
    assert sorted(after[:-1]) == [("ADDED", "c"), ("DELETED", "b"), ("MODIFIED", "a")]
    assert after[-1] == ("SYNCED", "")
    assert set(r.objects()) == {"a", "c"}
    resume, relist = emulator.requests[before : before + 2]
    assert resume.verb == "watch"
    assert int(resume.query["resourceVersion"]) < emulator.resource_version
    assert relist.verb == "list"
    await _stop(r, task)


async def test_expired_watch_relists_without_spurious_events(emulator, api, eventually):
    emulator.create(pod("a", NS, labels=LABELS))
    rec = Recorder()
    r = _reflector(api, rec)
    task = await _start(r)
    await eventually(lambda: rec.synced == 1 and emulator.open_watches("pods") == 1)
    assert emulator.expire_watches() == 1  # ERROR event, code 410, on the open stream
    await eventually(lambda: rec.synced == 2)
    assert rec.events == [("ADDED", "a"), ("SYNCED", ""), ("SYNCED", "")]
    await _stop(r, task)


async def test_http_410_on_the_watch_request_relists(emulator, api, eventually):
    rec = Recorder()
    r = _reflector(api, rec)
    task = await _start(r)
    await eventually(lambda: rec.synced == 1 and emulator.open_watches("pods") == 1)
    emulator.fail("watch", plural="pods", status=410, message="too old resource version")
    await emulator.restart()
    await eventually(lambda: rec.synced == 2)
    assert r.lists == 2
    await _stop(r, task)


async def test_errors_back_off_and_log_one_line_per_transition(emulator, api, eventually, caplog):
    caplog.set_level(logging.INFO, logger="picker.kube.reflector")
    emulator.fail("list", plural="pods", status=503, times=3)
    emulator.fail("watch", plural="pods", status=500, times=2)
    rec = Recorder()
    r = _reflector(api, rec, backoff=Backoff(initial=0.02, cap=0.05))
    task = await _start(r)
    await eventually(lambda: sum("recovered" in m for m in caplog.messages) == 2)
    assert rec.synced == 1
    assert emulator.count("list", "pods") == 4
    assert emulator.count("watch", "pods") == 3
    failing = [m for m in caplog.messages if "failing" in m]
    recovered = [m for m in caplog.messages if "recovered" in m]
    # list failures, then (after a good list) watch failures: two streaks, two lines each way
    assert len(failing) == 2, caplog.messages
    assert len(recovered) == 2, caplog.messages
    await _stop(r, task)


async def test_retry_after_reaches_the_error(emulator, api):
    """429 + Retry-After arrive as a transient error carrying the delay the backoff must honour."""
    emulator.fail("list", plural="pods", status=429, retry_after=7)
    source = ListWatch(api, PODS, NS)
    with pytest.raises(KubeUnavailableError) as info:
        await asyncio.to_thread(source.list)
    assert info.value.status == 429
    assert info.value.retry_after == 7.0
    assert info.value.transient


async def test_silent_connection_is_dropped_by_the_inactivity_timeout(emulator, api, eventually):
    rec = Recorder()
    r = _reflector(api, rec, watch_timeout_s=60.0, inactivity_timeout_s=0.8)
    task = await _start(r)
    await eventually(lambda: rec.synced == 1 and emulator.open_watches("pods") == 1)
    assert emulator.freeze_watches() == 1  # open but silent, like a half-open TCP connection
    emulator.create(pod("late", NS, labels=LABELS))
    await eventually(lambda: ("ADDED", "late") in rec.events, what="event replayed after the read timeout")
    assert r.lists == 1  # resumed from its resourceVersion, no relist
    await _stop(r, task)


async def test_close_unblocks_the_watch_thread_at_once(emulator, api, eventually):
    rec = Recorder()
    r = _reflector(api, rec, watch_timeout_s=60.0)
    task = await _start(r)
    await eventually(lambda: emulator.open_watches("pods") == 1)
    assert any(t.name.startswith("kube-watch-") for t in threading.enumerate())
    await r.close()
    await asyncio.wait_for(task, 5)
    await eventually(lambda: not any(t.name.startswith("kube-watch-") for t in threading.enumerate()))
    await eventually(lambda: emulator.open_watches("pods") == 0)


async def test_a_failing_handler_is_not_swallowed(emulator, api, eventually):
    emulator.create(pod("a", NS, labels=LABELS))

    async def handler(event: WatchEvent) -> None:
        raise RuntimeError(f"bug while handling {event.name}")

    r = _reflector(api, handler)
    with pytest.raises(RuntimeError, match="bug while handling a"):
        await asyncio.wait_for(r.run(), 5)
