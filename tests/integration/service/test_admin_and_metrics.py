"""The admin API and ``/metrics`` of the running service, after real traffic over ext_proc:
reference metric names, types and labels; ``/debug/explain`` (the decision record, without side
effects); ``/debug/endpoints``; and no prompt text in logs or debug output."""

from __future__ import annotations

import logging
import re

import orjson
import pytest

from picker.errors import StartupError
from picker.testing.envoy import HttpRequest, UpstreamResponse
from picker.testing.poll import eventually
from tests.integration.service.conftest import (
    P0,
    P1,
    P2,
    Pod,
    ServiceHarness,
    StartService,
    completion,
    config_text,
    req_llm,
    sample,
    samples,
)

pytestmark = pytest.mark.integration

CHAT = orjson.dumps(
    {
        "model": "chat-model",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)
SSE_CHUNKS = [
    (
        b'data: {"object":"chat.completion.chunk","model":"chat-model-lora",'
        b'"choices":[{"delta":{"content":"hi"}}]}\n\n'
    ),
    (
        b'data: {"object":"chat.completion.chunk","model":"chat-model-lora","choices":[],'
        b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}\n\ndata: [DONE]\n\n'
    ),
]

NO_CANDIDATES = "failed to find endpoint candidates for serving the request"

#: The reference's metric names (gie-epp.md §4) that the service exports, with their types.
REFERENCE_TYPES = {
    "inference_objective_request_total": "counter",
    "inference_objective_request_error_total": "counter",
    "inference_objective_request_duration_seconds": "histogram",
    "inference_objective_normalized_time_per_output_token_seconds": "histogram",
    "inference_objective_request_sizes": "histogram",
    "inference_objective_response_sizes": "histogram",
    "inference_objective_input_tokens": "histogram",
    "inference_objective_output_tokens": "histogram",
    "inference_objective_prompt_cached_tokens": "histogram",
    "inference_objective_running_requests": "gauge",
    "inference_pool_average_kv_cache_utilization": "gauge",
    "inference_pool_average_queue_size": "gauge",
    "inference_pool_average_running_requests": "gauge",
    "inference_pool_ready_pods": "gauge",
    "inference_pool_per_pod_queue_size": "gauge",
    "inference_extension_info": "gauge",
    "inference_extension_scheduler_e2e_duration_seconds": "histogram",
    "inference_extension_model_rewrite_decisions_total": "counter",
}


async def _traffic(svc: ServiceHarness) -> int:
    """A streamed chat request with a model rewrite and usage, a bad request and an upstream 500.
    Returns the size of the chat body as forwarded (rewritten)."""
    routed = await svc.exchange(
        HttpRequest(
            path="/v1/chat/completions",
            body=CHAT,
            headers=[
                ("x-gateway-inference-objective", "my-model"),
                ("x-gateway-model-name-rewrite", "chat-model-lora"),
            ],
        ),
        UpstreamResponse(headers=(("content-type", "text/event-stream"),), chunks=SSE_CHUNKS),
    )
    assert routed.response_body_chunks == 2
    # the client sees its own model name again
    assert routed.response_body == b"".join(SSE_CHUNKS).replace(b'"chat-model-lora"', b'"chat-model"')
    bad = await svc.exchange(HttpRequest(body=b"{not json"))
    assert bad.immediate is not None
    upstream_error = await svc.exchange(
        HttpRequest(body=completion(model="m")),
        UpstreamResponse(status=500, chunks=[b'{"error":{"message":"boom"}}']),
    )
    assert upstream_error.response_set_headers is not None
    return len(routed.request_body)


async def test_metrics_after_traffic_have_the_reference_names_types_and_labels(
    start_service: StartService,
) -> None:
    svc = await start_service()
    forwarded = await _traffic(svc)
    await svc.set_metrics(Pod(2, 0.4), Pod(4, 0.2), Pod(0, 0.0))
    text = await svc.metrics()

    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.MULTILINE))
    for name, kind in REFERENCE_TYPES.items():
        assert types.get(name) == kind, name
        assert helps[name].startswith("[ALPHA] "), name

    chat = {"model_name": "chat-model", "target_model_name": "chat-model-lora"}
    plain = {"model_name": "m", "target_model_name": "m"}
    assert sample(text, "inference_objective_request_total", **chat, priority="2") == 1
    assert sample(text, "inference_objective_request_total", **plain, priority="0") == 1
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
    assert (
        sample(text, "inference_objective_request_error_total", **plain, error_code="ModelServerError") == 1
    )
    assert sample(text, "inference_objective_request_sizes_count", **chat) == 1
    assert forwarded == len(CHAT) + len("-lora")
    assert sample(text, "inference_objective_request_sizes_sum", **chat) == forwarded  # the forwarded body
    assert sample(text, "inference_objective_request_sizes_bucket", **chat, le="64.0") == 0
    assert sample(text, "inference_objective_request_sizes_bucket", **chat, le="256.0") == 1
    assert sample(text, "inference_objective_request_duration_seconds_count", **chat) == 1
    assert sample(text, "inference_objective_response_sizes_sum", **chat) == sum(map(len, SSE_CHUNKS))
    assert sample(text, "inference_objective_input_tokens_sum", **chat) == 12
    assert sample(text, "inference_objective_output_tokens_sum", **chat) == 5
    assert sample(text, "inference_objective_output_tokens_bucket", **chat, le="8.0") == 1
    assert sample(text, "inference_objective_normalized_time_per_output_token_seconds_count", **chat) == 1
    assert sample(text, "inference_objective_running_requests", model_name="chat-model") == 0
    assert sample(text, "inference_extension_scheduler_e2e_duration_seconds_count") == 2
    assert sample(text, "inference_extension_info", commit="", build_ref="") == 1
    pool = {"name": "static"}
    assert sample(text, "inference_pool_average_queue_size", **pool) == 2
    assert sample(text, "inference_pool_average_kv_cache_utilization", **pool) == pytest.approx(0.2)
    assert sample(text, "inference_pool_average_running_requests", **pool) == 0
    assert sample(text, "inference_pool_ready_pods", **pool) == 3
    per_pod = {
        labels["model_server_pod"]: v for labels, v in samples(text, "inference_pool_per_pod_queue_size")
    }
    assert per_pod == {P0: 2, P1: 4, P2: 0}
    assert {tuple(sorted(labels)) for labels, _ in samples(text, "inference_pool_per_pod_queue_size")} == {
        ("model_server_pod", "name")
    }


async def test_removed_and_stale_endpoints_leave_no_per_pod_series(start_service: StartService) -> None:
    svc = await start_service()
    await svc.set_metrics(Pod(1, 0.1), Pod(2, 0.1), None)
    text = await svc.metrics()
    assert {
        labels["model_server_pod"] for labels, _ in samples(text, "inference_pool_per_pod_queue_size")
    } == {P0, P1}
    assert sample(text, "inference_pool_ready_pods", name="static") == 2
    svc.service.datastore.remove_endpoint(P1)
    text = await svc.metrics()
    assert {
        labels["model_server_pod"] for labels, _ in samples(text, "inference_pool_per_pod_queue_size")
    } == {P0}
    assert {labels["endpoint"] for labels, _ in samples(text, "picker_endpoint_inflight_requests")} == {
        P0,
        P2,
    }


# ------------------------------------------------------------------------------------------ /debug/explain


def _load(rows: dict[str, dict[str, object]]) -> dict[str, tuple[object, object]]:
    return {a: (row["inflight"], row["dispatched_since_scrape"]) for a, row in rows.items()}


async def test_explain_returns_the_decision_record_without_side_effects(start_service: StartService) -> None:
    config = config_text(
        filters=[("utilization-detector", {"queueDepthThreshold": 5, "metricsStalenessThreshold": "30s"})]
    )
    svc = await start_service(config=config)
    await svc.set_metrics(Pod(3, 0.2), Pod(0, 0.1, ("sql-lora-1fdg2",)), Pod(10, 0.2))
    before_rows = await svc.endpoint_rows()
    before_metrics = await svc.metrics()

    status, doc = await svc.post_json(
        "/debug/explain",
        {
            "path": "/v1/completions",
            "headers": {
                "x-gateway-inference-objective": "sql-lora",
                "x-gateway-model-name-rewrite": "sql-lora-1fdg2",
            },
            "body": {"model": "sql-lora", "prompt": "explain me"},
        },
    )
    assert status == 200
    assert doc["destination"] == P1
    assert doc["endpoints"] == [P1]
    assert (doc["incoming_model"], doc["target_model"], doc["priority"]) == ("sql-lora", "sql-lora-1fdg2", 2)
    assert doc["body_rewritten"] is True
    decision = doc["decision"]
    assert decision["candidates"] == [P0, P1, P2]
    (flt,) = decision["filters"]
    assert flt["filter_type"] == "utilization-detector"
    assert flt["removed"] == [P2]
    assert flt["reason"]
    scorers = {s["scorer_type"]: s for s in decision["scorers"]}
    assert set(scorers) == {
        "queue-scorer",
        "kv-cache-utilization-scorer",
        "prefix-cache-scorer",
        "lora-affinity-scorer",
    }
    assert {s["weight"] for s in scorers.values()} == {1.0}
    assert scorers["queue-scorer"]["scores"] == {P0: 0.0, P1: 1.0}
    assert scorers["kv-cache-utilization-scorer"]["scores"] == pytest.approx({P0: 0.8, P1: 0.9})
    assert scorers["lora-affinity-scorer"]["scores"] == {P0: 0.0, P1: 1.0}
    assert decision["totals"] == pytest.approx({P0: 0.8, P1: 2.9})
    assert decision["chosen"] == [P1]

    # asking changed nothing: no in-flight or dispatched count, no request counted, no scheduling observed
    assert _load(await svc.endpoint_rows()) == _load(before_rows) == {P0: (0, 0), P1: (0, 0), P2: (0, 0)}
    after_metrics = await svc.metrics()
    for metric in (
        "inference_objective_request_total",
        "inference_extension_scheduler_e2e_duration_seconds_count",
    ):
        assert samples(after_metrics, metric) == samples(before_metrics, metric)
    assert sample(after_metrics, "inference_extension_model_rewrite_decisions_total") is None

    # and the real request goes where the explanation said
    assert (await svc.exchange(req_llm("explain me", "sql-lora", "sql-lora-1fdg2"))).destination == P1


async def test_explain_reports_errors_with_their_wire_form(start_service: StartService) -> None:
    svc = await start_service()
    status, doc = await svc.post_json(
        "/debug/explain", {"body": {"model": "m", "prompt": "x"}, "subset": ["127.0.0.100:8000"]}
    )
    assert status == 200
    assert doc["error"] == {
        "code": "ServiceUnavailable",
        "status": 503,
        "message": NO_CANDIDATES,
        "wire_body": f"inference error: ServiceUnavailable - {NO_CANDIDATES}",
    }
    status, doc = await svc.post_json("/debug/explain", {"body": {"prompt": "x"}})
    assert doc["error"]["code"] == "BadRequest"
    status, _ = await svc.post_json("/debug/explain", {"body": {}, "unknown": 1})
    assert status == 422


# ------------------------------------------------------------------------------------------ /debug/endpoints

ENDPOINT_FIELDS = {
    "health",
    "latency",
    "name",
    "address",
    "pod",
    "engine",
    "waiting",
    "running",
    "kv_usage",
    "gpu_util",
    "lora_active",
    "lora_waiting",
    "max_lora",
    "block_size",
    "num_blocks",
    "metrics_age_s",
    "stale",
    "dispatched_since_scrape",
    "inflight",
    "prefill_tokens",
    "inflight_tokens",
    "prefix_entries",
    "models",
    "price",
    "last_error",
    "scrapes_ok",
    "scrapes_failed",
}


async def test_debug_endpoints(start_service: StartService) -> None:
    svc = await start_service(endpoints=[P0, f"{P1}@sglang", P2])
    await svc.set_metrics(Pod(3, 0.25, ("lora-a",)), Pod(1, 0.5), None)
    assert (await svc.exchange(HttpRequest(body=completion()))).destination == P1

    async def failure_recorded() -> bool:
        return (await svc.endpoint_rows())[P2]["scrapes_failed"] > 0

    await eventually(failure_recorded, what="a failed scrape of the unreachable endpoint")
    doc = await svc.get_json("/debug/endpoints")
    assert doc["pool"] == {
        "name": "static",
        "namespace": "default",
        "selector": {},
        "target_ports": [8000],
        "app_protocol": "http",
        "group": "inference.networking.k8s.io",
    }
    rows = {row["address"]: row for row in doc["endpoints"]}
    assert list(rows) == [P0, P1, P2]
    for row in rows.values():
        assert set(row) == ENDPOINT_FIELDS
    assert rows[P1]["engine"] == "sglang"
    assert (rows[P0]["waiting"], rows[P0]["kv_usage"], rows[P0]["lora_active"]) == (3, 0.25, ["lora-a"])
    assert rows[P0]["stale"] is False
    assert 0 <= rows[P0]["metrics_age_s"] < 60
    assert rows[P1]["dispatched_since_scrape"] == 1
    assert rows[P1]["inflight"] == 0
    assert rows[P2]["stale"] is True
    assert rows[P2]["metrics_age_s"] is None  # never scraped
    assert rows[P2]["waiting"] is None
    assert rows[P2]["last_error"]  # why the scrape failed
    assert rows[P0]["price"] == {"input_per_1m": None, "output_per_1m": None, "sources": ["none", "none"]}


# ------------------------------------------------------------------------------------------ prompt privacy

PROMPT = "zebra-quokka-7781 confidential"


async def test_no_prompt_text_in_logs_or_debug_output(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    svc = await start_service(config=config_text(picker_extra="request: {maxBodyBytes: 2Ki}\n"))
    await svc.set_metrics(Pod(1, 0.1), Pod(0, 0.1), Pod(2, 0.1))
    secret = PROMPT.encode()
    bodies = [
        completion(PROMPT),
        orjson.dumps({"model": "m", "messages": [{"role": "user", "content": PROMPT}]}),
        b'{"model": "m", "prompt": "' + secret + b'"',  # truncated JSON
        b'{"model": "m", "prompt": "' + secret + b'\xff"}',  # not UTF-8
        b'{"prompt": "' + secret + b'"}',  # no model
        b'{"model": "m", "prompt": "' + secret * 200 + b'"}',  # over the cap
        b'{"model": ["' + secret + b'"], "prompt": "x"}',
    ]
    paths = ["/v1/completions", "/v1/chat/completions"] + ["/v1/completions"] * 5
    for path, body in zip(paths, bodies, strict=True):
        await svc.exchange(
            HttpRequest(path=path, body=body, headers=[("x-gateway-model-name-rewrite", "m-lora")]),
            UpstreamResponse(chunks=[b'{"choices":[{"text":"' + secret + b'"}],"model":"m-lora"}']),
        )
    status, explained = await svc.post_json("/debug/explain", {"body": {"model": "m", "prompt": PROMPT}})
    assert status == 200
    outputs = [
        orjson.dumps(explained).decode(),
        orjson.dumps(await svc.get_json("/debug/endpoints")).decode(),
        orjson.dumps(await svc.get_json("/config")).decode(),
        await svc.metrics(),
    ]
    assert any(r.name.startswith("picker") for r in caplog.records)  # the service's logs were captured
    for record in caplog.records:
        assert "zebra-quokka" not in record.getMessage(), record.name
        assert "zebra-quokka" not in (record.exc_text or "")
    for out in outputs:
        assert "zebra-quokka" not in out


async def test_metrics_export_process_series_and_answer_head(start_service: StartService) -> None:
    svc = await start_service()
    text = await svc.metrics()
    # The standard process collector of prometheus_client, on the injected registry.
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds"):
        assert re.search(rf"^{name} \d", text, re.MULTILINE), name
    async with svc.http.head(svc.metrics_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain")
        assert await resp.read() == b""
    async with svc.http.post(svc.metrics_url + "/metrics") as resp:
        assert resp.status == 405


async def test_admin_api_has_its_own_loopback_port_and_the_metrics_port_shows_only_metrics(
    start_service: StartService,
) -> None:
    """The metrics port (exposed by the Service) answers /metrics and the probes only; /config, /debug/*
    and POST /debug/explain live on the admin port, bound to 127.0.0.1 by default."""
    svc = await start_service()
    assert svc.ports.admin != svc.ports.metrics
    sock_host = svc.service.admin_server.bound_host
    assert sock_host == "127.0.0.1"
    for path in ("/config", "/debug/endpoints", "/debug/tenants", "/openapi.json"):
        async with svc.http.get(svc.metrics_url + path) as resp:
            assert resp.status == 404, path
        async with svc.http.get(svc.admin + path) as resp:
            assert resp.status == 200, path
    async with svc.http.post(svc.metrics_url + "/debug/explain", json={"body": {"model": "m"}}) as resp:
        assert resp.status == 404
    status, doc = await svc.post_json("/debug/explain", {"body": {"model": "m", "prompt": "x"}})
    assert status == 200
    assert doc["destination"]
    for path in ("/metrics", "/healthz", "/readyz"):
        async with svc.http.get(svc.admin + path) as resp:
            assert resp.status == 404, path
        async with svc.http.get(svc.metrics_url + path) as resp:
            assert resp.status in {200, 503}, path


async def test_admin_port_in_use_fails_start_with_a_clear_error(start_service: StartService) -> None:
    first = await start_service()
    with pytest.raises(
        StartupError, match=r"--admin-port: cannot listen on 127\.0\.0\.1:\d+: Address already in use"
    ):
        await start_service(admin_port=first.ports.admin)
