"""What each stream reports to its lease at the end (``picker.state.outcomes.Outcome``): the response status
(0 without response headers), the served endpoint from the gateway's metadata, and the timing of complete
responses; nothing when every response phase was skipped; always before the release."""

from __future__ import annotations

import math

import orjson
import pytest

from picker.extproc.protocol import ResponseSkip
from picker.state.outcomes import Outcome
from picker.testing.envoy import HttpRequest, UpstreamResponse
from tests.integration.extproc.conftest import POD_1, POD_2, FakeRouter, Harness, StartHarness, StepClock

pytestmark = pytest.mark.integration

BODY = orjson.dumps({"model": "m", "prompt": "p" * 4000})  # a 1,000-token prompt estimate
STREAM_BODY = orjson.dumps({"model": "m", "prompt": "p" * 4000, "stream": True})


async def outcome(h: Harness) -> Outcome:
    await h.observer.wait_closed(1)
    (lease,) = h.router.leases
    assert lease.releases == 1
    (got,) = lease.outcomes
    return got


async def test_a_streamed_response_reports_status_served_and_timing(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1, POD_2), max_endpoints=2), clock=StepClock(0.25))
    response = UpstreamResponse(
        headers=[("content-type", "text/event-stream")],
        chunks=[b'data: {"x":1}\n\n', b'data: {"x":2}\n\n', b'data: {"x":3}\n\n', b"data: [DONE]\n\n"],
    )
    await h.client.exchange(HttpRequest(body=STREAM_BODY), response)
    got = await outcome(h)
    assert (got.endpoints, got.served, got.status, got.prompt_tokens) == ((POD_1, POD_2), POD_1, 200, 1000)
    # every clock reading is 0.25 s later: request headers, then one reading per body chunk
    assert got.ttfb_s == pytest.approx(0.25)
    assert got.tpot_s == pytest.approx(0.25)
    assert math.isnan(got.ntpot_s)


async def test_a_buffered_response_reports_time_per_output_token(start: StartHarness) -> None:
    h = await start(clock=StepClock(0.5))
    upstream = orjson.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4}})
    await h.client.exchange(HttpRequest(body=BODY), UpstreamResponse(chunks=[upstream]))
    got = await outcome(h)
    assert got.status == 200
    assert got.ntpot_s == pytest.approx(0.5 / 4)
    assert math.isnan(got.ttfb_s)


async def test_the_served_endpoint_and_an_error_status_are_reported(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1, POD_2), max_endpoints=2))
    await h.client.exchange(HttpRequest(body=BODY), UpstreamResponse(status=503, served_endpoint=POD_2))
    got = await outcome(h)
    assert (got.served, got.status) == (POD_2, 503)
    assert math.isnan(got.ntpot_s)


async def test_no_response_headers_is_status_zero(start: StartHarness) -> None:
    h = await start()
    await h.client.exchange(HttpRequest(body=BODY))  # the request only: the stream then ends
    got = await outcome(h)
    assert (got.status, got.served) == (0, None)


async def test_nothing_is_reported_when_every_response_phase_is_skipped(start: StartHarness) -> None:
    h = await start(skip_response=lambda _d: ResponseSkip.ALL)
    await h.client.exchange(HttpRequest(body=BODY), UpstreamResponse())
    await h.observer.wait_closed(1)
    assert h.router.leases[0].outcomes == []


async def test_with_the_body_skipped_the_status_still_arrives(start: StartHarness) -> None:
    h = await start(skip_response=lambda _d: ResponseSkip.BODY)
    result = await h.client.exchange(HttpRequest(body=BODY), UpstreamResponse(status=502, chunks=[b"{}"]))
    assert result.mode_override is not None
    assert result.mode_override.response_header_mode == result.mode_override.SEND
    got = await outcome(h)
    assert got.status == 502
