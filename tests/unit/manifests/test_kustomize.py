"""Kustomization resolution: every kustomization builds, every file is used, builds hold what they promise."""

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
    "examples/ha": STACK,
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


def test_every_manifest_file_is_used_by_a_build(builds: dict[str, Any]) -> None:
    used = set().union(*(b.files for b in builds.values()))
    on_disk = {
        p.resolve() for p in MANIFESTS.rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
    }
    assert on_disk - used == set(), "files no kustomization refers to"


def test_every_yaml_file_parses_and_documents_are_mappings() -> None:
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc is None or isinstance(doc, dict), path


def test_the_leader_election_component_is_used(builds: dict[str, Any]) -> None:
    component = (MANIFESTS / "components/leader-election/kustomization.yaml").resolve()
    assert component in builds["examples/ha"].files
    assert component not in builds["examples"].files


# ------------------------------------------------------------------- the resolver itself must be able to fail


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


KUST = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"k/kustomization.yaml": KUST + "resources: [missing.yaml]\n"}, "does not exist"),
        ({"k/kustomization.yaml": KUST + "resources: [../cm.yaml]\n", "cm.yaml": CM}, "outside"),
        ({"k/kustomization.yaml": KUST + "commonLabels: {a: b}\n"}, "not emulated"),
        (
            {"k/kustomization.yaml": KUST + "resources: [a.yaml, b.yaml]\n", "k/a.yaml": CM, "k/b.yaml": CM},
            "duplicate resource",
        ),
        (
            {
                "k/kustomization.yaml": KUST
                + "resources: [a.yaml]\npatches:\n- target: {kind: Deployment}\n  patch: '[]'\n",
                "k/a.yaml": CM,
            },
            "matches no resource",
        ),
        (
            {"k/kustomization.yaml": KUST + "configMapGenerator:\n- name: c\n  files: [x.yaml]\n"},
            "name suffix hashing",
        ),
        (
            {
                "k/kustomization.yaml": KUST + "resources: [../j]\n",
                "j/kustomization.yaml": KUST + "resources: [../k]\n",
            },
            "cycle",
        ),
        (
            {"k/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"},
            "Component",
        ),
        (
            {
                "k/kustomization.yaml": KUST + "resources: [a.yaml]\n",
                "k/a.yaml": "apiVersion: v1\nkind: ConfigMap\n",
            },
            "lacks metadata",
        ),
    ],
    ids=[
        "missing",
        "outside-root",
        "unknown-key",
        "duplicate",
        "dead-patch",
        "hashed-generator",
        "cycle",
        "component-alone",
        "no-metadata",
    ],
)
def test_resolver_rejects_what_kustomize_rejects(
    tmp_path: Path, kustomize: Callable[[Path], Any], files: dict[str, str], message: str
) -> None:
    _write(tmp_path, files)
    with pytest.raises(Exception, match=message) as info:
        kustomize(tmp_path / "k")
    assert type(info.value).__name__ == "KustomizeError"


def test_resolver_applies_patches_images_and_generators(
    tmp_path: Path, kustomize: Callable[[Path], Any]
) -> None:
    _write(
        tmp_path,
        {
            "base/kustomization.yaml": KUST + "resources: [d.yaml]\n"
            "configMapGenerator:\n- name: c\n  files: [k=x.txt]\n  options: {disableNameSuffixHash: true}\n"
            "images:\n- {name: app, newName: reg/app, newTag: '1.2'}\n",
            "base/d.yaml": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
            "spec: {template: {spec: {containers: [{name: c, image: app}]}}}\n",
            "base/x.txt": "hello\n",
            "comp/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
            "patches:\n- target: {kind: Deployment, name: d}\n"
            "  patch: '[{op: add, path: /spec/replicas, value: 3}]'\n",
            "over/kustomization.yaml": KUST + "resources: [../base]\ncomponents: [../comp]\n",
        },
    )
    build = kustomize(tmp_path / "over")
    deployment = build.get("Deployment", "d")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/app:1.2"
    assert build.get("ConfigMap", "c")["data"] == {"k": "hello\n"}
