"""The tenants' alerts evaluated by Prometheus itself (`promtool test rules`) on synthetic series: each fires
when it should and stays quiet when it should not."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from picker.testing.tools import tool


def _promtool() -> str:
    return tool("promtool", apt="prometheus")


@pytest.fixture
def rule(builds: dict[str, Any]) -> dict[str, Any]:
    (doc,) = builds["observability"].of_kind("PrometheusRule")
    return dict(doc)


def _run(tmp_path: Path, rule: dict[str, Any], test: dict[str, Any]) -> None:
    groups = [
        {**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
        for g in rule["spec"]["groups"]
        if g["name"] == "picker.tenants"
    ]
    assert groups, "no picker.tenants group"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    path = tmp_path / "test.yaml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [test]}),
        encoding="utf-8",
    )
    result = subprocess.run(
        [_promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_token_budget_near_limit_fires_after_5_minutes_above_90_percent(
    tmp_path: Path, rule: dict[str, Any]
) -> None:
    series = [
        # tenant "loop": 9,500 of 10,000 from minute 2 on; tenant "calm": half its limit
        {"series": 'ai_tokens_used{tenant="loop",window="hour"}', "values": "0 5000 9500x20"},
        {"series": 'ai_tokens_limit{tenant="loop",window="hour"}', "values": "10000x22"},
        {"series": 'ai_tokens_used{tenant="calm",window="hour"}', "values": "5000x22"},
        {"series": 'ai_tokens_limit{tenant="calm",window="hour"}', "values": "10000x22"},
    ]
    firing = [{"exp_labels": {"severity": "warning", "tenant": "loop", "window": "hour"}}]
    _run(
        tmp_path,
        rule,
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "TokenBudgetNearLimit", "exp_alerts": []},  # pending
                {"eval_time": "8m", "alertname": "TokenBudgetNearLimit", "exp_alerts": firing},
            ],
        },
    )


def test_token_budget_near_limit_ignores_tenants_without_a_limit(
    tmp_path: Path, rule: dict[str, Any]
) -> None:
    series = [{"series": 'ai_tokens_used{tenant="metered",window="minute"}', "values": "1000000x20"}]
    _run(
        tmp_path,
        rule,
        {
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": "15m", "alertname": "TokenBudgetNearLimit", "exp_alerts": []}],
        },
    )


def _cost_series(tenant: str, per_5m_before: float, per_5m_after: float) -> dict[str, str]:
    """A cost counter over 25 hours at 5-minute steps: ``per_5m_before`` for 24 h, then ``per_5m_after``."""
    before = 24 * 12
    return {
        "series": f'ai_cost_total{{tenant="{tenant}",model="m"}}',
        "values": f"0+{per_5m_before}x{before} {before * per_5m_before + per_5m_after}+{per_5m_after}x12",
    }


def test_unexpected_cost_spike_fires_on_a_runaway_and_not_on_steady_spend(
    tmp_path: Path, rule: dict[str, Any]
) -> None:
    series = [_cost_series("runaway", 0.1, 2.0), _cost_series("steady", 0.5, 0.5)]
    firing = [{"exp_labels": {"severity": "warning", "tenant": "runaway"}}]
    _run(
        tmp_path,
        rule,
        {
            "interval": "5m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "24h", "alertname": "UnexpectedCostSpike", "exp_alerts": []},
                {"eval_time": "24h20m", "alertname": "UnexpectedCostSpike", "exp_alerts": firing},
            ],
        },
    )
