"""The body budget's chain: with several pools each pool's budget draws from one process-wide budget, so the
process's buffered bodies stay within ``--max-buffered-body-bytes`` whatever the pools' documents allow; and
replies waiting for room in it (:meth:`BodyBudget.reserve`)."""

from __future__ import annotations

import asyncio

import pytest

from picker.cli import build_parser, settings_from_args
from picker.config import default_config
from picker.extproc.budget import BodyBudget
from picker.service import Service

MIB = 1 << 20


def test_a_take_needs_room_in_the_pool_and_in_the_process() -> None:
    process = BodyBudget(10 * MIB)
    a = BodyBudget(8 * MIB, parent=process)
    b = BodyBudget(8 * MIB, parent=process)
    assert a.take(6 * MIB)
    assert (a.available, b.available) == (2 * MIB, 4 * MIB)  # b's own 8 MiB, but the process has 4 left
    assert not b.take(5 * MIB)  # room in b, none in the process
    assert (b.used, process.used) == (0, 6 * MIB)  # a refused take reserves nothing anywhere
    assert b.take(4 * MIB)
    assert not a.take(1)  # the process is full
    a.give(6 * MIB)
    assert (a.used, process.used, b.available) == (0, 4 * MIB, 4 * MIB)
    assert not a.take(9 * MIB)  # over a's own limit, with room in the process
    assert process.used == 4 * MIB


def test_what_could_ever_fit_is_the_smallest_limit_up_the_chain() -> None:
    process = BodyBudget(10 * MIB)
    assert BodyBudget(16 * MIB, parent=process).capacity == 10 * MIB  # a document may not raise it
    assert BodyBudget(4 * MIB, parent=process).capacity == 4 * MIB  # but may lower its own share
    assert BodyBudget(16 * MIB).capacity == 16 * MIB


async def _settle() -> None:
    """Let every ready task run until each waits again (woken waiters retry their take)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_reply_that_does_not_fit_waits_for_a_give() -> None:
    budget = BodyBudget(10 * MIB)
    assert budget.take(8 * MIB)
    waiter = asyncio.create_task(budget.reserve(4 * MIB))
    await _settle()
    assert not waiter.done()
    assert budget.waiting == 1
    budget.give(1 * MIB)  # still not enough: it tries again and waits on
    await _settle()
    assert not waiter.done()
    assert budget.waiting == 1
    budget.give(2 * MIB)
    await _settle()
    assert waiter.done()
    assert waiter.result() == 4 * MIB
    assert (budget.used, budget.waiting) == (9 * MIB, 0)


async def test_a_reply_larger_than_the_budget_takes_all_of_it() -> None:
    """Never more than the capacity, so no reply waits forever for room that cannot exist."""
    process = BodyBudget(10 * MIB)
    pool = BodyBudget(16 * MIB, parent=process)
    assert await pool.reserve(40 * MIB) == 10 * MIB
    assert (pool.used, process.used) == (10 * MIB, 10 * MIB)
    waiter = asyncio.create_task(pool.reserve(40 * MIB))
    await _settle()
    assert not waiter.done()  # it needs the whole budget
    pool.give(10 * MIB)
    await _settle()
    assert waiter.result() == 10 * MIB


async def test_a_give_in_another_pool_wakes_a_reply_waiting_for_the_process() -> None:
    process = BodyBudget(10 * MIB)
    a = BodyBudget(8 * MIB, parent=process)
    b = BodyBudget(8 * MIB, parent=process)
    assert a.take(6 * MIB)
    assert b.take(4 * MIB)
    waiter = asyncio.create_task(b.reserve(2 * MIB))  # room in b, none in the process
    await _settle()
    assert (waiter.done(), b.waiting, a.waiting) == (False, 1, 1)  # one list, at the root
    a.give(6 * MIB)
    await _settle()
    assert waiter.result() == 2 * MIB
    assert (a.used, b.used, process.used) == (0, 6 * MIB, 6 * MIB)


async def test_a_larger_limit_wakes_the_waiting_replies() -> None:
    budget = BodyBudget(4 * MIB)
    assert budget.take(4 * MIB)
    waiter = asyncio.create_task(budget.reserve(1 * MIB))
    await _settle()
    assert not waiter.done()
    budget.resize(8 * MIB)  # a reloaded document: nothing was given back
    await _settle()
    assert waiter.result() == 1 * MIB
    with pytest.raises(ValueError, match="positive"):
        budget.resize(0)


def test_replies_have_a_budget_of_their_own_with_the_same_chain() -> None:
    """Request bodies that never end may fill the bodies' budget; a reply must not wait for them."""
    process = BodyBudget(10 * MIB)
    pool = BodyBudget(8 * MIB, parent=process)
    assert pool.replies.parent is process.replies
    assert (pool.replies.limit, process.replies.limit) == (8 * MIB, 10 * MIB)
    assert pool.replies.replies is pool.replies
    assert pool.take(8 * MIB)
    assert pool.replies.take(8 * MIB)  # the bodies' budget is full; the replies' is not
    assert not pool.replies.take(1)
    assert (pool.used, process.used, process.replies.used) == (8 * MIB, 8 * MIB, 8 * MIB)
    pool.resize(4 * MIB)  # a reload: both
    assert pool.replies.limit == 4 * MIB


async def test_a_cancelled_wait_leaves_nothing_behind() -> None:
    """A stream cancelled while its reply waits (the proxy gave up) neither reserves nor stays queued."""
    budget = BodyBudget(4 * MIB)
    assert budget.take(4 * MIB)
    waiter = asyncio.create_task(budget.reserve(1 * MIB))
    await _settle()
    waiter.cancel()
    await _settle()
    assert waiter.cancelled()
    assert (budget.waiting, budget.used) == (0, 4 * MIB)
    budget.give(4 * MIB)
    assert budget.used == 0


def _service(*argv: str, serve_extproc: bool = True) -> Service:
    settings = settings_from_args(build_parser().parse_args(["serve", *argv]), environ={})
    pools = len(settings.pool_settings())
    config = default_config()
    documents = [(config, "", "default")] * (pools - 1)
    return Service(settings, config, documents=documents, serve_extproc=serve_extproc)


@pytest.mark.parametrize("workers", [1, 2])
def test_several_pools_share_one_process_budget(workers: int) -> None:
    svc = _service("--pool=a=9100", "--pool=b=9101", "--max-buffered-body-bytes=64Mi", f"--workers={workers}")
    a, b = (pool.extproc.body_budget for pool in svc.pools if pool.extproc is not None)
    assert a.parent is not None
    assert a.parent is b.parent
    assert a.parent.limit == 64 * MIB // workers
    assert a.replies.parent is b.replies.parent is a.parent.replies
    assert a.take(40 * MIB // workers)
    assert not b.take(40 * MIB // workers)  # b's own budget has room; the process's does not


def test_one_pool_is_its_process_budget() -> None:
    svc = _service("--static-endpoints=127.0.0.1:1", "--max-buffered-body-bytes=64Mi")
    (pool,) = svc.pools
    assert pool.extproc is not None
    assert pool.extproc.body_budget.parent is None
    assert pool.extproc.body_budget.limit == 64 * MIB


def _document(buffered: str) -> str:
    return f"""\
apiVersion: picker.dev/v1alpha1
kind: PickerConfig
request: {{maxBufferedBytes: {buffered}}}
"""


@pytest.mark.parametrize(
    ("workers", "serve_extproc"),
    [(1, True), (2, True), (2, False)],
    ids=["one-process", "a-worker's-share", "the-supervisor"],
)
def test_a_pool_document_may_lower_its_share_but_not_raise_it(
    workers: int, serve_extproc: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Several pools: a document asking for more than the flag gets the flag, and a warning says why and
    which pool; one asking for less gets what it asks, silently. The ``--workers`` supervisor serves no
    ext_proc but is the one that says it (it applies every document before its workers do)."""
    flags = ("--pool=a=9100", "--pool=b=9101", "--max-buffered-body-bytes=64Mi", f"--workers={workers}")
    svc = _service(*flags, serve_extproc=serve_extproc)
    a, b = svc.pools
    budget = a.extproc.body_budget if a.extproc is not None else None
    with caplog.at_level("WARNING", logger="picker"):
        assert a.config_store.apply_text(_document("512Mi"), source="test").ok
    (record,) = [r for r in caplog.records if "maxBufferedBytes" in r.getMessage()]
    message = record.getMessage()
    assert record.levelname == "WARNING"
    assert message.startswith("pool a: request.maxBufferedBytes (536870912 bytes) is above")
    assert "--max-buffered-body-bytes (67108864 bytes)" in message
    assert "capped at 67108864 bytes" in message
    if budget is not None:  # the cap is the pool's own limit too, not only the process's through it
        assert budget.limit == 64 * MIB // workers
    caplog.clear()
    with caplog.at_level("WARNING", logger="picker"):
        assert b.config_store.apply_text(_document("16Mi"), source="test").ok
        assert a.config_store.apply_text(_document("32Mi"), source="test").ok
    assert not [r for r in caplog.records if "maxBufferedBytes" in r.getMessage()]
    if budget is not None:
        assert budget.limit == 32 * MIB // workers
        b_budget = b.extproc.body_budget if b.extproc is not None else None
        assert b_budget is not None
        assert b_budget.limit == 16 * MIB // workers


def test_one_pool_document_sets_the_process_budget() -> None:
    """One pool: the document's value is the process's budget, above the flag too (as documented)."""
    svc = _service("--static-endpoints=127.0.0.1:1", "--max-buffered-body-bytes=64Mi")
    (pool,) = svc.pools
    assert pool.config_store.apply_text(_document("512Mi"), source="test").ok
    assert pool.extproc is not None
    assert pool.extproc.body_budget.limit == 512 * MIB
