"""The bookkeeping that keeps a replica's lease from refusing its own requests (picker.tenants.inflight):
what RESERVEs in flight ask (a refill leaves it), and requests waiting for a change of their lease's hold."""

from __future__ import annotations

import asyncio

from picker.tenants.inflight import SETTLE_WAITS, Inflight
from picker.tenants.lease import Lease
from picker.tenants.ledger import reservation_vector

LIMITS = (1000, None, None, None, None, None)


def test_asks_in_flight_add_up_and_leave_nothing_behind() -> None:
    f = Inflight()
    a, b = reservation_vector(100, 5), reservation_vector(30, 1)
    f.add("t", a, 1)
    f.add("t", b, 1)
    assert f.asking("t") == (130, 130, 2, 2, 6, 6)
    f.add("t", a, -1)
    f.add("t", b, -1)
    assert f.asking("t") == (0,) * 6
    assert f._asking == {}, "answered tenants are forgotten: the table is bounded by what is in flight"


async def test_a_waiter_goes_on_when_the_change_is_answered() -> None:
    f = Inflight()
    lease = Lease(LIMITS, 0.0, 0.1)
    lease.syncing = True
    waiting = asyncio.create_task(f.settled("t", lease, timeout_s=60.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    f.changed("t", lease)
    assert await waiting
    assert not lease.syncing


async def test_a_change_already_answered_is_not_waited_for() -> None:
    lease = Lease(LIMITS, 0.0, 0.1)
    assert await Inflight().settled("t", lease, timeout_s=60.0)


async def test_changes_that_keep_following_each_other_are_waited_out_a_bounded_number_of_times() -> None:
    f = Inflight()
    lease = Lease(LIMITS, 0.0, 0.1)
    lease.syncing = True
    answered = 0

    async def next_change_begins_at_once() -> None:
        nonlocal answered
        while answered < SETTLE_WAITS + 5:
            await asyncio.sleep(0)
            if f._waiters.get("t"):
                f.changed("t", lease)
                answered += 1
                lease.syncing = True  # another change begins before the waiter runs

    changes = asyncio.create_task(next_change_begins_at_once())
    assert not await f.settled("t", lease, timeout_s=60.0)
    assert answered == SETTLE_WAITS
    changes.cancel()
