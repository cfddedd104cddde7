"""The scaler's alerts evaluated by Prometheus (``promtool test rules``) on synthetic series: stuck means
desired != ready for 15 minutes outside dry run (an HPA above the scaler's floor is not stuck), shortfall
means saturated at the maximum for 10 minutes."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from picker.testing.tools import tool

LABELS = 'namespace="inference",pod="picker-0"'


def _series(name: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{LABELS}}}", "values": values}


def _gauges(
    *, desired: int, ready: int, dry_run: int = 0, hpa: int = 0, saturated: int = 0, maximum: int = 8
) -> list[dict[str, str]]:
    steady = "{}+0x30"
    return [
        _series("picker_scaler_active", steady.format(1)),
        _series("picker_scaler_dry_run", steady.format(dry_run)),
        _series("picker_scaler_hpa", steady.format(hpa)),
        _series("picker_scaler_desired_replicas", steady.format(desired)),
        _series("picker_scaler_ready_replicas", steady.format(ready)),
        _series("picker_scaler_saturated", steady.format(saturated)),
        _series("picker_scaler_max_replicas", steady.format(maximum)),
    ]


def _run(tmp_path: Path, rule: dict[str, Any], series: list[dict[str, str]], expected: list[Any]) -> None:
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule["spec"]["groups"]
        if g["name"] == "picker.scaler"
    ]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": n, "exp_alerts": e} for n, e in expected
                ],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    promtool = tool("promtool", apt="prometheus")
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def rule(builds: dict[str, Any]) -> dict[str, Any]:
    (doc,) = builds["observability"].of_kind("PrometheusRule")
    return dict(doc)


FIRED = [{"exp_labels": {"severity": "warning", "namespace": "inference", "pod": "picker-0"}}]


@pytest.mark.parametrize(
    ("gauges", "fires"),
    [
        ({"desired": 6, "ready": 4}, True),  # pods that never come up
        ({"desired": 3, "ready": 4}, True),  # a removal that never happens
        ({"desired": 4, "ready": 4}, False),
        ({"desired": 6, "ready": 4, "dry_run": 1}, False),  # dry run: desired is only what it would do
        ({"desired": 3, "ready": 5, "hpa": 1}, False),  # the HPA holds more than the floor: normal
        ({"desired": 6, "ready": 4, "hpa": 1}, True),  # the HPA's floor was raised and pods do not come
    ],
)
def test_scaler_stuck(tmp_path: Path, rule: dict[str, Any], gauges: dict[str, int], fires: bool) -> None:
    _run(tmp_path, rule, _gauges(**gauges), [("ScalerStuck", FIRED if fires else [])])


@pytest.mark.parametrize(
    ("gauges", "fires"),
    [
        ({"desired": 8, "ready": 8, "saturated": 1}, True),
        ({"desired": 8, "ready": 7, "saturated": 1}, False),  # still room to add
        ({"desired": 8, "ready": 8, "saturated": 0}, False),
    ],
)
def test_capacity_shortfall(
    tmp_path: Path, rule: dict[str, Any], gauges: dict[str, int], fires: bool
) -> None:
    _run(tmp_path, rule, _gauges(**gauges), [("CapacityShortfall", FIRED if fires else [])])
