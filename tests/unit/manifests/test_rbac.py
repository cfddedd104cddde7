"""Least-privilege RBAC for the EPP: exactly the rules each build needs, namespaced, no wildcards; the rights
only some configurations need come with the component that turns them on."""

from __future__ import annotations

from typing import Any

import pytest

Doc = dict[str, Any]

X_K8S = "inference.networking.x-k8s.io"
WATCH = ("list", "watch")
Grant = tuple[str, str, str, tuple[str, ...]]

#: (apiGroup, resource, verb, resourceNames) of the base Role: list + watch of what the EPP watches
BASE: set[Grant] = {
    *(("", "pods", v, ()) for v in WATCH),
    *(("inference.networking.k8s.io", "inferencepools", v, ()) for v in WATCH),
    *(
        (X_K8S, r, v, ())
        for r in ("inferencepools", "inferenceobjectives", "inferencemodelrewrites")
        for v in WATCH
    ),
}
#: the Roles the components add, by Role name
COMPONENT_ROLES: dict[str, set[Grant]] = {
    "picker-leader-election": {("coordination.k8s.io", "leases", v, ()) for v in ("get", "create", "update")},
    "picker-configmap-watch": {
        *(("", "configmaps", v, ("picker-config",)) for v in WATCH),
        ("", "events", "create", ()),
    },
}
#: which extra Roles each build has
EXTRA_ROLES = {
    "base": set(),
    "examples": set(),
    "examples/ha": {"picker-leader-election"},
    "examples/secure": set(),
    "examples/configmap-watch": {"picker-configmap-watch"},
}
EPP_BUILDS = tuple(EXTRA_ROLES)
EXPECTED = BASE


def grants(rules: list[Doc]) -> set[Grant]:
    return {
        (g, r, v, tuple(rule.get("resourceNames", ())))
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def rbac_problems(rules: list[Doc], expected: set[Grant] = BASE) -> list[str]:
    problems = []
    for rule in rules:
        problems.extend(
            f"wildcard in {key}: {rule}"
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
            if any("*" in item for item in rule.get(key, []))
        )
        if "nonResourceURLs" in rule:
            problems.append(f"nonResourceURLs in a Role: {rule}")
    granted = grants(rules)
    if extra := granted - expected:
        problems.append(f"broader than needed: {sorted(extra)}")
    if missing := expected - granted:
        problems.append(f"missing: {sorted(missing)}")
    return problems


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_role_grants_exactly_what_the_epp_needs(builds: dict[str, Any], build: str) -> None:
    role = builds[build].get("Role", "picker")
    assert rbac_problems(role["rules"]) == []


@pytest.mark.parametrize("build", EPP_BUILDS)
def test_component_roles_only_where_their_component_is(builds: dict[str, Any], build: str) -> None:
    b = builds[build]
    roles = {d["metadata"]["name"]: d for d in b.resources if d["kind"] == "Role"}
    assert set(roles) == {"picker", *EXTRA_ROLES[build]}
    for name in EXTRA_ROLES[build]:
        assert rbac_problems(roles[name]["rules"], COMPONENT_ROLES[name]) == [], name
        binding = b.get("RoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert [s["name"] for s in binding["subjects"]] == ["picker"]


def test_configmap_watch_build_reads_the_configmap_it_grants(builds: dict[str, Any]) -> None:
    """The one ConfigMap the Role names is the one the EPP is told to watch, and it exists in the build."""
    b = builds["examples/configmap-watch"]
    args = b.get("Deployment", "picker")["spec"]["template"]["spec"]["containers"][0]["args"]
    (flag,) = [a for a in args if a.startswith("--config-configmap=")]
    assert not [a for a in args if a.startswith("--config-file=")]
    (names,) = {
        g[3] for g in grants(b.get("Role", "picker-configmap-watch")["rules"]) if g[1] == "configmaps"
    }
    assert names == (flag.partition("=")[2],)
    b.get("ConfigMap", names[0])


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
