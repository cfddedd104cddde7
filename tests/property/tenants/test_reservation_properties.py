"""Properties of the reservation arithmetic (picker.tenants.ledger) over arbitrary interleavings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from picker.tenants.ledger import (
    N_METERS,
    Account,
    actual_vector,
    reservation_vector,
    window_end,
    window_ids,
)

T0 = 1_760_000_000.0  # a fixed wall-clock start (October 2025)

limit_values = st.one_of(st.none(), st.integers(min_value=0, max_value=5_000))
limits_strategy = st.tuples(*(limit_values for _ in range(N_METERS)))


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, int, int, int, float]]:
    """(op, tokens reserved, tokens used, index of the held request, seconds advanced)."""
    ops = []
    for _ in range(draw(st.integers(min_value=1, max_value=60))):
        op = draw(st.sampled_from(["admit", "admit", "settle", "release"]))
        reserve = draw(st.integers(min_value=0, max_value=800))
        used = draw(st.integers(min_value=0, max_value=reserve))
        pick = draw(st.integers(min_value=0, max_value=63))
        advance = draw(st.sampled_from([0.0, 0.0, 0.5, 7.0, 61.0, 3601.0]))
        ops.append((op, reserve, used, pick, advance))
    return ops


@settings(max_examples=100, deadline=None)
@given(limits_strategy, operations())
def test_committed_never_passes_a_limit_when_usage_stays_within_reservations(limits, ops) -> None:
    """At every step, for every limited meter: used + reserved <= limit. Requests use at most what they
    reserved (max_tokens given), so concurrency cannot push a window past its limit."""
    account = Account()
    held: list[tuple[tuple[int, ...], int, int]] = []
    now = T0
    for op, reserve, used, pick, advance in ops:
        now += advance
        ids = window_ids(now)
        if op == "admit":
            amounts = reservation_vector(reserve, reserve * 3)
            denial = account.admit(amounts, limits, ids)
            if denial is None:
                held.append((amounts, reserve, used))
            else:
                assert limits[denial.meter] is not None
                assert denial.in_use + denial.requested > denial.limit
        elif held:
            amounts, _reserve, tokens = held.pop(pick % len(held))
            actual = (
                actual_vector(tokens, tokens * 3) if op == "settle" else actual_vector(0, 0, counted=False)
            )
            account.settle(amounts, actual, ids)
        account.roll(ids)
        for i, limit in enumerate(limits):
            if limit is not None:
                assert account.used[i] + account.reserved[i] <= limit, (i, account.used, account.reserved)
    # everything released: nothing stays reserved
    ids = window_ids(now)
    for amounts, _r, _u in held:
        account.settle(amounts, actual_vector(0, 0, counted=False), ids)
    assert account.reserved == [0] * N_METERS


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=1, max_value=10_000),
    st.lists(st.tuples(st.integers(0, 2_000), st.integers(0, 4_000)), min_size=64, max_size=64),
)
def test_64_concurrent_requests_overshoot_by_at_most_one_reservation(limit, requests) -> None:
    """64 requests admitted "at once" (all reserve before any settles), each then using any amount, even
    more than it reserved (no max_tokens): the window ends within limit + the largest overshoot of one
    request if usage stays within reservations, and admission never lets reservations pass the limit."""
    account = Account()
    ids = window_ids(T0)
    limits = (limit, None, None, None, None, None)
    admitted = []
    for reserve, use in requests:
        amounts = reservation_vector(reserve, 0)
        if account.admit(amounts, limits, ids) is None:
            admitted.append((amounts, min(use, reserve)))
        assert account.reserved[0] <= limit
    for amounts, use in admitted:
        account.settle(amounts, actual_vector(use, 0), ids)
    assert account.used[0] <= limit
    assert account.reserved[0] == 0


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_windows_contain_now_and_end_after_it(now: float) -> None:
    ids = window_ids(now)
    for meter in range(N_METERS):
        assert window_end(meter, ids[meter]) > now
    # the next second's windows are the same or the following ones
    later = window_ids(now + 1)
    assert all(b in (a, a + 1) for a, b in zip(ids, later, strict=True))


@settings(max_examples=80, deadline=None)
@given(limits_strategy, st.lists(st.integers(0, 600), min_size=1, max_size=40))
def test_a_roll_keeps_reservations_and_restarts_usage(limits, sizes) -> None:
    account = Account()
    ids = window_ids(T0)
    held = [
        reservation_vector(n, n)
        for n in sizes
        if account.admit(reservation_vector(n, n), limits, ids) is None
    ]
    reserved_before = list(account.reserved)
    account.roll(window_ids(T0 + 86_400 * 40))
    assert account.reserved == reserved_before
    assert account.used == [0] * N_METERS
    for amounts in held:
        account.settle(amounts, actual_vector(0, 0), window_ids(T0 + 86_400 * 40))
    assert account.reserved == [0] * N_METERS
