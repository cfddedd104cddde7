"""The reference EPP's hermetic scenario table (gie-epp.md §5.1, rows 1-19) through the real service.

Same pods, same injected metrics, same requests; the expected endpoint is the reference's with its IP
translated (192.168.1.<i+1> → 127.0.0.<i+2>). Deliberate differences, as documented in the README:

* a body whose model is not rewritten is forwarded byte-identical (the reference re-serializes it), and a
  rewritten one is compact JSON in the client's key order (the reference sorts keys);
* objectives and the model rewrite come from our PickerConfig document (standalone mode has no CRDs);
  the reference reads InferenceObjective / InferenceModelRewrite objects. Rows 9, 13 and 14 depend on them.
* the reference's tracing spans (row 1): ``gateway.request`` is recorded with ``--tracing`` (checked in
  ``tests/integration/cli/test_tracing.py``); the director's child span ``gateway.request_orchestration``
  is not: the decision is an event and attributes of the one span.
"""

from __future__ import annotations

import orjson
import pytest

from picker.testing.envoy import HttpRequest, response_body, response_headers
from tests.integration.service.conftest import (
    P0,
    P1,
    P2,
    Pod,
    StartService,
    config_text,
    req_llm,
    sample,
)

pytestmark = pytest.mark.integration

NO_CANDIDATES = (
    b"inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
)


def expected_set_headers(destination: str, body: bytes) -> dict[str, str]:
    """What the reference's row expectations list, plus the pseudo headers our client sends."""
    return {
        ":method": "POST",
        ":path": "/v1/completions",
        ":authority": "picker.test",
        ":scheme": "http",
        "x-gateway-destination-endpoint": destination,
        "content-length": str(len(body)),
        "hi": "mom",
        "x-request-id": "test-request-id",
    }


async def test_row1_select_lower_queue_and_kv_cache(start_service: StartService) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(3, 0.2), Pod(0, 0.1), Pod(10, 0.2))  # totals 1.5 / 1.9 / 0.8
    result = await svc.exchange(req_llm("test1", "my-model", "my-model-12345"))
    body = b'{"prompt":"test1","max_tokens":100,"temperature":0,"model":"my-model-12345"}'
    assert len(result.replies) == 2
    assert result.clear_route_cache
    assert result.request_set_headers == expected_set_headers(P1, body)
    assert result.metadata_destination == P1
    assert result.request_body == body
    assert result.request_body_chunks == 1
    text = await svc.metrics()
    assert (
        sample(
            text,
            "inference_objective_request_total",
            model_name="my-model",
            target_model_name="my-model-12345",
            priority="2",
        )
        == 1
    )
    assert sample(text, "inference_pool_ready_pods", name="static") == 3


async def test_row2_select_active_lora_low_queue(start_service: StartService) -> None:
    svc = await start_service()
    await svc.set_metrics(
        Pod(0, 0.2, ("foo", "bar")), Pod(0, 0.1, ("foo", "sql-lora-1fdg2")), Pod(10, 0.2, ("foo", "bar"))
    )
    result = await svc.exchange(req_llm("test2", "sql-lora", "sql-lora-1fdg2"))
    assert result.destination == P1
    assert orjson.loads(result.request_body)["model"] == "sql-lora-1fdg2"
    text = await svc.metrics()
    labels = {"model_name": "sql-lora", "target_model_name": "sql-lora-1fdg2", "priority": "2"}
    assert sample(text, "inference_objective_request_total", **labels) == 1


async def test_row3_no_backend_pods_header_only(start_service: StartService) -> None:
    svc = await start_service()
    svc.service.datastore.replace_endpoints(())  # every pod gone (as the pod watcher reports it)
    result = await svc.exchange(HttpRequest(method="GET", body=None, content_type="application/json"))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (
        500,
        b"inference error: Internal - no pods available in datastore",
    )
    assert len(result.replies) == 1


async def test_row4_request_missing_model_field(start_service: StartService) -> None:
    svc = await start_service()
    svc.service.datastore.replace_endpoints(())
    result = await svc.exchange(HttpRequest(body=b'{"prompt":"hello world"}'))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (
        400,
        b"inference error: BadRequest - model not found in request body",
    )
    text = await svc.metrics()
    assert (
        sample(
            text,
            "inference_objective_request_error_total",
            model_name="",
            target_model_name="",
            error_code="BadRequest",
        )
        == 1
    )


async def test_row5_select_lora_despite_higher_kv(start_service: StartService) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(10, 0.2), Pod(10, 0.4, ("sql-lora-1fdg2",)), Pod(10, 0.3))  # 1.8 / 2.6 / 1.7
    result = await svc.exchange(req_llm("test3", "sql-lora", "sql-lora-1fdg2"))
    assert result.destination == P1
    assert result.metadata_destination == P1


async def test_row6_passthrough_parser(start_service: StartService) -> None:
    config = config_text(
        weights={"queue-scorer": 1, "kv-cache-utilization-scorer": 1}, parser="passthrough-parser"
    )
    svc = await start_service(config=config)
    await svc.set_metrics(Pod(3, 0.2), Pod(0, 0.1), Pod(10, 0.2))
    result = await svc.exchange(
        HttpRequest(
            body=b"passthrough-parser",
            request_id="test-request-id",
            content_type=None,
            headers=[("hi", "mom"), ("x-gateway-inference-objective", "my-model")],
        )
    )
    assert result.destination == P1
    assert result.request_body == b"passthrough-parser"
    assert result.request_set_headers["content-length"] == "18"
    text = await svc.metrics()
    labels = {"model_name": "", "target_model_name": "", "priority": "2"}
    assert sample(text, "inference_objective_request_total", **labels) == 1


async def test_row7_do_not_shed_by_default(start_service: StartService) -> None:
    svc = await start_service()
    # pool saturated (P1, P2 over the KV threshold, P0 over the queue threshold): priority 2 still routes
    await svc.set_metrics(Pod(6, 0.2, ("sql-lora-1fdg2",)), Pod(0, 0.85), Pod(10, 0.9))  # 2.2 / 1.15 / 0.1
    result = await svc.exchange(req_llm("test4", "sql-lora", "sql-lora-1fdg2"))
    assert result.immediate is None
    assert result.destination == P0


async def test_row8_invalid_json_body(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    result = await svc.exchange(HttpRequest(body=b"no healthy upstream", headers=[("hi", "mom")]))
    assert result.immediate is not None
    assert result.immediate.status == 400
    assert result.immediate.body.startswith(
        b"inference error: BadRequest - error unmarshaling request bodyMap: "
    )


async def test_row9_split_body_across_chunks(start_service: StartService) -> None:
    """Objective ``sql-lora-sheddable`` (priority unset → 0) comes from our PickerConfig document."""
    svc = await start_service(pods=2)
    await svc.set_metrics(Pod(4, 0.2, ("sql-lora-1fdg3",)), Pod(4, 0.85, ("sql-lora-1fdg3",)))
    body = orjson.dumps(
        {"max_tokens": 100, "model": "sql-lora-sheddable", "prompt": "test6", "temperature": 0}
    )
    request = HttpRequest(
        body=None,
        chunks=[body[:20], body[20:]],
        request_id="test-request-id",
        headers=[
            ("hi", "mom"),
            ("x-gateway-inference-objective", "sql-lora-sheddable"),
            ("x-gateway-model-name-rewrite", "sql-lora-1fdg3"),
        ],
    )
    result = await svc.exchange(request)
    assert result.destination == P0
    assert result.request_body == body.replace(b"sql-lora-sheddable", b"sql-lora-1fdg3")
    assert result.request_set_headers["content-length"] == str(len(result.request_body))
    text = await svc.metrics()
    labels = {"model_name": "sql-lora-sheddable", "target_model_name": "sql-lora-1fdg3", "priority": "0"}
    assert sample(text, "inference_objective_request_total", **labels) == 1


ALL_THREE = [P0, P1, P2]


@pytest.mark.parametrize(
    ("subset", "destination"),
    [
        pytest.param(ALL_THREE, P1, id="row10-best-from-subset"),
        pytest.param([P2], P2, id="row11-partial-match-despite-load"),
    ],
)
async def test_rows10_11_subsetting(start_service: StartService, subset: list[str], destination: str) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(0, 0.2), Pod(0, 0.1, ("sql-lora-1fdg2",)), Pod(10, 0.2))
    result = await svc.exchange(req_llm("test5", "sql-lora", "sql-lora-1fdg2", subset=subset))
    assert result.destination == destination
    assert result.metadata_destination == destination


async def test_row12_subsetting_no_pods_match(start_service: StartService) -> None:
    svc = await start_service(pods=2)
    await svc.set_metrics(Pod(0, 0.2), Pod(0, 0.1))
    result = await svc.exchange(req_llm("test6", "sql-lora", "sql-lora-1fdg2", subset=["127.0.0.100:8000"]))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (503, NO_CANDIDATES)
    text = await svc.metrics()
    labels = {
        "model_name": "sql-lora",
        "target_model_name": "sql-lora-1fdg2",
        "error_code": "ServiceUnavailable",
    }
    assert sample(text, "inference_objective_request_error_total", **labels) == 1


async def test_row13_model_not_rewritten_split_body(start_service: StartService) -> None:
    """Objective ``direct-model`` (priority 2) comes from our PickerConfig document. The model is not
    rewritten, so the body is forwarded byte-identical (the reference re-serializes)."""
    svc = await start_service(pods=1)
    await svc.set_metrics(Pod(0, 0.1))
    body = b'{"prompt": "test7", "model": "direct-model", "max_tokens": 100}'
    request = HttpRequest(
        body=None,
        chunks=[body[:9], body[9:]],
        headers=[
            ("x-gateway-inference-objective", "direct-model"),
            ("x-gateway-model-name-rewrite", "direct-model"),
        ],
    )
    result = await svc.exchange(request)
    assert result.destination == P0
    assert result.request_body == body
    text = await svc.metrics()
    labels = {"model_name": "direct-model", "target_model_name": "direct-model", "priority": "2"}
    assert sample(text, "inference_objective_request_total", **labels) == 1


async def test_row14_rewrite_request_model(start_service: StartService) -> None:
    """The reference's InferenceModelRewrite ``rewrite-test`` is our PickerConfig ``modelRewrites`` entry."""
    svc = await start_service(pods=1)
    await svc.set_metrics(Pod(0, 0.1, ("rewritten-model",)))
    result = await svc.exchange(req_llm("test-rewrite", "model-to-be-rewritten", "model-to-be-rewritten"))
    assert result.destination == P0
    assert orjson.loads(result.request_body) == {
        "prompt": "test-rewrite",
        "max_tokens": 100,
        "temperature": 0,
        "model": "rewritten-model",
    }
    text = await svc.metrics()
    labels = {"model_name": "model-to-be-rewritten", "target_model_name": "rewritten-model", "priority": "0"}
    assert sample(text, "inference_objective_request_total", **labels) == 1
    decision = {
        "model_rewrite_name": "rewrite-test",
        "model_name": "model-to-be-rewritten",
        "target_model": "rewritten-model",
    }
    assert sample(text, "inference_extension_model_rewrite_decisions_total", **decision) == 1


async def test_row15_simple_get_header_only(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    result = await svc.exchange(
        HttpRequest(method="GET", body=None, content_type="text/event-stream", headers=[("status", "200")])
    )
    assert len(result.replies) == 1
    assert result.clear_route_cache
    assert result.destination == P0
    assert result.metadata_destination == P0
    assert "content-length" not in result.request_set_headers
    assert result.request_set_headers["x-request-id"]  # generated


def _response_replies(replies: list[object]) -> tuple[dict[str, str], list[tuple[bytes, bool]]]:
    headers: dict[str, str] = {}
    chunks: list[tuple[bytes, bool]] = []
    for reply in replies:
        kind = reply.WhichOneof("response")  # type: ignore[attr-defined]
        if kind == "response_headers":
            mutation = reply.response_headers.response.header_mutation  # type: ignore[attr-defined]
            headers = {o.header.key: o.header.raw_value.decode() for o in mutation.set_headers}
        else:
            assert kind == "response_body", kind
            streamed = reply.response_body.response.body_mutation.streamed_response  # type: ignore[attr-defined]
            chunks.append((bytes(streamed.body), streamed.end_of_stream))
    return headers, chunks


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param(
            [(b'{"max_tokens":100,"model":"sql-lo', False), (b'ra-sheddable","prompt":"test6"}', True)],
            b'{"max_tokens":100,"model":"sql-lora-sheddable","prompt":"test6"}',
            id="row16-multi-chunk-json",
        ),
        pytest.param([(b"no healthy upstream", True)], b"no healthy upstream", id="row17-invalid-json"),
        pytest.param(
            [(b'{"model":"m","usage":{"prompt_tokens":3}}', False), (b"", True)],
            b'{"model":"m","usage":{"prompt_tokens":3}}',
            id="row18-empty-eos-chunk",
        ),
    ],
)
async def test_rows16_18_response_buffering(
    start_service: StartService, chunks: list[tuple[bytes, bool]], expected: bytes
) -> None:
    """Response-only streams (the reference's rows send no request phase): one headers reply, then the
    whole body in one chunk with end_of_stream."""
    svc = await start_service(pods=1)
    messages = [response_headers([("content-type", "application/json")])]
    messages += [response_body(chunk, end_of_stream=eos) for chunk, eos in chunks]
    raw = await svc.client.raw(messages)
    assert len(raw.replies) == 2
    headers, body_chunks = _response_replies(raw.replies)
    assert headers == {"x-went-into-resp-headers": "true", "content-type": "application/json"}
    assert body_chunks == [(expected, True)]


async def test_row19_response_streaming_sse_token_counting(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    sse = [
        (b"data: {}", False),
        (
            b'data: {"usage":{"prompt_tokens":7,"total_tokens":17,"completion_tokens":10}}\ndata: [DONE]',
            False,
        ),
        (b"", True),
    ]
    messages = [response_headers([("content-type", "text/event-stream"), ("status", "200")])]
    messages += [response_body(chunk, end_of_stream=eos) for chunk, eos in sse]
    raw = await svc.client.raw(messages)
    assert len(raw.replies) == 4
    headers, body_chunks = _response_replies(raw.replies)
    assert headers == {
        "x-went-into-resp-headers": "true",
        "content-type": "text/event-stream",
        "status": "200",
    }
    assert body_chunks == sse
    text = await svc.metrics()
    empty = {"model_name": "", "target_model_name": ""}
    assert sample(text, "inference_objective_input_tokens_count", **empty) == 1
    assert sample(text, "inference_objective_input_tokens_sum", **empty) == 7
    assert sample(text, "inference_objective_output_tokens_sum", **empty) == 10
