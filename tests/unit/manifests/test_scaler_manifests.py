"""The scaler's kustomize component grants exactly what ``picker.kube.scale`` uses, apart from the base
Role, and the example overlay carries a valid, dry-run ``scaling`` section for the stack's Deployment."""

from __future__ import annotations

from typing import Any

from picker.config import load_config_text
from tests.unit.manifests.test_rbac import EXPECTED as BASE_RULES
from tests.unit.manifests.test_rbac import rbac_problems

#: (apiGroup, resource, verb) of ScaleTargetClient's calls: read the target, patch its scale subresource,
#: list and patch HPAs, annotate pods, post Events (that each is sent, and nothing else:
#: tests/integration/scaler/test_scaler_rbac.py)
SCALER_RULES = {
    ("apps", "deployments", "get"),
    ("apps", "statefulsets", "get"),
    ("apps", "deployments/scale", "patch"),
    ("apps", "statefulsets/scale", "patch"),
    ("leaderworkerset.x-k8s.io", "leaderworkersets", "get"),
    ("leaderworkerset.x-k8s.io", "leaderworkersets/scale", "patch"),
    ("autoscaling", "horizontalpodautoscalers", "list"),
    ("autoscaling", "horizontalpodautoscalers", "patch"),
    ("", "pods", "patch"),
    ("", "events", "create"),
}


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_the_scaler_role_is_separate_and_exact(builds: dict[str, Any]) -> None:
    b = builds["examples/scaler"]
    assert rbac_problems(b.get("Role", "picker")["rules"]) == []  # the base Role is unchanged
    scaler = b.get("Role", "picker-scaler")
    assert granted(scaler) == SCALER_RULES
    assert not SCALER_RULES & BASE_RULES
    assert not any(
        "*" in item
        for rule in scaler["rules"]
        for key in ("apiGroups", "resources", "verbs")
        for item in rule[key]
    )
    binding = b.get("RoleBinding", "picker-scaler")
    assert binding["roleRef"]["name"] == "picker-scaler"
    assert [s["name"] for s in binding["subjects"]] == [
        b.get("Deployment", "picker")["spec"]["template"]["spec"]["serviceAccountName"]
    ]


def test_builds_without_the_component_cannot_scale(builds: dict[str, Any]) -> None:
    for name in ("base", "examples", "examples/ha"):
        assert not [r for r in builds[name].of_kind("Role") if r["metadata"]["name"] == "picker-scaler"]


def test_the_example_section_is_valid_dry_run_and_targets_the_stacks_model_servers(
    builds: dict[str, Any],
) -> None:
    b = builds["examples/scaler"]
    cfg = load_config_text(b.get("ConfigMap", "picker-config")["data"]["config.yaml"])
    scaling = cfg.scaling
    assert scaling is not None
    assert scaling.dry_run
    assert (scaling.target.kind, scaling.target.name) == ("Deployment", "vllm-qwen")
    b.get("Deployment", "vllm-qwen")
    assert scaling.max_replicas >= b.get("Deployment", "vllm-qwen")["spec"]["replicas"]
