"""``picker serve --workers 2`` as a real process tree: both workers serve streams on one port, in-flight
totals add up across them, request metrics of both reach /metrics, a killed worker is replaced with its
streams released, the workers go away with the supervisor, and tenants' and external endpoints' budgets
are one across the workers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from picker.testing import poll
from picker.testing.envoy import (
    EnvoyClient,
    HttpRequest,
    RawStream,
    response_body,
    response_headers,
)
from picker.testing.fake_server import FakeFleet
from tests.integration.conftest import LOCAL, PICKER, Spawn, serving_ports
from tests.integration.service.test_flow_control import CONFIG as FLOW_CONTROL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BODY = b'{"model":"m","stream":true,"prompt":"' + b"w" * 400 + b'"}'  # a streamed 100-token prompt


@dataclass
class Tree:
    """The supervisor process, its metrics and admin ports and the clients talking to its ext_proc port."""

    proc: asyncio.subprocess.Process
    grpc: str
    metrics: str
    admin: str
    http: aiohttp.ClientSession
    clients: list[EnvoyClient] = field(default_factory=list)

    async def get(self, path: str) -> Any:
        async with self.http.get(self.admin + path) as resp:
            return await resp.json()

    async def workers(self) -> list[dict[str, Any]]:
        doc = await self.get("/debug/workers")
        return list(doc["workers"])

    async def endpoint_inflight(self) -> float:
        doc = await self.get("/debug/endpoints")
        return float(sum(row["inflight"] for row in doc["endpoints"]))

    async def endpoint_tokens(self) -> tuple[float, float]:
        """Summed over endpoints: (prefill_tokens, inflight_tokens)."""
        rows = (await self.get("/debug/endpoints"))["endpoints"]
        return float(sum(r["prefill_tokens"] for r in rows)), float(sum(r["inflight_tokens"] for r in rows))

    async def request_total(self) -> float:
        async with self.http.get(self.metrics + "/metrics") as resp:
            text = await resp.text()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "inference_objective_request_total"
        )

    async def new_client(self) -> EnvoyClient:
        # its own connection (no shared subchannel), so SO_REUSEPORT may hand it to either worker
        client = EnvoyClient(self.grpc, timeout=30.0, options=[("grpc.use_local_subchannel_pool", 1)])
        await client.connect()
        self.clients.append(client)
        return client


#: the waits of the workers tests poll the processes over HTTP (the supervisor's ``/metrics`` merges every
#: worker's): ten times a second, which is plenty for them and keeps the polling off the processes' CPU
eventually = functools.partial(poll.eventually, interval=0.1)


@contextlib.asynccontextmanager
async def _start_tree(spawn: Spawn, *extra: str) -> AsyncIterator[Tree]:
    async with FakeFleet.uniform(4, "vllm") as fleet:
        process = await spawn(
            [
                PICKER,
                "serve",
                *LOCAL,  # --grpc-port=0: the supervisor reserves the port its workers share and logs it
                "--workers=2",
                f"--static-endpoints={','.join(fleet.addresses)}",
                "--secure-serving=false",
                "--refresh-metrics-interval=200ms",
                *extra,
            ]
        )
        ports = await serving_ports(process, deadline_s=120.0)
        http = aiohttp.ClientSession()
        t = Tree(
            process.proc,
            f"127.0.0.1:{ports.grpc}",
            f"http://127.0.0.1:{ports.metrics}",
            f"http://127.0.0.1:{ports.admin}",
            http,
        )

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(t.metrics + "/readyz") as resp:
                    return resp.status == 200
            return False

        try:
            await eventually(ready, "both workers serving", within=90)
            yield t
        finally:
            for client in t.clients:
                await client.close()
            await http.close()
            await process.stop()


@pytest.fixture
async def tree(spawn: Spawn) -> AsyncIterator[Tree]:
    async with _start_tree(spawn) as t:
        yield t


async def hold(client: EnvoyClient) -> RawStream:
    """A stream whose request was routed and whose response has not come back yet."""
    stream = client.stream()
    for message in HttpRequest(body=BODY).messages():
        await stream.send(message)
    while True:
        reply = await stream.recv()
        assert reply is not None, await stream.status()
        if reply.WhichOneof("response") == "request_body":
            assert reply.request_body.response.body_mutation.streamed_response.end_of_stream
            return stream


async def finish(stream: RawStream) -> None:
    await stream.send(response_headers([(":status", "200"), ("content-type", "text/event-stream")]))
    assert await stream.recv() is not None
    await stream.send(
        response_body(b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n', end_of_stream=True)
    )
    assert await stream.recv() is not None
    await stream.half_close()
    assert await stream.recv() is None


async def hold_on_both_workers(tree: Tree) -> list[RawStream]:
    """Open connections (one held stream each) until both workers hold at least two streams."""
    held: list[RawStream] = []
    for _ in range(64):
        held.append(await hold(await tree.new_client()))
        if len(held) >= 4 and all(w["inflight"] >= 2 for w in await tree.workers()):
            return held
    raise AssertionError(f"64 connections never reached both workers: {await tree.workers()}")


async def test_both_workers_serve_and_in_flight_adds_up(tree: Tree) -> None:
    held = await hold_on_both_workers(tree)
    workers = await tree.workers()
    assert [w["serving"] for w in workers] == [True, True]
    assert sum(w["inflight"] for w in workers) == len(held)
    assert await tree.endpoint_inflight() == len(held)
    # every worker's token charges, summed in shared memory: 100 tokens per open stream (the prefill part
    # of a stream whose prompt the chosen endpoint likely holds is discounted by the prefix scorer)
    prefill, inflight = await tree.endpoint_tokens()
    assert inflight == 100.0 * len(held)
    assert 100.0 <= prefill <= inflight

    half = len(held) // 2
    await asyncio.gather(*(finish(s) for s in held[:half]))

    async def settled(expected: float) -> bool:
        workers = await tree.workers()
        return sum(w["inflight"] for w in workers) == expected and await tree.endpoint_inflight() == expected

    await eventually(lambda: settled(len(held) - half), "half of the streams released")
    await asyncio.gather(*(finish(s) for s in held[half:]))
    await eventually(lambda: settled(0.0), "every stream released")
    assert sum(w["picks"] for w in await tree.workers()) == len(held)
    assert await tree.endpoint_tokens() == (0.0, 0.0)

    async def counted() -> bool:
        return await tree.request_total() == len(held)

    await eventually(counted, "both workers' request counts in /metrics")


async def test_a_killed_worker_is_replaced_and_the_supervisor_takes_the_workers_along(tree: Tree) -> None:
    held = await hold_on_both_workers(tree)

    async def counted() -> bool:
        return await tree.request_total() == len(held)

    # a worker reports its metrics about once a second: let both report before one is killed
    await eventually(counted, "both workers' request counts in /metrics")
    before = await tree.workers()
    victim = before[0]
    survivor_streams = before[1]["inflight"]
    os.kill(victim["pid"], signal.SIGKILL)

    async def replaced() -> bool:
        w = (await tree.workers())[0]
        return w["pid"] != victim["pid"] and w["serving"] and w["inflight"] == 0.0

    await eventually(replaced, "worker 0 restarted with its streams released")
    assert await tree.endpoint_inflight() == survivor_streams
    for stream in held:  # the victim's streams were cut: their RPCs failed
        stream.cancel()
    assert await tree.request_total() == len(held)  # what the dead worker counted stays counted

    pids = [w["pid"] for w in await tree.workers()]
    tree.proc.kill()  # SIGKILL: no chance to stop the workers
    await tree.proc.wait()

    async def gone() -> bool:
        return not any(_alive(pid) for pid in pids)

    await eventually(gone, "the workers to exit after the supervisor died")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as gone
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


TENANTS = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  defaultTier: t
  tiers: [{name: t, limits: {concurrent: 3}}]
"""


async def _first_reply_kind(client: EnvoyClient, tenant: str) -> tuple[RawStream, str]:
    stream = client.stream()
    for message in HttpRequest(body=BODY, headers=[("x-tenant-id", tenant)]).messages():
        await stream.send(message)
    reply = await stream.recv()
    assert reply is not None, await stream.status()
    kind = reply.WhichOneof("response")
    if kind == "request_headers":
        reply = await stream.recv()  # the body reply
    return stream, str(kind)


async def test_workers_share_one_tenant_budget_through_the_supervisor(spawn: Spawn) -> None:
    """The memory backend's budget lives in the supervisor: a concurrency limit of 3 holds across both
    workers, /debug/tenants shows each worker's share of it next to the shared meter, and a worker that
    dies gives its tenants' reservations back."""
    async with _start_tree(spawn, "--config-text", TENANTS) as t:
        a, b = await _client_per_worker(t)
        held = []
        for client in (a, a, b):
            stream, kind = await _first_reply_kind(client, "shared")
            assert kind == "request_headers"
            held.append(stream)
        for client in (a, b):  # either worker: the same budget
            _stream, kind = await _first_reply_kind(client, "shared")
            assert kind == "immediate_response"
        doc = await t.get("/debug/tenants")
        (row,) = [r for r in doc["tenants"] if r["tenant"] == "shared"]
        assert row["meters"]["concurrent"]["reserved"] == 3
        assert row["meters"]["concurrent"]["remaining"] == 0
        # where the budget is: worker 0 (client a) holds two of the three, worker 1 one
        shares = {w["worker"]: (w["requests"], w["reserved"]["concurrent"]) for w in row["workers"]}
        assert shares == {0: (2, 2), 1: (1, 1)}
        tokens = sum(w["reserved"]["tokensPerHour"] for w in row["workers"])
        assert tokens == row["meters"]["tokensPerHour"]["reserved"] > 0
        for stream in held:
            await finish(stream)
        stream, kind = await _first_reply_kind(b, "shared")
        assert kind == "request_headers"
        stream.cancel()

        async def released() -> bool:
            doc = await t.get("/debug/tenants")
            rows = [r for r in doc["tenants"] if r["tenant"] == "shared"]
            return (
                bool(rows) and rows[0]["meters"]["concurrent"]["reserved"] == 0 and rows[0]["workers"] == []
            )

        await eventually(released, "the reservations given back")


async def _client_per_worker(t: Tree) -> tuple[EnvoyClient, EnvoyClient]:
    """One client connected to each worker: connect until a held stream shows on each worker."""
    return await client_per_worker(t.new_client, t.workers)


async def client_per_worker(
    new_client: Callable[[], Awaitable[EnvoyClient]], workers: Callable[[], Awaitable[list[dict[str, Any]]]]
) -> tuple[EnvoyClient, EnvoyClient]:
    """Clients of worker 0 and worker 1: connect (``new_client``, a connection of its own each) until a
    held stream shows on each worker in ``workers()`` (a ``/debug/workers`` list). The probes carry no
    objective and must be routed to the pool: with external endpoints, keep them from spilling
    (``spillover.minPriority`` above 0, as :data:`EXTERNAL`), or a pool that reads saturated sends them
    out (a pool not scraped yet no longer does: ``picker.routing.external``)."""
    by_worker: dict[int, EnvoyClient] = {}

    async def settled(index: int, inflight: float) -> bool:
        return any(w["index"] == index and w["inflight"] <= inflight for w in await workers())

    for _ in range(64):
        client = await new_client()
        before = {w["index"]: w["inflight"] for w in await workers()}
        stream, kind = await _first_reply_kind(client, "probe")
        after = {w["index"]: w["inflight"] for w in await workers()}
        moved = [i for i in after if after[i] > before[i]]
        assert len(moved) == 1, f"a probe routed to the pool shows on one worker: {kind}, {before} -> {after}"
        (index,) = moved
        stream.cancel()
        await eventually(functools.partial(settled, index, before[index]), "the probe's stream released")
        by_worker.setdefault(index, client)
        if len(by_worker) == 2:
            break
    assert len(by_worker) == 2, "connections never reached both workers"
    return by_worker[0], by_worker[1]


#: ``minPriority: 1`` keeps requests without an objective (priority 0: :func:`client_per_worker`'s probes)
#: in the pool whatever the pool's saturation reads: a probe spilled to the external endpoint holds no
#: stream a worker's in-flight count shows
EXTERNAL = """\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
objectives: [{name: offload, priority: 1}]
externalEndpoints:
- {name: managed, address: '127.0.0.9:9', price: {inputPer1M: 1, outputPer1M: 4}, limits: {concurrent: 3}}
spillover: {objectives: [offload], minPriority: 1}
"""


async def _destination(client: EnvoyClient) -> tuple[RawStream, str]:
    """A request whose objective asks for the external endpoint, held open: where it was sent first."""
    stream = client.stream()
    request = HttpRequest(body=BODY, headers=[("x-gateway-inference-objective", "offload")])
    for message in request.messages():
        await stream.send(message)
    reply = await stream.recv()
    assert reply is not None, await stream.status()
    assert reply.WhichOneof("response") == "request_headers", reply
    mutation = reply.request_headers.response.header_mutation
    headers = {
        o.header.key.lower(): (o.header.raw_value or o.header.value.encode()).decode()
        for o in mutation.set_headers
    }
    assert await stream.recv() is not None  # the body reply
    return stream, headers["x-gateway-destination-endpoint"].split(",")[0]


async def test_workers_share_the_external_endpoints_budget_through_the_supervisor(spawn: Spawn) -> None:
    """External endpoints' limits are the supervisor's: ``concurrent: 3`` is reached from both workers
    (a 1/N split would stop at one each) and never passed; a finished request frees its slot for the other
    worker; /debug/external shows the one budget."""
    async with _start_tree(spawn, "--config-text", EXTERNAL) as t:
        a, b = await _client_per_worker(t)
        held = [await _destination(c) for c in (a, a, b, b)]
        firsts = [where for _, where in held]
        assert firsts[:3] == ["127.0.0.9:9"] * 3, firsts
        assert firsts[3] != "127.0.0.9:9", "the limit is used: the fourth goes to the pool"
        (row,) = (await t.get("/debug/external"))["external"]
        assert row["limits"] == {"concurrent": 3}
        assert row["reserved"]["concurrent"] == 3
        await finish(held[0][0])  # worker a's request ends: its slot is free for worker b

        async def freed() -> bool:
            # worker a gives the slot back over its own pipe, worker b asks over another: the supervisor
            # reads the two in no set order, so b asks once the release has been applied
            (row,) = (await t.get("/debug/external"))["external"]
            return bool(row["reserved"]["concurrent"] == 2)

        await eventually(freed, "worker a's slot given back to the supervisor")
        stream, where = await _destination(b)
        assert where == "127.0.0.9:9"
        for s in (stream, *(s for s, _ in held[1:])):
            s.cancel()

        async def released() -> bool:
            (row,) = (await t.get("/debug/external"))["external"]
            return bool(row["reserved"]["concurrent"] == 0)

        await eventually(released, "every reservation settled")
        (row,) = (await t.get("/debug/external"))["external"]
        assert row["dispatched"] == 4


async def test_header_only_mode_on_both_workers(spawn: Spawn) -> None:
    """``--model-header`` reaches every worker: each answers at the request headers, one message, and the
    supervisor's accounting sees the stream until the proxy closes it."""
    async with _start_tree(spawn, "--model-header", "x-ai-eg-model") as t:
        client = EnvoyClient(
            t.grpc, timeout=30.0, options=[("grpc.use_local_subchannel_pool", 1)], request_body_mode="NONE"
        )
        await client.connect()
        t.clients.append(client)
        request = HttpRequest(body=BODY, headers=[("x-ai-eg-model", "m"), ("x-picker-prompt-tokens", "100")])
        for _ in range(4):
            result = await client.exchange(request)
            assert [r.WhichOneof("response") for r in result.replies] == ["request_headers"]
            assert result.mode_override is not None
        stream = client.stream()
        (message,) = request.messages(send_body=False)
        await stream.send(message)
        assert await stream.recv() is not None

        async def held() -> bool:
            return await t.endpoint_inflight() == 1.0 and (await t.endpoint_tokens())[1] == 100.0

        await eventually(held, "the open stream counted with its token estimate")
        await stream.half_close()
        assert await stream.recv() is None

        async def released() -> bool:
            return await t.endpoint_inflight() == 0.0

        await eventually(released, "the stream released")


FLOW = FLOW_CONTROL % ("60s", 100)  # the concurrency detector at one request per endpoint


async def _samples(t: Tree, name: str) -> list[tuple[dict[str, str], float]]:
    async with t.http.get(t.metrics + "/metrics") as resp:
        text = await resp.text()
    return [
        (dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def test_flow_control_metrics_of_the_workers_are_the_supervisors(spawn: Spawn) -> None:
    """Requests queue in the workers; the supervisor's /metrics shows their queue and its queue-time
    histogram (summed over workers), and the pool's saturation once."""
    async with _start_tree(spawn, "--config-text", FLOW) as t:
        held = [await hold(await t.new_client()) for _ in range(4)]  # one per endpoint: saturated

        async def four_in_flight() -> bool:
            return await t.endpoint_inflight() == 4

        await eventually(four_in_flight, "four streams in flight")
        queued = (await t.new_client()).stream()
        for message in HttpRequest(body=BODY).messages():
            await queued.send(message)

        async def one_queued() -> bool:
            rows = await _samples(t, "inference_extension_flow_control_queue_size")
            return [v for _labels, v in rows] == [1.0]

        await eventually(one_queued, "the fifth request in a worker's queue, on the supervisor's /metrics")
        saturation = await _samples(t, "inference_extension_flow_control_pool_saturation")
        assert len(saturation) == 1
        assert saturation[0][1] >= 1.0
        await finish(held[0])

        async def dispatched() -> bool:
            rows = await _samples(t, "inference_extension_flow_control_request_queue_duration_seconds_count")
            return [(labels["outcome"], v) for labels, v in rows] == [("dispatched", 1.0)]

        await eventually(dispatched, "its queue time, counted once")
        assert await _samples(t, "inference_extension_flow_control_queue_size") == []
        queued.cancel()
        for stream in held[1:]:
            await finish(stream)
