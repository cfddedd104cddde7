"""Header-only requests, the subset hint, fallbacks, shedding and request errors through the real service."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from picker.testing.envoy import HttpRequest
from picker.testing.fake_server import FakeServer
from picker.testing.poll import eventually
from tests.integration.service.conftest import (
    P0,
    P1,
    P2,
    Pod,
    StartService,
    completion,
    config_text,
    finish,
    hold,
    pod,
    req_llm,
    sample,
    samples,
)

pytestmark = pytest.mark.integration

NO_CANDIDATES = (
    b"inference error: ServiceUnavailable - failed to find endpoint candidates for serving the request"
)
SHED_PREFIX = b"inference error: ResourceExhausted - "

# ------------------------------------------------------------------------------------------ header-only


async def test_header_only_picks_a_random_pool_endpoint_without_content_length(
    start_service: StartService,
) -> None:
    svc = await start_service()
    seen = Counter()
    for _ in range(30):
        result = await svc.exchange(HttpRequest(method="GET", path="/v1/models", body=None))
        assert len(result.replies) == 1
        assert result.destination == result.metadata_destination
        assert "content-length" not in result.request_set_headers
        seen[result.destination] += 1
    assert set(seen) <= {P0, P1, P2}
    assert len(seen) >= 2  # uniformly random over three pods, not a fixed pick
    # a header-only request is not dispatched work: nothing was counted against any endpoint
    rows = await svc.endpoint_rows()
    assert {a: r["dispatched_since_scrape"] for a, r in rows.items()} == {P0: 0, P1: 0, P2: 0}


async def test_header_only_ignores_the_subset_hint(start_service: StartService) -> None:
    svc = await start_service(pods=1)
    result = await svc.exchange(HttpRequest(method="GET", body=None, subset=["127.0.0.100:8000"]))
    assert result.immediate is None
    assert result.destination == P0


async def test_header_only_with_an_empty_pool_is_a_500(start_service: StartService) -> None:
    svc = await start_service(pods=2)
    svc.service.datastore.replace_endpoints(())
    result = await svc.exchange(HttpRequest(method="GET", body=None))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (
        500,
        b"inference error: Internal - no pods available in datastore",
    )
    # a body request to the empty pool has no candidates: 503 (reference)
    result = await svc.exchange(HttpRequest(body=completion()))
    assert result.immediate is not None
    assert (result.immediate.status, result.immediate.body) == (503, NO_CANDIDATES)


# ------------------------------------------------------------------------------------------ subset hint


@pytest.mark.parametrize(
    ("subset", "destination"),
    [
        pytest.param([P0, P1, P2], P1, id="all-listed-best-wins"),
        pytest.param([P0, P2], P0, id="partial-best-of-listed"),
        pytest.param(["127.0.0.4:9999"], P2, id="ip-match-port-ignored"),
        pytest.param("127.0.0.100:8000, 127.0.0.4:8000", P2, id="comma-string"),
        pytest.param(["127.0.0.100:8000"], None, id="no-match-503"),
        pytest.param([], None, id="empty-list-503"),
    ],
)
async def test_subset_hint(
    start_service: StartService, subset: list[str] | str, destination: str | None
) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(1, 0.2), Pod(0, 0.1), Pod(10, 0.2))
    result = await svc.exchange(req_llm("subset", "m", "m", subset=subset))
    if destination is None:
        assert result.immediate is not None
        assert (result.immediate.status, result.immediate.body) == (503, NO_CANDIDATES)
    else:
        assert result.immediate is None
        assert result.destination == destination


async def test_disable_endpoint_subset_filter_ignores_the_hint(start_service: StartService) -> None:
    svc = await start_service(disable_endpoint_subset_filter=True)
    await svc.set_metrics(Pod(5, 0.2), Pod(0, 0.1), Pod(10, 0.2))  # P1 stays best after two picks
    for subset in (["127.0.0.100:8000"], [P2], []):
        result = await svc.exchange(req_llm("subset", "m", "m", subset=subset))
        assert result.destination == P1, subset


# ------------------------------------------------------------------------------------------ fallbacks


async def test_fallbacks_are_distinct_in_score_order_in_header_and_metadata(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=4, config=config_text(max_endpoints=3))
    await svc.set_metrics(Pod(8, 0.1), Pod(0, 0.1), Pod(4, 0.1), Pod(2, 0.1))  # best: P1, then pod 3, P2
    result = await svc.exchange(req_llm("fallbacks", "m", "m"))
    expected = f"{P1},{pod(3)},{P2}"
    assert result.destination == expected
    assert result.metadata_destination == expected
    assert len(set(result.endpoints)) == 3
    # only the primary is charged with the request
    rows = await svc.endpoint_rows()
    assert {a: r["dispatched_since_scrape"] for a, r in rows.items()} == {P0: 0, P1: 1, P2: 0, pod(3): 0}


async def test_fallbacks_are_capped_by_the_pool_size(start_service: StartService) -> None:
    svc = await start_service(pods=2, config=config_text(max_endpoints=3))
    await svc.set_metrics(Pod(3, 0.1), Pod(0, 0.1))
    result = await svc.exchange(req_llm("fallbacks", "m", "m"))
    assert result.endpoints == (P1, P0)


# ------------------------------------------------------------------------------------------ shedding

#: Saturation uses a long staleness threshold so that an injected scrape stays fresh however slow the
#: machine is; the stale case injects a scrape older than it.
DETECTOR = {"queueDepthThreshold": 5, "kvCacheUtilThreshold": 0.8, "metricsStalenessThreshold": "30s"}


def shed_request(objective: str, **kwargs: object) -> HttpRequest:
    return HttpRequest(
        body=completion("shed me", "m"), headers=[("x-gateway-inference-objective", objective)], **kwargs
    )


async def test_sheddable_request_is_rejected_when_the_pool_is_saturated(start_service: StartService) -> None:
    svc = await start_service(config=config_text(detector=DETECTOR))
    await svc.set_metrics(Pod(10, 0.2), Pod(6, 0.5), Pod(0, 0.95))  # every endpoint over a threshold
    result = await svc.exchange(shed_request("batch-sheddable"))
    assert result.immediate is not None
    assert result.immediate.status == 429
    assert result.immediate.body.startswith(SHED_PREFIX)
    # priority >= 0 is never shed, however saturated
    for objective in ("sql-lora-sheddable", "my-model", "inference-objective-with-priority-4", "unknown"):
        routed = await svc.exchange(shed_request(objective))
        assert routed.immediate is None, objective
    text = await svc.metrics()
    labels = {"model_name": "m", "target_model_name": "m"}
    assert (
        sample(text, "inference_objective_request_error_total", **labels, error_code="ResourceExhausted") == 1
    )
    assert sample(text, "inference_objective_request_total", **labels, priority="-1") is None
    assert sample(text, "inference_objective_request_total", **labels, priority="2") == 1


async def test_sheddable_request_is_routed_when_the_pool_is_not_saturated(
    start_service: StartService,
) -> None:
    svc = await start_service(config=config_text(detector=DETECTOR))
    await svc.set_metrics(Pod(1, 0.2), Pod(0, 0.1), Pod(2, 0.3))
    result = await svc.exchange(shed_request("batch-sheddable"))
    assert result.immediate is None
    assert result.destination == P1
    text = await svc.metrics()
    assert (
        sample(
            text, "inference_objective_request_total", model_name="m", target_model_name="m", priority="-1"
        )
        == 1
    )


async def test_stale_metrics_count_as_saturated(start_service: StartService) -> None:
    svc = await start_service(config=config_text(detector=DETECTOR))
    await svc.set_metrics(Pod(0, 0.1), Pod(0, 0.1), Pod(0, 0.1), at=time.monotonic() - 60)
    result = await svc.exchange(shed_request("batch-sheddable"))
    assert result.immediate is not None
    assert result.immediate.status == 429


async def test_saturation_is_judged_over_the_subset_candidates(start_service: StartService) -> None:
    svc = await start_service(pods=2, config=config_text(detector=DETECTOR))
    await svc.set_metrics(Pod(0, 0.1), Pod(6, 0.5))  # pool mean 0.66 (not saturated); P1 alone 1.2
    assert (await svc.exchange(shed_request("batch-sheddable"))).destination == P0
    assert (await svc.exchange(shed_request("batch-sheddable", subset=[P0]))).destination == P0
    shed = await svc.exchange(shed_request("batch-sheddable", subset=[P1]))
    assert shed.immediate is not None
    assert shed.immediate.status == 429


async def test_sheddable_routing_with_live_scrapes_of_idle_model_servers(start_service: StartService) -> None:
    """Real fake vLLM servers scraped every 50 ms: idle, so not saturated, so a sheddable request routes."""
    servers = [FakeServer("vllm"), FakeServer("sglang")]
    for server in servers:
        await server.start()
    try:
        svc = await start_service(
            endpoints=[s.address for s in servers],
            config=config_text(detector=DETECTOR),
            refresh_metrics_interval=0.05,
        )

        async def scraped() -> bool:
            rows = await svc.endpoint_rows()
            return all(r["scrapes_ok"] > 0 and r["waiting"] is not None for r in rows.values())

        await eventually(scraped, what="both fake servers to be scraped")
        rows = await svc.endpoint_rows()
        assert {r["engine"] for r in rows.values()} == {"vllm", "sglang"}
        result = await svc.exchange(shed_request("batch-sheddable"))
        assert result.immediate is None
        assert result.destination in {s.address for s in servers}
    finally:
        for server in servers:
            await server.stop()


# ------------------------------------------------------------------------------------------ errors

BAD_REQUESTS = [
    pytest.param(
        "/v1/completions",
        b'{"model": "m", "prompt": ',
        400,
        b"inference error: BadRequest - error unmarshaling request bodyMap: ",
        "BadRequest",
        id="invalid-json",
    ),
    pytest.param(
        "/v1/completions",
        b'{"prompt": "hello"}',
        400,
        b"inference error: BadRequest - model not found in request body",
        "BadRequest",
        id="missing-model",
    ),
    pytest.param(
        "/v1/completions",
        b'{"model": 7, "prompt": "hello"}',
        400,
        b"inference error: BadRequest - model not found in request body",
        "BadRequest",
        id="model-not-a-string",
    ),
    pytest.param(
        "/v1/chat/completions",
        b'{"model": "m"}',
        400,
        b"inference error: BadRequest - invalid chat completions request: must have valid messages field",
        "BadRequest",
        id="chat-without-messages",
    ),
    pytest.param(
        "/v1/completions",
        b'{"model": "m"}',
        400,
        b"inference error: BadRequest - invalid completions request: must have prompt field",
        "BadRequest",
        id="completions-without-prompt",
    ),
    pytest.param(
        "/v1/completions",
        b'{"model": "m", "prompt": "caf\xe9 \xff"}',
        400,
        b"inference error: BadRequest - error unmarshaling request bodyMap: request body is not valid UTF-8",
        "BadRequest",
        id="non-utf8",
    ),
    pytest.param(
        "/v1/completions",
        completion("x" * 4000),
        413,
        b"inference error: PayloadTooLarge - request body exceeds the limit of 1024 bytes",
        "PayloadTooLarge",
        id="body-over-cap",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "prefix", "code"), BAD_REQUESTS)
async def test_bad_request_gets_one_clear_immediate_response_and_the_service_keeps_serving(
    start_service: StartService, *, path: str, body: bytes, status: int, prefix: bytes, code: str
) -> None:
    svc = await start_service(pods=2, config=config_text(picker_extra="request: {maxBodyBytes: 1Ki}\n"))
    await svc.set_metrics(Pod(0, 0.1), Pod(3, 0.1))
    # a request already being served upstream on another stream of the same connection
    open_stream, destination = await hold(svc.client, HttpRequest(body=completion("in flight")))
    assert destination == P0

    result = await svc.exchange(HttpRequest(path=path, body=body, chunk_size=512))
    assert result.immediate is not None
    assert result.immediate.status == status
    assert result.immediate.body.startswith(prefix), result.immediate.body
    assert result.request_body_chunks == 0

    await finish(open_stream)
    after = await svc.exchange(HttpRequest(body=completion("after")))
    assert after.immediate is None
    assert after.destination in {P0, P1}
    text = await svc.metrics()
    errors = [
        v
        for labels, v in samples(text, "inference_objective_request_error_total")
        if labels["error_code"] == code
    ]
    assert errors == [1.0]


async def test_declared_content_length_over_the_cap_is_refused_before_the_body(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=1, config=config_text(picker_extra="request: {maxBodyBytes: 1Ki}\n"))
    stream = svc.client.stream()
    request = HttpRequest(body=completion(), headers=[("content-length", "4096")])
    await stream.send(request.messages()[0])  # headers only: the body is never sent
    reply = await stream.recv()
    assert reply is not None
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 413
    assert await stream.recv() is None


async def test_rewritten_body_is_valid_compact_json_with_the_right_length(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=1)
    body = b'{\n  "model": "m",\n  "prompt": "caf\\u00e9 \xe2\x98\x95",\n  "n": 1.5\n}'
    result = await svc.exchange(
        HttpRequest(body=body, chunk_size=7, headers=[("x-gateway-model-name-rewrite", "m-lora")])
    )
    assert orjson.loads(result.request_body) == {"model": "m-lora", "prompt": "café ☕", "n": 1.5}
    assert b"\n" not in result.request_body
    assert result.request_set_headers["content-length"] == str(len(result.request_body))
