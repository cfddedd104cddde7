"""One ``picker serve`` process serving three InferencePools (``--pool NAME=PORT,...``), as a cluster runs it,
alone and as ``--workers 2`` (every worker serving every pool's port, the supervisor holding each pool's
state), with ``--tracing`` to a real OTLP endpoint.

Each pool points its ``endpointPickerRef`` at its own port of the one EPP Service, which is the only pool
identity every gateway carries (``manifests/README.md``): the Envoy-like client dials each pool's port and
every request must land on a pod of that pool. The pools differ in what makes mistakes visible: alpha's
scoring document (a ConfigMap) weighs the queue, beta's (another ConfigMap) the KV cache, and each has one
pod that wins under each weighting, so a pool routed with the other's document or endpoints goes to the
wrong pod; gamma has no document of its own and takes the built-in default.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.testing.envoy import EnvoyClient, HttpRequest
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import POOL_V1, config_map, inference_pool
from picker.testing.net import free_port
from picker.testing.otlp import OtlpReceiver
from picker.testing.poll import eventually
from tests.integration.conftest import PICKER, Spawn
from tests.integration.kube_e2e.conftest import (
    NS,
    EppProcess,
    FakePod,
    FakePods,
    Gauges,
    completion,
    started_epp,
)

pytestmark = pytest.mark.integration

KEY = "config.yaml"


def weights(*, queue: int, kv: int, scorer: str = "kv-cache-utilization-scorer") -> str:
    """A scoring document whose winner between a short queue and a free KV cache is its weights'."""
    return f"""
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: queue-scorer}}
- {{type: {scorer}}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: queue-scorer, weight: {queue}}}
  - {{pluginRef: {scorer}, weight: {kv}}}
  - {{pluginRef: max-score-picker}}
"""


@dataclass
class Pool:
    """One InferencePool: its pods (model servers on their own loopback addresses) and its EPP port."""

    name: str
    port: int
    pods: FakePods
    members: dict[str, FakePod] = field(default_factory=dict)
    client: EnvoyClient | None = None
    sent: int = 0
    #: more clients of this pool's port a test opened (closed with the pool)
    extra: list[EnvoyClient] = field(default_factory=list)

    @property
    def selector(self) -> dict[str, str]:
        return {"app": f"vllm-{self.name}"}

    def addresses(self, *names: str) -> set[str]:
        return {self.members[n].address for n in names or self.members}

    async def add(self, emulator: KubeApiEmulator, name: str, **gauges: Any) -> FakePod:
        member = await self.pods.add(name, gauges=Gauges(**gauges))
        self.members[name] = member
        emulator.create(member.manifest(labels=self.selector))
        return member

    async def destinations(self, count: int) -> set[str]:
        """Send ``count`` requests to this pool's port; where they went (a refusal fails the test)."""
        assert self.client is not None
        seen = set()
        for _ in range(count):
            self.sent += 1
            body = completion(prompt=f"{self.name} request {self.sent}")
            r = await self.client.exchange(HttpRequest(body=body))
            assert r.immediate is None, f"pool {self.name} refused a request: {r.immediate}"
            seen.add(str(r.destination))
        return seen


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = OtlpReceiver()
    await r.start()
    yield r
    await r.stop()


def _tracing_env(receiver: OtlpReceiver) -> dict[str, str]:
    """Only requests whose traceparent says "sampled" are recorded, and spans are exported only when the
    process flushes at shutdown (a 10-minute batch delay), so the Export calls count the exporters."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
    }


@contextlib.asynccontextmanager
async def open_pools(names: Iterable[str]) -> AsyncIterator[dict[str, Pool]]:
    """One :class:`Pool` per name, each on its own EPP port and loopback addresses; their clients and pods
    closed at the end."""
    made = {}
    for i, name in enumerate(names):
        pods = FakePods()
        pods._next_ip = 2 + 20 * i  # distinct loopback addresses per pool: no pod is in two pools
        made[name] = Pool(name, free_port(), pods)
    try:
        yield made
    finally:
        for pool in made.values():
            for client in (pool.client, *pool.extra):
                if client is not None:
                    await client.close()
            await pool.pods.close()


def serve_args(pool_flags: Iterable[str], kubeconfig: Path, *extra: str) -> list[str]:
    """``picker serve``'s arguments for several ``--pool`` watched through the emulator: every other port
    ephemeral, plaintext, on loopback."""
    return [
        *pool_flags,
        f"--pool-namespace={NS}",
        f"--kubeconfig={kubeconfig}",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--admin-port=0",
        "--host=127.0.0.1",
        "--secure-serving=false",
        *extra,
    ]


#: starts of ``picker serve`` with fresh ports after a pool's port was taken (see :func:`launch_pools`)
PORT_ATTEMPTS = 3
#: the exit of a process that could not bind a port (its one ``cannot start`` line, with or without
#: ``--workers``)
PORT_TAKEN = re.compile(r"cannot start: .*Address already in use")


async def launch_pools(
    spawn: Spawn,
    emulator: KubeApiEmulator,
    pools: Mapping[str, Pool],
    kubeconfig: Path,
    *extra: str,
    documents: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> EppProcess:
    """``picker serve`` serving ``pools`` (each ``--pool NAME=PORT``, with ``config-configmap=`` its entry
    in ``documents``), each pool's InferencePool naming its port, once it logged its serving line.

    The ports are picked before the process binds them (the InferencePool must name each, and ``--pool``
    takes no port 0), so another process may take one first: the process then exits saying a port is in
    use, and the pools are given fresh ports, their InferencePools updated, and the process started again
    (:data:`PORT_ATTEMPTS` in all). Its health, metrics and admin ports are ephemeral: an address in use is
    one of the pools'."""
    documents = documents or {}
    attempt = 1
    while True:
        for pool in pools.values():
            emulator.apply(
                inference_pool(
                    pool.name, NS, selector=pool.selector, ports=(pool.pods.port,), epp_port=pool.port
                )
            )
        flags = [
            f"--pool={name}={pool.port}"
            + (f",config-configmap={documents[name]}" if name in documents else "")
            for name, pool in pools.items()
        ]
        process = await spawn([PICKER, "serve", *serve_args(flags, kubeconfig, *extra)], env=env)
        try:
            return await started_epp(process, "picker serve")
        except AssertionError:
            taken = process.proc.returncode is not None and any(PORT_TAKEN.search(x) for x in process.lines)
            if attempt == PORT_ATTEMPTS or not taken:
                raise
        attempt += 1
        for pool in pools.values():
            pool.port = free_port()


@pytest.fixture
async def pools(emulator: KubeApiEmulator) -> AsyncIterator[dict[str, Pool]]:  # closed before the emulator
    async with open_pools(("alpha", "beta", "gamma")) as made:
        yield made


def samples(page: str, metric: str, /, **labels: str) -> list[float]:
    return [
        float(s.value)
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())
    ]


@pytest.mark.parametrize("workers", [1, 2])
async def test_three_pools_one_process_each_routed_by_its_port(  # noqa: PLR0917 - fixtures and the parameter
    emulator: KubeApiEmulator,
    pools: dict[str, Pool],
    kubeconfig: Path,
    receiver: OtlpReceiver,
    workers: int,
    spawn: Spawn,
) -> None:
    alpha, beta, gamma = pools["alpha"], pools["beta"], pools["gamma"]
    # alpha and beta: a short queue with a full KV cache against a long queue with a free one
    for pool in (alpha, beta):
        await pool.add(emulator, f"{pool.name}-short-queue", waiting=0, kv_usage=0.9)
        await pool.add(emulator, f"{pool.name}-free-kv", waiting=1000, kv_usage=0.1)
    await gamma.add(emulator, "gamma-1")
    await gamma.add(emulator, "gamma-2")
    emulator.create(config_map("alpha-epp", NS, data={KEY: weights(queue=10, kv=1)}))
    emulator.create(config_map("beta-epp", NS, data={KEY: weights(queue=1, kv=10)}))
    epp = await launch_pools(
        spawn,
        emulator,
        pools,
        kubeconfig,
        "--tracing",
        f"--workers={workers}",
        documents={"alpha": "alpha-epp", "beta": "beta-epp"},
        env=_tracing_env(receiver),
    )
    try:
        ports, admin = epp.ports, epp.admin
        assert ports.pools == {name: pool.port for name, pool in pools.items()}
        for pool in pools.values():
            pool.client = EnvoyClient(f"127.0.0.1:{pool.port}", timeout=10.0)
            await pool.client.connect()

        # (--workers: every worker spawns a fresh interpreter, slow on a loaded machine)
        await eventually(epp.ready, within=120, what="ready for all three pools")
        listed = await admin.json("/debug/pools")
        assert {(p["name"], p["grpc_port"], p["admin"]) for p in listed["pools"]} == {
            (name, pool.port, f"/pools/{name}/") for name, pool in pools.items()
        }

        async def endpoints(pool: Pool) -> set[str]:
            return {
                e["address"] for e in (await admin.json(f"/pools/{pool.name}/debug/endpoints"))["endpoints"]
            }

        async def config(pool: Pool) -> dict[str, Any]:
            doc: dict[str, Any] = await admin.json(f"/pools/{pool.name}/config")
            return doc

        for pool in pools.values():
            want = pool.addresses()
            await eventually(lambda p=pool, w=want: _equals(endpoints(p), w), what=f"{pool.name}'s endpoints")
        for pool, source in ((alpha, "alpha-epp"), (beta, "beta-epp")):
            await eventually(
                lambda p=pool, s=source: _source_is(config(p), f"configmap/{NS}/{s}"),
                what=f"{pool.name}'s ConfigMap loaded",
            )
        assert (await config(gamma))["source"] == "default"

        # Each pool's requests reach its own pods, chosen by its own document: alpha weighs the queue,
        # beta the KV cache (once the gauges were scraped, every request goes to that pod).
        async def only(pool: Pool, address: str) -> bool:
            return await pool.destinations(6) == {address}

        await eventually(lambda: only(alpha, alpha.members["alpha-short-queue"].address), what="alpha")
        await eventually(lambda: only(beta, beta.members["beta-free-kv"].address), what="beta")
        assert await gamma.destinations(10) <= gamma.addresses()

        # One /metrics: each pool's series under its pool label (the reference's own label kept), each
        # request counted once (under --workers the workers' counts reach the supervisor within a second)
        async def counted() -> bool:
            status, body = await admin._get("/metrics")
            assert status == 200
            page = body.decode()
            assert len(samples(page, "inference_extension_info")) == 1
            return all(
                sum(samples(page, "inference_objective_request_total", pool=pool.name)) == pool.sent
                for pool in pools.values()
            )

        await eventually(counted, what="each pool's requests counted once under its pool label")

        if workers > 1:  # every worker serves every pool, each pool's picks counted in that pool's rows
            for pool in pools.values():
                rows = (await admin.json(f"/pools/{pool.name}/debug/workers"))["workers"]
                assert [(w["index"], w["serving"]) for w in rows] == [(i, True) for i in range(workers)]
                assert sum(w["picks"] for w in rows) == pool.sent

        # --tracing: one sampled request per pool, each span naming its pool (checked after the exit)
        traced = {}
        for pool in pools.values():
            trace_id = secrets.token_hex(16)
            assert pool.client is not None
            headers = [("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")]
            r = await pool.client.exchange(HttpRequest(body=completion(prompt="traced"), headers=headers))
            assert str(r.destination) in pool.addresses()
            traced[trace_id] = pool.name

        async def ready_pods() -> dict[str, list[float]]:
            page = (await admin._get("/metrics"))[1].decode()
            return {n: samples(page, "inference_pool_ready_pods", name=n, pool=n) for n in pools}

        async def two_ready_each() -> bool:  # fresh pods only: a scrape may be late on a loaded machine
            return await ready_pods() == {n: [2.0] for n in pools}

        await eventually(two_ready_each, what="inference_pool_ready_pods{name, pool} 2 per pool")

        # A pod change in gamma: gamma follows, alpha and beta do not notice
        await gamma.add(emulator, "gamma-3")
        emulator.delete("v1", "Pod", NS, "gamma-1")
        await eventually(
            lambda: _equals(endpoints(gamma), gamma.addresses("gamma-2", "gamma-3")),
            what="gamma's pod change",
        )

        async def gamma_routes_to_new_set() -> bool:
            return await gamma.destinations(12) <= gamma.addresses("gamma-2", "gamma-3")

        await eventually(gamma_routes_to_new_set, what="gamma routing to its new pods only")
        assert await endpoints(alpha) == alpha.addresses()
        assert await endpoints(beta) == beta.addresses()
        assert await alpha.destinations(10) == {alpha.members["alpha-short-queue"].address}
        assert await beta.destinations(10) == {beta.members["beta-free-kv"].address}

        # A bad document for alpha is rejected for alpha only: alpha keeps its document and its routing
        before = {name: (await config(pool))["digest"] for name, pool in pools.items()}
        emulator.patch(
            "v1", "ConfigMap", NS, "alpha-epp", {"data": {KEY: weights(queue=1, kv=10, scorer="no-such")}}
        )

        async def alpha_rejected() -> bool:
            return await admin.metric("picker_config_reload_total", result="rejected", pool="alpha") >= 1

        await eventually(alpha_rejected, what="alpha's bad document rejected")
        after = await config(alpha)
        assert after["digest"] == before["alpha"]
        assert after["last_reload"]["result"] == "rejected"
        assert "no-such" in after["last_reload"]["message"]
        for pool in (beta, gamma):
            assert (await config(pool))["digest"] == before[pool.name]
            assert await admin.metric("picker_config_reload_total", result="rejected", pool=pool.name) == 0
        assert await alpha.destinations(10) == {alpha.members["alpha-short-queue"].address}
        assert await beta.destinations(10) == {beta.members["beta-free-kv"].address}

        # A one-pool path on a several-pool admin API says where the pools are instead of picking one
        status, body = await admin._get("/debug/endpoints")
        assert status == 404
        assert set(json.loads(body)["error"]["pools"]) == {f"/pools/{name}/" for name in pools}
    finally:
        code = await epp.stop()
    assert code == 0, epp.output[-3000:]
    # one exporter per process (not one per pool), flushed once at shutdown: one Export call per process
    # that recorded a span, each carrying the spans of every pool it served
    spans = await receiver.wait_for(len(traced))
    assert {s.trace_id: s.attributes["picker.pool"] for s in spans} == traced
    assert 1 <= receiver.exports <= workers
    assert all("picker.plugin.picker.max-score-picker.duration_ns" in s.attributes for s in spans)


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_pool_port_taken_before_the_process_binds_it_is_picked_again(
    emulator: KubeApiEmulator, kubeconfig: Path, spawn: Spawn, workers: int
) -> None:
    """The race :func:`launch_pools` exists for, forced: alpha's port is bound by another socket when the
    process starts, which exits saying so (alone, or its ``--workers`` supervisor reserving the port); it
    is started again on a fresh port, which alpha's InferencePool names, and serves alpha there."""
    async with open_pools(("alpha",)) as made:
        alpha = made["alpha"]
        await alpha.add(emulator, "alpha-1")
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            blocker.listen()
            taken = alpha.port = blocker.getsockname()[1]
            epp = await launch_pools(spawn, emulator, made, kubeconfig, f"--workers={workers}")
        try:
            assert alpha.port != taken
            assert epp.ports.grpc == alpha.port  # (one pool: the serving line names no "pools")
            stored = emulator.get(POOL_V1, "InferencePool", NS, "alpha")
            assert stored is not None
            assert stored["spec"]["endpointPickerRef"]["port"]["number"] == alpha.port
            alpha.client = EnvoyClient(f"127.0.0.1:{alpha.port}", timeout=10.0)
            await alpha.client.connect()
            await eventually(epp.ready, within=120, what="ready for alpha")
            assert await alpha.destinations(3) == alpha.addresses()
        finally:
            code = await epp.stop()
    assert code == 0, epp.output[-3000:]


async def _equals(got: Any, want: set[str]) -> bool:
    return bool(await got == want)


async def _source_is(got: Any, source: str) -> bool:
    return bool((await got)["source"] == source)
