"""The service's prefix index holder: which index is in use across reloads, and records across processes."""

from __future__ import annotations

import json

import pytest

from picker.state.prefix import (
    MAX_OUTBOX,
    PrefixCacheState,
    decode_records,
    encode_records,
    prefix_config_of,
)
from scoring import EndpointMatrix, EndpointRow, PluginSpec, ProfileSpec, build_scheduler
from scoring.scheduler import Scheduler
from scoring.types import PromptEnd


def plain() -> Scheduler:
    """A profile without the prefix scorer."""
    plugins = [PluginSpec("queue-scorer", "queue-scorer"), PluginSpec("max-score-picker", "max-score-picker")]
    refs: list[tuple[str, float | None]] = [("queue-scorer", 1.0), ("max-score-picker", None)]
    return build_scheduler(plugins, [ProfileSpec("default", refs)])


def profile(weight: float = 3.0, **params: object) -> Scheduler:
    plugins = [PluginSpec("p", "prefix-cache-scorer", params), PluginSpec("q", "queue-scorer")]
    return build_scheduler(plugins, [ProfileSpec("default", [("p", weight), ("q", 1.0)])])


def pool(*names: str) -> EndpointMatrix:
    return EndpointMatrix.from_rows(EndpointRow(n, f"10.0.0.{i}:8000") for i, n in enumerate(names))


def test_the_index_follows_the_profile_and_survives_reloads_with_the_same_parameters() -> None:
    state = PrefixCacheState()
    assert state.for_profiles(plain()) is None  # a profile without the prefix scorer
    assert prefix_config_of(profile(weight=0.0)) is None
    first = state.for_profiles(profile())
    assert first is not None
    m = pool("a", "b")
    match = first.match(first.hashes("m", "", b"x" * 640), m, now=0.0)
    assert match is not None
    state.record(m, 0, match)
    assert state.size() == 10
    assert state.entries("a") == 10
    # a reload with equal parameters (another scheduler object) keeps what was learned
    assert state.for_profiles(profile(queuedRequestTokens=5)) is first
    assert state.size() == 10
    # a profile without the scorer turns hashing off but keeps the index for read-only views
    assert state.for_profiles(plain()) is None
    assert state.cache is first
    # other index parameters: an empty index
    other = state.for_profiles(profile(blockSizeTokens=32))
    assert other is not None
    assert other is not first
    assert state.size() == 0


def test_records_travel_between_replicas() -> None:
    worker = PrefixCacheState(replicate=True)
    supervisor = PrefixCacheState()
    scheduler = profile()
    cache = worker.for_profiles(scheduler)
    supervisor.for_profiles(scheduler)
    assert cache is not None
    m = EndpointMatrix.from_rows(
        [
            EndpointRow("a", "10.0.0.1:8000"),
            EndpointRow("b", "10.0.0.2:8000", block_size=16.0, num_blocks=8.0),
        ]
    )
    hashes = cache.hashes("m", "", b"y" * 640)
    match = cache.match(hashes, m, now=0.0)
    assert match is not None
    worker.record(m, 1, match)
    again = cache.match(hashes, m, now=0.0)
    assert again is not None
    worker.record(m, 1, again)
    records = worker.take_outbox()
    assert worker.take_outbox() == []
    assert [r[:3] for r in records] == [("b", 8, 0), ("b", 8, 8)]
    wire = decode_records(encode_records(records))
    assert wire == records
    assert supervisor.apply(wire, m, 1.0) == 2
    assert supervisor.entries("b") == worker.entries("b") == 8  # autoTune capacity travelled too
    stats = supervisor.stats("b")
    assert stats is not None
    assert stats.hit_blocks == 8
    # without an index yet, nothing is applied
    assert PrefixCacheState().apply(wire) == 0


def test_the_outbox_is_bounded() -> None:
    state = PrefixCacheState(replicate=True)
    cache = state.for_profiles(profile())
    assert cache is not None
    m = pool("a")
    match = cache.match((1, 2), m, now=0.0)
    assert match is not None
    for _ in range(MAX_OUTBOX + 10):
        state.record(m, 0, match)
    assert len(state.take_outbox()) == MAX_OUTBOX


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "junk",
        [["a", 1, 0, "not base64!"]],
        [["a", 1, 0, "AAAA"]],  # 3 bytes: not whole 64-bit words
        [["a", "1", 0, ""]],
        [[1, 1, 0, ""]],
        [["a", 1]],
        [7],
        [["a", 1, 0, "", [1, 2, 3]]],  # a prompt end is six integers
        [["a", 1, 0, "", [1, 2, 3, 4, 5, -6]]],
        [["a", 1, 0, "", [1, 2, 3, 4, 5, 2**64]]],
        [["a", 1, 0, "", [1, 2, 3, 4, 5, True]]],
        [["a", 1, 0, "", "end"]],
    ],
)
def test_malformed_records_are_skipped(payload: object) -> None:
    assert decode_records(payload) == []


def test_decoding_clamps_capacity_and_hits() -> None:
    (record,) = decode_records([["a", 0, -5, encode_records([("a", 1, 0, (1, 2**64 - 1), None)])[0][3]]])
    assert record == ("a", 1, 0, (1, 2**64 - 1), None)


def test_prompt_ends_travel_with_their_records() -> None:
    """Continuation credit across ``--workers``: a record carries where its prompt ended, and a replica
    that applies it finds the continuation as the recording process does."""
    end = PromptEnd(2**64 - 1, 24, 7, 4120, 9, 4000)
    records = [("a", 10, 3, (1, 2), end), ("b", 10, 0, (3,), None)]
    assert decode_records(json.loads(json.dumps(encode_records(records)))) == records

    worker, replica = PrefixCacheState(replicate=True), PrefixCacheState()
    cache = worker.for_profiles(profile(continuationCredit=True))
    assert cache is not None
    m = pool("a", "b")
    turn1 = bytes(range(256)) * 10 + b"question?"
    match = cache.match(
        cache.hashes("m", "", turn1), m, now=0.0, data=turn1, seed=cache.seed("m"), answer_tokens=100
    )
    assert match is not None
    assert match.end is not None
    worker.record(m, 0, match)
    assert replica.receive(worker.outgoing(), profile(continuationCredit=True), m, 0.0) == 1
    other = replica.cache
    assert other is not None
    turn2 = turn1 + b" answer" * 100
    got = other.match(other.hashes("m", "", turn2), m, now=0.0, data=turn2, seed=other.seed("m"))
    assert got is not None
    assert got.matched is not None
    assert got.matched[0] == other.blocks(len(turn1) + 400)
    assert got.matched[1] == 0
