"""In-flight accounting through the real service: +1 at the pick, -1 exactly once when the stream ends
(normal end, client cancel mid-request or mid-response), visible in ``/debug/endpoints`` and in
``inference_objective_running_requests``; and a burst of concurrent streams spreads over equal endpoints."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from picker.testing.envoy import HttpRequest, request_body, request_headers, response_body, response_headers
from picker.testing.poll import eventually
from tests.integration.service.conftest import (
    P0,
    Pod,
    ServiceHarness,
    StartService,
    completion,
    finish,
    hold,
    pod,
    sample,
)

pytestmark = pytest.mark.integration


async def _running(svc: ServiceHarness, model: str = "m") -> float | None:
    return sample(await svc.metrics(), "inference_objective_running_requests", model_name=model)


async def _settles(svc: ServiceHarness, inflight: dict[str, float], running: float) -> None:
    async def reached() -> bool:
        return await svc.inflight() == inflight and await _running(svc) == running

    await eventually(reached, what=f"in-flight {inflight} and running_requests {running}")


async def test_cancel_after_the_pick_releases_exactly_once(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    a, _ = await hold(svc.client, HttpRequest(body=completion("a")))
    b, _ = await hold(svc.client, HttpRequest(body=completion("b")))
    await _settles(svc, {P0: 2.0}, 2.0)

    assert a.cancel()  # the downstream client went away while the model server was working
    await _settles(svc, {P0: 1.0}, 1.0)

    # another full exchange on the same endpoint: if A's slot were released twice, B's would be lost here
    done = await svc.exchange(HttpRequest(body=completion("c")))
    assert done.destination == P0
    await _settles(svc, {P0: 1.0}, 1.0)

    await finish(b)
    await _settles(svc, {P0: 0.0}, 0.0)
    text = await svc.metrics()
    assert (
        sample(text, "inference_objective_request_total", model_name="m", target_model_name="m", priority="0")
        == 3
    )


async def test_cancel_mid_response_stream_releases(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    stream, _ = await hold(svc.client, HttpRequest(body=completion("s", stream=True)))
    await stream.send(response_headers([(":status", "200"), ("content-type", "text/event-stream")]))
    await stream.send(response_body(b'data: {"choices":[{"text":"x"}]}\n\n'))
    kinds = []
    while len(kinds) < 2:
        reply = await stream.recv()
        assert reply is not None
        kinds.append(reply.WhichOneof("response"))
    assert kinds == ["response_headers", "response_body"]
    await _settles(svc, {P0: 1.0}, 1.0)

    stream.cancel()
    await _settles(svc, {P0: 0.0}, 0.0)
    text = await svc.metrics()
    # the response never completed: no duration was recorded for it
    assert not sample(
        text, "inference_objective_request_duration_seconds_count", model_name="m", target_model_name="m"
    )


async def test_cancel_before_the_pick_counts_nothing(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    stream = svc.client.stream()
    await stream.send(request_headers([(":method", "POST"), (":path", "/v1/completions")]))
    await stream.send(request_body(b'{"model":"m","prom'))  # the rest of the body never comes
    stream.cancel()
    # the connection and the endpoint are still fine for the next request
    assert (await svc.exchange(HttpRequest(body=completion()))).destination == P0
    await _settles(svc, {P0: 0.0}, 0.0)
    rows = await svc.endpoint_rows()
    assert rows[P0]["dispatched_since_scrape"] == 1  # only the complete exchange was dispatched


async def test_sixty_four_concurrent_streams_spread_evenly_over_eight_equal_endpoints(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=8)
    await svc.set_metrics(*[Pod(2, 0.3)] * 8)
    clients = [svc.client, *[await svc.new_client() for _ in range(3)]]
    held = await asyncio.gather(
        *(hold(clients[i % 4], HttpRequest(body=completion(f"burst {i}"))) for i in range(64))
    )
    spread = Counter(destination for _, destination in held)
    endpoints = [pod(i) for i in range(8)]
    # each pick raises the chosen endpoint's estimated load by one, so the burst cannot pile up
    assert spread == dict.fromkeys(endpoints, 8)
    await _settles(svc, dict.fromkeys(endpoints, 8.0), 64.0)

    await asyncio.gather(*(finish(stream) for stream, _ in held))
    await _settles(svc, dict.fromkeys(endpoints, 0.0), 0.0)
    text = await svc.metrics()
    assert (
        sample(text, "inference_objective_request_total", model_name="m", target_model_name="m", priority="0")
        == 64
    )
    assert (
        sample(
            text, "inference_objective_request_duration_seconds_count", model_name="m", target_model_name="m"
        )
        == 64
    )


async def _tokens(svc: ServiceHarness, address: str) -> tuple[float, float]:
    row = (await svc.endpoint_rows())[address]
    return row["prefill_tokens"], row["inflight_tokens"]


async def test_a_streamed_requests_prompt_tokens_count_as_prefill_until_its_first_byte(
    start_service: StartService,
) -> None:
    """The token charge of scoring.matrix.LoadCharge, end to end: prompt chars / 4 at the pick; the
    prefill part leaves at the first response body byte, the rest when the stream ends."""
    svc = await start_service(pods=1)
    prompt = "x" * 4000  # 1,000 estimated tokens
    stream, _ = await hold(svc.client, HttpRequest(body=completion(prompt, stream=True)))
    assert await _tokens(svc, P0) == (1000.0, 1000.0)

    await stream.send(response_headers([(":status", "200"), ("content-type", "text/event-stream")]))
    assert (await stream.recv()).WhichOneof("response") == "response_headers"
    assert await _tokens(svc, P0) == (1000.0, 1000.0)  # headers are no sign that prefill is done
    await stream.send(response_body(b'data: {"choices":[{"text":"x"}]}\n\n'))
    assert (await stream.recv()).WhichOneof("response") == "response_body"
    assert await _tokens(svc, P0) == (0.0, 1000.0)

    await stream.send(response_body(b"data: [DONE]\n\n", end_of_stream=True))
    assert (await stream.recv()).WhichOneof("response") == "response_body"
    await stream.half_close()
    await _settles(svc, {P0: 0.0}, 0.0)
    assert await _tokens(svc, P0) == (0.0, 0.0)


async def test_a_non_streamed_request_charges_no_prefill_and_a_cancel_gives_everything_back(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=1)
    plain, _ = await hold(svc.client, HttpRequest(body=completion("y" * 800)))
    streamed, _ = await hold(svc.client, HttpRequest(body=completion("z" * 400, stream=True)))
    assert await _tokens(svc, P0) == (100.0, 300.0)
    streamed.cancel()  # the client left before any byte came back: its prefill leaves with it
    await _settles(svc, {P0: 1.0}, 1.0)
    assert await _tokens(svc, P0) == (0.0, 200.0)
    await finish(plain)
    await _settles(svc, {P0: 0.0}, 0.0)
    assert await _tokens(svc, P0) == (0.0, 0.0)
