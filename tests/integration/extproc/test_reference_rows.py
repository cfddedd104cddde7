"""The reference hermetic scenarios (§5.1) that concern the protocol, byte for byte where it says so.

Differences on purpose: a rewritten body is compact JSON in the client's key order (the reference sorts
keys), and a body whose model is not rewritten is forwarded byte-identical (the reference re-serializes).
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from picker.routing.openai import parse_passthrough
from picker.testing.envoy import HttpRequest, UpstreamResponse
from tests.integration.extproc.conftest import POD_1, POD_2, POD_3, FakeRouter, StartHarness

pytestmark = pytest.mark.integration

NO_CANDIDATES = b"failed to find endpoint candidates for serving the request"


def req_llm(prompt: str, model: str, target: str, **kwargs: object) -> HttpRequest:
    """The reference test builder ``ReqLLM``: headers hi/x-request-id/objective/rewrite + one JSON body."""
    body = orjson.dumps({"prompt": prompt, "max_tokens": 100, "temperature": 0, "model": model})
    return HttpRequest(
        path="/v1/completions",
        body=body,
        request_id="test-request-id",
        content_type=None,
        headers=[
            ("hi", "mom"),
            ("x-gateway-inference-objective", model),
            ("x-gateway-model-name-rewrite", target),
        ],
        **kwargs,  # type: ignore[arg-type]
    )


async def test_row1_routed_request_exact_replies(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1, POD_2, POD_3)[1:2]))
    result = await h.client.exchange(req_llm("test1", "my-model", "my-model-12345"))
    expected_body = b'{"prompt":"test1","max_tokens":100,"temperature":0,"model":"my-model-12345"}'
    assert len(result.replies) == 2
    assert result.clear_route_cache
    assert result.request_set_headers == {
        ":method": "POST",
        ":path": "/v1/completions",
        ":authority": "picker.test",
        ":scheme": "http",
        "x-gateway-destination-endpoint": POD_2,
        "content-length": str(len(expected_body)),
        "hi": "mom",
        "x-request-id": "test-request-id",
    }
    assert result.metadata_destination == POD_2
    assert result.request_body == expected_body
    assert result.request_body_chunks == 1
    assert result.code is not None
    assert result.code.name == "OK"
    # the reference capitalises Content-Length; the key on the wire is exactly that
    keys = [o.header.key for o in result.replies[0].request_headers.response.header_mutation.set_headers]
    assert "Content-Length" in keys
    assert h.observer.events[0] == ("routed", POD_2, len(expected_body))
    routed = h.router.requests[0]
    assert routed.request_id == "test-request-id"
    assert routed.headers["x-gateway-inference-objective"] == "my-model"
    assert routed.path == "/v1/completions"


async def test_row3_header_only_request_with_no_pods(start: StartHarness) -> None:
    h = await start(FakeRouter(()))
    result = await h.client.exchange(HttpRequest(method="GET", path="/v1/models", body=None))
    assert result.immediate is not None
    assert result.immediate.status == 500
    assert result.immediate.body == b"inference error: Internal - no pods available in datastore"
    assert result.immediate.headers == {}
    assert len(result.replies) == 1
    assert h.observer.kinds() == ["failed", "closed"]
    assert h.observer.events[0] == ("failed", "Internal", "", "")


async def test_row4_missing_model(start: StartHarness) -> None:
    h = await start(FakeRouter(()))
    result = await h.client.exchange(HttpRequest(body=b'{"prompt":"hello world"}'))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (
        400,
        b"inference error: BadRequest - model not found in request body",
    )
    assert len(result.replies) == 1


async def test_row6_passthrough_parser_forwards_bytes_unchanged(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_2,), parser=parse_passthrough))
    result = await h.client.exchange(
        HttpRequest(body=b"passthrough-parser", request_id="test-request-id", headers=[("hi", "mom")])
    )
    assert result.destination == POD_2
    assert result.request_body == b"passthrough-parser"
    assert result.request_set_headers["content-length"] == "18"


async def test_row8_invalid_json(start: StartHarness) -> None:
    h = await start()
    result = await h.client.exchange(HttpRequest(body=b"no healthy upstream", headers=[("hi", "mom")]))
    assert result.immediate is not None
    assert result.immediate.status == 400
    assert result.immediate.body.startswith(
        b"inference error: BadRequest - error unmarshaling request bodyMap: "
    )


async def test_row9_split_body_rewritten(start: StartHarness) -> None:
    h = await start()
    body = orjson.dumps({"prompt": "test4", "max_tokens": 100, "model": "sql-lora-sheddable"})
    request = HttpRequest(
        body=None,
        chunks=[body[:10], body[10:]],
        headers=[("x-gateway-model-name-rewrite", "sql-lora-1fdg3")],
    )
    result = await h.client.exchange(request)
    assert orjson.loads(result.request_body)["model"] == "sql-lora-1fdg3"
    assert result.request_set_headers["content-length"] == str(len(result.request_body))
    assert h.router.requests[0].body == body


async def test_unrewritten_body_is_forwarded_byte_identical(start: StartHarness) -> None:
    h = await start()
    body = b'{ "model" : "m",\n  "prompt": "x\\u00e9", "b": 1.0 }'
    result = await h.client.exchange(HttpRequest(body=body, chunk_size=7))
    assert result.request_body == body
    assert result.request_set_headers["content-length"] == str(len(body))


@pytest.mark.parametrize(
    ("subset", "destination", "error"),
    [
        (["192.168.1.1:8000", "192.168.1.2:8000", "192.168.1.3:8000"], POD_1, None),  # row 10
        (["192.168.1.3:8000"], POD_3, None),  # row 11: partial match
        (["192.168.1.99:8000"], None, 503),  # row 12: no match
        ([], None, 503),  # present but empty
        ("192.168.1.2:9999, 192.168.1.3:8000", POD_2, None),  # lwepp-style comma string, port ignored
    ],
)
async def test_rows10_12_subset_hint(
    start: StartHarness, subset: list[str] | str, destination: str | None, error: int | None
) -> None:
    h = await start(FakeRouter((POD_1, POD_2, POD_3)))
    result = await h.client.exchange(req_llm("test5", "m", "m", subset=subset))
    if error is None:
        assert result.destination == destination
    else:
        assert result.immediate is not None
        assert result.immediate.status == error
        assert result.immediate.body == b"inference error: ServiceUnavailable - " + NO_CANDIDATES


async def test_row13_model_not_in_objectives_passes_through(start: StartHarness) -> None:
    h = await start()
    body = b'{"prompt":"p","model":"direct-model"}'
    result = await h.client.exchange(
        HttpRequest(
            body=None, chunks=[body[:5], body[5:]], headers=[("x-gateway-model-name-rewrite", "direct-model")]
        )
    )
    assert result.request_body == body  # same model: not re-serialized
    assert result.destination == POD_2


async def test_row15_simple_get_is_answered_at_once(start: StartHarness) -> None:
    h = await start(FakeRouter((POD_1,)))
    request = HttpRequest(method="GET", path="/v1/models", body=None, content_type="text/event-stream")
    result = await h.client.exchange(request)
    assert len(result.replies) == 1
    assert result.destination == POD_1 == result.metadata_destination
    assert "content-length" not in result.request_set_headers
    generated = result.request_set_headers["x-request-id"]
    assert uuid.UUID(generated).version == 4
    assert h.router.requests[0].headers_only
    assert h.router.requests[0].request_id == generated


async def test_row16_response_only_buffered_json_in_two_chunks(start: StartHarness) -> None:
    h = await start()
    response = UpstreamResponse(
        headers=[("content-type", "application/json")],
        chunks=[b'{"id":"x","usage":', b'{"prompt_tokens":3}}'],
        status_key="status",
        report_served=False,
    )
    result = await h.client.exchange(None, response)
    assert len(result.replies) == 2
    assert result.response_set_headers == {
        "x-went-into-resp-headers": "true",
        "content-type": "application/json",
        "status": "200",
    }
    assert result.response_body == b'{"id":"x","usage":{"prompt_tokens":3}}'
    assert result.response_body_chunks == 1


async def test_row17_invalid_json_response_forwarded_unchanged(start: StartHarness) -> None:
    h = await start()
    response = UpstreamResponse(chunks=[b"no healthy ", b"upstream"], report_served=False)
    result = await h.client.exchange(None, response)
    assert result.response_body == b"no healthy upstream"
    assert result.response_body_chunks == 1


async def test_row18_trailing_empty_eos_chunk(start: StartHarness) -> None:
    h = await start()
    full = b'{"choices":[],"usage":{"prompt_tokens":1}}'
    response = UpstreamResponse(chunks=[full, b""], report_served=False)
    result = await h.client.exchange(None, response)
    assert len(result.replies) == 2
    assert result.response_body == full
    assert result.response_body_chunks == 1


async def test_row19_sse_token_counting_routed(start: StartHarness) -> None:
    h = await start()
    chunks = [
        b"data: {}\n\n",
        b'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\ndata: [DONE]\n\n',
        b"",
    ]
    response = UpstreamResponse(
        headers=[("content-type", "text/event-stream")], chunks=chunks, status_key="status"
    )
    result = await h.client.exchange(HttpRequest(body=b'{"model":"m","prompt":"p"}'), response)
    response_replies = result.replies[2:]
    assert len(response_replies) == 4
    assert result.response_set_headers == {
        "x-went-into-resp-headers": "true",
        "content-type": "text/event-stream",
        "status": "200",
    }
    echoed = [r.response_body.response.body_mutation.streamed_response for r in response_replies[1:]]
    assert [(e.body, e.end_of_stream) for e in echoed] == [(c, i == 2) for i, c in enumerate(chunks)]
    usage = h.observer.usages[0]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 10, 17)
    await h.observer.wait_closed(1)
    assert h.observer.kinds() == ["routed", "complete", "closed"]
