"""Kustomizations rendered by the real kustomize: every one builds, every file is used, builds hold what they
promise."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"

# What each buildable kustomization must produce, as (kind, name) counts.
EPP = {
    ("ServiceAccount", "picker"): 1,
    ("Role", "picker"): 1,
    ("RoleBinding", "picker"): 1,
    ("Deployment", "picker"): 1,
    ("Service", "picker"): 1,
    ("ConfigMap", "picker-config"): 1,
}
STACK = {
    **EPP,
    ("InferencePool", "vllm-pool"): 1,
    ("HTTPRoute", "vllm-pool"): 1,
    ("Deployment", "vllm-qwen"): 1,
    ("InferenceObjective", "critical"): 1,
    ("InferenceObjective", "standard"): 1,
    ("InferenceObjective", "sheddable"): 1,
    ("InferenceModelRewrite", "support-assistant-canary"): 1,
}
EXPECTED_BUILDS: dict[str, dict[tuple[str, str], int]] = {
    "base": EPP,
    "crds": {
        ("CustomResourceDefinition", "inferencepools.inference.networking.k8s.io"): 1,
        ("CustomResourceDefinition", "inferencepools.inference.networking.x-k8s.io"): 1,
        ("CustomResourceDefinition", "inferenceobjectives.inference.networking.x-k8s.io"): 1,
        ("CustomResourceDefinition", "inferencemodelrewrites.inference.networking.x-k8s.io"): 1,
    },
    "examples": STACK,
    "examples/stack": STACK,
    "examples/ha": {
        **STACK,
        ("Role", "picker-leader-election"): 1,
        ("RoleBinding", "picker-leader-election"): 1,
    },
    "examples/configmap-watch": {
        **STACK,
        ("Role", "picker-configmap-watch"): 1,
        ("RoleBinding", "picker-configmap-watch"): 1,
    },
    "examples/scaler": {
        **STACK,
        ("Role", "picker-scaler"): 1,
        ("RoleBinding", "picker-scaler"): 1,
    },
    "examples/secure": {
        **STACK,
        ("ClusterRole", "picker-metrics-auth"): 1,
        ("ClusterRoleBinding", "picker-metrics-auth"): 1,
        ("ClusterRole", "picker-metrics-reader"): 1,
        ("ClusterRoleBinding", "picker-metrics-reader"): 1,
        ("NetworkPolicy", "picker"): 1,
    },
    "examples/tracing": STACK,
    "examples/pools": {
        **EPP,
        ("InferencePool", "qwen"): 1,
        ("InferencePool", "llama"): 1,
        ("HTTPRoute", "qwen"): 1,
        ("HTTPRoute", "llama"): 1,
    },
    "observability": {
        ("ServiceMonitor", "picker"): 1,
        ("PrometheusRule", "picker"): 1,
        ("ConfigMap", "picker-dashboard"): 1,
    },
}


def test_every_buildable_kustomization_is_expected(builds: dict[str, Any]) -> None:
    assert set(builds) == set(EXPECTED_BUILDS)


@pytest.mark.parametrize("name", sorted(EXPECTED_BUILDS))
def test_build_holds_exactly_the_expected_resources(builds: dict[str, Any], name: str) -> None:
    got = Counter((d["kind"], d["metadata"]["name"]) for d in builds[name].resources)
    assert dict(got) == EXPECTED_BUILDS[name]


def test_every_manifest_file_is_used_by_a_build(
    builds: dict[str, Any], referenced_files: Callable[[Path], set[Path]]
) -> None:
    used: set[Path] = set().union(*(referenced_files(b.root) for b in builds.values()))
    on_disk = {
        p.resolve() for p in MANIFESTS.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
    }
    assert on_disk - used == set(), "files no kustomization refers to"


def test_every_yaml_file_parses_and_documents_are_mappings() -> None:
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc is None or isinstance(doc, dict), path


def test_the_leader_election_component_is_used_by_the_ha_example_only(
    builds: dict[str, Any], referenced_files: Callable[[Path], set[Path]]
) -> None:
    component = (MANIFESTS / "components/leader-election/kustomization.yaml").resolve()
    users = {name for name, b in builds.items() if component in referenced_files(b.root)}
    assert users == {"examples/ha"}
    epp = ("base", "examples", "examples/stack", "examples/ha", "examples/secure", "examples/configmap-watch")
    replicas = {name: builds[name].get("Deployment", "picker")["spec"].get("replicas", 1) for name in epp}
    assert replicas["examples/ha"] > 1
    assert replicas["examples"] == replicas["examples/stack"] == replicas["base"] == 1
    assert replicas["examples/secure"] == 1


def test_metrics_auth_component_turns_the_flag_on_and_grants_the_reviews(builds: dict[str, Any]) -> None:
    """Only the metrics-auth build has cluster-scoped RBAC: create on both review resources for the EPP's
    ServiceAccount, and get on /metrics for the scraper; its EPP runs --metrics-endpoint-auth=true."""
    flag = "--metrics-endpoint-auth"
    for name in ("base", "examples", "examples/ha"):
        args = builds[name].get("Deployment", "picker")["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"{flag}=false" in args
        assert f"{flag}=true" not in args
    b = builds["examples/secure"]
    args = b.get("Deployment", "picker")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith(flag)] == [f"{flag}=true"]
    assert b.get("ClusterRole", "picker-metrics-auth")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    ]
    (subject,) = b.get("ClusterRoleBinding", "picker-metrics-auth")["subjects"]
    account = b.get("ServiceAccount", "picker")
    assert (subject["kind"], subject["name"]) == ("ServiceAccount", account["metadata"]["name"])
    assert b.get("ClusterRole", "picker-metrics-reader")["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    ]


def test_overlays_are_not_nested_inside_their_bases() -> None:
    """kustomize refuses to load a base whose directory contains an overlay it was reached from ("cycle
    detected"); the build fixture would fail, but this names the offending pair."""
    for kfile in MANIFESTS.rglob("kustomization.yaml"):
        overlay = kfile.parent
        for ref in yaml.safe_load(kfile.read_text(encoding="utf-8")).get("resources", []):
            base = (overlay / ref).resolve()
            if base.is_dir():
                assert not overlay.resolve().is_relative_to(base), f"{overlay} is inside its base {base}"


# ------------------------------------------------------------------ failures of kustomize reach the tests


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


KUST = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"k/kustomization.yaml": KUST + "resources: [missing.yaml]\n"}, "missing.yaml"),
        (
            {
                "k/kustomization.yaml": KUST + "resources: [..]\n",
                "kustomization.yaml": KUST + "resources: [k]\n",
            },
            "cycle detected",
        ),
    ],
    ids=["missing", "overlay-inside-base"],
)
def test_a_failing_build_is_an_error_with_kustomizes_message(
    tmp_path: Path, kustomize: Callable[[Path], Any], files: dict[str, str], message: str
) -> None:
    _write(tmp_path, files)
    with pytest.raises(Exception, match=message) as info:
        kustomize(tmp_path / "k")
    assert type(info.value).__name__ == "KustomizeError"


def test_network_policy_admits_only_the_service_ports(builds: dict[str, Any]) -> None:
    """The NetworkPolicy selects the EPP's Pods and lets in ext_proc and /metrics only, by the container
    ports' names; the admin port is not among the container ports at all (it listens on loopback)."""
    b = builds["examples/secure"]
    policy = b.get("NetworkPolicy", "picker")
    deployment = b.get("Deployment", "picker")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {"grpc-ext-proc", "http-metrics"}
    assert all(rule["from"] for rule in policy["spec"]["ingress"]), "every rule names its peers"
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert allowed <= container_ports
    assert not any(
        p["containerPort"] == 9091 for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    )
