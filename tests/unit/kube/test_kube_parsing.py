"""Pure parsing rules of the watchers: pools, pods → endpoints, poolRef filters, objectives, rewrites."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from picker.kube import parse_pool, parse_selector, pod_endpoints, standalone_pool
from picker.kube.objectives import parse_objective, parse_rewrite, parse_timestamp, pool_ref_matches
from picker.kube.pods import format_selector, pod_is_ready
from picker.state.endpoints import PoolInfo
from picker.state.objectives import ModelRewrite, Objective, RewriteRule, RewriteTarget
from picker.testing.kube_objects import (
    inference_model_rewrite,
    inference_objective,
    inference_pool,
    inference_pool_v1alpha2,
    pod,
)

V1 = "inference.networking.k8s.io"
ALPHA = "inference.networking.x-k8s.io"
POOL = PoolInfo(name="p", namespace="ns", selector={"app": "x"}, target_ports=(8000, 8001))


# ------------------------------------------------------------------------------------------ pools
def test_v1_pool():
    info = parse_pool(
        inference_pool(
            "p", "ns", selector={"app": "x"}, ports=(8000, 8001), app_protocol="kubernetes.io/h2c"
        ),
        group=V1,
    )
    assert (info.name, info.namespace, dict(info.selector)) == ("p", "ns", {"app": "x"})
    assert info.target_ports == (8000, 8001)
    assert info.app_protocol == "kubernetes.io/h2c"
    assert info.group == V1


def test_v1_pool_defaults_app_protocol_to_http():
    assert parse_pool(inference_pool("p", selector={"a": "b"}), group=V1).app_protocol == "http"


def test_v1alpha2_pool():
    info = parse_pool(inference_pool_v1alpha2("p", "ns", selector={"app": "x"}, port=9000), group=ALPHA)
    assert dict(info.selector) == {"app": "x"}
    assert info.target_ports == (9000,)
    assert info.group == ALPHA


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda o: o["spec"].update(selector={"matchLabels": {}}), "matchLabels"),
        (lambda o: o["spec"].pop("selector"), "matchLabels"),
        (lambda o: o["spec"].update(targetPorts=[]), "1 to 8 target ports"),
        (lambda o: o["spec"].update(targetPorts=[{"number": 8000}, {"number": 8000}]), "duplicate"),
        (lambda o: o["spec"].update(targetPorts=[{"number": 70000}]), "out of range"),
        (lambda o: o["spec"].update(targetPorts=[{"number": p} for p in range(8000, 8009)]), "1 to 8"),
        (lambda o: o["spec"].update(targetPorts=[{"port": 1}]), "targetPorts"),
        (lambda o: o.update(spec="broken"), "spec must be an object"),
    ],
)
def test_invalid_v1_pools(mutate: Any, error: str):
    obj = inference_pool("p", selector={"app": "x"})
    mutate(obj)
    with pytest.raises(ValueError, match=error):
        parse_pool(obj, group=V1)


def test_v1alpha2_pool_needs_a_port_and_the_v1_shape_is_not_accepted_as_v1alpha2():
    obj = inference_pool_v1alpha2("p", selector={"app": "x"})
    del obj["spec"]["targetPortNumber"]
    with pytest.raises(ValueError, match="targetPortNumber"):
        parse_pool(obj, group=ALPHA)
    with pytest.raises(ValueError, match=r"spec\.selector"):
        parse_pool(inference_pool("p", selector={"app": "x"}), group=ALPHA)  # matchLabels is not a label


def test_unknown_pool_group():
    with pytest.raises(ValueError, match="unsupported pool group"):
        parse_pool(inference_pool("p", selector={"a": "b"}), group="example.com")


# ------------------------------------------------------------------------------------------- pods
def test_ready_pod_gets_one_endpoint_per_port():
    eps = pod_endpoints(pod("w-1", "ns", labels={"app": "x", "v": "1"}, ip="10.1.2.3"), POOL)
    assert [(e.name, e.address, e.pod, e.namespace) for e in eps] == [
        ("w-1-rank-0", "10.1.2.3:8000", "w-1", "ns"),
        ("w-1-rank-1", "10.1.2.3:8001", "w-1", "ns"),
    ]
    assert dict(eps[0].labels) == {"app": "x", "v": "1"}
    assert eps[0].engine is None
    assert eps[0].metrics_port is None


@pytest.mark.parametrize(
    "obj",
    [
        pod("w", labels={"app": "x"}, ready=False),
        pod("w", labels={"app": "x"}, ip=None),
        pod("w", labels={"app": "x"}, terminating=True),
        pod("w", labels={"app": "other"}),
        {"metadata": {"name": "w", "labels": {"app": "x"}}, "status": {"podIP": "1.2.3.4"}},
    ],
    ids=["unready", "no-ip", "terminating", "not-selected", "no-conditions"],
)
def test_pods_without_endpoints(obj: dict[str, Any]):
    assert pod_endpoints(obj, POOL) == ()


def test_ready_needs_the_ready_condition_true():
    obj = pod("w", labels={"app": "x"})
    assert pod_is_ready(obj)
    obj["status"]["conditions"] = [{"type": "ContainersReady", "status": "True"}]
    assert not pod_is_ready(obj)


def test_active_ports_annotation_and_engine_label():
    obj = pod(
        "w",
        labels={"app": "x", "inference.networking.k8s.io/engine-type": "sglang"},
        annotations={"inference.networking.k8s.io/active-ports": " 8001 ,bogus,9999"},
    )
    (ep,) = pod_endpoints(obj, POOL)
    assert ep.name == "w-rank-1"
    assert ep.port == 8001
    assert ep.engine == "sglang"
    obj["metadata"]["annotations"]["inference.networking.k8s.io/active-ports"] = ""
    assert pod_endpoints(obj, POOL) == (), "an empty list activates nothing"


def test_metrics_port_only_with_a_single_target_port():
    single = PoolInfo(name="p", namespace="ns", selector={"app": "x"}, target_ports=(8000,))
    (ep,) = pod_endpoints(pod("w", labels={"app": "x"}), single, metrics_port=9400)
    assert ep.metrics_address == "10.0.0.1:9400"
    assert all(
        e.metrics_port is None for e in pod_endpoints(pod("w", labels={"app": "x"}), POOL, metrics_port=9400)
    )


def test_ipv6_pod_address_is_bracketed():
    (ep, _) = pod_endpoints(pod("w", labels={"app": "x"}, ip="fd00::7"), POOL)
    assert ep.address == "[fd00::7]:8000"


# --------------------------------------------------------------------------------------- standalone
def test_selector_flag_round_trip():
    assert parse_selector(" app = x , tier=gpu ") == {"app": "x", "tier": "gpu"}
    assert format_selector({"tier": "gpu", "app": "x"}) == "app=x,tier=gpu"


@pytest.mark.parametrize("text", ["", "app", "app!=x", "=x", "a==b"])
def test_bad_selector_flags(text: str):
    with pytest.raises(ValueError, match="selector"):
        parse_selector(text)


def test_standalone_pool_dedups_ports_and_validates():
    info = standalone_pool("epp", "ns", "app=x", [8000, 8001, 8000])
    assert info.target_ports == (8000, 8001)
    assert dict(info.selector) == {"app": "x"}
    assert info.name == "epp"
    with pytest.raises(ValueError, match="1 to 8"):
        standalone_pool("epp", "ns", "app=x", [])
    with pytest.raises(ValueError, match="1 to 8"):
        standalone_pool("epp", "ns", "app=x", range(9000, 9009))


# ------------------------------------------------------------------------------- objectives/rewrites
def test_pool_ref_rules():
    ours = inference_objective("o", pool="p")
    assert pool_ref_matches(ours, pool_name="p", pool_group=V1)
    assert pool_ref_matches(inference_objective("o", pool="p", group=None), pool_name="p", pool_group=V1)
    assert not pool_ref_matches(
        inference_objective("o", pool="p", group=None), pool_name="p", pool_group=ALPHA
    )
    assert pool_ref_matches(inference_objective("o", pool="p", group=ALPHA), pool_name="p", pool_group=ALPHA)
    assert not pool_ref_matches(inference_objective("o", pool="q"), pool_name="p", pool_group=V1)
    other_kind = copy.deepcopy(ours)
    other_kind["spec"]["poolRef"]["kind"] = "Service"
    assert not pool_ref_matches(other_kind, pool_name="p", pool_group=V1)
    assert not pool_ref_matches({"spec": {}}, pool_name="p", pool_group=V1)


def test_objective_priority():
    assert parse_objective(inference_objective("o", pool="p", priority=-3)) == Objective("o", -3)
    assert parse_objective(inference_objective("o", pool="p")) == Objective("o", 0)
    bad = inference_objective("o", pool="p")
    bad["spec"]["priority"] = "high"
    with pytest.raises(ValueError, match="integer"):
        parse_objective(bad)


def test_rewrite_rules():
    obj = inference_model_rewrite(
        "r",
        pool="p",
        created="2025-02-03T04:05:06Z",
        rules=[(("a", "b"), [("a-v1", 90), ("a-v2", 10)]), ((), [("base", 0)])],
    )
    assert parse_rewrite(obj) == ModelRewrite(
        "r",
        (
            RewriteRule(("a", "b"), (RewriteTarget("a-v1", 90), RewriteTarget("a-v2", 10))),
            RewriteRule((), (RewriteTarget("base", 0),)),
        ),
        created=1738555506.0,
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r["matches"][0]["model"].update(type="Prefix"),
        lambda r: r["matches"][0]["model"].update(value=""),
        lambda r: r.update(targets=[]),
        lambda r: r["targets"][0].update(weight=-1),
        lambda r: r["targets"][0].pop("modelRewrite"),
    ],
)
def test_rewrite_rules_we_cannot_honour_exactly_are_rejected(mutate: Any):
    obj = inference_model_rewrite("r", pool="p", rules=[(("a",), [("t", 1)])])
    mutate(obj["spec"]["rules"][0])
    with pytest.raises(ValueError, match=r"spec\.rules\[0\]"):
        parse_rewrite(obj)


def test_timestamps():
    assert parse_timestamp("1970-01-01T00:01:00Z") == 60.0
    assert parse_timestamp("garbage") == 0.0
    assert parse_timestamp(None) == 0.0


def test_the_engine_comes_from_the_configured_label_key():
    labels = {"app": "x", "inference.networking.k8s.io/engine-type": "vllm", "example.com/server": "sglang"}
    obj = pod("w", labels=labels)
    assert {e.engine for e in pod_endpoints(obj, POOL)} == {"vllm"}
    assert {e.engine for e in pod_endpoints(obj, POOL, engine_label="example.com/server")} == {"sglang"}
    assert {e.engine for e in pod_endpoints(obj, POOL, engine_label="example.com/none")} == {None}
