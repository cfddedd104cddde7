"""Multi-turn chat traffic against a real fake server: later turns hit its prefix cache, and the counters
``GET /debug/stats`` serves say by how much (``picker.testing.traffic``)."""

from __future__ import annotations

import itertools
import json

import aiohttp
import pytest

from picker.testing.fake_openai import parse_call
from picker.testing.fake_server import FakeServer
from picker.testing.traffic import conversations, prefix_counters, prompt_tokens

pytestmark = pytest.mark.integration


def test_each_turn_resends_the_history_and_salts_share_nothing() -> None:
    a = conversations(2, 3, span_s=10.0, seed=1, salt="a", model="m")
    b = conversations(2, 3, span_s=10.0, seed=1, salt="b", model="m")
    assert [t for t, _, _ in a] == sorted(t for t, _, _ in a)
    assert len(a) == 6
    assert {p for _, p, _ in a} == {"/v1/chat/completions"}
    by_system: dict[str, list[list[dict[str, str]]]] = {}
    for _, _, body in a:
        messages = json.loads(body)["messages"]
        by_system.setdefault(messages[0]["content"], []).append(messages)
    for turns in by_system.values():
        turns.sort(key=len)
        for earlier, later in itertools.pairwise(turns):
            assert later[: len(earlier)] == earlier
    systems_b = {json.loads(body)["messages"][0]["content"] for _, _, body in b}
    assert not set(by_system) & systems_b
    # the token count the fake server itself charges
    for _, _, body in a:
        assert prompt_tokens(body) == -(-len(parse_call(body, chat=True).prompt) // 4)


async def test_later_turns_hit_the_servers_prefix_cache(
    server: FakeServer, http: aiohttp.ClientSession
) -> None:
    turns = conversations(1, 3, span_s=1.0, seed=2, salt="x", model="acme/base-8b")
    assert await prefix_counters(http, [server.address]) == (0, 0)
    total = 0
    for _, path, body in turns:
        async with http.post(
            server.url + path, data=body, headers={"content-type": "application/json"}
        ) as resp:
            assert resp.status == 200
            await resp.read()
        total += prompt_tokens(body)
    queries, hits = await prefix_counters(http, [server.address])
    assert queries == total
    assert hits > prompt_tokens(turns[0][2])  # turns 2 and 3 found most of their history cached
