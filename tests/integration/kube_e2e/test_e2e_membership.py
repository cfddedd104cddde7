"""Pool membership end to end: InferencePool + Pods in the API server → where Envoy is told to send.

Each test runs the whole service against the API-server emulator and judges it only by what a gateway
and a kubelet see: ext_proc destinations, gRPC health, ``/readyz``, and the model servers' own request
counters.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from picker.testing.gateway import MiniGateway
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import inference_pool, ready_patch
from picker.testing.poll import eventually
from tests.integration.kube_e2e.conftest import (
    NOT_SERVING,
    NS,
    POOL,
    POOL_API,
    SERVING,
    FakePods,
    InProcessEpp,
    StartEpp,
    completion,
    create_pool,
    wait_routing_to,
    wait_serving,
)

pytestmark = pytest.mark.integration


async def test_ready_pods_of_the_pool_receive_the_requests(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    ready = [await fake_pods.add(f"vllm-{i}") for i in range(3)]
    starting = await fake_pods.add("vllm-starting")
    foreign = await fake_pods.add("other-app")
    create_pool(emulator, fake_pods)
    for p in ready:
        emulator.create(p.manifest())
    emulator.create(starting.manifest(ready=False))
    emulator.create(foreign.manifest(labels={"app": "something-else"}))

    epp = await start_epp()
    await wait_serving(epp)
    assert await epp.health("") == SERVING
    assert await epp.health("envoy.service.ext_proc.v3.ExternalProcessor") == SERVING

    # a gateway asks the EPP, then really forwards: the model servers count what reached them
    gateway = MiniGateway(epp.client, timeout_s=10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    try:
        while any(p.server.served["completions"] == 0 for p in ready):
            result = await gateway.send("/v1/completions", completion(prompt=f"q{loop.time()}"))
            assert result.status == 200, result
            assert result.endpoint in {p.address for p in ready}
            assert loop.time() < deadline, {p.name: p.server.served["completions"] for p in ready}
    finally:
        await gateway.close()
    assert starting.server.served["completions"] == 0
    assert foreign.server.served["completions"] == 0

    # the EPP found the pods' model servers at podIP:port and scrapes them there
    async def all_scraped() -> bool:
        rows = await epp.admin.endpoints()
        return set(rows) == {p.address for p in ready} and all(r["scrapes_ok"] > 0 for r in rows.values())

    await eventually(all_scraped, what="every ready pod scraped")
    assert starting.server.served["metrics"] == 0
    assert foreign.server.served["metrics"] == 0


async def test_a_pod_turning_unready_or_deleted_stops_receiving_requests_on_its_event(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    a, b, c = [await fake_pods.add(n) for n in ("vllm-a", "vllm-b", "vllm-c")]
    create_pool(emulator, fake_pods)
    for p in (a, b, c):
        emulator.create(p.manifest())
    epp = await start_epp()
    await wait_serving(epp)
    await wait_routing_to(epp, {a.address, b.address, c.address})
    lists = emulator.count("list", "pods")

    # Ready=False: the one MODIFIED event removes it (no relist, no resync: the list count stays)
    emulator.patch("v1", "Pod", NS, a.name, ready_patch(False))
    await eventually(lambda: a.address not in epp.addresses(), what="unready pod removed")
    assert set(await epp.destinations(20)) <= {b.address, c.address}

    # deleting a pod with a finalizer first marks it terminating: that MODIFIED event is enough
    emulator.patch("v1", "Pod", NS, b.name, {"metadata": {"finalizers": ["example.com/drain"]}})
    emulator.delete("v1", "Pod", NS, b.name)
    terminating = emulator.get("v1", "Pod", NS, b.name)
    assert terminating is not None
    assert terminating["metadata"]["deletionTimestamp"]
    await eventually(lambda: b.address not in epp.addresses(), what="terminating pod removed")
    assert set(await epp.destinations(20)) == {c.address}
    emulator.patch("v1", "Pod", NS, b.name, {"metadata": {"finalizers": None}})  # now really gone

    # a plain delete (DELETED event) of the last pod leaves nothing to route to
    emulator.delete("v1", "Pod", NS, c.name)
    await eventually(lambda: not epp.addresses(), what="deleted pod removed")
    refused = await epp.send()
    assert refused.immediate is not None
    assert refused.immediate.status == 503

    # and the watch keeps going: the first pod becomes ready again and gets traffic again
    emulator.patch("v1", "Pod", NS, a.name, ready_patch(True))
    await eventually(lambda: epp.addresses() == {a.address}, what="pod ready again")
    assert set(await epp.destinations(5)) == {a.address}
    assert emulator.count("list", "pods") == lists, "membership followed watch events, not relists"


class Traffic:
    """Requests sent back to back while the test disturbs the API server; every outcome is kept."""

    def __init__(self, epp: InProcessEpp) -> None:
        self._epp = epp
        #: (destination, immediate-response status or None)
        self.results: list[tuple[str | None, int | None]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            r = await self._epp.send()
            self.results.append((r.destination, r.immediate.status if r.immediate else None))
            await asyncio.sleep(0.005)

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def test_watch_expiry_and_api_server_restarts_lose_no_endpoints(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    stay, leaves, *later = [await fake_pods.add(f"vllm-{i}") for i in range(5)]
    create_pool(emulator, fake_pods)
    for p in (stay, leaves):
        emulator.create(p.manifest())
    epp = await start_epp()
    await wait_serving(epp)
    await wait_routing_to(epp, {stay.address, leaves.address})

    # every membership the datastore ever publishes, with the phase it was published in
    phase = 1
    memberships: list[tuple[int, set[str]]] = []
    epp.service.datastore.add_listener(lambda: memberships.append((phase, epp.addresses())))
    async with Traffic(epp) as traffic:
        # 1. every open watch expires (410 Gone): the EPP relists and keeps what it had
        lists = emulator.count("list", "pods")
        assert emulator.expire_watches() >= 1
        emulator.create(later[0].manifest())
        await eventually(lambda: emulator.count("list", "pods") > lists, what="relist after 410")
        await eventually(lambda: later[0].address in epp.addresses(), what="pod added around the 410")

        # 2. the API server goes away; traffic goes on; what changed meanwhile arrives on reconnect,
        #    resumed from the last resourceVersion (the history is still there: no relist needed)
        lists = emulator.count("list", "pods")
        await emulator.stop()
        served_while_down = len(traffic.results)
        await eventually(lambda: len(traffic.results) > served_while_down + 5, what="routing with API down")
        emulator.create(later[1].manifest())
        await emulator.start()
        await eventually(lambda: later[1].address in epp.addresses(), what="pod added during the outage")
        assert emulator.count("list", "pods") == lists

        # 3. a restart that also lost the watch history (etcd compaction): resuming gets 410, the EPP
        #    relists and reconciles, including a deletion it never saw as an event
        phase = 3
        await emulator.stop()
        emulator.delete("v1", "Pod", NS, leaves.name)
        emulator.create(later[2].manifest())
        emulator.compact()
        await emulator.start()
        expected = {stay.address, later[0].address, later[1].address, later[2].address}
        await eventually(lambda: epp.addresses() == expected, what="reconciled after compaction")
        assert emulator.count("list", "pods") > lists

    assert traffic.results, "no traffic was sent"
    refused = [r for r in traffic.results if r[1] is not None]
    assert not refused, f"requests refused while the API server was disturbed: {refused[:5]}"
    # no published membership ever lacked a pod that was still in the cluster
    assert memberships, "membership never changed"
    for when, members in memberships:
        present = {stay.address, leaves.address} if when < 3 else {stay.address}
        assert present <= members, f"phase {when}: {sorted(present - members)} dropped"
    assert await epp.health("readiness") == SERVING
    assert set(await epp.destinations(30)) <= expected


async def test_pool_lifecycle_drives_readiness(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    p = await fake_pods.add("vllm-0")
    emulator.create(p.manifest())
    epp = await start_epp()

    # no InferencePool yet (and the EPP has looked): not ready, nothing to route to
    await eventually(lambda: emulator.count("watch", "inferencepools") > 0, what="pool watched")
    assert await epp.health("readiness") == NOT_SERVING
    assert await epp.health("inference-extension") == NOT_SERVING  # the chart's probe name
    assert await epp.admin.readyz() == 503

    create_pool(emulator, fake_pods)
    await wait_serving(epp)
    await wait_routing_to(epp, {p.address})

    # the pool is deleted: state cleared, NOT_SERVING on every name, /readyz 503, requests refused
    emulator.delete(POOL_API, "InferencePool", NS, POOL)

    async def unready() -> bool:
        return await epp.health("readiness") == NOT_SERVING and await epp.admin.readyz() == 503

    await eventually(unready, what="NOT_SERVING after the pool was deleted")
    for name in ("", "liveness", "envoy.service.ext_proc.v3.ExternalProcessor", "inference-extension"):
        assert await epp.health(name) == NOT_SERVING, name
    assert not epp.addresses()
    refused = await epp.send()
    assert refused.immediate is not None
    assert refused.immediate.status == 503

    # recreated with another selector: ready again, on the pods it selects now
    q = await fake_pods.add("vllm-v2")
    emulator.create(q.manifest(labels={"app": "vllm-qwen-v2"}))
    emulator.create(inference_pool(POOL, NS, selector={"app": "vllm-qwen-v2"}, ports=(fake_pods.port,)))
    await wait_serving(epp)
    await wait_routing_to(epp, {q.address})
    assert set(await epp.destinations(10)) == {q.address}, "the old selector's pod is not selected"


async def test_standalone_selector_mode_routes_to_ready_pods_under_its_own_pool_name(
    emulator: KubeApiEmulator, fake_pods: FakePods, start_epp: StartEpp
) -> None:
    # no InferencePool CRD at all: --endpoint-selector + --endpoint-target-ports
    a, b = [await fake_pods.add(n) for n in ("vllm-a", "vllm-b")]
    emulator.create(a.manifest())
    emulator.create(b.manifest(ready=False))
    epp = await start_epp(
        pool_name="",
        endpoint_selector="app=vllm-qwen",
        endpoint_target_ports=(fake_pods.port,),
        standalone_name="qwen-epp",
    )
    await wait_serving(epp)
    await wait_routing_to(epp, {a.address})
    emulator.patch("v1", "Pod", NS, b.name, ready_patch(True))
    await wait_routing_to(epp, {a.address, b.address})
    assert emulator.count("list", "inferencepools") == 0
    # the synthetic pool carries the configured name (the CLI derives it from POD_NAME)
    assert (await epp.admin.json("/debug/endpoints"))["pool"]["name"] == "qwen-epp"

    async def both_counted() -> bool:  # the gauge counts pods whose metrics are fresh
        return await epp.admin.metric("inference_pool_ready_pods", name="qwen-epp") == 2

    await eventually(both_counted, what="pool gauges labelled with the standalone pool name")
