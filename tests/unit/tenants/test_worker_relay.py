"""``--workers``: what the workers count and hold reaches the supervisor's metrics and ``/debug/tenants``.

With Redis, a worker's counts (tokens, cost, backend failures) are added up in the supervisor; the meters,
one shared state in Redis, are shown once, from the newest reply any worker saw; the backend is up while
every worker says so; each worker's lease is shown next to the shared meters. With the memory backend the
budget is the supervisor's and each worker's running requests' share of it is shown next to the meters.
(End to end with two workers, and a real redis-server: ``tests/integration/workers``.)
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from picker.config import load_config_text
from picker.tenants import Settlement
from picker.tenants.lease import Lease
from picker.tenants.ledger import LIMIT_NAMES, actual_vector, reservation_vector, window_ids
from picker.tenants.policy import NANO
from picker.tenants.remote import RESERVE, SETTLE, BudgetHost, SupervisorBackend
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
        rows, failures, _up, _views, _leases = worker.export() or [[], {}, True, [], None]
        assert (rows, failures) == ([], {})  # passed on once: nothing counted twice
    assert registry.get_sample_value("ai_tokens_total", {"tenant": "a", "model": "m", "kind": "input"}) == 2
    assert registry.get_sample_value("ai_tokens_total", {"tenant": "a", "model": "m", "kind": "output"}) == 28
    assert registry.get_sample_value("ai_cost_total", {"tenant": "a", "model": "m"}) == 0.03
    assert registry.get_sample_value("picker_tenant_backend_failures_total", {"fail_mode": "open"}) == 2


def test_shared_meters_show_the_newest_reply_never_a_sum() -> None:
    clock = WallClock()
    supervisor, registry = service(clock, worker=False)
    supervisor.merge_worker(0, [[], {}, True, [meters(clock, 300, version=12)], None])
    supervisor.merge_worker(1, [[], {}, True, [meters(clock, 200, version=11)], None])  # older, arrived later
    labels = {"tenant": "a", "window": "hour"}
    assert registry.get_sample_value("ai_tokens_used", labels) == 300
    assert registry.get_sample_value("ai_tokens_limit", labels) == 1000
    supervisor.merge_worker(1, [[], {}, True, [meters(clock, 400, version=13)], None])
    assert registry.get_sample_value("ai_tokens_used", labels) == 400
    (row,) = supervisor.describe()["tenants"]
    assert row["meters"]["tokensPerHour"]["used"] == 400
    # 40 idle days later the account expired in Redis and its version restarted: a new month is newer
    clock.now += 40 * 86400
    supervisor.merge_worker(0, [[], {}, True, [meters(clock, 50, version=1)], None])
    assert registry.get_sample_value("ai_tokens_used", labels) == 50


def test_the_backend_is_up_while_every_worker_says_so() -> None:
    clock = WallClock()
    supervisor, registry = service(clock, worker=False)
    supervisor.merge_worker(0, [[], {}, False, [], None])
    supervisor.merge_worker(1, [[], {}, True, [], None])
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


def test_each_workers_lease_is_shown_next_to_the_shared_meters() -> None:
    clock, monotonic = WallClock(), WallClock(100.0)
    supervisor = TenantService(CollectorRegistry(), clock=clock, monotonic=monotonic)
    supervisor.apply(load_config_text(DOC).settings.tenants)
    lease = Lease((None, 1000, None, None, 5 * NANO, None), 100.0, 0.05)  # a worker's lease of tenant a
    lease.granted[1], lease.held[1], lease.spent[1] = 300, 100, 50
    lease.granted[4], lease.held[4] = 2 * NANO, NANO // 2
    lease.valid_until = 115.0
    counted = {"admittedLocally": 7, "admittedAfterRefill": 4, "askedRedis": 2}
    part = {"leases": {"a": lease.view(100.0)}, **counted}
    supervisor.merge_worker(0, [[], {}, True, [meters(clock, 300, version=12)], part])
    idle = {"leases": {}, "admittedLocally": 1, "admittedAfterRefill": 0, "askedRedis": 1}
    supervisor.merge_worker(1, [[], {}, True, [], idle])
    monotonic.now += 0.5
    doc = supervisor.describe()
    (row,) = doc["tenants"]
    assert row["meters"]["tokensPerHour"]["used"] == 300  # the shared meter, once
    (held,) = row["workers"]  # worker 1 holds no lease of a
    assert held["worker"] == 0
    assert held["reportedSecondsAgo"] == 0.5
    assert held["lease"]["meters"] == {
        "tokensPerHour": {"leased": 300, "held": 100, "unreported": 50, "free": 150},
        "costPerDay": {"leased": 2.0, "held": 0.5, "unreported": 0.0, "free": 1.5},  # currency, as meters
    }
    assert held["lease"]["validForSeconds"] == 15.0
    assert doc["leases"]["admittedLocally"] == 8  # the workers' (the supervisor admits nothing itself)
    assert doc["leases"]["admittedAfterRefill"] == 4
    assert doc["leases"]["askedRedis"] == 3
    assert doc["leases"]["workers"] == [
        {"worker": 0, "leases": 1, "admittedLocally": 7, "admittedAfterRefill": 4, "askedRedis": 2},
        {"worker": 1, "leases": 0, "admittedLocally": 1, "admittedAfterRefill": 0, "askedRedis": 1},
    ]
    supervisor.retire_worker(0)  # its lease goes back to Redis after its TTL; no longer shown as its
    (row,) = supervisor.describe()["tenants"]
    assert row["workers"] == []


MEMORY = DOC.replace("type: redis", "type: memory").replace(
    "tokensPerHour: 1000", "tokensPerHour: 1000, concurrent: 3"
)


def test_each_workers_reservations_are_shown_next_to_the_supervisors_meters() -> None:
    """The memory budget lives in the supervisor; each worker's running requests hold part of it."""
    supervisor = TenantService(CollectorRegistry(), clock=WallClock())
    supervisor.apply(load_config_text(MEMORY).settings.tenants)
    host = BudgetHost(lambda: supervisor.memory, supervisor.metrics.rejected, relay=supervisor)
    supervisor.show_workers(host.holdings)
    limits = [None, 1000, None, 3, None, None]
    holds: list[tuple[int, str, int]] = []
    for worker, tokens in ((0, 100), (0, 150), (1, 200)):
        reply = host.handle(
            worker, [RESERVE, len(holds), "a", limits, list(reservation_vector(tokens, NANO))]
        )
        assert reply is not None
        assert reply[3] is None, reply  # admitted
        holds.append((worker, reply[2], tokens))

    def shown() -> tuple[dict[str, Any], dict[int, tuple[int, dict[str, float]]]]:
        (row,) = supervisor.describe()["tenants"]
        return row["meters"], {w["worker"]: (w["requests"], w["reserved"]) for w in row["workers"]}

    def share(tokens: int, requests: int) -> dict[str, float]:
        vector = (tokens, tokens, requests, requests, requests * NANO, requests * NANO)
        return {name: vector[i] / (NANO if i >= 4 else 1) for i, name in enumerate(LIMIT_NAMES)}

    shared, workers = shown()
    assert shared["tokensPerHour"]["reserved"] == 450
    assert shared["concurrent"]["reserved"] == 3
    assert workers == {0: (2, share(250, 2)), 1: (1, share(200, 1))}
    worker, hold, tokens = holds[0]  # worker 0's first request ends
    reserved = list(reservation_vector(tokens, NANO))
    host.handle(worker, [SETTLE, hold, "a", "m", reserved, list(actual_vector(tokens, NANO)), 1, 1, NANO])
    shared, workers = shown()
    assert shared["concurrent"]["reserved"] == 2
    assert workers == {0: (1, share(150, 1)), 1: (1, share(200, 1))}
    assert host.retire(1) == 1  # worker 1 died: its reservation is given back, and it holds nothing
    shared, workers = shown()
    assert shared["tokensPerHour"]["reserved"] == 150
    assert workers == {0: (1, share(150, 1))}
