"""The default scoring document shipped in the picker-config ConfigMap."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import pytest
import yaml

API_VERSION = "inference.networking.x-k8s.io/v1alpha1"
REQUIRED_PLUGINS = {
    "prefill-queue-scorer",
    "queue-scorer",
    "kv-cache-utilization-scorer",
    "lora-affinity-scorer",
    "gpu-utilization-scorer",
    "max-score-picker",
    "utilization-detector",
}
PICKERS = {"max-score-picker", "random-picker", "weighted-random-picker"}


def _text(builds: dict[str, Any]) -> str:
    configmap = builds["base"].get("ConfigMap", "picker-config")
    assert set(configmap["data"]) == {"config.yaml"}
    return str(configmap["data"]["config.yaml"])


def _plugins(doc: dict[str, Any]) -> dict[str, str]:
    """name -> type (the name defaults to the type)."""
    out: dict[str, str] = {}
    for plugin in doc["plugins"]:
        name = plugin.get("name", plugin["type"])
        assert name not in out, f"plugin name {name} twice"
        out[name] = plugin["type"]
    return out


def test_document_is_an_endpoint_picker_config(builds: dict[str, Any]) -> None:
    doc = yaml.safe_load(_text(builds))
    assert doc["apiVersion"] == API_VERSION
    assert doc["kind"] == "EndpointPickerConfig"
    assert set(doc) <= {
        "apiVersion",
        "kind",
        "featureGates",
        "plugins",
        "schedulingProfiles",
        "saturationDetector",
        "dataLayer",
        "flowControl",
        "parser",
    }


def test_plugins_and_profile_references_resolve(builds: dict[str, Any]) -> None:
    doc = yaml.safe_load(_text(builds))
    plugins = _plugins(doc)
    assert set(plugins.values()) >= REQUIRED_PLUGINS
    names = [p["name"] for p in doc["schedulingProfiles"]]
    assert len(names) == len(set(names)) == 1
    for profile in doc["schedulingProfiles"]:
        refs = [p["pluginRef"] for p in profile["plugins"]]
        assert set(refs) <= set(plugins), set(refs) - set(plugins)
        assert sum(plugins[r] in PICKERS for r in refs) == 1, "exactly one picker per profile"
        for entry in profile["plugins"]:
            if plugins[entry["pluginRef"]].endswith("-scorer"):
                assert isinstance(entry["weight"], int | float), entry
                assert entry["weight"] > 0, entry
        scorers = {t for t in plugins.values() if t.endswith("-scorer")}
        assert scorers <= {plugins[r] for r in refs}, "a defined scorer that no profile uses"
    assert plugins[doc["saturationDetector"]["pluginRef"]] == "utilization-detector"


def _explanation(lines: list[str], i: int) -> str:
    """The comment on line i, or else the comment block right above it."""
    _, _, trailing = lines[i].partition(" #")
    if trailing.strip():
        return trailing
    block = []
    j = i - 1
    while j >= 0 and lines[j].lstrip().startswith("#"):
        block.append(lines[j])
        j -= 1
    return " ".join(reversed(block))


def test_every_weight_and_threshold_is_explained_with_its_default(builds: dict[str, Any]) -> None:
    lines = _text(builds).splitlines()
    keyed = re.compile(r"^(\s*)(?:- )?([A-Za-z]+):\s*(\S.*)?$")
    in_parameters = None
    checked = 0
    for i, line in enumerate(lines):
        m = keyed.match(line)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        if key == "parameters":
            in_parameters = indent
            continue
        if in_parameters is not None and indent <= in_parameters:
            in_parameters = None
        if key == "weight" or (in_parameters is not None and value):
            text = _explanation(lines, i)
            assert text, f"line {i + 1} ({key}) has no comment"
            assert re.search(r"\bdefault\b", text, re.IGNORECASE), f"line {i + 1} ({key}): say the default"
            checked += 1
    assert checked >= 5 + 1 + 1 + 4  # 5 weights, prefill-queue param, picker param, detector params


def test_document_builds_a_scheduler(builds: dict[str, Any]) -> None:
    """Plugin types, parameter names and values are accepted by the scoring registry (a misspelt or
    out-of-range parameter fails here, not at the first start in a cluster)."""
    registry = pytest.importorskip("scoring.registry")
    doc = yaml.safe_load(_text(builds))
    plugins = [
        registry.PluginSpec(p.get("name", p["type"]), p["type"], p.get("parameters", {}))
        for p in doc["plugins"]
    ]
    profiles = [
        registry.ProfileSpec(p["name"], [(e["pluginRef"], e.get("weight")) for e in p["plugins"]])
        for p in doc["schedulingProfiles"]
    ]
    registry.build_scheduler(plugins, profiles, saturation_detector=doc["saturationDetector"]["pluginRef"])
    broken = [
        registry.PluginSpec(p.name, p.type, {**p.parameters, "kvThreshold": 1})
        if p.type == "utilization-detector"
        else p
        for p in plugins
    ]
    with pytest.raises(Exception, match="kvThreshold"):
        registry.build_scheduler(broken, profiles, saturation_detector="utilization-detector")


def test_document_loads_with_the_picker_config_loader(builds: dict[str, Any]) -> None:
    if importlib.util.find_spec("picker.config") is None:
        pytest.skip("picker.config is not there yet")
    import picker.config

    load_config_text = getattr(picker.config, "load_config_text", None)
    if load_config_text is None:
        pytest.skip("picker.config has no load_config_text yet")
    config = load_config_text(_text(builds))
    assert config is not None


def test_the_shipped_profile_is_the_built_in_default(builds: dict[str, Any]) -> None:
    """Deploying the manifests must give the same routing as running without a document."""
    registry = pytest.importorskip("scoring.registry")
    doc = yaml.safe_load(_text(builds))
    plugins = _plugins(doc)
    (profile,) = doc["schedulingProfiles"]
    weights = {
        plugins[e["pluginRef"]]: e["weight"]
        for e in profile["plugins"]
        if plugins[e["pluginRef"]].endswith("-scorer")
    }
    assert weights == dict(registry.DEFAULT_WEIGHTS)
