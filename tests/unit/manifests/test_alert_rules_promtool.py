"""The error-ratio alerts evaluated by Prometheus itself (`promtool test rules`) on synthetic series: the
per-model alert and the one for requests rejected before their model was known agree with the labels the EPP
exports (pre-parse 400s carry model_name="")."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from picker.testing.tools import tool

ERR = "inference_objective_request_error_total"
REQ = "inference_objective_request_total"


def _promtool() -> str:
    return tool("promtool", apt="prometheus")


def _series(name: str, labels: dict[str, str], per_minute: int) -> dict[str, str]:
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{rendered}}}", "values": f"0+{per_minute}x20"}


def _run(tmp_path: Path, rule: dict[str, Any], series: list[dict[str, str]], expected: list[Any]) -> None:
    # promtool compares annotations too; they are templated text (checked by `promtool check rules`), so the
    # firing tests drop them and compare names and labels.
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule["spec"]["groups"]
    ]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    alerts = [{"alertname": name, "exp_alerts": exp} for name, exp in expected]
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "15m", **a} for a in alerts],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test), encoding="utf-8")
    result = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def rule(builds: dict[str, Any]) -> dict[str, Any]:
    (doc,) = builds["observability"].of_kind("PrometheusRule")
    return dict(doc)


def test_rules_pass_promtool_check(tmp_path: Path, rule: dict[str, Any]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    result = subprocess.run(
        [_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pre_parse_rejections_fire_the_unattributed_alert_only(tmp_path: Path, rule: dict[str, Any]) -> None:
    ok = {"model_name": "m", "target_model_name": "m", "priority": "0"}
    series = [
        _series(REQ, ok, 90),
        _series(ERR, {"model_name": "", "target_model_name": "", "error_code": "BadRequest"}, 10),
    ]
    fired = [{"exp_labels": {"severity": "warning"}}]
    _run(
        tmp_path,
        rule,
        series,
        [("InferenceUnattributedErrorRatioHigh", fired), ("InferenceRequestErrorRatioHigh", [])],
    )


def test_only_rejections_and_nothing_scheduled_still_fires(tmp_path: Path, rule: dict[str, Any]) -> None:
    series = [_series(ERR, {"model_name": "", "target_model_name": "", "error_code": "BadRequest"}, 5)]
    fired = [{"exp_labels": {"severity": "warning"}}]
    _run(tmp_path, rule, series, [("InferenceUnattributedErrorRatioHigh", fired)])


def test_model_errors_fire_the_per_model_alert(tmp_path: Path, rule: dict[str, Any]) -> None:
    ok = {"model_name": "m", "target_model_name": "m", "priority": "0"}
    series = [
        _series(REQ, ok, 90),
        _series(ERR, {"model_name": "m", "target_model_name": "m", "error_code": "ModelServerError"}, 10),
    ]
    fired = [{"exp_labels": {"severity": "critical", "model_name": "m"}}]
    _run(
        tmp_path,
        rule,
        series,
        [("InferenceRequestErrorRatioHigh", fired), ("InferenceUnattributedErrorRatioHigh", [])],
    )


def test_a_few_errors_fire_nothing(tmp_path: Path, rule: dict[str, Any]) -> None:
    ok = {"model_name": "m", "target_model_name": "m", "priority": "0"}
    series = [
        _series(REQ, ok, 100),
        _series(ERR, {"model_name": "", "target_model_name": "", "error_code": "BadRequest"}, 1),
        _series(ERR, {"model_name": "m", "target_model_name": "m", "error_code": "ModelServerError"}, 1),
    ]
    _run(
        tmp_path,
        rule,
        series,
        [("InferenceUnattributedErrorRatioHigh", []), ("InferenceRequestErrorRatioHigh", [])],
    )


def test_provider_failover_fires_above_ten_in_five_minutes(tmp_path: Path, rule: dict[str, Any]) -> None:
    many = _series("ai_failover_total", {"pool": "p", "reason": "ejected"}, 5)  # 25 in 5 minutes
    fired = [{"exp_labels": {"severity": "warning", "pool": "p", "reason": "ejected"}}]
    _run(tmp_path, rule, [many], [("ProviderFailover", fired)])
    few = _series("ai_failover_total", {"pool": "p", "reason": "ejected"}, 1)  # 5 in 5 minutes
    _run(tmp_path, rule, [few], [("ProviderFailover", [])])
