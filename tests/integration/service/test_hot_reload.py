"""Hot reload of ``--config-file``: a valid change swaps the scoring live, an invalid one is rejected,
counted and reported by ``/config`` while the last good config keeps serving.

The file is laid out as a Kubernetes ConfigMap volume: ``config.yaml`` → ``..data/config.yaml`` with
``..data`` a symlink swapped atomically to a new timestamped directory on every update.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from picker.testing.envoy import HttpRequest
from picker.testing.poll import eventually
from tests.integration.service.conftest import (
    P0,
    P1,
    Pod,
    ServiceHarness,
    StartService,
    completion,
    config_text,
    req_llm,
    sample,
)

pytestmark = pytest.mark.integration

QUEUE_HEAVY = config_text(weights={"queue-scorer": 5, "kv-cache-utilization-scorer": 1})
KV_HEAVY = config_text(weights={"queue-scorer": 1, "kv-cache-utilization-scorer": 5}).replace(
    "{name: my-model, priority: 2}", "{name: my-model, priority: 7}"
)
INVALID = config_text(weights={"queue-scorer": 1, "no-such-scorer": 1})


class ConfigMapVolume:
    """A directory updated the way the kubelet updates a mounted ConfigMap."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    @property
    def path(self) -> Path:
        return self.root / "config.yaml"

    def publish(self, text: str) -> None:
        self.generation += 1
        data = self.root / f"..2026_01_01_00_00_{self.generation:02d}"
        data.mkdir()
        (data / "config.yaml").write_text(text, encoding="utf-8")
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(data.name)
        tmp.replace(self.root / "..data")  # atomic, as the kubelet swaps it
        if not self.path.is_symlink():
            self.path.symlink_to("..data/config.yaml")


async def _reload_count(svc: ServiceHarness, result: str) -> float | None:
    return sample(await svc.metrics(), "picker_config_reload_total", result=result)


async def test_config_file_reload_applies_a_valid_change_and_rejects_an_invalid_one(
    start_service: StartService, tmp_path: Path
) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.publish(QUEUE_HEAVY)
    svc = await start_service(pods=2, config=None, config_file=str(volume.path), config_poll_interval=0.05)
    await svc.set_metrics(Pod(0, 0.9), Pod(4, 0.0))  # P0: short queue, full KV; P1: the opposite

    first = await svc.exchange(req_llm("reload", "my-model", "my-model"))
    assert first.destination == P0
    before = await svc.get_json("/config")
    assert before["last_reload"] is None
    assert before["source"] == f"file:{volume.path}"

    volume.publish(KV_HEAVY)

    async def applied() -> bool:
        return await _reload_count(svc, "applied") == 1

    await eventually(applied, what="the new config to be applied")
    after = await svc.get_json("/config")
    assert after["digest"] != before["digest"]
    assert after["last_reload"]["result"] == "applied"
    assert after["last_reload"]["ok"] is True
    weights = {
        p["pluginRef"]: p.get("weight")
        for p in after["config"]["endpointPickerConfig"]["schedulingProfiles"][0]["plugins"]
    }
    assert weights["kv-cache-utilization-scorer"] == 5
    second = await svc.exchange(req_llm("reload", "my-model", "my-model"))
    assert second.destination == P1
    # the objectives of the new document apply too
    text = await svc.metrics()
    labels = {"model_name": "my-model", "target_model_name": "my-model"}
    assert sample(text, "inference_objective_request_total", **labels, priority="2") == 1
    assert sample(text, "inference_objective_request_total", **labels, priority="7") == 1

    volume.publish(INVALID)

    async def rejected() -> bool:
        return await _reload_count(svc, "rejected") == 1

    await eventually(rejected, what="the invalid config to be rejected")
    current = await svc.get_json("/config")
    assert current["digest"] == after["digest"]  # the last good config is still the active one
    assert current["last_reload"]["result"] == "rejected"
    assert current["last_reload"]["ok"] is False
    assert "no-such-scorer" in current["last_reload"]["message"]
    assert await _reload_count(svc, "applied") == 1
    third = await svc.exchange(req_llm("reload", "my-model", "my-model"))
    assert third.destination == P1


async def test_a_reloaded_body_cap_is_enforced(start_service: StartService, tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.publish(config_text())
    svc = await start_service(pods=1, config=None, config_file=str(volume.path), config_poll_interval=0.05)
    volume.publish(config_text(picker_extra="request: {maxBodyBytes: 1Ki}\n"))

    async def applied() -> bool:
        return await _reload_count(svc, "applied") == 1

    await eventually(applied, what="the new config to be applied")
    shown = await svc.get_json("/config")
    assert shown["config"]["pickerConfig"]["request"]["maxBodyBytes"] == 1024
    result = await svc.exchange(HttpRequest(body=completion("x" * 4096)))
    assert result.immediate is not None
    assert result.immediate.status == 413


# ------------------------------------------------------------------------------------------ hostile documents

HUGE_INTEGER = (
    b"apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\nobjectives:\n- {name: x, priority: %s}\n"
    % (b"9" * 5000)
)
HOSTILE_DOCUMENTS = {
    "deep-flow-sequence": ("[" * 100_000).encode(),
    "deep-block-mapping": "".join(" " * i + "a:\n" for i in range(3000)).encode(),
    "huge-integer": HUGE_INTEGER,
    "priority-1e23": b"apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\nobjectives:\n"
    b"- {name: x, priority: 100000000000000000000000}\n",
    "priority-int32": b"apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\nobjectives:\n"
    b"- {name: x, priority: 4294967296}\n",
    "empty": b"",
    "blank": b"   \n\n",
    "not-utf8": b"apiVersion: \xff\xfe\n",
    "over-1MiB": b"# " + b"x" * (1 << 20) + b"\n",
}


@pytest.mark.parametrize("content", HOSTILE_DOCUMENTS.values(), ids=HOSTILE_DOCUMENTS.keys())
async def test_a_hostile_document_is_rejected_counted_and_shown(
    start_service: StartService, tmp_path: Path, content: bytes
) -> None:
    volume = ConfigMapVolume(tmp_path)
    volume.publish(config_text())
    svc = await start_service(pods=1, config=None, config_file=str(volume.path), config_poll_interval=0.05)
    before = await svc.get_json("/config")
    volume.generation += 1
    data = tmp_path / f"..2026_01_01_00_00_{volume.generation:02d}"
    data.mkdir()
    (data / "config.yaml").write_bytes(content)
    tmp = tmp_path / "..data_tmp"
    tmp.symlink_to(data.name)
    tmp.replace(tmp_path / "..data")

    async def rejected() -> bool:
        return await _reload_count(svc, "rejected") == 1

    await eventually(rejected, what="the document to be rejected")
    shown = await svc.get_json("/config")  # still answers (a 1e23 priority once made it 500)
    assert shown["digest"] == before["digest"]
    assert shown["last_reload"]["result"] == "rejected"
    assert "<unicode string>" not in shown["last_reload"]["message"]
    assert await _reload_count(svc, "applied") == 0
    assert (await svc.exchange(HttpRequest(body=completion("still routing")))).destination == P0
