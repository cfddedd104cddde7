"""Two ``picker serve`` processes with ``--ha-enable-leader-election`` against one API server.

The replicas are real child processes (what two EPP pods are), configured only by flags, with short
Lease timings from the hidden ``--leader-*`` flags. They are judged as a Service and a kubelet judge
them: gRPC health per service name, ``/readyz``, where ext_proc requests go, and the Lease object.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import inference_pool
from picker.testing.poll import eventually
from tests.integration.conftest import Spawn
from tests.integration.kube_e2e.conftest import (
    NOT_SERVING,
    NS,
    POOL,
    SEL,
    SERVICE_UNKNOWN,
    SERVING,
    EppProcess,
    FakePods,
    launch_epp,
    serve_flags,
    wait_routing_to,
)

pytestmark = pytest.mark.integration

#: the reference EPP's lease name for pool inference/qwen (replicas of either implementation exclude
#: each other)
LEASE = "epp-inference-qwen.gateway-api-inference-extension.sigs.k8s.io"
LEASE_API = "coordination.k8s.io/v1"
#: a standby takes over ~4 s after the leader's last renewal; the leader renews every 0.5 s and steps
#: down after 3 s without a renewal, long before anyone else may take over
LEASE_FLAGS = ("--leader-lease-duration=4s", "--leader-renew-deadline=3s", "--leader-retry-period=500ms")
#: the pods serve on 8000 and expose metrics on another port (as Triton does): only the metrics port
#: has a server behind it here, so successful scrapes prove --model-server-metrics-port took effect
SERVING_PORT = 8000

_ACQUIRED = re.compile(r"leader election: (\S+) acquired lease")


def identity(epp: EppProcess) -> str | None:
    """The Lease holder identity this replica logged when it acquired the lease."""
    found = _ACQUIRED.findall(epp.output)
    return found[-1] if found else None


@pytest.fixture
async def launch(spawn: Spawn, kubeconfig: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[EppProcess] = []

    async def start(name: str, *extra: str) -> EppProcess:
        args = [*serve_flags(kubeconfig), "--ha-enable-leader-election", *LEASE_FLAGS, *extra]
        epp = await launch_epp(spawn, name, args)
        started.append(epp)
        return epp

    yield start
    for epp in started:
        await epp.stop(signal.SIGKILL, within=10)


class Readiness:
    """Polls every replica's readiness and remembers the most replicas ever SERVING in one round."""

    def __init__(self, replicas: list[EppProcess]) -> None:
        self.replicas = replicas
        self.most_serving = 0

    async def serving(self) -> list[EppProcess]:
        now = [r for r in self.replicas if await r.readiness() == SERVING]
        self.most_serving = max(self.most_serving, len(now))
        return now

    async def one_leader(self) -> EppProcess | None:
        now = await self.serving()
        return now[0] if len(now) == 1 else None


def lease(emulator: KubeApiEmulator) -> dict[str, Any]:
    obj = emulator.get(LEASE_API, "Lease", NS, LEASE)
    assert obj is not None, "no Lease"
    return obj


async def test_two_replicas_elect_one_leader_and_the_standby_takes_over_when_it_stops(
    emulator: KubeApiEmulator, fake_pods: FakePods, launch: Callable[..., Any]
) -> None:
    pods = [await fake_pods.add(f"vllm-{i}") for i in range(2)]
    emulator.create(inference_pool(POOL, NS, selector=SEL, ports=(SERVING_PORT,)))
    for p in pods:
        emulator.create(p.manifest())
    endpoints = {f"{p.ip}:{SERVING_PORT}" for p in pods}
    metrics_flag = f"--model-server-metrics-port={fake_pods.port}"
    replicas = [await launch("epp-a", metrics_flag), await launch("epp-b", metrics_flag)]
    watch = Readiness(replicas)

    # exactly one replica becomes ready: the one holding the Lease
    leader = await eventually(watch.one_leader, within=30, what="one leader")
    standby = next(r for r in replicas if r is not leader)
    assert lease(emulator)["spec"]["holderIdentity"] == identity(leader)
    assert lease(emulator)["spec"]["leaseDurationSeconds"] == 4, "--leader-lease-duration applied"
    assert identity(standby) is None, "the standby never acquired the lease"

    # ... and stays the only one through several renewals
    renewed = int(lease(emulator)["metadata"]["resourceVersion"])

    async def renewed_three_times() -> bool:
        assert await watch.serving() == [leader]
        return int(lease(emulator)["metadata"]["resourceVersion"]) >= renewed + 3

    await eventually(renewed_three_times, what="lease renewals")

    # what probes and the gateway see on each replica
    for r in replicas:
        assert await r.health("liveness") == SERVING, r.name
        assert await r.health("inference-extension") == SERVICE_UNKNOWN, r.name
    assert await standby.health("") == NOT_SERVING
    assert await standby.health("envoy.service.ext_proc.v3.ExternalProcessor") == NOT_SERVING
    assert (await leader.admin.readyz(), await standby.admin.readyz()) == (200, 503)
    # every pod gets requests (none refused, none elsewhere); waited for, not expected of a burst: a pod
    # whose last scrape is older than the saturation detector's 200 ms counts as saturated, and on a
    # loaded machine one pod's scrape can lag through a whole burst, which then goes to the other
    await wait_routing_to(leader, endpoints, within=30)
    assert set(await standby.destinations(3)) == {"<503>"}, "a standby never loads the pool"

    async def scraped(epp: EppProcess) -> bool:
        rows = await epp.admin.endpoints()
        return set(rows) == endpoints and all(r["scrapes_ok"] > 0 for r in rows.values())

    await eventually(lambda: scraped(leader), what="leader scrapes the pods on the metrics port")

    # the leader crashes (no release): the standby waits out the lease, takes over, loads the pool
    transitions = int(lease(emulator)["spec"].get("leaseTransitions") or 0)
    leader.signal(signal.SIGKILL)
    await leader.exited()
    await eventually(lambda: _is(watch.one_leader(), standby), within=30, what="standby took over")
    assert watch.most_serving == 1, "two replicas were ready at the same time"
    spec = lease(emulator)["spec"]
    assert spec["holderIdentity"] == identity(standby)
    assert spec["leaseTransitions"] == transitions + 1
    assert await standby.admin.readyz() == 200
    await eventually(lambda: scraped(standby), what="new leader scrapes the pods")
    await wait_routing_to(standby, endpoints, within=30)

    # a graceful stop releases the lease for the next replica and exits cleanly
    standby.signal(signal.SIGTERM)
    assert await standby.exited() == 0, standby.output[-3000:]
    assert lease(emulator)["spec"]["holderIdentity"] in {"", None}


async def _is(value: Any, expected: object) -> bool:
    return await value is expected


def test_kubernetes_api_classes_load_with_the_package_not_on_the_first_watch() -> None:
    # ``kubernetes.client`` imports API classes lazily; the first pod watch of a new leader must not pay
    # that import (about a second on a busy node) on the event loop, in the middle of a takeover
    code = "import sys, picker.kube; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, text=True, timeout=60
    ).stdout.split()
    for module in ("core_v1_api", "custom_objects_api", "coordination_v1_api"):
        assert f"kubernetes.client.api.{module}" in loaded
