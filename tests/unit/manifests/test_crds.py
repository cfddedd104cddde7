"""The CRDs in manifests/crds: well-formed, structural, and enforcing the documented constraints."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

Doc = dict[str, Any]

EXPECTED = {
    # (group, version, kind): required top-level spec fields
    ("inference.networking.k8s.io", "v1", "InferencePool"): {"selector", "targetPorts"},
    ("inference.networking.x-k8s.io", "v1alpha2", "InferencePool"): {
        "selector",
        "targetPortNumber",
        "extensionRef",
    },
    ("inference.networking.x-k8s.io", "v1alpha2", "InferenceObjective"): {"poolRef"},
    ("inference.networking.x-k8s.io", "v1alpha2", "InferenceModelRewrite"): {"poolRef"},
}


def _crds(builds: dict[str, Any]) -> list[Doc]:
    return builds["crds"].of_kind("CustomResourceDefinition")


def test_the_expected_kinds_and_versions_are_defined(crd_validator: Any) -> None:
    assert set(crd_validator.schemas) == set(EXPECTED)
    for key, required in EXPECTED.items():
        assert set(crd_validator.schemas[key]["properties"]["spec"]["required"]) == required, key


def test_crd_names_and_versions_are_consistent(builds: dict[str, Any]) -> None:
    for crd in _crds(builds):
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["listKind"] == spec["names"]["kind"] + "List"
        assert [v["name"] for v in spec["versions"] if v["storage"]] != []
        assert sum(v["storage"] for v in spec["versions"]) == 1
        assert all(v["served"] for v in spec["versions"])


def test_status_subresource_where_gateways_write_status(crd_validator: Any, builds: dict[str, Any]) -> None:
    with_status = {
        (c["spec"]["names"]["kind"], c["spec"]["group"])
        for c in _crds(builds)
        if all("status" in v.get("subresources", {}) for v in c["spec"]["versions"])
    }
    assert with_status == {
        ("InferencePool", "inference.networking.k8s.io"),
        ("InferencePool", "inference.networking.x-k8s.io"),
        ("InferenceObjective", "inference.networking.x-k8s.io"),
    }


def test_schemas_are_structural(crd_validator: Any, structural_problems: Callable[[Doc], list[str]]) -> None:
    for key, schema in crd_validator.schemas.items():
        assert structural_problems(schema) == [], key


def test_structural_check_can_fail(structural_problems: Callable[[Doc], list[str]]) -> None:
    bad = {
        "type": "object",
        "properties": {
            "untyped": {"description": "no type"},
            "both": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "mode": {"type": "string", "enum": ["A"], "default": "B"},
            "ports": {"type": "array", "items": {"type": "object"}, "x-kubernetes-list-type": "map"},
        },
    }
    problems = structural_problems(bad)
    assert len(problems) == 4, problems


def test_every_cel_rule_has_a_python_equivalent(crd_validator: Any, cel_rules: dict[str, Any]) -> None:
    rules: set[str] = set()

    def collect(node: Doc) -> None:
        rules.update(r["rule"] for r in node.get("x-kubernetes-validations", []))
        for child in node.get("properties", {}).values():
            collect(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                collect(node[key])

    for schema in crd_validator.schemas.values():
        collect(schema)
    assert rules == set(cel_rules)


def _find(builds: dict[str, Any], kind: str, api_version: str | None = None) -> Doc:
    docs = [d for d in builds["examples"].of_kind(kind) if api_version in (None, d["apiVersion"])]
    return copy.deepcopy(docs[0])


POOL_V1_ALPHA2 = {
    "apiVersion": "inference.networking.x-k8s.io/v1alpha2",
    "kind": "InferencePool",
    "metadata": {"name": "legacy"},
    "spec": {"selector": {"app": "vllm"}, "targetPortNumber": 8000, "extensionRef": {"name": "picker"}},
}


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()

# (example kind, mutation, what it breaks). Every documented constraint has a row.
INVALID = [
    ("InferencePool", _set("spec.targetPorts", []), "targetPorts needs at least one port"),
    ("InferencePool", _set("spec.targetPorts", [{"number": 8000 + i} for i in range(9)]), "at most 8 ports"),
    ("InferencePool", _set("spec.targetPorts", [{"number": 8000}, {"number": 8000}]), "unique ports"),
    ("InferencePool", _set("spec.targetPorts", [{"number": 0}]), "port >= 1"),
    ("InferencePool", _set("spec.targetPorts", [{"number": 65536}]), "port <= 65535"),
    ("InferencePool", _set("spec.selector.matchLabels", {}), "at least one label"),
    (
        "InferencePool",
        _set("spec.selector.matchLabels", {f"k{i}": "v" for i in range(65)}),
        "at most 64 labels",
    ),
    ("InferencePool", _set("spec.selector.matchLabels", {"app": "-bad-"}), "label value syntax"),
    ("InferencePool", _set("spec.selector", {"matchExpressions": []}), "matchLabels required"),
    ("InferencePool", _set("spec.appProtocol", "grpc"), "appProtocol enum"),
    ("InferencePool", _set("spec.endpointPickerRef.failureMode", "Open"), "failureMode enum"),
    ("InferencePool", _set("spec.endpointPickerRef.port", _DELETE), "port required for a Service"),
    ("InferencePool", _set("spec.endpointPickerRef.name", ""), "name non-empty"),
    ("InferencePool", _set("spec.unknownField", 1), "unknown field (kubectl validates strictly)"),
    ("InferenceObjective", _set("spec.priority", "high"), "priority is an integer"),
    ("InferenceObjective", _set("spec.poolRef", {}), "poolRef.name required"),
    ("InferenceObjective", _set("spec", {"priority": 1}), "poolRef required"),
    ("InferenceModelRewrite", _set("spec.rules.0.targets.0.weight", 0), "weight >= 1"),
    ("InferenceModelRewrite", _set("spec.rules.0.targets.0.weight", 1_000_001), "weight <= 1,000,000"),
    ("InferenceModelRewrite", _set("spec.rules.0.targets", []), "at least one target"),
    ("InferenceModelRewrite", _set("spec.rules.0.targets.0.modelRewrite", _DELETE), "modelRewrite required"),
    ("InferenceModelRewrite", _set("spec.rules.0.matches.0.model.value", ""), "non-empty match value"),
    ("InferenceModelRewrite", _set("spec.rules.0.matches.0.model.type", "Prefix"), "only Exact matching"),
    ("InferencePoolV1alpha2", _set("spec.targetPortNumber", 70000), "v1alpha2 port range"),
    (
        "InferencePoolV1alpha2",
        _set("spec.extensionRef.failureMode", "fail-open"),
        "v1alpha2 failureMode enum",
    ),
    ("InferencePoolV1alpha2", _set("spec.extensionRef", _DELETE), "v1alpha2 extensionRef required"),
]


def _example(builds: dict[str, Any], kind: str) -> Doc:
    if kind == "InferencePoolV1alpha2":
        return copy.deepcopy(POOL_V1_ALPHA2)
    return _find(builds, kind)


@pytest.mark.parametrize(
    "kind", ["InferencePool", "InferenceObjective", "InferenceModelRewrite", "InferencePoolV1alpha2"]
)
def test_valid_resources_pass(builds: dict[str, Any], crd_validator: Any, kind: str) -> None:
    assert crd_validator.problems(_example(builds, kind)) == []


@pytest.mark.parametrize(("kind", "mutate", "why"), INVALID, ids=[row[2] for row in INVALID])
def test_documented_constraints_are_enforced(
    builds: dict[str, Any], crd_validator: Any, kind: str, mutate: Callable[[Doc], None], why: str
) -> None:
    doc = _example(builds, kind)
    mutate(doc)
    assert crd_validator.problems(doc) != [], why


def test_defaults_are_applied_before_rules(crd_validator: Any, builds: dict[str, Any]) -> None:
    """endpointPickerRef.kind defaults to Service, so omitting both kind and port must be rejected, while a
    non-Service kind without a port is accepted."""
    pool = _find(builds, "InferencePool")
    ref = pool["spec"]["endpointPickerRef"]
    del ref["kind"], ref["port"]
    assert crd_validator.problems(pool) != []
    ref["kind"] = "Backend"
    ref["group"] = "example.com"
    assert crd_validator.problems(pool) == []
