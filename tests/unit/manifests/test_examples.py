"""The example stack hangs together: pool <-> EPP, pool <-> model servers, route, objectives, rewrite."""

from __future__ import annotations

import re
from typing import Any

import pytest

Doc = dict[str, Any]

GROUP = "inference.networking.k8s.io"
BUILDS = ("examples", "examples/ha")
#: Gateway API duration (GEP-2257).
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")


def _flag(deployment: Doc, name: str) -> str:
    for arg in deployment["spec"]["template"]["spec"]["containers"][0]["args"]:
        if arg.startswith(name + "="):
            return str(arg.split("=", 1)[1])
    raise KeyError(name)


@pytest.mark.parametrize("build", BUILDS)
def test_pool_points_at_the_epp_and_fails_open(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    (pool,) = b.of_kind("InferencePool")
    assert pool["apiVersion"] == f"{GROUP}/v1"
    epp = b.get("Deployment", "picker")
    assert _flag(epp, "--pool-name") == pool["metadata"]["name"]
    ref = pool["spec"]["endpointPickerRef"]
    assert (ref.get("group", ""), ref.get("kind", "Service")) == ("", "Service")
    assert ref["failureMode"] == "FailOpen"
    service = b.get("Service", ref["name"])
    ports = {p["port"]: p["name"] for p in service["spec"]["ports"]}
    assert ref["port"]["number"] == 9002
    assert ports[9002] == "grpc-ext-proc"


@pytest.mark.parametrize("build", BUILDS)
def test_pool_selects_the_model_servers(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    (pool,) = b.of_kind("InferencePool")
    selector = pool["spec"]["selector"]["matchLabels"]
    members = [
        d
        for d in b.of_kind("Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert [d["metadata"]["name"] for d in members] == ["vllm-qwen"], "the EPP itself must not be a member"
    (vllm,) = members
    template = vllm["spec"]["template"]
    assert template["metadata"]["labels"]["inference.networking.k8s.io/engine-type"] == "vllm"
    (container,) = template["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["number"] for p in pool["spec"]["targetPorts"]} <= set(named.values())
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/health"
    assert named.get(probe["port"], probe["port"]) in {p["number"] for p in pool["spec"]["targetPorts"]}
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1


def _httproute_problems(route: Doc) -> list[str]:
    """Shape of a gateway.networking.k8s.io/v1 HTTPRoute, for the fields the example uses (the Gateway API
    CRDs are not available offline)."""
    problems = []
    spec = route.get("spec", {})
    if set(spec) - {"parentRefs", "hostnames", "rules"}:
        problems.append(f"unknown spec fields {set(spec)}")
    parents = spec.get("parentRefs", [])
    if not parents or not all(p.get("name") for p in parents):
        problems.append("parentRefs need names")
    problems.extend(
        f"unknown parentRef fields {set(p)}"
        for p in parents
        if set(p) - {"group", "kind", "namespace", "name", "sectionName", "port"}
    )
    rules = spec.get("rules", [])
    if not 1 <= len(rules) <= 16:
        problems.append("1 to 16 rules")
    for rule in rules:
        if set(rule) - {
            "name",
            "matches",
            "filters",
            "backendRefs",
            "timeouts",
            "retry",
            "sessionPersistence",
        }:
            problems.append(f"unknown rule fields {set(rule)}")
        for match in rule.get("matches", []):
            path = match.get("path", {})
            if path.get("type", "PathPrefix") not in {"Exact", "PathPrefix", "RegularExpression"}:
                problems.append(f"path type {path.get('type')}")
            if not str(path.get("value", "/")).startswith("/"):
                problems.append("path values start with /")
        for ref in rule.get("backendRefs", []):
            if set(ref) - {"group", "kind", "name", "namespace", "port", "weight", "filters"}:
                problems.append(f"unknown backendRef fields {set(ref)}")
            if not ref.get("name"):
                problems.append("backendRef needs a name")
        for key, value in rule.get("timeouts", {}).items():
            if key not in {"request", "backendRequest"} or not GATEWAY_DURATION.match(value):
                problems.append(f"timeout {key}={value}")
    return problems


@pytest.mark.parametrize("build", BUILDS)
def test_httproute_sends_traffic_to_the_pool(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    (route,) = b.of_kind("HTTPRoute")
    (pool,) = b.of_kind("InferencePool")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert _httproute_problems(route) == []
    refs = [r for rule in route["spec"]["rules"] for r in rule["backendRefs"]]
    assert refs
    for ref in refs:
        assert (ref["group"], ref["kind"], ref["name"]) == (GROUP, "InferencePool", pool["metadata"]["name"])


@pytest.mark.parametrize(
    "broken",
    [
        {"spec": {"rules": [{"backendRefs": [{"name": "p"}]}]}},
        {"spec": {"parentRefs": [{"name": "g"}], "rules": [{"timeouts": {"request": "5 minutes"}}]}},
        {"spec": {"parentRefs": [{"name": "g"}], "rules": [{"matches": [{"path": {"type": "Prefix"}}]}]}},
        {"spec": {"parentRefs": [{"name": "g"}], "rules": [{"backendRef": []}]}},
    ],
)
def test_httproute_check_can_fail(broken: Doc) -> None:
    assert _httproute_problems(broken) != []


@pytest.mark.parametrize("build", BUILDS)
def test_objectives_are_critical_standard_sheddable(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    (pool,) = b.of_kind("InferencePool")
    objectives = b.of_kind("InferenceObjective")
    assert {o["metadata"]["name"]: o["spec"]["priority"] for o in objectives} == {
        "critical": 10,
        "standard": 0,
        "sheddable": -1,
    }
    for o in objectives:
        assert o["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
        ref = o["spec"]["poolRef"]
        # The EPP only caches objectives whose poolRef group and name are its pool's.
        assert (ref.get("group", GROUP), ref.get("kind", "InferencePool"), ref["name"]) == (
            GROUP,
            "InferencePool",
            pool["metadata"]["name"],
        )


@pytest.mark.parametrize("build", BUILDS)
def test_rewrite_is_a_90_10_canary_of_the_pool(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    (pool,) = b.of_kind("InferencePool")
    (rewrite,) = b.of_kind("InferenceModelRewrite")
    assert rewrite["apiVersion"] == "inference.networking.x-k8s.io/v1alpha2"
    assert rewrite["spec"]["poolRef"]["name"] == pool["metadata"]["name"]
    (rule,) = rewrite["spec"]["rules"]
    (match,) = rule["matches"]
    assert match["model"]["value"]
    weights = sorted(t["weight"] for t in rule["targets"])
    assert weights == [10, 90]
    assert len({t["modelRewrite"] for t in rule["targets"]}) == 2
    assert match["model"]["value"] not in {t["modelRewrite"] for t in rule["targets"]}


def test_one_epp_serves_each_pool_of_the_pools_example_on_the_port_its_pool_names(
    builds: dict[str, Any],
) -> None:
    """examples/pools: the EPP's --pool flags (read by picker's own CLI), each InferencePool's
    endpointPickerRef, the Service's ports and the container's ports agree pool by pool; each pool has its
    HTTPRoute with matches of its own, and each document the flags name is in the mounted ConfigMap and
    loads."""
    from picker import cli
    from picker.config import load_config_text

    b = builds["examples/pools"]
    epp = b.get("Deployment", "picker")
    (container,) = epp["spec"]["template"]["spec"]["containers"]
    args = [a.replace("$(NAMESPACE)", "inference") for a in container["args"]]
    settings = cli.settings_from_args(cli.build_parser().parse_args(args), {})
    flags = {p.pool_name: (p.grpc_port, p.config_file) for p in settings.pool_settings()}
    assert flags == {"qwen": (9002, "/config/config.yaml"), "llama": (9004, "/config/llama.yaml")}
    service = b.get("Service", "picker")
    by_port = {p["port"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    pools = {d["metadata"]["name"]: d for d in b.of_kind("InferencePool")}
    assert set(pools) == set(flags)
    for name, pool in pools.items():
        ref = pool["spec"]["endpointPickerRef"]
        assert (ref["kind"], ref["name"], ref["failureMode"]) == ("Service", "picker", "FailOpen"), name
        port = ref["port"]["number"]
        assert port == flags[name][0], name
        assert by_port[port]["appProtocol"] == "grpc", name
        assert container_ports[by_port[port]["targetPort"]] == port, name
    routes = {d["metadata"]["name"]: d for d in b.of_kind("HTTPRoute")}
    matches = set()
    for name, route in routes.items():
        assert _httproute_problems(route) == [], name
        (rule,) = route["spec"]["rules"]
        assert [r["name"] for r in rule["backendRefs"]] == [name]
        matches.add(repr(rule["matches"]))
    assert set(routes) == set(pools)
    assert len(matches) == len(routes), "two routes with the same matches: one would shadow the other"
    (config,) = [d for d in b.of_kind("ConfigMap") if d["metadata"]["name"] == "picker-config"]
    (volume,) = [v for v in epp["spec"]["template"]["spec"]["volumes"] if v.get("configMap")]
    assert volume["configMap"]["name"] == "picker-config"
    for _, path in flags.values():
        key = path.removeprefix("/config/")
        load_config_text(config["data"][key])  # raises on a bad document
