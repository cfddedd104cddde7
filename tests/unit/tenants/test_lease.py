"""The local lease arithmetic (picker.tenants.lease): admission, settlement, the plans a lease asks for."""

from __future__ import annotations

from picker.tenants.lease import Lease
from picker.tenants.ledger import reservation_vector

LIMITS = (1_000, None, None, 4, None, None)
TTL, REPORT, IDLE = 8.0, 1.0, 5.0


def granted(lease: Lease, tokens: int, slots: int, at: float = 0.0) -> None:
    plan = lease.plan(at, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert plan is not None
    hold = (tokens, 0, 0, slots, 0, 0)
    lease.applied(plan, hold, 1, ok=True, had=False, ttl_s=TTL)


def test_nothing_is_admitted_before_a_grant_and_then_only_what_it_covers() -> None:
    lease = Lease(LIMITS, 0.0, 0.2)
    a = reservation_vector(300, 0)
    assert not lease.admit(a, 0.0), "no grant yet"
    plan = lease.plan(0.0, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert plan is not None
    assert plan.want[0] == 300  # max(one request, 20 % of 1,000)
    assert plan.need[0] == 300
    granted(lease, 650, 2)
    assert lease.admit(a, 0.1)
    assert lease.admit(a, 0.1)
    assert not lease.admit(a, 0.1), "two slots leased"
    lease.settle(a, (300, 300, 1, 0, 0, 0))
    assert not lease.admit(a, 0.1), "600 tokens used or held of 650"
    assert lease.free()[0] == 50


def test_a_lease_not_synced_for_half_its_ttl_admits_nothing() -> None:
    lease = Lease(LIMITS, 0.0, 0.2)
    lease.admit(reservation_vector(10, 0), 0.0)
    granted(lease, 500, 4)
    assert lease.admit(reservation_vector(10, 0), TTL / 2 - 0.01)
    assert not lease.admit(reservation_vector(10, 0), TTL / 2)


def test_idle_and_limit_changes_give_the_free_part_back_at_once() -> None:
    lease = Lease(LIMITS, 0.0, 0.2)
    lease.admit(reservation_vector(100, 0), 0.0)
    granted(lease, 500, 4)
    assert lease.admit(reservation_vector(100, 0), 0.5)
    plan = lease.plan(0.5 + IDLE, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert plan is not None
    assert plan.give_back[0] == 400
    assert plan.give_back[3] == 3
    assert lease.granted[0] == 100, "nothing admitted on what is on its way back"
    lease.change_limits((2_000, None, None, None, None, None))
    assert not lease.admit(reservation_vector(1, 0), 0.6), "not before the give-back is answered"


def test_limits_changed_during_a_sync_keep_the_lease_closed_until_the_give_back() -> None:
    lease = Lease(LIMITS, 0.0, 0.2)
    lease.admit(reservation_vector(100, 0), 0.0)
    plan = lease.plan(0.0, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert plan is not None
    lease.change_limits((50, None, None, None, None, None))  # a reload while the refill is in flight
    lease.applied(plan, (300, 0, 0, 1, 0, 0), 1, ok=True, had=False, ttl_s=TTL)
    assert not lease.admit(reservation_vector(10, 0), 0.1)
    back = lease.plan(0.1, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert back is not None
    assert back.retarget
    assert back.give_back[0] == 300


def test_an_unlimited_tenant_is_admitted_locally_and_only_reports() -> None:
    lease = Lease(None, 0.0, 0.2)
    a = reservation_vector(100, 5)
    assert lease.admit(a, 0.0)
    lease.settle(a, (90, 90, 1, 0, 5, 5))
    assert lease.plan(0.5, report_s=REPORT, ttl_s=TTL, idle_s=IDLE) is None, "reported every second"
    plan = lease.plan(1.0, report_s=REPORT, ttl_s=TTL, idle_s=IDLE)
    assert plan is not None
    assert plan.spent == (90, 90, 1, 0, 5, 5)
    assert plan.want == (0, 0, 0, 0, 0, 0)
