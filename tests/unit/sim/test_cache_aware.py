"""SGLang's cache-aware router as re-implemented in the simulator: the tree and the policy's behaviour."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.sim.cache_aware import ApproxTree, CacheAwareParams, SglangCacheAware, Text
from benchmarks.sim.traces import Workload
from scoring.matrix import EndpointMatrix, EndpointRow
from scoring.types import PickRequest

UC = 4  # characters per unit in these tests


def as_string(t: Text) -> str:
    """The text with every unit as a block of one character of its own (different units share nothing)."""
    return "".join(chr(0x4E00 + t.unit_at(k)) * UC for k in range(-(-t.n // UC)))[: t.n]


def lcp(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


texts = st.builds(
    lambda units, cut: Text(tuple(units), max(1, len(units) * UC - cut), UC, 0),
    st.lists(st.integers(0, 3), min_size=1, max_size=6),
    st.integers(0, UC - 1),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(texts, st.integers(0, 2)), min_size=1, max_size=12), st.lists(texts, max_size=6))
def test_tree_matches_a_character_trie(inserted: list[tuple[Text, int]], queries: list[Text]) -> None:
    tree = ApproxTree(3, [0, 1, 2])
    for i, (text, tenant) in enumerate(inserted):
        tree.insert(text, tenant, float(i))
    strings = [(as_string(t), w) for t, w in inserted]
    for w in range(3):
        # a worker's share of the tree = its distinct non-empty prefixes
        mine = {s[:k] for s, t in strings if t == w for k in range(1, len(s) + 1)}
        assert tree.chars[w] == len(mine)
    for q in [*(t for t, _ in inserted), *queries]:
        matched, holder = tree.prefix_match(q, 100.0)
        best = max(lcp(as_string(q), s) for s, _ in strings)
        assert matched == best
        if matched:
            # the worker named holds the matched prefix
            qs = as_string(q)[:matched]
            assert any(s.startswith(qs) for s, w in strings if w == holder)


def test_eviction_drops_the_least_recently_used_leaves_of_an_oversized_worker() -> None:
    tree = ApproxTree(2, [0, 1])
    old = Text((1, 2, 3), 3 * UC, UC, 0)
    new = Text((1, 5, 6), 3 * UC, UC, 0)
    other = Text((9,), UC, UC, 0)
    tree.insert(old, 0, 1.0)
    tree.insert(new, 0, 2.0)
    tree.insert(other, 1, 3.0)
    assert tree.chars == [5 * UC, UC]
    tree.evict(3 * UC)
    assert tree.chars == [3 * UC, UC], "the old branch went, worker 1 (within the limit) kept its text"
    assert tree.prefix_match(new, 4.0) == (3 * UC, 0)
    assert tree.prefix_match(old, 4.0)[0] == UC, "only the shared first unit is left of the old text"


def workload(units: list[tuple[int, ...]], tokens: int) -> Workload:
    n = len(units)
    return Workload(
        name="t",
        arrival_s=np.arange(n, dtype=np.float64),
        prompt_tokens=np.full(n, tokens),
        output_tokens=np.full(n, 10),
        units=tuple(units),
        unit_tokens=16,
        adapter=np.full(n, -1, dtype=np.int64),
    )


def matrix(n: int) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        [EndpointRow(name=f"w{i}", address=f"10.0.0.{i + 1}:8000") for i in range(n)]
    )


def bound(policy: SglangCacheAware, w: Workload, n: int) -> SglangCacheAware:
    policy.bind(SimpleNamespace(workload=w, servers=[None] * n))
    return policy


def test_a_repeated_prefix_sticks_to_one_worker_until_the_balance_threshold_trips() -> None:
    n_req = 80
    w = workload([(1, 2, 3, 100 + i) for i in range(n_req)], 64)
    policy = bound(SglangCacheAware(), w, 4)
    m = matrix(4)
    rng = np.random.default_rng(0)
    chosen = []
    load_before = []
    for k in range(n_req):
        i = policy.pick(m, PickRequest(request_id=str(k)), float(k), rng)
        load_before.append(float(m.inflight[i]))
        m.inflight[i] += 1  # nothing finishes: the router's in-flight count only grows
        chosen.append(i)
    holder = chosen[0]
    # 3 of 4 units match (75 % > 30 %): the same worker while max - min <= 64 ...
    assert chosen[:65] == [holder] * 65
    # ... then the system is imbalanced (65 - 0 > 64 and 65 > 1.5 x 0): the least-loaded worker
    assert chosen[65] != holder
    assert load_before[65] == 0.0
    # a tighter absolute threshold trips sooner
    policy = bound(SglangCacheAware(CacheAwareParams(balance_abs_threshold=8)), w, 4)
    m = matrix(4)
    chosen = []
    for k in range(20):
        i = policy.pick(m, PickRequest(request_id=str(k)), float(k), rng)
        m.inflight[i] += 1
        chosen.append(i)
    assert chosen[:9] == [chosen[0]] * 9
    assert chosen[9] != chosen[0]


def test_a_request_that_matches_too_little_goes_to_the_smallest_tree() -> None:
    w = workload([(1, 2, 3, 4), (1, 20, 30, 40), (50, 60, 70, 80)], 64)
    policy = bound(SglangCacheAware(), w, 3)
    m = matrix(3)
    rng = np.random.default_rng(0)
    first = policy.pick(m, PickRequest(request_id="0"), 0.0, rng)
    # 1 of 4 units (25 %) is not above the 0.3 threshold: not the holder, the emptiest worker
    second = policy.pick(m, PickRequest(request_id="1"), 1.0, rng)
    assert second != first
    assert policy.tree is not None
    third = policy.pick(m, PickRequest(request_id="2"), 2.0, rng)
    assert third not in (first, second), "the one worker with nothing in the tree"


def test_unbound_policy_says_how_to_run_it() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        SglangCacheAware().pick(matrix(2), PickRequest(request_id="0"), 0.0, np.random.default_rng(0))
