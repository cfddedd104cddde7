"""``--workers`` with the Redis backend: what the workers count reaches the supervisor's metrics right.

A worker's counts (tokens, cost, backend failures) are added up in the supervisor; the meters, one shared
state in Redis, are shown once, from the newest reply any worker saw; the backend is up while every worker
says so. (End to end with two workers and a real redis-server: ``tests/integration/workers``.)
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from picker.config import load_config_text
from picker.tenants import Settlement
from picker.tenants.ledger import actual_vector, reservation_vector, window_ids
from picker.tenants.remote import SupervisorBackend
from picker.tenants.service import TenantService

from .conftest import WallClock

DOC = """
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
tenants:
  defaultTier: t
  tiers: [{name: t, limits: {tokensPerHour: 1000}}]
  prices: [{model: m, inputPer1M: 1000, outputPer1M: 1000}]
  backend: {type: redis, redis: {url: "redis://127.0.0.1:1/0"}}
"""


def service(clock: WallClock, *, worker: bool) -> tuple[TenantService, CollectorRegistry]:
    registry = CollectorRegistry()
    shared = SupervisorBackend(lambda _message: None) if worker else None
    svc = TenantService(registry, clock=clock, shared=shared)
    svc.apply(load_config_text(DOC).settings.tenants)
    assert svc.redis is not None  # built, never connected: nothing here reaches the network
    return svc, registry


def settlement(tenant: str, tokens: int) -> Settlement:
    return Settlement(
        tenant, "m", reservation_vector(tokens, 0), actual_vector(tokens, 0), 1, tokens - 1, tokens * 10**6
    )


def meters(clock: WallClock, used: int, version: int) -> list[Any]:
    """A worker's view of tenant ``a`` (``RedisBackend.take_changed``) at the account's ``version``."""
    limits = [None, 1000, None, None, None, None]
    return ["a", [used, used, 1, 0, 0, 0], [0] * 6, limits, list(window_ids(clock())), version]


def test_worker_counts_are_added_up_once_each() -> None:
    clock = WallClock()
    supervisor, registry = service(clock, worker=False)
    for index in range(2):
        worker, _ = service(clock, worker=True)
        assert worker.redis is not None
        worker.redis.settle(settlement("a", 10 * (index + 1)))  # counted at once, queued for Redis
        worker.metrics.backend_failure("open")
        export = worker.export()
        assert export is not None
        supervisor.merge_worker(index, export)
        rows, failures, _up, _views = worker.export() or [[], {}, True, []]
        assert (rows, failures) == ([], {})  # passed on once: nothing counted twice
    assert registry.get_sample_value("ai_tokens_total", {"tenant": "a", "model": "m", "kind": "input"}) == 2
    assert registry.get_sample_value("ai_tokens_total", {"tenant": "a", "model": "m", "kind": "output"}) == 28
    assert registry.get_sample_value("ai_cost_total", {"tenant": "a", "model": "m"}) == 0.03
    assert registry.get_sample_value("picker_tenant_backend_failures_total", {"fail_mode": "open"}) == 2


def test_shared_meters_show_the_newest_reply_never_a_sum() -> None:
    clock = WallClock()
    supervisor, registry = service(clock, worker=False)
    supervisor.merge_worker(0, [[], {}, True, [meters(clock, 300, version=12)]])
    supervisor.merge_worker(1, [[], {}, True, [meters(clock, 200, version=11)]])  # older, arrived later
    labels = {"tenant": "a", "window": "hour"}
    assert registry.get_sample_value("ai_tokens_used", labels) == 300
    assert registry.get_sample_value("ai_tokens_limit", labels) == 1000
    supervisor.merge_worker(1, [[], {}, True, [meters(clock, 400, version=13)]])
    assert registry.get_sample_value("ai_tokens_used", labels) == 400
    (row,) = supervisor.describe()["tenants"]
    assert row["meters"]["tokensPerHour"]["used"] == 400
    # 40 idle days later the account expired in Redis and its version restarted: a new month is newer
    clock.now += 40 * 86400
    supervisor.merge_worker(0, [[], {}, True, [meters(clock, 50, version=1)]])
    assert registry.get_sample_value("ai_tokens_used", labels) == 50


def test_the_backend_is_up_while_every_worker_says_so() -> None:
    clock = WallClock()
    supervisor, registry = service(clock, worker=False)
    supervisor.merge_worker(0, [[], {}, False, []])
    supervisor.merge_worker(1, [[], {}, True, []])
    assert registry.get_sample_value("picker_tenant_backend_up") == 0
    assert supervisor.describe()["backendUp"] is False
    supervisor.retire_worker(0)  # the worker that saw Redis down is gone
    assert registry.get_sample_value("picker_tenant_backend_up") == 1
    assert supervisor.describe()["backendUp"] is True


def test_a_worker_with_the_memory_backend_sends_nothing() -> None:
    """Its budget and counts are the supervisor's already (``tenants.reserve``/``settle``)."""
    worker = TenantService(CollectorRegistry(), shared=SupervisorBackend(lambda _message: None))
    worker.apply(load_config_text(DOC.replace("type: redis", "type: memory")).settings.tenants)
    assert worker.export() is None
