"""``picker.testing.poll.eventually``: what a wait returns, and what it says when its condition never
comes. Conditions here change on the test's own count of polls, not on time."""

from __future__ import annotations

import itertools

import pytest

from picker.testing.poll import eventually


async def test_a_sync_check_is_polled_until_truthy_and_its_value_returned() -> None:
    polls = itertools.count(1)
    assert await eventually(lambda: (n := next(polls)) >= 3 and f"poll {n}", "the third poll") == "poll 3"


async def test_an_async_check_is_awaited() -> None:
    polls = itertools.count(1)

    async def check() -> int:
        n = next(polls)
        return n if n >= 2 else 0

    assert await eventually(check, "the second poll") == 2


async def test_done_awaits_a_falsy_value() -> None:
    values = iter([2, 1, 0, 5])
    assert await eventually(lambda: next(values), "the count at 0", done=lambda v: v == 0) == 0


async def test_a_condition_that_never_comes_fails_with_what_and_the_last_value() -> None:
    polls = itertools.count(1)
    with pytest.raises(AssertionError, match=r"not within 0\.05 s: the queue empty; last observed: \d+; why"):
        await eventually(
            lambda: next(polls), "the queue empty", done=lambda v: v < 0, within=0.05, explain=lambda: "why"
        )


async def test_without_what_the_check_is_named() -> None:
    def never() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"<function .*never at .*>; last observed: False$"):
        await eventually(never, within=0.0)
