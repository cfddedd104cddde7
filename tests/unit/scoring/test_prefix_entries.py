"""Index entries of several blocks (``blocksPerEntry``): segments, the partial segment, matches and
capacities in blocks, and the memory they save."""

from __future__ import annotations

import math
import random
import tracemalloc

import numpy as np
import pytest
import xxhash

from scoring import ConfigurationError, EndpointMatrix, EndpointRow, PickRequest
from scoring.prefix import (
    BYTES_PER_ENTRY,
    MAX_CAPACITY,
    ApproxPrefixCache,
    PrefixConfig,
    PrefixHasher,
    PrefixIndex,
)
from scoring.registry import PluginSpec, ProfileSpec, build_scheduler
from scoring.scorers.prefix import PrefixCacheScorer

BLOCK = 64  # bytes of a block of the default 16 tokens


def pool(*names: str, block_size: float = math.nan, num_blocks: float = math.nan) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        EndpointRow(n, f"10.0.0.{i}:8000", block_size=block_size, num_blocks=num_blocks)
        for i, n in enumerate(names)
    )


def text(seed: int, size: int) -> bytes:
    """``size`` bytes that share nothing with another seed's."""
    rng = random.Random(seed)
    return rng.randbytes(size)


def cache(s: int, **kw: object) -> ApproxPrefixCache:
    return ApproxPrefixCache(PrefixConfig(blocks_per_entry=s, **kw))  # type: ignore[arg-type]


def route(p: ApproxPrefixCache, m: EndpointMatrix, row: int, data: bytes) -> list[float]:
    """Match ``data`` against ``m`` (blocks per row), then record it for ``row``."""
    hashes = p.hashes("m", "", data)
    match = p.match(hashes, m, now=0.0, blocks=p.blocks(len(data)))
    assert match is not None
    got = [0.0] * len(m) if match.matched is None else match.matched.tolist()
    p.record(m, row, match)
    return got


# ------------------------------------------------------------------------------------------------ hashing
def test_one_hash_per_segment_chained_through_the_seed() -> None:
    h = PrefixHasher(16, 256, blocks_per_entry=4)
    data = text(0, 10 * BLOCK)
    seed = h.seed("m")
    first = xxhash.xxh64_intdigest(data[: 4 * BLOCK], seed)
    second = xxhash.xxh64_intdigest(data[4 * BLOCK : 8 * BLOCK], first)
    third = xxhash.xxh64_intdigest(data[8 * BLOCK :], second)  # the partial segment: 2 blocks
    assert h.hashes("m", "", data) == (first, second, third)
    assert h.blocks(len(data)) == 10
    assert h.window == 256 * BLOCK  # the window is still counted in blocks


def test_a_full_window_is_max_blocks_over_s_hashes_and_the_unit_stays_the_block() -> None:
    for s in (1, 2, 4, 8):
        h = PrefixHasher(16, 256, blocks_per_entry=s)
        assert len(h.hashes("m", "", b"x" * 300 * BLOCK)) == 256 // s
        assert h.blocks(300 * BLOCK) == 256
    uneven = PrefixHasher(16, 10, blocks_per_entry=4)  # 4 + 4 + 2 blocks: the window cuts the last
    data = text(20, 20 * BLOCK)
    hashes = uneven.hashes("m", "", data)
    assert len(hashes) == 3
    assert hashes[2] == xxhash.xxh64_intdigest(data[8 * BLOCK : 10 * BLOCK], hashes[1])
    assert uneven.blocks(20 * BLOCK) == 10


def test_partial_segments_and_blocks_of_short_prompts() -> None:
    h = PrefixHasher(16, 256, blocks_per_entry=8)
    assert h.hashes("m", "", b"x" * (BLOCK - 1)) == ()  # shorter than a block: nothing, as with s = 1
    assert h.blocks(BLOCK - 1) == 0
    assert len(h.hashes("m", "", b"x" * BLOCK)) == 1
    assert h.blocks(BLOCK + 1) == 2  # a trailing partial block counts as one, as in the reference
    base = text(1, 5 * BLOCK + 10)
    assert h.hashes("m", "", base) != h.hashes("m", "", base[:-1] + b"?")  # the last byte matters


def test_blocks_per_entry_one_is_the_reference_chain() -> None:
    data = text(2, 7 * BLOCK + 3)
    assert PrefixHasher(16, 256, blocks_per_entry=1).hashes("m", "s", data) == PrefixHasher().hashes(
        "m", "s", data
    )
    with pytest.raises(ValueError, match="blocks_per_entry"):
        PrefixHasher(16, 256, blocks_per_entry=0)


# ------------------------------------------------------------------------------------------------ matching
@pytest.mark.parametrize("s", [2, 4, 8])
def test_a_repeated_prompt_matches_every_block_partial_segment_included(s: int) -> None:
    p = cache(s)
    m = pool("a", "b")
    data = text(3, 21 * BLOCK + 5)  # 22 blocks, the last partial
    assert route(p, m, 1, data) == [0.0, 0.0]
    match = p.match(p.hashes("m", "", data), m, now=0.0, blocks=p.blocks(len(data)))
    assert match is not None
    assert match.total == 22
    assert match.best == 22
    assert match.matched is not None
    assert match.matched.tolist() == [0.0, 22.0]
    assert len(match.hashes) == -(-22 // s)


@pytest.mark.parametrize(("s", "expected"), [(1, 9), (2, 8), (4, 8), (8, 8), (16, 0)])
def test_a_match_is_reported_in_blocks_at_the_resolution_of_a_segment(s: int, expected: int) -> None:
    p = cache(s)
    m = pool("a")
    shared = text(4, 9 * BLOCK)
    route(p, m, 0, shared + text(5, 20 * BLOCK))
    assert route(p, m, 0, shared + text(6, 20 * BLOCK)) == [float(expected)]


@pytest.mark.parametrize("s", [1, 4, 8])
def test_a_conversations_later_turn_matches_its_history(s: int) -> None:
    p = cache(s)
    m = pool("a", "b", "c")
    turn1 = b"system: be brief\n" + text(7, 3000)
    route(p, m, 2, turn1)
    turn2 = turn1 + b"\nassistant: " + text(8, 800) + b"\nuser: " + text(9, 300)
    got = route(p, m, 2, turn2)
    # everything up to the last whole segment of the first turn (its partial segment hashed other bytes)
    assert got[2] >= (len(turn1) // (s * BLOCK)) * s
    assert got[2] <= -(-len(turn1) // BLOCK)
    assert got[:2] == [0.0, 0.0]
    # and the second turn repeated (a retry) matches whole
    assert route(p, m, 2, turn2) == [0.0, 0.0, float(p.blocks(len(turn2)))]


@pytest.mark.parametrize("s", [1, 4, 8])
def test_a_shared_system_prompt_matches_on_every_holder(s: int) -> None:
    p = cache(s)
    m = pool("a", "b", "c")
    system = b"system: " + text(10, 4000)
    route(p, m, 0, system + b"\nuser: " + text(11, 500))
    route(p, m, 1, system + b"\nuser: " + text(12, 500))
    got = route(p, m, 2, system + b"\nuser: " + text(13, 500))
    floor = (len(system) // (s * BLOCK)) * s
    assert got[0] == got[1] >= floor
    assert got[2] == 0.0


def test_the_scorer_and_the_decision_record_see_blocks() -> None:
    config = {"blocksPerEntry": 4, "loadGuard": False}
    spec = PluginSpec("prefix", "prefix-cache-scorer", config)
    sched = build_scheduler(
        [spec, PluginSpec("max-score-picker", "max-score-picker")],
        [ProfileSpec("default", [("prefix", 1.0), ("max-score-picker", None)])],
    )
    scorer = next(ws.scorer for ws in sched.scorers if isinstance(ws.scorer, PrefixCacheScorer))
    assert scorer.prefix_config.blocks_per_entry == 4
    p = ApproxPrefixCache(scorer.prefix_config)
    m = pool("a", "b")
    head = text(14, 8 * BLOCK)
    route(p, m, 0, head + text(15, 2 * BLOCK))
    data = head + text(16, 2 * BLOCK)  # 10 blocks, 8 shared
    match = p.match(p.hashes("m", "", data), m, now=0.0, blocks=p.blocks(len(data)))
    assert match is not None
    result = sched.schedule(m, PickRequest(prefix=match), now=0.0, rng=np.random.default_rng(0), explain=True)
    assert result.primary == 0
    assert result.decision is not None
    record = result.decision.prefix
    assert record is not None
    assert record.total_blocks == 10
    assert dict(record.matched_blocks) == {"a": 8, "b": 0}
    scores = {r.scorer_name: r.scores for r in result.decision.scorers}
    assert dict(scores["prefix"]) == pytest.approx({"a": 0.8, "b": 0.0})


# ------------------------------------------------------------------------------------------------ capacity
def test_capacity_stays_in_blocks_and_becomes_entries() -> None:
    p = cache(4, capacity=100)
    assert p.index.default_capacity == 25
    assert p.capacity_of(pool("a"), 0) == 25
    tuned = pool("a", block_size=32.0, num_blocks=1000.0)  # 32,000 tokens = 2,000 blocks of 16
    assert p.capacity_of(tuned, 0) == 500
    assert cache(3, capacity=100).capacity_of(pool("a"), 0) == 34  # rounded up: never below the blocks
    assert cache(8).capacity_of(pool("a", block_size=16.0, num_blocks=1e15), 0) == MAX_CAPACITY // 8
    m = pool("a", block_size=16.0, num_blocks=16.0)  # 16 blocks = 4 entries of 4
    route(p, m, 0, text(17, 40 * BLOCK))
    assert p.index.entries("a") == 4
    data = text(18, 40 * BLOCK)
    route(p, m, 0, data)
    # the head of the latest prompt stayed: its first 16 blocks match
    assert route(p, m, 0, data[: 16 * BLOCK]) == [16.0]


@pytest.mark.parametrize("s", [4, 8])
def test_memory_per_block_of_capacity_divides_by_s(s: int) -> None:
    """Worst case (every entry unshared, filled three times over): the bound per entry holds, and an
    endpoint's bytes per block of capacity are at most ``BYTES_PER_ENTRY / s``."""
    blocks = 32_000
    p = cache(s, capacity=blocks, auto_tune=False)
    hashed = [p.hashes("m", "", text(100 + i, 256 * BLOCK)) for i in range(3 * blocks // 256 + 1)]
    tracemalloc.start()
    try:
        for name in ("a", "b"):
            for hashes in hashed:
                p.record_remote(name, hashes)  # the index's update for a routed prompt
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    entries = blocks // s
    assert [p.index.entries(n) for n in ("a", "b")] == [entries, entries]
    assert used <= 2 * entries * BYTES_PER_ENTRY
    assert used / (2 * blocks) <= BYTES_PER_ENTRY / s


# ------------------------------------------------------------------------------------------------ config
def test_blocks_per_entry_parameter() -> None:
    cfg, params = PrefixConfig.from_params("p", "prefix-cache-scorer", {"blocksPerEntry": 8})
    assert cfg.blocks_per_entry == 8
    assert params.effective["blocksPerEntry"] == 8
    assert PrefixConfig.from_params("p", "prefix-cache-scorer", {})[0].blocks_per_entry == 1


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"blocksPerEntry": 0}, "blocksPerEntry"),
        ({"blocksPerEntry": "4"}, "blocksPerEntry"),
        ({"blocksPerEntry": 2.5}, "blocksPerEntry"),
        ({"blocksPerEntry": 300}, "maxPrefixBlocksToMatch"),
        ({"blocksPerEntry": 8, "maxPrefixBlocksToMatch": 4}, "maxPrefixBlocksToMatch, 4"),
    ],
)
def test_bad_blocks_per_entry_is_rejected_with_a_reason(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PrefixConfig.from_params("p", "prefix-cache-scorer", parameters)


def test_an_index_of_coarse_entries_is_still_a_plain_index() -> None:
    """Entries are opaque hashes: what ``--workers`` replication ships and ``record_remote`` applies."""
    p, q = cache(4), cache(4)
    m = pool("a")
    data = text(19, 30 * BLOCK)
    route(p, m, 0, data)
    q.record_remote("a", p.hashes("m", "", data))
    assert q.index.entries("a") == p.index.entries("a") == 8
    assert isinstance(q.index, PrefixIndex)
    assert route(q, m, 0, data) == [30.0]


def _prefix_config(sched: object) -> PrefixConfig:
    scorer = next(ws.scorer for ws in sched.scorers if isinstance(ws.scorer, PrefixCacheScorer))  # type: ignore[attr-defined]
    config: PrefixConfig = scorer.prefix_config
    return config


def test_our_default_profile_uses_entries_of_8_blocks_and_the_reference_profile_keeps_1() -> None:
    from picker.config import default_config, reference_default_config
    from scoring import default_scheduler, reference_default_scheduler

    assert _prefix_config(default_scheduler()).blocks_per_entry == 8
    assert _prefix_config(default_config().build_scheduler()).blocks_per_entry == 8
    assert _prefix_config(reference_default_scheduler()).blocks_per_entry == 1
    assert _prefix_config(reference_default_config().build_scheduler()).blocks_per_entry == 1
