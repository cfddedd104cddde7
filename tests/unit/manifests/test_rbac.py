"""Least-privilege RBAC for the EPP: exactly the rules it needs, namespaced, no wildcards."""

from __future__ import annotations

from typing import Any

import pytest

Doc = dict[str, Any]

X_K8S = "inference.networking.x-k8s.io"
READ = ("get", "list", "watch")

#: (apiGroup, resource, verb) the EPP may use, and nothing else.
EXPECTED = {
    *(("", "pods", v) for v in READ),
    *(("inference.networking.k8s.io", "inferencepools", v) for v in READ),
    *(
        (X_K8S, r, v)
        for r in ("inferencepools", "inferenceobjectives", "inferencemodelrewrites")
        for v in READ
    ),
    *(("", "configmaps", v) for v in READ),
    *(("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")),
    ("", "events", "create"),
}

EPP_BUILDS = ("base", "examples", "examples/ha", "examples/secure")


def rbac_problems(rules: list[Doc]) -> list[str]:
    problems = []
    for rule in rules:
        problems.extend(
            f"wildcard in {key}: {rule}"
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
            if any("*" in item for item in rule.get(key, []))
        )
        if "nonResourceURLs" in rule:
            problems.append(f"nonResourceURLs in a Role: {rule}")
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    if extra := granted - EXPECTED:
        problems.append(f"broader than needed: {sorted(extra)}")
    if missing := EXPECTED - granted:
        problems.append(f"missing: {sorted(missing)}")
    return problems


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_role_grants_exactly_what_the_epp_needs(builds: dict[str, Any], build: str) -> None:
    role = builds[build].get("Role", "picker")
    assert rbac_problems(role["rules"]) == []


@pytest.mark.parametrize(
    "extra_rule",
    [
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["delete"]},
        {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["patch"]},
    ],
)
def test_rbac_check_rejects_broader_rules(builds: dict[str, Any], extra_rule: Doc) -> None:
    rules = [*builds["base"].get("Role", "picker")["rules"], extra_rule]
    assert rbac_problems(rules) != []


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_no_cluster_scoped_rights(builds: dict[str, Any], build: str) -> None:
    """Cluster-scoped RBAC only with the metrics-auth component (tokenreviews, subjectaccessreviews)."""
    cluster = [d for d in builds[build].resources if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    if build != "examples/secure":
        assert cluster == []
    roles = [d for d in cluster if d["kind"] == "ClusterRole"]
    granted = {
        (g, r, v)
        for role in roles
        for rule in role["rules"]
        for g in rule.get("apiGroups", [])
        for r in rule.get("resources", [])
        for v in rule["verbs"]
    }
    assert granted <= {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_binding_ties_the_role_to_the_pods_service_account(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    binding = b.get("RoleBinding", "picker")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "picker"}
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    account = b.get("ServiceAccount", subject["name"])
    deployment = b.get("Deployment", "picker")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]
    # kustomize's namespace transformer rewrites only subjects in "default" (setRoleBindingSubjects
    # defaultOnly), so the subject must say default for an overlay's namespace to reach it.
    assert subject["namespace"] == account["metadata"].get("namespace", "default")
