"""The default scoring document shipped in the picker-config ConfigMap: loaded by the service's own loader,
it routes and sheds exactly as the built-in default, and every number in it says its default."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from picker.config import default_config, load_config_text
from picker.errors import ConfigError
from scoring import EndpointMatrix, EndpointRow, PickRequest


def _text(builds: dict[str, Any]) -> str:
    configmap = builds["base"].get("ConfigMap", "picker-config")
    assert set(configmap["data"]) == {"config.yaml"}
    return str(configmap["data"]["config.yaml"])


def _fleet(rng: np.random.Generator, n: int) -> EndpointMatrix:
    """A pool with varied gauges, some unknown, some adapters loaded, some metrics stale."""
    rows = []
    for i in range(n):
        adapters = tuple(f"a{j}" for j in range(4) if rng.random() < 0.3)
        rows.append(
            EndpointRow(
                f"e{i}",
                f"10.0.0.{i}:8000",
                waiting=float(rng.integers(0, 12)) if rng.random() > 0.1 else float("nan"),
                running=float(rng.integers(0, 64)),
                kv_usage=float(rng.random()),
                gpu_util=float(rng.random()) if rng.random() > 0.3 else float("nan"),
                lora_active=adapters,
                max_lora=4.0,
                scraped_at=100.0 - float(rng.choice([0.01, 0.05, 0.5])),
            )
        )
    m = EndpointMatrix.from_rows(rows)
    m.dispatched[:] = rng.integers(0, 3, n)
    m.prefill_tokens[:] = rng.integers(0, 40_000, n)
    return m


def test_the_shipped_document_loads_and_is_the_built_in_default(builds: dict[str, Any]) -> None:
    """Deploying the manifests must give the same configuration as running without a document."""
    shipped = load_config_text(_text(builds))
    assert shipped.to_dict()["effective"] == default_config().to_dict()["effective"]


def test_the_shipped_document_routes_and_sheds_like_the_built_in_default(builds: dict[str, Any]) -> None:
    shipped = load_config_text(_text(builds)).build_scheduler()
    built_in = default_config().build_scheduler()
    rng = np.random.default_rng(7)
    for trial in range(40):
        m = _fleet(rng, int(rng.integers(2, 40)))
        req = PickRequest(
            target_model=str(rng.choice(["base", "a0", "a1", "a3"])),
            prompt_tokens_estimate=int(rng.integers(10, 8000)),
            stream=True,
        )
        picks = [
            s.schedule(m, req, now=100.0, rng=np.random.default_rng(trial)).indices
            for s in (shipped, built_in)
        ]
        assert picks[0] == picks[1], trial
        assert shipped.saturation(m, now=100.0) == built_in.saturation(m, now=100.0)


def test_a_broken_parameter_in_the_document_is_rejected_by_name(builds: dict[str, Any]) -> None:
    """A misspelt or out-of-range parameter fails when the document loads, not at the first start in a
    cluster: the loader names the plugin and the parameter."""
    text = _text(builds)
    broken = text.replace("kvCacheUtilThreshold: 0.8", "kvCacheUtilThreshold: 1.5")
    assert broken != text
    with pytest.raises(ConfigError, match="kvCacheUtilThreshold"):
        load_config_text(broken)
    misspelt = text.replace("queueDepthThreshold:", "queueDepthTreshold:")
    assert misspelt != text
    with pytest.raises(ConfigError, match="queueDepthTreshold"):
        load_config_text(misspelt)


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
