"""Scale to zero under ``picker serve --workers 2``: the request is held in a worker, the scaler runs in the
supervisor. The worker tells the supervisor it holds a request (so the scaler ticks at once and counts it
as a need of one replica), the supervisor's scaler scales the Deployment from zero through the API
emulator, and the worker routes the request once the replica is ready. A child process, as in production,
talking to the emulator and the fake pod in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from picker.testing.gateway import MiniGateway
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import deployment
from picker.testing.kube_workloads import WorkloadController
from picker.testing.poll import eventually
from tests.integration.conftest import Spawn
from tests.integration.kube_e2e.conftest import (
    NS,
    SEL,
    FakePods,
    completion,
    create_pool,
    launch_epp,
    serve_flags,
)
from tests.integration.kube_e2e.test_e2e_scaler import scale_to_zero_doc

pytestmark = pytest.mark.integration


async def test_a_worker_holds_the_request_while_the_supervisors_scaler_brings_a_replica_up(
    emulator: KubeApiEmulator, fake_pods: FakePods, kubeconfig: Path, tmp_path: Path, spawn: Spawn
) -> None:
    pod = await fake_pods.add("slot-0")
    controller = WorkloadController(emulator, ips=[pod.ip], warmup_s=2.0)
    epp = None
    try:
        create_pool(emulator, fake_pods)
        emulator.create(deployment("vllm", NS, labels=SEL, replicas=0))
        config = tmp_path / "config.yaml"
        config.write_text(scale_to_zero_doc())
        args = [*serve_flags(kubeconfig), f"--config-file={config}", "--workers=2"]
        epp = served = await launch_epp(spawn, "the EPP", args)

        async def ready() -> bool:
            return await served.admin.readyz() == 200

        await eventually(ready, within=60, what="every worker serving")

        gateway = MiniGateway(epp.client, timeout_s=120, message_timeout_s=0.5, max_message_timeout_s=120.0)
        result = await asyncio.wait_for(gateway.send("/v1/completions", completion(max_tokens=4)), 90)
        await gateway.close()
        assert result.status == 200, (result, epp.output[-3000:])
        assert result.endpoint == pod.address
        assert result.timeout_overrides == [65.0]
        scaled = emulator.get("apps/v1", "Deployment", NS, "vllm")
        assert scaled is not None
        assert scaled["spec"]["replicas"] == 1
        doc = await epp.admin.json("/debug/scaler")
        ups = [(d["action"], d["reason"]) for d in doc["decisions"] if d["action"] == "scale-up"]
        assert ups == [("scale-up", "scale-from-zero")]
    finally:
        controller.close()
        if epp is not None:
            await epp.stop()
