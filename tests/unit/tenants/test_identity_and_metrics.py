"""Tenant ids from headers (bounded) and the tenant metrics (bounded labels)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from picker.config import load_config_text
from picker.errors import ConfigError
from picker.tenants import MemoryBackend, Settlement, TenantIds, TenantMetrics
from picker.tenants.backend import AccountView
from picker.tenants.identity import IDLE_S, OTHER
from picker.tenants.ledger import actual_vector, reservation_vector
from picker.tenants.metrics import MAX_MODELS

from .conftest import WallClock


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ids(max_tenants: int = 3, clock: Mono | None = None) -> TenantIds:
    return TenantIds(
        header="x-tenant-id",
        anonymous="anonymous",
        max_tenants=max_tenants,
        max_length=16,
        listed=frozenset({"listed"}),
        clock=clock or Mono(),
    )


def test_header_then_fairness_id_then_anonymous() -> None:
    t = ids()
    assert t.resolve({"x-tenant-id": "a", "x-gateway-inference-fairness-id": "b"}) == "a"
    assert t.resolve({"x-gateway-inference-fairness-id": "b"}) == "b"
    assert t.resolve({"x-tenant-id": ""}) == "anonymous"
    assert t.resolve({}) == "anonymous"


@pytest.mark.parametrize("bad", ["x" * 17, "white space", "new\nline", "émoji", "-leading", "a\x1b[31m"])
def test_untrusted_ids_are_other(bad: str) -> None:
    assert ids().resolve({"x-tenant-id": bad}) == OTHER


def test_a_flood_of_ids_is_bounded_and_idle_ids_make_room() -> None:
    clock = Mono()
    t = ids(max_tenants=3, clock=clock)
    assert [t.resolve({"x-tenant-id": f"t{i}"}) for i in range(6)] == ["t0", "t1", "t2", OTHER, OTHER, OTHER]
    assert t.resolve({"x-tenant-id": "listed"}) == "listed"  # listed ids never compete for room
    assert t.tracked() == 3
    clock.now += 5
    t.resolve({"x-tenant-id": "t0"})  # t0 stays active
    clock.now += IDLE_S
    assert t.resolve({"x-tenant-id": "t9"}) == "t9"
    assert t.resolve({"x-tenant-id": "t0"}) == "t0"
    assert t.tracked() == 2


def test_metrics_count_settlements_and_expose_windows() -> None:
    registry = CollectorRegistry()
    clock = WallClock()
    backend = MemoryBackend(clock=clock)
    metrics = TenantMetrics(registry, backend.accounts)
    backend.set_sink(metrics)
    limits = (1000, None, None, None, 5_000_000_000, None)
    backend.reserve("acme", limits, reservation_vector(300, 100))
    backend.settle(
        Settlement(
            "acme", "m", reservation_vector(300, 100), actual_vector(120, 90_000_000), 100, 20, 90_000_000
        )
    )
    backend.reserve("acme", limits, reservation_vector(50, 0))
    metrics.rejected("acme", "tokens_per_minute")
    value = registry.get_sample_value
    assert value("ai_tokens_total", {"tenant": "acme", "model": "m", "kind": "input"}) == 100
    assert value("ai_tokens_total", {"tenant": "acme", "model": "m", "kind": "output"}) == 20
    assert value("ai_cost_total", {"tenant": "acme", "model": "m"}) == pytest.approx(0.09)
    assert value("ai_tokens_used", {"tenant": "acme", "window": "minute"}) == 120
    assert value("ai_tokens_reserved", {"tenant": "acme", "window": "minute"}) == 50
    assert value("ai_tokens_limit", {"tenant": "acme", "window": "minute"}) == 1000
    assert value("ai_tokens_limit", {"tenant": "acme", "window": "hour"}) is None
    assert value("ai_cost_limit", {"tenant": "acme", "window": "day"}) == 5.0
    assert value("ai_cost_used", {"tenant": "acme", "window": "day"}) == pytest.approx(0.09)
    assert value("picker_tenant_rejections_total", {"tenant": "acme", "reason": "tokens_per_minute"}) == 1


def test_model_labels_are_capped() -> None:
    registry = CollectorRegistry()
    metrics = TenantMetrics(registry, list)
    for i in range(MAX_MODELS + 20):
        metrics.settled(Settlement("t", f"model-{i}", reservation_vector(1, 0), actual_vector(1, 0), 1, 0, 0))
    models = {s.labels["model"] for f in registry.collect() if f.name == "ai_tokens" for s in f.samples}
    assert len(models) == MAX_MODELS + 1
    assert OTHER in models


def test_tenant_and_model_labels_are_bounded_in_number_and_length() -> None:
    """Ids churn (idle ones are forgotten to make room), so the ids seen over the process's life are not
    bounded by ``maxTenants``; counter series live forever: the label is bounded again (picker.labels)."""
    registry = CollectorRegistry()
    metrics = TenantMetrics(registry, list, label_values=3, label_length=16)
    metrics.pin_tenants(["listed", "anonymous"])
    huge_model = "m" * (1 << 20)
    for i in range(10):
        metrics.settled(Settlement(f"t{i}", "short", reservation_vector(1, 0), actual_vector(1, 0), 1, 0, 0))
        metrics.settled(
            Settlement("listed", huge_model, reservation_vector(1, 0), actual_vector(1, 0), 1, 0, 0)
        )
        metrics.rejected(f"t{i}" * 20, "tokens_per_minute")
    metrics.settled(Settlement("anonymous", "short", reservation_vector(1, 0), actual_vector(1, 0), 1, 0, 0))
    samples = [s for f in registry.collect() for s in f.samples]
    tokens = [s.labels for s in samples if s.name == "ai_tokens_total"]
    assert {labels["tenant"] for labels in tokens} == {"t0", "t1", "t2", OTHER, "listed", "anonymous"}
    assert {labels["model"] for labels in tokens} == {"short", OTHER}
    assert all(len(s.labels.get(k, "")) <= 16 for s in samples for k in ("tenant", "model"))
    value = registry.get_sample_value
    assert value("ai_tokens_total", {"tenant": OTHER, "model": "short", "kind": "input"}) == 7
    assert value("ai_tokens_total", {"tenant": "listed", "model": OTHER, "kind": "input"}) == 10
    assert value("picker_tenant_rejections_total", {"tenant": OTHER, "reason": "tokens_per_minute"}) == 10


def test_window_gauges_share_the_tenant_label_bound() -> None:
    """Accounts whose ids collapse to ``other`` are summed into one series (no duplicate series, no limit
    that belongs to no one)."""
    registry = CollectorRegistry()
    zeros = (0,) * 6
    limits = (1000, None, None, None, None, None)

    def view(tenant: str, used: int) -> AccountView:
        return AccountView(tenant, (used, *zeros[1:]), zeros, limits, zeros)

    accounts = [view("a", 1), view("b", 2), view("c", 3), view("L" * 200, 4)]
    TenantMetrics(registry, lambda: accounts, label_values=2, label_length=16)
    value = registry.get_sample_value
    assert value("ai_tokens_used", {"tenant": "a", "window": "minute"}) == 1
    assert value("ai_tokens_limit", {"tenant": "a", "window": "minute"}) == 1000
    assert value("ai_tokens_used", {"tenant": OTHER, "window": "minute"}) == 7
    assert value("ai_tokens_limit", {"tenant": OTHER, "window": "minute"}) is None
    tenants = {s.labels["tenant"] for f in registry.collect() for s in f.samples if "tenant" in s.labels}
    assert tenants == {"a", "b", OTHER}


@pytest.mark.parametrize(
    ("tenants", "message"),
    [
        ("{tiers: [{name: a}, {name: a}]}", "tiers: duplicate a"),
        ("{tenants: [{id: x, tier: nope}]}", "names tier 'nope'"),
        ("{defaultTier: gold}", "defaultTier 'gold'"),
        ("{tenants: [{id: 'bad id'}]}", "must match"),
        ("{header: X-Tenant}", "lowercase HTTP header"),
        ("{tiers: [{name: a, limits: {tokensPerHour: -1}}]}", "greater than or equal to 0"),
        ("{backend: {type: redis}}", "type redis needs a redis section"),
        ("{backend: {type: redis, redis: {url: 'redis://user:pw@h:6379'}}}", "passwordFile"),
        ("{backend: {type: redis, redis: {url: 'http://h'}}}", "must start with redis://"),
        ("{prices: [{model: m, inputPer1M: 1}]}", "outputPer1M"),
        ("{unknownField: 1}", "unknownField"),
    ],
)
def test_invalid_tenants_sections_are_rejected_with_a_reason(tenants: str, message: str) -> None:
    doc = f"apiVersion: picker.dev/v1alpha1\nkind: PickerConfig\ntenants: {tenants}\n"
    with pytest.raises(ConfigError, match="PickerConfig") as caught:
        load_config_text(doc)
    assert message in caught.value.message
