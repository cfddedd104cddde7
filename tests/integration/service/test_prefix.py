"""Prefix-cache affinity through the real service: Envoy-like client → ext_proc → director → index.

A conversation's next turn goes where its earlier turns went; the admin API shows the index and the
match behind a decision; the reference's prefix metrics move.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from picker.testing.envoy import HttpRequest
from tests.integration.service.conftest import Pod, StartService, config_text, sample

pytestmark = pytest.mark.integration

PREFIX_CONFIG = config_text(
    weights={"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
)
SYSTEM = "You are the support assistant of a large hardware store. Answer in one short paragraph. " * 6


def chat(messages: list[dict[str, Any]], **fields: Any) -> HttpRequest:
    body = orjson.dumps({"model": "m", "messages": messages, "stream": True, **fields})
    return HttpRequest(path="/v1/chat/completions", body=body)


def turns(conversation: int, n: int) -> list[list[dict[str, Any]]]:
    """The message lists of ``n`` successive turns of one conversation (each extends the previous)."""
    history: list[dict[str, Any]] = [{"role": "system", "content": f"[{conversation}] {SYSTEM}"}]
    out = []
    for t in range(n):
        history = [*history, {"role": "user", "content": f"conversation {conversation}, question {t}"}]
        out.append(history)
        history = [*history, {"role": "assistant", "content": f"answer {t} of conversation {conversation}"}]
    return out


async def test_each_turn_of_a_conversation_returns_to_its_endpoint(start_service: StartService) -> None:
    svc = await start_service(pods=4, config=PREFIX_CONFIG)
    await svc.set_metrics(Pod(0, 0.1), Pod(0, 0.1), Pod(0, 0.1), Pod(0, 0.1))
    homes: dict[int, str] = {}
    for t in range(3):
        for c in range(6):
            result = await svc.exchange(chat(turns(c, 3)[t]))
            assert result.destination is not None
            if t == 0:
                homes[c] = result.destination
            else:
                assert result.destination == homes[c], (c, t)
    # four equal endpoints, six unrelated conversations: the first turns were spread by the load terms
    assert len(set(homes.values())) > 1

    rows = await svc.endpoint_rows()
    assert sum(row["prefix_entries"] for row in rows.values()) > 0
    for address in set(homes.values()):
        assert rows[address]["prefix_entries"] > 0

    text = await svc.metrics()
    size = sample(text, "inference_extension_prefix_indexer_size")
    assert size is not None
    assert size > 0
    assert sample(text, "inference_extension_prefix_indexer_hit_ratio_count") == 18.0
    # every later turn matched most of its prompt at its endpoint
    assert sample(text, "inference_extension_prefix_indexer_hit_ratio_bucket", le="0.5") == 6.0
    hit_bytes = sample(text, "inference_extension_prefix_indexer_hit_bytes_sum")
    assert hit_bytes is not None
    assert hit_bytes > 12 * len(SYSTEM)

    prefix = await svc.get_json("/debug/prefix")
    assert prefix["enabled"]
    assert prefix["size"] == size
    assert {e["name"] for e in prefix["endpoints"]} == {
        r["name"] for a, r in rows.items() if a in homes.values()
    }
    assert sum(e["hit_blocks"] for e in prefix["endpoints"]) > 0


async def test_explain_shows_matched_blocks_per_endpoint_and_records_nothing(
    start_service: StartService,
) -> None:
    svc = await start_service(pods=3, config=PREFIX_CONFIG)
    await svc.set_metrics(Pod(0, 0.1), Pod(0, 0.1), Pod(0, 0.1))
    messages = turns(0, 2)
    first = await svc.exchange(chat(messages[0]))
    home = first.destination
    size = (await svc.get_json("/debug/prefix"))["size"]
    body = {"model": "m", "messages": messages[1], "stream": True}
    status, explained = await svc.post_json("/debug/explain", {"path": "/v1/chat/completions", "body": body})
    assert status == 200, explained
    record = explained["decision"]["prefix"]
    rows = await svc.endpoint_rows()
    names = {address: row["name"] for address, row in rows.items()}
    matched = record["matched_blocks"]
    assert matched[names[home]] > 0
    assert all(v == 0 for name, v in matched.items() if name != names[home])
    assert record["total_blocks"] > matched[names[home]]
    assert record["block_tokens"] == 16
    assert explained["destination"] == home
    assert (await svc.get_json("/debug/prefix"))["size"] == size  # explain recorded nothing
    assert SYSTEM[:40] not in orjson.dumps(explained).decode()  # no prompt text echoed


async def test_without_a_prefix_scorer_nothing_is_hashed(start_service: StartService) -> None:
    svc = await start_service(pods=2, config=config_text(weights={"queue-scorer": 1.0}))
    await svc.set_metrics(Pod(0, 0.1), Pod(0, 0.1))
    await svc.exchange(chat(turns(0, 1)[0]))
    assert (await svc.get_json("/debug/prefix")) == {"enabled": False, "size": 0, "endpoints": []}
    text = await svc.metrics()
    assert sample(text, "inference_extension_prefix_indexer_hit_ratio_count") == 0.0


@pytest.mark.parametrize("credit", [True, False])
async def test_continuation_credit_sends_the_next_turn_to_the_server_holding_the_answer(
    start_service: StartService, credit: bool
) -> None:
    """Turn 1 is answered by one pod, which then reports a request waiting. Turn 2 is turn 1, its 12 KB
    answer and a new question: the index alone lists only turn 1's 700 bytes at that pod, a saving smaller
    than the waiting request's assumed prefill, so the load guard leaves it no credit; with
    ``continuationCredit`` the pod is credited with the answer too (turn 1's ``max_tokens``), a saving
    larger than that backlog, and turn 2 goes back to it."""
    config = config_text(
        weights={"queue-scorer": 1.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
    ).replace(
        "- {type: prefix-cache-scorer}",
        f"- {{type: prefix-cache-scorer, parameters: {{continuationCredit: {str(credit).lower()}}}}}",
    )
    assert f"continuationCredit: {str(credit).lower()}" in config
    svc = await start_service(pods=2, config=config)
    await svc.set_metrics(Pod(0, 0.1), Pod(0, 0.1))
    history: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM[:600]},
        {"role": "user", "content": "Which drill for concrete?"},
    ]
    first = await svc.exchange(chat(history, max_tokens=3000))
    home = first.destination
    assert home is not None
    await svc.set_metrics(*(Pod(1, 0.1) if address == home else Pod(0, 0.1) for address in svc.endpoints))
    answer = "A hammer drill with masonry bits; start slowly and keep the bit cool. " * 170
    history = [*history, {"role": "assistant", "content": answer}, {"role": "user", "content": "Which bits?"}]
    second = await svc.exchange(chat(history, max_tokens=3000))
    assert (second.destination == home) is credit
