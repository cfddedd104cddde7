"""``--workers 2`` with prefix scoring: a conversation's next turn finds its prefix on the other worker.

Each worker keeps a replica of the prefix index; records travel worker → supervisor → other workers. A
turn routed by one worker and the next turn routed by the other must land on the same endpoint.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from benchmarks.live.routers import EPP_CONFIGS
from picker.testing.envoy import HttpRequest
from tests.integration.conftest import Spawn
from tests.integration.workers.test_workers import Tree, _start_tree, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = EPP_CONFIGS["epp-reference"]  # the reference profile: queue 2, KV 2, prefix 3


@pytest.fixture
async def prefix_tree(spawn: Spawn) -> AsyncIterator[Tree]:
    async with _start_tree(spawn, "--config-text", CONFIG) as t:
        yield t


def turn(conversation: int, n: int) -> HttpRequest:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"[{conversation}] You help with orders and returns. " * 12}
    ]
    for t in range(n):
        messages.append({"role": "user", "content": f"question {t} of conversation {conversation}"})
        if t < n - 1:
            messages.append({"role": "assistant", "content": f"answer {t}"})
    body = orjson.dumps({"model": "m", "messages": messages, "stream": True})
    return HttpRequest(path="/v1/chat/completions", body=body)


async def fleet_idle(tree: Tree) -> bool:
    """Nothing of ours counts as load on any endpoint: every stream released (``inflight``) and every
    request dispatched so far covered by a scrape that began after it (``dispatched_since_scrape``, which
    the queue scorer adds to an endpoint's queue). Our requests never reach the fake servers, so their
    gauges stay equal: the load scorers tie and the prefix decides."""
    rows = (await tree.get("/debug/endpoints"))["endpoints"]
    return all(r["dispatched_since_scrape"] == 0 and r["inflight"] == 0 for r in rows)


async def on_worker(tree: Tree, request: HttpRequest, wanted: int | None) -> tuple[int, str]:
    """Route ``request`` over new connections until one lands on worker ``wanted`` (None: any), once the
    fleet is idle (:func:`fleet_idle`); returns the worker and the destination. A connection is pinned to
    one worker; its picks count tells which."""
    for _ in range(64):
        client = await tree.new_client()
        before = [w["picks"] for w in await tree.workers()]
        if wanted is not None:
            # probe the connection with a request that does not touch the conversation
            probe = HttpRequest(body=b'{"model":"m","prompt":"ping"}')
            await client.exchange(probe)
            after = [w["picks"] for w in await tree.workers()]
            worker = next(i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a != b)
            if worker != wanted:
                continue
        # the scores then differ by the prefix alone: no earlier turn or probe still counts as load
        await eventually(functools.partial(fleet_idle, tree), "the fleet idle in the snapshot", interval=0.02)
        result = await client.exchange(request)
        assert result.destination is not None
        after = [w["picks"] for w in await tree.workers()]
        worker = next(i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a != b)
        return worker, result.destination
    raise AssertionError(f"64 connections never reached worker {wanted}")


async def test_the_next_turn_finds_its_prefix_on_the_other_worker(prefix_tree: Tree) -> None:
    tree = prefix_tree
    for conversation in range(4):
        before = int((await tree.get("/debug/workers"))["prefix_entries"])
        worker, home = await on_worker(tree, turn(conversation, 1), None)

        async def replicated(before: int = before) -> bool:
            # the supervisor applied the turn's record and every worker's replica holds as many entries
            doc = await tree.get("/debug/workers")
            entries = int(doc["prefix_entries"])
            return entries > before and all(w["prefix_entries"] == entries for w in doc["workers"])

        await eventually(replicated, "the record in every replica", interval=0.02)
        other, destination = await on_worker(tree, turn(conversation, 2), 1 - worker)
        assert other == 1 - worker
        assert destination == home, conversation
    doc = await tree.get("/debug/prefix")
    assert sum(e["hit_blocks"] for e in doc["endpoints"]) > 0

    async def entries_add_up() -> bool:
        # two reads: a record still being replicated may land between them, so wait for them to agree
        size = int((await tree.get("/debug/prefix"))["size"])
        rows = (await tree.get("/debug/endpoints"))["endpoints"]
        return sum(r["prefix_entries"] for r in rows) == size

    await eventually(entries_add_up, "the endpoints' prefix entries adding up to the index size")
