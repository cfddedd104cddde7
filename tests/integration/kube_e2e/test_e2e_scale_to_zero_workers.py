"""Scale to zero under ``picker serve --workers 2``: the request is held in a worker, the scaler runs in the
supervisor. The worker tells the supervisor it holds a request (so the scaler ticks at once and counts it
as a need of one replica), the supervisor's scaler scales the Deployment from zero through the API
emulator, and the worker routes the request once the replica is ready. A child process, as in production,
talking to the emulator and the fake pod in this process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from pathlib import Path

import pytest

from picker.service import Ports
from picker.testing.gateway import MiniGateway
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import deployment
from picker.testing.kube_workloads import WorkloadController
from tests.integration.kube_e2e.conftest import (
    NS,
    POOL,
    SEL,
    Epp,
    FakePods,
    completion,
    create_pool,
    eventually,
)
from tests.integration.kube_e2e.test_e2e_scaler import scale_to_zero_doc

pytestmark = pytest.mark.integration

_PORTS = re.compile(r"ext_proc :(\d+) \(\w+\), health :(\d+), metrics :(\d+), admin [^ ]+:(\d+)")


async def test_a_worker_holds_the_request_while_the_supervisors_scaler_brings_a_replica_up(
    emulator: KubeApiEmulator, fake_pods: FakePods, kubeconfig: Path, tmp_path: Path
) -> None:
    pod = await fake_pods.add("slot-0")
    controller = WorkloadController(emulator, ips=[pod.ip], warmup_s=2.0)
    log = tmp_path / "epp.log"
    proc = None
    epp = None
    try:
        create_pool(emulator, fake_pods)
        emulator.create(deployment("vllm", NS, labels=SEL, replicas=0))
        config = tmp_path / "config.yaml"
        config.write_text(scale_to_zero_doc())
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "picker",
                "serve",
                f"--pool-name={POOL}",
                f"--pool-namespace={NS}",
                f"--kubeconfig={kubeconfig}",
                f"--config-file={config}",
                "--workers=2",
                "--grpc-port=0",
                "--grpc-health-port=0",
                "--metrics-port=0",
                "--admin-port=0",
                "--host=127.0.0.1",
                "--secure-serving=false",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )

        def bound() -> Ports | None:
            assert proc is not None
            if proc.returncode is not None:
                raise AssertionError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            m = _PORTS.search(log.read_text(errors="replace"))
            return Ports(*(int(g) for g in m.groups())) if m else None

        ports = await eventually(bound, within=60, what="the EPP listening")
        epp = Epp(ports)
        await epp.client.connect()

        async def ready() -> bool:
            return await epp.admin.readyz() == 200

        await eventually(ready, within=60, what="every worker serving")

        gateway = MiniGateway(epp.client, timeout_s=120, message_timeout_s=0.5, max_message_timeout_s=120.0)
        result = await asyncio.wait_for(gateway.send("/v1/completions", completion(max_tokens=4)), 90)
        await gateway.close()
        assert result.status == 200, (result, log.read_text()[-3000:])
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
            await epp.close()
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 10)
