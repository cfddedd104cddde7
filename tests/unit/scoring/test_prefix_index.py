"""The approximate prefix index, its producer (autoTune, purge) and its memory bound."""

from __future__ import annotations

import math
import random
import tracemalloc

import numpy as np
import pytest

from scoring import EndpointMatrix, EndpointRow
from scoring.prefix import (
    BYTES_PER_ENTRY,
    MAX_CAPACITY,
    ApproxPrefixCache,
    PrefixConfig,
    PrefixIndex,
)


def pool(*names: str, block_size: float = math.nan, num_blocks: float = math.nan) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        EndpointRow(n, f"10.0.0.{i}:8000", block_size=block_size, num_blocks=num_blocks)
        for i, n in enumerate(names)
    )


def chain(*ids: int) -> tuple[int, ...]:
    """Stand-in block hashes: distinct prompts are distinct tuples (a real chain never repeats a value)."""
    return tuple(ids)


def matched(index: PrefixIndex, hashes: tuple[int, ...], m: EndpointMatrix) -> list[float]:
    result = index.match(hashes, m, 16)
    return [0.0] * len(m) if result.matched is None else result.matched.tolist()


def test_greedy_consecutive_match_per_endpoint() -> None:
    idx = PrefixIndex()
    m = pool("a", "b", "c")
    idx.record("a", chain(1, 2, 3, 4))
    idx.record("b", chain(1, 2, 9))
    result = idx.match(chain(1, 2, 3, 4, 5), m, 16)
    assert result.matched is not None
    assert result.matched.tolist() == [4.0, 2.0, 0.0]
    assert result.best == 4
    assert result.total == 5
    assert result.block_tokens == 16
    assert not result.matched.flags.writeable


def test_no_holder_of_the_first_block_is_no_match() -> None:
    idx = PrefixIndex()
    idx.record("a", chain(1, 2))
    result = idx.match(chain(7, 2), pool("a"), 16)
    assert result.matched is None
    assert result.best == 0
    assert idx.match((), pool("a"), 16).matched is None


def test_rows_follow_the_matrix_not_the_index() -> None:
    idx = PrefixIndex()
    idx.record("gone", chain(1, 2))
    idx.record("b", chain(1))
    assert matched(idx, chain(1, 2), pool("new", "b")) == [0.0, 1.0]
    # a matrix with only the unknown endpoint: no match at all
    assert idx.match(chain(1, 2), pool("new"), 16).matched is None


def test_lru_evicts_least_recent_and_a_prompt_from_its_end() -> None:
    idx = PrefixIndex(capacity=4)
    m = pool("a")
    idx.record("a", chain(1, 2, 3))
    idx.record("a", chain(10, 11, 12))  # 6 entries > 4: the oldest go, the first prompt's tail first
    assert idx.entries("a") == 4
    assert matched(idx, chain(1, 2, 3), m) == [1.0]
    assert matched(idx, chain(10, 11, 12), m) == [3.0]


def test_touching_a_hot_prefix_keeps_it() -> None:
    idx = PrefixIndex(capacity=6)
    system = chain(1, 2)
    for tail in range(100, 110):
        idx.record("a", (*system, tail))
        assert matched(idx, (*system, tail), pool("a")) == [3.0]
    assert idx.entries("a") == 6


def test_forget_and_retain_remove_every_trace_and_reuse_slots() -> None:
    idx = PrefixIndex()
    idx.record("a", chain(1, 2))
    idx.record("b", chain(1, 3))
    assert len(idx) == 4
    assert idx.retain(["b"]) == ("a",)
    assert idx.holders(1) == {"b"}
    assert idx.holders(2) == frozenset()
    assert len(idx) == 2
    idx.record("c", chain(1))  # takes a's slot
    assert idx.holders(1) == {"b", "c"}
    assert matched(idx, chain(1, 3), pool("a", "b", "c")) == [0.0, 2.0, 1.0]
    idx.clear()
    assert len(idx) == 0
    assert idx.endpoints() == ()


def test_holder_sets_shrink_back_to_one_endpoint() -> None:
    idx = PrefixIndex(capacity=2)
    idx.record("a", chain(1, 2))
    idx.record("b", chain(1, 2))
    idx.record("c", chain(1, 2))
    idx.record("b", chain(5, 6))  # evicts b's 1 and 2
    idx.record("c", chain(7, 8))
    assert idx.holders(1) == {"a"}
    assert matched(idx, chain(1, 2), pool("a", "b", "c")) == [2.0, 0.0, 0.0]


def test_stats_count_entries_exclusive_blocks_and_hits() -> None:
    idx = PrefixIndex(capacity=100)
    idx.record("a", chain(1, 2, 3))
    idx.record("b", chain(1, 2, 4), hit=2)
    stats = idx.stats("b")
    assert stats is not None
    assert stats.entries == 3
    assert stats.exclusive == 1
    assert stats.hit_blocks == 2
    assert stats.capacity == 100
    assert idx.stats("nobody") is None


def test_capacity_is_per_endpoint_and_bounded() -> None:
    idx = PrefixIndex(capacity=10)
    idx.record("a", tuple(range(20)), capacity=5)
    idx.record("b", tuple(range(100, 120)))
    assert idx.entries("a") == 5
    assert idx.entries("b") == 10
    idx.record("a", chain(1000), capacity=10 * MAX_CAPACITY)
    stats = idx.stats("a")
    assert stats is not None
    assert stats.capacity == MAX_CAPACITY
    with pytest.raises(ValueError, match="capacity"):
        PrefixIndex(0)


def test_many_endpoints_holding_one_prefix() -> None:
    idx = PrefixIndex()
    names = [f"e{i}" for i in range(300)]
    for i, name in enumerate(names):
        idx.record(name, chain(1, 2, 3)[: 1 + i % 3])
    got = matched(idx, chain(1, 2, 3), pool(*names))
    assert got == [float(1 + i % 3) for i in range(300)]


@pytest.mark.parametrize("capacity", [1000, 5000, 21846, 31250])
def test_memory_per_endpoint_stays_within_the_stated_bound(capacity: int) -> None:
    """Worst case: every entry unshared, endpoints filled three times over (evictions included)."""
    rng = random.Random(capacity)
    idx = PrefixIndex(capacity)
    names = ["a", "b"]
    prompts = [[rng.getrandbits(64) for _ in range(256)] for _ in range(3 * capacity // 256 + 1)]
    tracemalloc.start()
    try:
        for name in names:
            for prompt in prompts:
                idx.record(name, tuple(prompt))
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [idx.entries(n) for n in names] == [capacity, capacity]
    assert used <= len(names) * capacity * BYTES_PER_ENTRY


# ------------------------------------------------------------------------------------------------ producer
def test_producer_matches_and_records_for_the_primary() -> None:
    p = ApproxPrefixCache()
    m = pool("a", "b")
    text = b"shared system prompt " * 20
    hashes = p.hashes("model", "", text)
    first = p.match(hashes, m, now=0.0)
    assert first is not None
    assert first.matched is None
    p.record(m, 1, first)
    second = p.match(hashes, m, now=0.0)
    assert second is not None
    assert second.matched is not None
    assert second.matched.tolist() == [0.0, float(len(hashes))]
    p.record(m, 1, second)
    stats = p.stats("b")
    assert stats is not None
    assert stats.hit_blocks == len(hashes)
    assert p.match((), m, now=0.0) is None


def test_auto_tune_capacity_from_the_kv_cache_size() -> None:
    p = ApproxPrefixCache(PrefixConfig(block_size_tokens=16, capacity=7))
    tuned = pool("a", "b", block_size=32.0, num_blocks=1000.0)
    assert p.capacity_of(tuned, 0) == 1000 * 32 // 16
    assert p.capacity_of(pool("a"), 0) == 7  # unknown geometry: lruCapacityPerServer
    assert p.capacity_of(pool("a", block_size=16.0, num_blocks=1e15), 0) == MAX_CAPACITY
    off = ApproxPrefixCache(PrefixConfig(capacity=7, auto_tune=False))
    assert off.capacity_of(tuned, 0) == 7
    hashes = tuple(range(1, 10))
    match = p.match(hashes, pool("a", block_size=16.0, num_blocks=4.0), now=0.0)
    assert match is not None
    p.record(pool("a", block_size=16.0, num_blocks=4.0), 0, match)
    assert p.index.entries("a") == 4


def test_endpoints_missing_for_the_purge_period_are_forgotten() -> None:
    p = ApproxPrefixCache(purge_after=120.0)
    both = pool("a", "b")
    match = p.match((1, 2), both, now=0.0)
    assert match is not None
    p.record(both, 0, match)
    p.record(both, 1, match)
    only_b = pool("b")
    p.match((1, 2), only_b, now=10.0)
    p.match((1, 2), only_b, now=100.0)
    assert p.index.entries("a") == 2  # a readiness blip keeps the entries
    p.match((1, 2), both, now=110.0)  # back in time
    p.match((1, 2), only_b, now=200.0)
    p.match((1, 2), only_b, now=300.0)
    assert p.index.entries("a") == 2
    p.match((1, 2), only_b, now=321.0)  # checked every quarter period: within 1.25 x purge_after
    p.match((1, 2), only_b, now=351.0)
    assert p.index.entries("a") == 0
    assert p.index.endpoints() == ("b",)


def test_prefix_config_reads_the_reference_parameters() -> None:
    cfg, params = PrefixConfig.from_params("p", "prefix-cache-scorer", {"maxPrefixTokensToMatch": 1024})
    assert cfg.max_blocks == 1024 // 16
    assert params.effective["lruCapacityPerServer"] == 31_250
    cfg, _ = PrefixConfig.from_params("p", "t", {"blockSizeTokens": 32, "blockSize": 999})
    assert cfg.block_size_tokens == 32


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"blockSize": 64}, "deprecated"),
        ({"blockSizeTokens": 0}, "blockSizeTokens"),
        ({"blockSizeTokens": 5000}, "4096"),
        ({"lruCapacityPerServer": MAX_CAPACITY + 1}, "memory per endpoint"),
        ({"maxPrefixBlocksToMatch": 100_000}, "8192"),
        ({"autoTune": "yes"}, "autoTune"),
        ({"bogus": 1}, "unknown parameter"),
    ],
)
def test_prefix_config_rejects_bad_parameters(parameters: dict[str, object], message: str) -> None:
    from scoring import ConfigurationError

    with pytest.raises(ConfigurationError, match=message):
        PrefixConfig.from_params("p", "prefix-cache-scorer", parameters)


def test_match_rows_are_float_blocks() -> None:
    idx = PrefixIndex()
    idx.record("a", chain(1))
    result = idx.match(chain(1), pool("a"), 16)
    assert result.matched is not None
    assert result.matched.dtype == np.float64
