"""The scoring document from a watched ConfigMap: live swap, rejection with the old kept, and an Event."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes import client as k8s_client

from picker.config import default_config
from picker.kube import KubeSources
from picker.state.config_store import ConfigStore
from picker.state.datastore import Datastore
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import config_map, pod
from tests.integration.kube.conftest import FAST_WATCH

pytestmark = pytest.mark.integration

NS = "inference"
CM = "epp-config"


def document(queue_weight: int, kv_weight: int) -> str:
    return f"""\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: max-score-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: {queue_weight}
  - pluginRef: kv-cache-utilization-scorer
    weight: {kv_weight}
  - pluginRef: max-score-picker
"""


def weights(store: ConfigStore) -> dict[str, float | None]:
    (profile,) = store.active.config.endpoint_picker.scheduling_profiles
    return {ref.plugin_ref: ref.weight for ref in profile.plugins}


def rejections(emulator: KubeApiEmulator) -> list[dict[str, Any]]:
    return [e for e in emulator.list_objects("v1", "Event", NS) if e.get("reason") == "ConfigRejected"]


@pytest.fixture
async def store(
    emulator: KubeApiEmulator, api: k8s_client.ApiClient, eventually: Any
) -> AsyncIterator[ConfigStore]:
    emulator.create(config_map(CM, NS, data={"config.yaml": document(2, 1)}))
    emulator.create(pod("p1", NS, labels={"app": "q"}))
    config_store = ConfigStore(default_config(), source="built-in")
    sources = KubeSources(
        api,
        Datastore(),
        config_store,
        namespace=NS,
        endpoint_selector="app=q",
        target_ports=(8000,),
        configmap=CM,
        identity="epp-0",
        watch=FAST_WATCH,
    )
    task = asyncio.create_task(sources.run())
    await eventually(lambda: config_store.active.source == f"configmap/{NS}/{CM}")
    yield config_store
    await sources.close()
    await asyncio.wait_for(task, 5)


async def test_an_edit_swaps_the_config_live(emulator, store, eventually):
    assert weights(store)["queue-scorer"] == 2
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {"config.yaml": document(1, 5)}})
    await eventually(lambda: weights(store)["kv-cache-utilization-scorer"] == 5)
    assert store.last_result is not None
    assert store.last_result.result == "applied"
    assert rejections(emulator) == []


async def test_a_document_is_parsed_off_the_event_loop(emulator, store, eventually, monkeypatch):
    """A ConfigMap may hold 1 MiB of YAML: parsing it on the loop once stalled routing and health checks
    for seconds, so the parse runs in a worker thread and only the swap on the loop."""
    loop_thread = threading.get_ident()
    parsed_on: list[int] = []
    load = store.load

    def recording_load(text: str, *, source: str) -> object:
        parsed_on.append(threading.get_ident())
        return load(text, source=source)

    monkeypatch.setattr(store, "load", recording_load)
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {"config.yaml": document(4, 1)}})
    await eventually(lambda: weights(store)["queue-scorer"] == 4)
    assert parsed_on, "the document was not parsed through ConfigStore.load"
    assert loop_thread not in parsed_on


async def test_a_bad_document_is_rejected_the_old_kept_and_an_event_posted(
    emulator, store, eventually, caplog
):
    caplog.set_level(logging.INFO, logger="picker.kube.configmap")
    good = store.active
    emulator.patch(
        "v1", "ConfigMap", NS, CM, {"data": {"config.yaml": document(1, 1) + "  - pluginRef: nope\n"}}
    )
    await eventually(lambda: len(rejections(emulator)) == 1)
    assert store.active is good
    assert weights(store)["queue-scorer"] == 2
    assert store.last_result is not None
    assert not store.last_result.ok
    (event,) = rejections(emulator)
    cm = emulator.get("v1", "ConfigMap", NS, CM)
    assert cm is not None
    assert event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": CM,
        "namespace": NS,
        "uid": cm["metadata"]["uid"],
        "resourceVersion": cm["metadata"]["resourceVersion"],
    }
    assert "nope" in event["message"]
    assert event["message"] == store.last_result.message[:1024]
    assert event["reportingComponent"] == "picker"
    assert event["reportingInstance"] == "epp-0"
    assert sum("rejected" in m for m in caplog.messages) == 1

    # a relist replays the same version: no second Event
    emulator.compact()
    emulator.expire_watches()
    await eventually(
        lambda: emulator.count("list", "configmaps") >= 2 and emulator.open_watches("configmaps") == 1
    )
    assert len(rejections(emulator)) == 1

    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {"config.yaml": document(3, 1)}})
    await eventually(lambda: weights(store)["queue-scorer"] == 3, what="a fixed document applies again")


async def test_missing_key_or_deleted_configmap_keeps_the_active_config(emulator, store, eventually):
    good = store.active
    emulator.patch("v1", "ConfigMap", NS, CM, {"data": {"config.yaml": None, "other.yaml": "x: 1"}})
    await eventually(lambda: len(rejections(emulator)) == 1)
    assert "has no key 'config.yaml'" in rejections(emulator)[0]["message"]
    emulator.delete("v1", "ConfigMap", NS, CM)
    await eventually(lambda: emulator.open_watches("configmaps") == 1)
    assert store.active is good
