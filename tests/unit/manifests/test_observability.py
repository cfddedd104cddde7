"""ServiceMonitor, PrometheusRule and the Grafana dashboard: shape, and metric names we actually export."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from picker.scaler.decision import Action, Decision
from picker.scaler.metrics import ScalerMetrics
from picker.scaler.ports import TickReport
from picker.state.datastore import Datastore
from picker.state.endpoints import Endpoint, PoolInfo
from picker.state.metrics import EndpointMetrics
from picker.telemetry import Telemetry
from picker.tenants import MemoryBackend, Settlement, TenantMetrics
from picker.tenants.ledger import actual_vector, reservation_vector
from picker.testing.tools import tool

Doc = dict[str, Any]


@dataclass(frozen=True)
class _Decision:
    incoming_model: str = "m"
    target_model: str = "m-lora"
    priority: int = 0
    scheduled_s: float | None = 0.001


@dataclass(frozen=True)
class _Usage:
    prompt_tokens: int = 9
    completion_tokens: int = 4
    cached_tokens: int = 2


def _series_names() -> set[str]:
    """Series names as our /metrics exposes them (and so as PromQL sees them), read from
    ``picker.telemetry.Telemetry`` after one request of every kind has been observed."""
    datastore = Datastore()
    datastore.set_pool(PoolInfo(name="pool", namespace="default"))
    datastore.replace_endpoints([Endpoint(name="pod-0-rank-0", ip="10.0.0.1", port=8000)])
    datastore.record_scrape("pod-0-rank-0", EndpointMetrics(waiting=1.0, running=2.0, kv_usage=0.5))
    telemetry = Telemetry(datastore, registry=CollectorRegistry(), pool_name="pool")
    decision = _Decision()
    telemetry.routed(decision, 128)
    telemetry.rewrite_decision("rewrite", "m", "m-lora")
    telemetry.response_complete(decision, latency_s=0.5, response_bytes=64, usage=_Usage(), status_ok=False)
    telemetry.stream_closed(decision)
    telemetry.failed("BadRequest", "", "")
    telemetry.scrape_observed(0.01, ok=False)
    telemetry.failover("ejected")
    # the tenants' metrics, registered on the same registry by the service, after one limited tenant's
    # request was settled and one refused
    backend = MemoryBackend()
    tenants = TenantMetrics(telemetry.registry, backend.accounts)
    backend.set_sink(tenants)
    backend.reserve("t", (10, 10, 10, 10, 10, 10), reservation_vector(1, 1))
    backend.settle(Settlement("t", "m", reservation_vector(1, 1), actual_vector(1, 1), 1, 1, 1))
    tenants.rejected("t", "tokens_per_minute")
    tenants.backend_failure("open")
    # the scaler's metrics, registered by the service in Kubernetes mode, after one tick, one decision, one
    # drain and one failed API call
    scaler = ScalerMetrics(telemetry.registry)
    scaler.tick(
        TickReport(
            current=3,
            desired=2,
            ready=3,
            max_replicas=4,
            demand_rps=1.0,
            forecast_rps=2.0,
            capacity_rps=10.0,
            demand_tps=900.0,
            forecast_tps=None,
            capacity_tps=12_000.0,
            saturated=False,
            held=0,
            dry_run=False,
            hpa=False,
            gpu_hours_saved=0.01,
        )
    )
    scaler.decided(
        Decision(
            at=0.0,
            action=Action.DRAIN,
            direction="down",
            reason="low-demand",
            current=3,
            desired=2,
            message="m",
        )
    )
    scaler.drained(1.0)
    scaler.failed("read")
    return {s.name for family in telemetry.registry.collect() for s in family.samples}


SERIES = _series_names()


def _unknown(names: set[str]) -> set[str]:
    return {n for n in names if n not in SERIES}


PROM_DURATION = re.compile(
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
)


def _seconds(duration: str) -> float:
    m = PROM_DURATION.match(duration)
    assert duration
    assert m, duration
    units = {1: 365 * 86400, 3: 7 * 86400, 5: 86400, 7: 3600, 9: 60, 11: 1, 13: 0.001}
    return sum(int(m.group(i + 1)) * f for i, f in units.items() if m.group(i + 1))


# ------------------------------------------------------------------------------------------ PromQL helper


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (le, model_name) (rate(x_bucket{a="b",c=~"d|e"}[5m])) > 10', {"x_bucket"}),
        ("a / on(job) group_left(x) b > bool 0.5", {"a", "b"}),
        ('histogram_quantile(0.99, sum(rate(h_bucket{l="(x)"}[$__rate_interval])))', {"h_bucket"}),
        ("max_over_time(g[1h:5m]) offset 1d", {"g"}),
        ("label_values(inference_pool_ready_pods, name)", {"inference_pool_ready_pods", "name"}),
    ],
)
def test_promql_metric_names(promql_names: Callable[[str], set[str]], expr: str, names: set[str]) -> None:
    assert promql_names(expr) == names


def test_unknown_metric_is_caught(promql_names: Callable[[str], set[str]]) -> None:
    assert _unknown(promql_names("rate(inference_pool_requests_total[5m])")) == {
        "inference_pool_requests_total"
    }
    assert _unknown(promql_names("picker_config_reload_total + inference_pool_ready_pods")) == set()
    assert _unknown(promql_names("picker_no_such_metric_total")) == {"picker_no_such_metric_total"}


# ------------------------------------------------------------------------------------------ ServiceMonitor


def test_servicemonitor_scrapes_the_metrics_port(builds: dict[str, Any]) -> None:
    (monitor,) = builds["observability"].of_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}
    service = builds["base"].get("Service", "picker")
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert spec["endpoints"]
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels"}
        assert endpoint["port"] == "http-metrics"
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics").startswith("/")
        assert endpoint.get("scheme", "http") in {"http", "https"}
        if "scrapeTimeout" in endpoint:
            assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


# ------------------------------------------------------------------------------------------ PrometheusRule


def _rules(builds: dict[str, Any]) -> list[Doc]:
    (rule,) = builds["observability"].of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def test_prometheusrule_shape(builds: dict[str, Any]) -> None:
    (rule,) = builds["observability"].of_kind("PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules"}
        assert group["rules"]
        for r in group["rules"]:
            assert ("alert" in r) != ("record" in r), r
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}, r
            assert isinstance(r["expr"], str)
            assert r["expr"].strip()
            if "alert" in r:
                alerts.append(r["alert"])
                assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", r["alert"])
                assert _seconds(r["for"]) > 0
                assert r["labels"]["severity"] in {"critical", "warning", "info"}
                assert {"summary", "description"} <= set(r["annotations"])
    assert len(alerts) == len(set(alerts))


def test_rules_use_only_exported_metrics(
    builds: dict[str, Any], promql_names: Callable[[str], set[str]]
) -> None:
    for r in _rules(builds):
        names = promql_names(r["expr"])
        assert names, r["expr"]
        assert _unknown(names) == set(), r.get("alert")


# (what, metric names that must appear, threshold pattern)
REQUIRED_ALERTS = [
    ("p99 duration > 10 s", {"inference_objective_request_duration_seconds_bucket"}, r"0\.99.*>\s*10\b"),
    (
        "error ratio > 5 % per model",
        {"inference_objective_request_error_total", "inference_objective_request_total"},
        r"by \(model_name\).*error_total\{model_name!=\"\"\}.*/.*request_total.*>\s*0\.05\b",
    ),
    (
        "error ratio > 5 % before the model is known",
        {"inference_objective_request_error_total", "inference_objective_request_total"},
        r"error_total\{model_name=\"\"\}.*/.*request_total.*error_total\{model_name=\"\"\}.*>\s*0\.05\b",
    ),
    ("mean queue > 50", {"inference_pool_average_queue_size"}, r">\s*50\b"),
    ("mean KV > 0.9", {"inference_pool_average_kv_cache_utilization"}, r">\s*0\.9\b"),
    ("no ready endpoints", {"inference_pool_ready_pods"}, r"(==\s*0\b)|(<\s*1\b)"),
    ("failover > 10 in 5 minutes", {"ai_failover_total"}, r"increase\(ai_failover_total\[5m\]\).*>\s*10\b"),
    (
        "tokens used > 90 % of the limit",
        {"ai_tokens_used", "ai_tokens_limit"},
        r"ai_tokens_used.*/.*ai_tokens_limit.*>\s*0\.9\b",
    ),
    (
        "scaler stuck: desired != ready",
        {"picker_scaler_desired_replicas", "picker_scaler_ready_replicas", "picker_scaler_dry_run"},
        r"picker_scaler_desired_replicas != picker_scaler_ready_replicas",
    ),
    (
        "capacity shortfall: saturated at the maximum",
        {"picker_scaler_saturated", "picker_scaler_ready_replicas", "picker_scaler_max_replicas"},
        r"picker_scaler_saturated == 1.*picker_scaler_ready_replicas >= picker_scaler_max_replicas",
    ),
    (
        "cost rate 1 h > 1.5 x 24 h",
        {"ai_cost_total"},
        r"ai_cost_total\[1h\].*>\s*1\.5 \* .*ai_cost_total\[24h\]",
    ),
]


@pytest.mark.parametrize(
    ("what", "metrics", "threshold"), REQUIRED_ALERTS, ids=[a[0] for a in REQUIRED_ALERTS]
)
def test_required_alert_exists(
    builds: dict[str, Any],
    promql_names: Callable[[str], set[str]],
    what: str,
    metrics: set[str],
    threshold: str,
) -> None:
    matching = [
        r
        for r in _rules(builds)
        if "alert" in r
        and metrics <= promql_names(r["expr"])
        and re.search(threshold, " ".join(r["expr"].split()), re.DOTALL)
    ]
    assert len(matching) == 1, what


# ------------------------------------------------------------------------------------------ dashboard


def _dashboard(builds: dict[str, Any]) -> Doc:
    configmap = builds["observability"].get("ConfigMap", "picker-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    dashboard: Doc = json.loads(text)
    return dashboard


def _panels(dashboard: Doc) -> list[Doc]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: Doc) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query))
    return exprs


def test_dashboard_shape(builds: dict[str, Any]) -> None:
    dashboard = _dashboard(builds)
    assert dashboard["uid"]
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        assert grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["title"]
        assert panel["targets"]
        assert panel["datasource"]["uid"] == "${datasource}"
    for name in re.findall(r"\$(\w+)", " ".join(_exprs(dashboard))):
        assert name.startswith("__") or name in variables, f"undefined dashboard variable ${name}"


#: Grafana's built-in interval variables, replaced by a plain range so promtool can parse the queries
GRAFANA_INTERVALS = re.compile(r"\$(__rate_interval|__interval|__range)\b")


def test_dashboard_queries_parse_with_promtool(builds: dict[str, Any], tmp_path: Path) -> None:
    """Every panel and variable query is valid PromQL, as Prometheus itself parses it: each becomes a
    recording rule (variables substituted) for `promtool check rules`."""
    dashboard = _dashboard(builds)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        text = GRAFANA_INTERVALS.sub("5m", expr)
        for name in variables:
            text = re.sub(rf"\$(\{{{name}\}}|{name}\b)", "x", text)
        rules.append({"record": f"dashboard:query_{i}", "expr": text})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    promtool = tool("promtool", apt="prometheus")
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_uses_only_exported_metrics(
    builds: dict[str, Any], promql_names: Callable[[str], set[str]]
) -> None:
    for expr in _exprs(_dashboard(builds)):
        assert _unknown(promql_names(expr)) == set(), expr


#: A panel (its title) per topic, and the series it must query.
REQUIRED_PANELS = {
    "scaler replicas": {"picker_scaler_desired_replicas", "picker_scaler_ready_replicas"},
    "scaler demand": {"picker_scaler_demand_rps", "picker_scaler_forecast_rps"},
    "scaler token demand": {
        "picker_scaler_demand_tps",
        "picker_scaler_forecast_tps",
        "picker_scaler_capacity_tps",
        "picker_scaler_ready_replicas",
    },
    "scaler demand replicas requests tokens": {
        "picker_scaler_demand_rps",
        "picker_scaler_capacity_rps",
        "picker_scaler_demand_tps",
        "picker_scaler_capacity_tps",
    },
    "scaler decisions": {"picker_scaler_decisions_total"},
    "scaler saved": {"picker_scaler_gpu_hours_saved_total"},
    "scaler drain": {"picker_scaler_drain_duration_seconds_bucket"},
    "tenant tokens": {"ai_tokens_total"},
    "tenant cost": {"ai_cost_total"},
    "tenant rejections": {"picker_tenant_rejections_total"},
    "tenant remaining budget": {"ai_tokens_used", "ai_tokens_limit"},
    "request rate": {"inference_objective_request_total"},
    "error rate": {"inference_objective_request_error_total"},
    "duration p50 / p99": {"inference_objective_request_duration_seconds_bucket"},
    "queue": {"inference_pool_average_queue_size"},
    "kv": {"inference_pool_average_kv_cache_utilization"},
    "ready": {"inference_pool_ready_pods"},
    "per endpoint": {"inference_pool_per_pod_queue_size"},
    "scheduler": {"inference_extension_scheduler_e2e_duration_seconds_bucket"},
    "tokens": {"inference_objective_input_tokens_sum", "inference_objective_output_tokens_sum"},
}


@pytest.mark.parametrize("topic", sorted(REQUIRED_PANELS))
def test_dashboard_has_the_required_panels(
    builds: dict[str, Any], promql_names: Callable[[str], set[str]], topic: str
) -> None:
    panels = [p for p in _panels(_dashboard(builds)) if p["type"] != "row"]
    found = [
        p
        for p in panels
        if REQUIRED_PANELS[topic] <= {n for t in p["targets"] for n in promql_names(t["expr"])}
        and all(word in p["title"].lower() for word in topic.split() if word.isalpha() and len(word) > 3)
    ]
    assert found, topic


def test_duration_panels_show_p50_and_p99(builds: dict[str, Any]) -> None:
    for panel in _panels(_dashboard(builds)):
        if "p50 / p99" in panel["title"]:
            quantiles = {
                re.search(r"histogram_quantile\(([0-9.]+)", t["expr"]).group(1) for t in panel["targets"]
            }
            assert {"0.5", "0.99"} <= quantiles, panel["title"]
