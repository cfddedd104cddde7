"""Flow control end to end (the ``flowControl`` feature gate): fair queues while the pool is saturated.

The pool is two endpoints and the saturation detector the reference's ``concurrency-detector`` with one
request per endpoint, so two open streams saturate it and each stream that ends lets exactly one queued
request through: the dispatch order is then observable without timing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import orjson
import pytest

from picker.testing.envoy import EnvoyClient, HttpRequest, RawStream
from picker.testing.poll import eventually

from .conftest import ServiceHarness, StartService, finish, sample

pytestmark = pytest.mark.integration

CONFIG = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- {type: queue-scorer}
- {name: picker, type: max-score-picker}
- {name: detector, type: concurrency-detector, parameters: {maxConcurrency: 1}}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}, {pluginRef: picker}]
saturationDetector: {pluginRef: detector}
flowControl: {defaultRequestTTL: %s, maxRequests: %d}
"""


def request(tenant: str) -> HttpRequest:
    body = orjson.dumps({"model": "m", "prompt": "hello", "max_tokens": 5})
    return HttpRequest(body=body, headers=[("x-tenant-id", tenant)])


class Held:
    """One request stream: sent at once, its first reply read in the background."""

    def __init__(self, client: EnvoyClient, tenant: str) -> None:
        self.tenant = tenant
        self.stream: RawStream = client.stream()
        self.status = 0  # 200 routed, else the ImmediateResponse status
        self.body = b""
        #: the proxy message timers this stream asked for (``override_message_timeout``), in seconds
        self.timers: list[float] = []
        self.task = asyncio.ensure_future(self._run(request(tenant)))

    async def _run(self, req: HttpRequest) -> None:
        for message in req.messages():
            await self.stream.send(message)
        while (reply := await self.stream.recv()) is not None:
            if reply.HasField("override_message_timeout"):
                self.timers.append(reply.override_message_timeout.ToTimedelta().total_seconds())
            kind = reply.WhichOneof("response")
            if kind == "immediate_response":
                self.status = int(reply.immediate_response.status.code)
                self.body = bytes(reply.immediate_response.body)
                return
            if (
                kind == "request_body"
                and reply.request_body.response.body_mutation.streamed_response.end_of_stream
            ):
                self.status = 200
                return


async def queue_sizes(h: ServiceHarness) -> dict[str, float]:
    text = await h.metrics()
    from .conftest import samples

    return {
        labels["fairness_id"]: v for labels, v in samples(text, "inference_extension_flow_control_queue_size")
    }


async def start(start_service: StartService, ttl: str = "60s", max_requests: int = 100) -> ServiceHarness:
    return await start_service(pods=2, config=CONFIG % (ttl, max_requests))


async def fill(h: ServiceHarness) -> list[Held]:
    """Two routed streams: the pool is saturated."""
    held = [Held(h.client, "filler"), Held(h.client, "filler")]
    await asyncio.gather(*(x.task for x in held))
    assert [x.status for x in held] == [200, 200]
    return held


async def enqueue(h: ServiceHarness, plan: Sequence[tuple[str, int]]) -> list[Held]:
    """Requests queued in this order (each flow's requests waiting before the next flow's arrive)."""
    out: list[Held] = []
    total = 0
    for tenant, count in plan:
        out += [Held(h.client, tenant) for _ in range(count)]
        total += count

        async def queued(tenant: str = tenant, count: int = count) -> bool:
            return (await queue_sizes(h)).get(tenant) == count

        await eventually(queued, f"{count} requests of {tenant} queued")
    return out


async def test_a_tenant_sending_ten_times_more_gets_its_fair_share_while_saturated(
    start_service: StartService,
) -> None:
    h = await start(start_service)
    running = await fill(h)
    waiting = await enqueue(h, [("flood", 20), ("small-1", 2), ("small-2", 2)])
    order: list[str] = []
    for _ in range(6):
        done = running.pop(0)
        await finish(done.stream)

        async def dispatched() -> bool:
            return any(x.task.done() for x in waiting)

        await eventually(dispatched, "one queued request dispatched")
        (winner,) = [x for x in waiting if x.task.done()]
        assert winner.status == 200
        waiting.remove(winner)
        running.append(winner)
        order.append(winner.tenant)
    # round robin over the three flows: the flood gets one turn in three, not ten in twelve
    assert sorted(order) == ["flood", "flood", "small-1", "small-1", "small-2", "small-2"], order
    sizes = await queue_sizes(h)
    assert sizes == {"flood": 18}
    text = await h.metrics()
    dispatched_small = sample(
        text,
        "inference_extension_flow_control_request_queue_duration_seconds_count",
        fairness_id="small-1",
        priority="0",
        outcome="dispatched",
        inference_pool="static",
    )
    assert dispatched_small == 2
    for x in (*running, *waiting):
        x.stream.cancel()


async def test_nobody_waits_past_the_bound(start_service: StartService) -> None:
    h = await start(start_service, ttl="300ms")
    running = await fill(h)
    # not waited for in the queue gauge: a loaded machine can take longer than the TTL to scrape it, and
    # the expired outcomes below say they were queued
    waiting = [Held(h.client, tenant) for tenant in ("a", "a", "b")]
    await asyncio.gather(*(x.task for x in waiting))
    assert [x.status for x in waiting] == [503, 503, 503]
    error = json.loads(waiting[0].body)["error"]
    assert "request timed out in queue" in error["message"]
    assert await queue_sizes(h) == {}
    text = await h.metrics()
    assert (
        sample(
            text,
            "inference_extension_flow_control_request_queue_duration_seconds_count",
            fairness_id="a",
            priority="0",
            outcome="expired",
            inference_pool="static",
        )
        == 2
    )
    for x in running:
        x.stream.cancel()


async def test_a_full_queue_pushes_out_the_longest_flow_not_the_newcomer(start_service: StartService) -> None:
    h = await start(start_service, max_requests=4)
    running = await fill(h)
    flood = await enqueue(h, [("flood", 4)])
    newcomer = Held(h.client, "newcomer")

    async def evicted() -> bool:
        return any(x.task.done() for x in flood)

    await eventually(evicted, "the flood's newest request pushed out")
    assert [x.status for x in flood if x.task.done()] == [429]
    assert flood[-1].task.done()
    assert "evicted" in json.loads(flood[-1].body)["error"]["message"]
    assert (await queue_sizes(h)) == {"flood": 3, "newcomer": 1}
    refused = Held(h.client, "flood")  # the flood's own request finds the queue full of its own
    await refused.task
    assert refused.status == 429
    for x in (*running, *flood, newcomer):
        x.stream.cancel()


async def test_a_queued_request_asks_the_proxy_to_wait_as_long_as_the_queue_may_hold_it(
    start_service: StartService,
) -> None:
    """Envoy fails a request whose ext_proc reply takes longer than ``message_timeout``: a queued request's
    stream first asks for ``override_message_timeout`` = TTL + 5 s; one routed at once asks nothing."""
    h = await start(start_service, ttl="20s")
    running = await fill(h)
    assert [x.timers for x in running] == [[], []]
    (waiting,) = await enqueue(h, [("a", 1)])

    async def asked() -> bool:
        return bool(waiting.timers)

    await eventually(asked, "the timer override")
    assert waiting.timers == [25.0]
    await finish(running[0].stream)
    await waiting.task
    assert waiting.status == 200
    for x in (running[1], waiting):
        x.stream.cancel()
