"""The whole EPP against the Kubernetes API-server emulator, driven like Envoy drives it.

Every test runs the production wiring: ``picker.service.Service`` (in-process) or ``picker serve`` (a
child process started by :func:`launch_epp`, when two replicas or ``--workers`` are needed) with a
kubeconfig pointing at a fresh :class:`~picker.testing.kube_api.KubeApiEmulator`, so pool, pods,
objectives, rewrites, the scoring ConfigMap and the Lease all travel through the official
``kubernetes`` client and real HTTP watches. Requests go through
:class:`~picker.testing.envoy.EnvoyClient` (real gRPC ext_proc); health through the real
``grpc.health.v1`` port and the admin ``/readyz``.

Pods are real HTTP servers: each fake pod is a :class:`~picker.testing.fake_server.FakeServer` on its own
loopback address (``127.0.0.2``, ``127.0.0.3``, ...), all on one port, because an InferencePool's target
ports are shared by its pods and the EPP scrapes ``podIP:port``. Where a test needs particular load
gauges it gives the server a :class:`Gauges` load model: the server's ``/metrics`` page then reports
exactly the queue and KV usage the test sets, and the EPP learns them by scraping, as in a cluster.

Nothing asserts on durations: every wait is a bounded poll that fails with a message at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import json
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from signal import SIGTERM, Signals
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from picker.service import Ports, Service
from picker.testing.envoy import EnvoyClient, ExchangeResult, HttpRequest
from picker.testing.fake_load import LoadHandle, LoadRejectedError, LoadRequest, LoadSnapshot
from picker.testing.fake_server import FakeServer
from picker.testing.kube_api import KubeApiEmulator
from picker.testing.kube_objects import inference_pool, pod
from picker.testing.local import local_settings, run_started
from picker.testing.poll import eventually
from tests.integration.conftest import PICKER, Process, Spawn

pytestmark = pytest.mark.integration

NS = "inference"
POOL = "qwen"
SEL = {"app": "vllm-qwen"}
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
POOL_API = "inference.networking.k8s.io/v1"
#: InferenceObjective and InferenceModelRewrite
X_K8S_API = "inference.networking.x-k8s.io/v1alpha2"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


# ------------------------------------------------------------------------------------------ fake pods
class Gauges:
    """A :class:`~picker.testing.fake_load.LoadModel` whose ``/metrics`` gauges the test sets directly.

    No request ever runs on it (completions are refused): the pod only exists to be scraped. ``set``
    bumps the snapshot version, which is what makes the fake server re-render its page.
    """

    def __init__(self, *, waiting: int = 0, kv_usage: float = 0.0, num_blocks: int = 1000) -> None:
        self._snap = LoadSnapshot(num_blocks=num_blocks, max_num_seqs=16)
        self.set(waiting=waiting, kv_usage=kv_usage)

    def set(self, *, waiting: int | None = None, kv_usage: float | None = None) -> None:
        snap = self._snap
        changes: dict[str, Any] = {"version": snap.version + 1}
        if waiting is not None:
            changes["waiting"] = waiting
        if kv_usage is not None:
            changes["used_blocks"] = round(kv_usage * snap.num_blocks)
        self._snap = dataclasses.replace(snap, **changes)

    def admit(self, request: LoadRequest, now: float) -> LoadHandle:
        raise LoadRejectedError("this fake pod only reports gauges")

    def abort(self, handle: LoadHandle, now: float) -> None:
        return None

    def step(self, now: float) -> Sequence[LoadHandle]:
        return ()

    def next_event_time(self) -> float | None:
        return None

    def snapshot(self) -> LoadSnapshot:
        return self._snap


@dataclasses.dataclass
class FakePod:
    """A pod of the pool: its Kubernetes name, its loopback IP and the model server listening there."""

    name: str
    ip: str
    server: FakeServer
    gauges: Gauges | None = None

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.server.bound_port}"

    def manifest(self, *, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return pod(self.name, NS, labels=labels or SEL, ip=self.ip, ready=ready)


class FakePods:
    """Model servers on ``127.0.0.<n>``, all on one port (the pool's target port)."""

    def __init__(self) -> None:
        self.port = 0
        self._next_ip = 2
        self.pods: list[FakePod] = []

    async def add(self, name: str, *, gauges: Gauges | None = None, **server: Any) -> FakePod:
        """Start a server for pod ``name`` on the next loopback address and the shared port."""
        for _ in range(20):
            ip = f"127.0.0.{self._next_ip}"
            self._next_ip += 1
            options = {"time_scale": 0.01, "models": (MODEL,), **server}
            fake = FakeServer(host=ip, port=self.port, load=gauges, **options)
            try:
                await fake.start()
            except OSError as exc:  # the shared port is taken on this address: use the next one
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            self.port = fake.bound_port
            p = FakePod(name, ip, fake, gauges)
            self.pods.append(p)
            return p
        raise AssertionError(f"no free loopback address for port {self.port}")

    async def close(self) -> None:
        for p in self.pods:
            await p.server.stop()


@pytest.fixture
async def fake_pods() -> AsyncIterator[FakePods]:
    pods = FakePods()
    try:
        yield pods
    finally:
        await pods.close()


# ------------------------------------------------------------------------------------------ cluster
#: the bearer token the tests scrape /metrics with (--metrics-endpoint-auth is on in Kubernetes mode), and
#: the user it authenticates as: a Prometheus ServiceAccount bound to a ClusterRole allowing get /metrics
SCRAPER_TOKEN = "prometheus-sa-token"
SCRAPER_USER = "system:serviceaccount:monitoring:prometheus"


@pytest.fixture
def kubeconfig(emulator: KubeApiEmulator, tmp_path: Path) -> Path:
    emulator.access.add_token(SCRAPER_TOKEN, SCRAPER_USER, groups=["system:serviceaccounts"])
    emulator.access.grant(users=[SCRAPER_USER], paths=["/metrics"], verbs=["get"])
    return emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)


def create_pool(emulator: KubeApiEmulator, pods: FakePods, **kw: Any) -> dict[str, Any]:
    return emulator.create(inference_pool(POOL, NS, selector=SEL, ports=(pods.port,), **kw))


# ------------------------------------------------------------------------------------------ the EPP
async def health_check(port: int, service: str = "") -> int:
    """One ``grpc.health.v1.Health/Check`` on ``127.0.0.1:port``; the ServingStatus value."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(reply.status)


class Admin:
    """The EPP's HTTP ports: ``/readyz`` and ``/metrics`` on the metrics port (with the scraper's bearer
    token, as Prometheus sends it), ``/config`` and ``/debug/endpoints`` on the admin port."""

    def __init__(self, metrics_port: int, admin_port: int, token: str = SCRAPER_TOKEN) -> None:
        self.metrics_base = f"http://127.0.0.1:{metrics_port}"
        self.admin_base = f"http://127.0.0.1:{admin_port}"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session: aiohttp.ClientSession | None = None

    async def _get(self, path: str) -> tuple[int, bytes]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if path in {"/metrics", "/readyz", "/healthz"}:
            url, headers = self.metrics_base + path, self._headers
        else:
            url, headers = self.admin_base + path, {}
        async with self._session.get(url, headers=headers) as resp:
            return resp.status, await resp.read()

    async def readyz(self) -> int:
        """The status of ``/readyz``; 0 when no answer came within the client's timeout (a supervisor busy
        starting its workers on a loaded machine answers late: for a poll that is "not ready yet")."""
        try:
            status, _ = await self._get("/readyz")
        except TimeoutError:
            return 0
        return status

    async def json(self, path: str) -> Any:
        status, body = await self._get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    async def endpoints(self) -> dict[str, dict[str, Any]]:
        """``/debug/endpoints`` by address."""
        doc = await self.json("/debug/endpoints")
        return {e["address"]: e for e in doc["endpoints"]}

    async def metric(self, name: str, /, **labels: str) -> float:
        """The value of one sample of our ``/metrics`` page (0 when the series does not exist)."""
        status, body = await self._get("/metrics")
        assert status == 200
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def completion(model: str = MODEL, prompt: str = "hello", **fields: Any) -> bytes:
    return json.dumps({"model": model, "prompt": prompt, "max_tokens": 4, **fields}).encode()


class Epp:
    """One EPP as a gateway and a kubelet see it: ext_proc, gRPC health, admin HTTP."""

    def __init__(self, ports: Ports) -> None:
        self.ports = ports
        self.client = EnvoyClient(f"127.0.0.1:{ports.grpc}", timeout=10.0)
        self.admin = Admin(ports.metrics, ports.admin)
        self._requests = 0

    async def send(
        self, model: str = MODEL, *, objective: str | None = None, headers: Iterable[tuple[str, str]] = ()
    ) -> ExchangeResult:
        """One request through ext_proc (a fresh prompt each time, so no prefix affinity piles up)."""
        self._requests += 1
        extra = list(headers)
        if objective is not None:
            extra.append(("x-gateway-inference-objective", objective))
        body = completion(model, prompt=f"request {self._requests}")
        return await self.client.exchange(HttpRequest(body=body, headers=extra))

    async def destinations(self, count: int, **kw: Any) -> Counter[str]:
        """Send ``count`` requests; where they went (``"<status>"`` for an immediate response)."""
        seen: Counter[str] = Counter()
        for _ in range(count):
            r = await self.send(**kw)
            seen[str(r.destination) if r.immediate is None else f"<{r.immediate.status}>"] += 1
        return seen

    async def health(self, service: str = "") -> int:
        return await health_check(self.ports.health, service)

    async def ready(self) -> bool:
        """gRPC ``readiness`` SERVING and ``/readyz`` 200. A health call that gets no answer in time is
        "not ready yet", not a failure: a ``--workers`` supervisor spawning its workers on a machine
        loaded many times over its cores can miss the call's 5 s deadline."""
        try:
            serving = await self.health("readiness") == SERVING
        except grpc.aio.AioRpcError:
            return False
        return serving and await self.admin.readyz() == 200

    async def close(self) -> None:
        await self.client.close()
        await self.admin.close()


class InProcessEpp(Epp):
    """``picker.service.Service`` on this event loop (its datastore is there to look at, never to write)."""

    def __init__(self, service: Service, task: asyncio.Task[None], ports: Ports) -> None:
        super().__init__(ports)
        self.service = service
        self.task = task

    def addresses(self) -> set[str]:
        return {e.address for e in self.service.datastore.endpoints()}

    async def stop(self) -> None:
        await self.close()
        if not self.task.done():
            self.service.stop()
        await asyncio.wait_for(self.task, 15)


#: ``picker serve``'s serving line: its ports, then with several pools each pool's ext_proc port
SERVING_LINE = re.compile(
    r"ext_proc :(\d+) \(\w+\), health :(\d+), metrics :(\d+), admin [^ ]+:(\d+)"
    r"(?:, pools ((?:[a-z]+:\d+ ?)+))?"
)
#: how long ``picker serve`` may take to log that line: the wait ends as soon as it does (or the process
#: exits); a --workers supervisor starting fresh interpreters took over a minute on a machine loaded to
#: ten times its cores
SERVE_START_S = 100.0


def serve_flags(kubeconfig: Path) -> list[str]:
    """``picker serve`` flags for pool ``inference/qwen`` through the emulator, on loopback, ephemeral
    ports, plaintext."""
    return [
        f"--pool-name={POOL}",
        f"--pool-namespace={NS}",
        f"--kubeconfig={kubeconfig}",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--admin-port=0",
        "--host=127.0.0.1",
        "--secure-serving=false",
    ]


class EppProcess(Epp):
    """``picker serve`` as a child process, as a cluster runs it (:func:`launch_epp`): a
    :class:`~tests.integration.conftest.Process` whose ports are read from its serving line."""

    def __init__(self, name: str, process: Process, serving: re.Match[str]) -> None:
        grpc, health, metrics, admin = (int(g) for g in serving.groups()[:4])
        listed = (p.split(":") for p in (serving.group(5) or "").split())
        super().__init__(Ports(grpc, health, metrics, admin, {name: int(port) for name, port in listed}))
        self.name = name
        self.process = process

    @property
    def output(self) -> str:
        return self.process.output

    async def readiness(self) -> int | None:
        """``readiness`` status, or None when the process is gone."""
        if self.process.proc.returncode is not None:
            return None
        return await self.health("readiness")

    def signal(self, sig: Signals) -> None:
        if self.process.proc.returncode is None:
            self.process.proc.send_signal(sig)

    async def exited(self, within: float = 15) -> int:
        """The exit code (awaited on the loop: the API server the process talks to runs there too)."""
        return await asyncio.wait_for(self.process.proc.wait(), within)

    async def stop(self, sig: Signals = SIGTERM, within: float = 20) -> int:
        """Close the clients, send ``sig``, and the exit code (fails if the process ignores it)."""
        await self.close()
        return await self.process.stop(sig, within)


async def launch_epp(
    spawn: Spawn, name: str, args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> EppProcess:
    """``picker serve ARGS`` (``env`` added to the clean environment), its ext_proc client connected, once
    it logged its serving line; fails with its output if the process exits first."""
    return await started_epp(await spawn([PICKER, "serve", *args], env=env), name)


async def started_epp(process: Process, name: str) -> EppProcess:
    """A ``picker serve`` process spawned already, its ext_proc client connected, once it logged its
    serving line; fails with its output if the process exits first (``process`` then says why)."""
    epp = EppProcess(name, process, await process.wait_for(SERVING_LINE, SERVE_START_S))
    await epp.client.connect()
    return epp


StartEpp = Callable[..., Awaitable[InProcessEpp]]


@pytest.fixture
async def start_epp(kubeconfig: Path) -> AsyncIterator[StartEpp]:
    """Start ``Service`` for pool ``inference/qwen`` through the emulator; settings override by keyword.

    Each one is stopped at teardown, which also re-raises anything that crashed it during the test.
    """
    stack = contextlib.AsyncExitStack()

    async def start(**overrides: Any) -> InProcessEpp:
        settings = {"pool_name": POOL, "pool_namespace": NS, "kubeconfig": str(kubeconfig), "seed": 7}
        service = Service.load(local_settings(**{**settings, **overrides}))
        # no deadline of its own (a loaded machine took more than 15 s): the test's timeout bounds it
        ports, task = await run_started(service)
        epp = InProcessEpp(service, task, ports)
        stack.push_async_callback(epp.stop)
        await epp.client.connect()
        return epp

    async with stack:
        yield start


async def wait_serving(epp: Epp, *, within: float = 15.0) -> None:
    """Readiness through both probes: gRPC health SERVING and ``/readyz`` 200 (:meth:`Epp.ready`)."""
    await eventually(epp.ready, within=within, what="EPP ready")


async def wait_routing_to(epp: Epp, addresses: set[str], *, within: float = 15.0, **kw: Any) -> None:
    """Send requests until every address in ``addresses`` got one; any other destination fails the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    seen: set[str] = set()
    while seen != addresses:
        r = await epp.send(**kw)
        assert r.immediate is None, f"request refused: {r.immediate}"
        assert r.destination in addresses, f"{r.destination} is not one of {sorted(addresses)}"
        seen.add(r.destination)
        assert loop.time() < deadline, f"only {sorted(seen)} of {sorted(addresses)} got requests"
