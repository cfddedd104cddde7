"""The director's two steps and the one Dispatch, through the real stream and metrics (no gRPC): a routing
failure is labelled with the models resolved before it, and a dispatch carries what the stream needs."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from picker.config import default_config
from picker.errors import ServiceUnavailable
from picker.extproc.stream import ExtProcStream
from picker.routing.director import Director
from picker.routing.types import RoutingRequest
from picker.state.config_store import ConfigStore
from picker.state.datastore import Datastore
from picker.state.endpoints import parse_static_endpoints
from picker.state.objectives import ModelRewrite, Objective, RewriteRule, RewriteTarget
from picker.telemetry import Telemetry
from picker.testing.envoy import HttpRequest

BODY = b'{"model":"a","messages":[{"role":"user","content":"hi"}]}'


def build(endpoints: str = "") -> tuple[Datastore, Director, Telemetry]:
    ds = Datastore()
    if endpoints:
        ds.replace_endpoints(parse_static_endpoints(endpoints))
    rule = RewriteRule(("a",), (RewriteTarget("b", 100),))
    ds.rewrites.replace_all([ModelRewrite("a-to-b", (rule,), created=0.0)])
    ds.objectives.replace_all([Objective("urgent", 7)])
    telemetry = Telemetry(ds, registry=CollectorRegistry())
    config = ConfigStore(default_config(), source="test")
    director = Director(ds, config, rng=np.random.default_rng(0), observer=telemetry)
    return ds, director, telemetry


def errors(telemetry: Telemetry) -> dict[tuple[str, str, str], float]:
    telemetry.flush()
    out = {}
    for family in text_string_to_metric_families(generate_latest(telemetry.registry).decode()):
        for s in family.samples:
            if s.name == "inference_objective_request_error_total":
                out[(s.labels["model_name"], s.labels["target_model_name"], s.labels["error_code"])] = s.value
    return out


def run(director: Director, telemetry: Telemetry, request: HttpRequest) -> ExtProcStream:
    stream = ExtProcStream(director, telemetry, max_body_bytes=1 << 20)
    for message in request.messages():
        stream.handle(message)
        if stream.finished:
            break
    stream.close()
    return stream


@pytest.mark.parametrize(
    "headers",
    [(), (("x-gateway-model-name-rewrite", "b"),)],
    ids=["rewrite rule", "rewrite header"],
)
def test_an_empty_pool_after_a_rewrite_is_labelled_with_the_target_model(
    headers: tuple[tuple[str, str], ...],
) -> None:
    """With a rewrite a -> b and no endpoint, the 503 counts under target model "b", not "a"."""
    _, director, telemetry = build()
    stream = run(director, telemetry, HttpRequest(path="/v1/chat/completions", body=BODY, headers=headers))
    assert stream.finished
    assert stream.dispatch is None
    assert errors(telemetry) == {("a", "b", "ServiceUnavailable"): 1.0}


def test_resolve_applies_rules_and_objectives_and_route_fails_without_candidates() -> None:
    _, director, _ = build()
    request = RoutingRequest(
        request_id="r",
        headers={"x-gateway-inference-objective": "urgent"},
        path="/v1/chat/completions",
        body=BODY,
    )
    resolved = director.resolve(request)
    assert (resolved.incoming_model, resolved.target_model, resolved.priority, resolved.objective) == (
        "a",
        "b",
        7,
        "urgent",
    )
    with pytest.raises(ServiceUnavailable) as caught:
        director.route(request, resolved)
    assert not hasattr(caught.value, "target_model")  # exceptions carry no request state


def test_a_dispatch_carries_body_lease_restorer_and_labels() -> None:
    ds, director, _ = build("10.0.0.1:8000")
    request = RoutingRequest(request_id="r", headers={}, path="/v1/chat/completions", body=BODY)
    dispatch = director.route(request, director.resolve(request))
    assert dispatch.destination == "10.0.0.1:8000"
    assert (dispatch.incoming_model, dispatch.target_model) == ("a", "b")
    assert b'"model":"b"' in dispatch.body
    assert dispatch.restore is not None
    assert dispatch.restore(b'{"model":"b","x":1}') == b'{"model":"a","x":1}'
    assert ds.snapshot().inflight.tolist() == [1.0]
    dispatch.lease.release()
    assert ds.snapshot().inflight.tolist() == [0.0]


def test_explain_counts_nothing() -> None:
    ds, director, telemetry = build("10.0.0.1:8000")
    request = RoutingRequest(request_id="r", headers={}, path="/v1/chat/completions", body=BODY)
    dispatch = director.explain(request)
    assert dispatch.decision is not None
    assert ds.snapshot().inflight.tolist() == [0.0]
    telemetry.flush()
    text = generate_latest(telemetry.registry).decode()
    assert "inference_extension_model_rewrite_decisions_total{" not in text
    director.route(request, director.resolve(request)).lease.release()
    telemetry.flush()
    assert (
        "inference_extension_model_rewrite_decisions_total{" in generate_latest(telemetry.registry).decode()
    )
