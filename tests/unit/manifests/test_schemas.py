"""Every built resource is validated by something: the Kubernetes OpenAPI schemas (built-in kinds), our CRDs
(custom kinds we define) or the hand-written shape checks of test_observability / test_examples (kinds
whose CRDs belong to other projects)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

#: Oldest Kubernetes minor we support (the oldest schema set kubernetes-validate ships) and the newest.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())

#: Kinds from other projects, checked by hand elsewhere (no CRD schema offline).
HAND_CHECKED = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def _all_resources(builds: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, build in sorted(builds.items()) for doc in build.resources]


def test_versions_are_shipped() -> None:
    shipped = kubernetes_validate.utils.all_versions()
    assert any(v.startswith(K8S_VERSIONS[0] + ".") for v in shipped), shipped


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_kinds_validate_strictly(builds: dict[str, Any], crd_validator: Any, version: str) -> None:
    checked = 0
    for build, doc in _all_resources(builds):
        if crd_validator.handles(doc) or (doc["apiVersion"], doc["kind"]) in HAND_CHECKED:
            continue
        where = f"{build}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(map(str, exc.path))
            pytest.fail(f"{where} against {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: neither a built-in kind, one of our CRDs, nor hand-checked")
        checked += 1
    assert checked >= 20


def test_strict_validation_catches_a_typo(builds: dict[str, Any]) -> None:
    """Guards the guard: strict mode must reject an unknown field (a misspelt key would otherwise be
    dropped silently by the API server)."""
    deployment = copy.deepcopy(builds["base"].get("Deployment", "picker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_custom_resources_validate_against_our_crds(builds: dict[str, Any], crd_validator: Any) -> None:
    checked = 0
    for build, doc in _all_resources(builds):
        if crd_validator.handles(doc):
            assert crd_validator.problems(doc) == [], f"{build}: {doc['kind']}/{doc['metadata']['name']}"
            checked += 1
    assert checked >= 2 * 5  # the example stack twice (plain and HA)


def test_every_custom_kind_used_has_a_crd_or_a_hand_check(builds: dict[str, Any], crd_validator: Any) -> None:
    for _, doc in _all_resources(builds):
        group = doc["apiVersion"].rpartition("/")[0]
        if "inference.networking" in group:
            assert crd_validator.handles(doc), (
                f"{doc['apiVersion']} {doc['kind']} has no CRD in manifests/crds"
            )
