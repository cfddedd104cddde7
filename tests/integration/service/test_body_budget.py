"""The process-wide body budget: concurrent unfinished request bodies cannot together exceed it; a request
that would is refused at once with 503 (413 if it could never fit), and the budget is given back."""

from __future__ import annotations

import pytest

from picker.testing.envoy import HttpRequest, UpstreamResponse, request_body, request_headers
from picker.testing.poll import eventually
from tests.integration.service.conftest import P0, StartService, completion

pytestmark = pytest.mark.integration

BUDGET = 4 << 20
CHUNK = b"x" * (1 << 20)


def _headers(length: int | None = None) -> object:
    items = [(":method", "POST"), (":path", "/v1/completions"), ("content-type", "application/json")]
    if length is not None:
        items.append(("content-length", str(length)))
    return request_headers(items)


async def test_unfinished_bodies_draw_from_one_budget(start_service: StartService) -> None:
    svc = await start_service(pods=1, max_buffered_body_bytes=BUDGET)
    held = []
    for _ in range(4):  # four unfinished 1 MiB bodies: the whole budget
        stream = svc.client.stream()
        await stream.send(_headers())
        await stream.send(request_body(CHUNK, end_of_stream=False))
        held.append(stream)
    budget = svc.service.extproc.body_budget  # type: ignore[union-attr]

    async def spent() -> bool:
        return budget.used == BUDGET

    await eventually(spent, what="the four bodies to be buffered")

    refused = await svc.exchange(HttpRequest(body=completion("x" * 1000)))
    assert refused.immediate is not None
    assert refused.immediate.status == 503
    assert b"memory budget" in refused.immediate.body

    declared = await svc.exchange(
        HttpRequest(body=completion("y"), headers=[("content-length", str(BUDGET + 1))])
    )
    assert declared.immediate is not None
    assert declared.immediate.status == 413  # could never fit

    for stream in held:
        assert stream.cancel()

    async def returned() -> bool:
        return budget.used == 0

    await eventually(returned, what="the budget to be given back")
    assert (await svc.exchange(HttpRequest(body=completion("z")))).destination == P0


async def test_a_buffered_response_over_the_budget_is_passed_through(start_service: StartService) -> None:
    svc = await start_service(pods=1, max_buffered_body_bytes=1 << 20)
    body = b'{"id":"r","usage":{"prompt_tokens":3,"completion_tokens":4}}' + b" " * (2 << 20)
    chunks = [body[i : i + (256 << 10)] for i in range(0, len(body), 256 << 10)]
    result = await svc.exchange(HttpRequest(body=completion("r")), UpstreamResponse(chunks=chunks))
    assert result.response_body == body
    assert svc.service.extproc.body_budget.used == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("value", ["¹", "9" * 5000])
async def test_a_content_length_that_is_no_number_is_ignored(start_service: StartService, value: str) -> None:
    svc = await start_service(pods=1)
    result = await svc.exchange(HttpRequest(body=completion("x"), headers=[("content-length", value)]))
    assert result.destination == P0
