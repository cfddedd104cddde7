"""Properties of the approximate prefix index under any sequence of records, capacity changes and removals.

The linear greedy walk below (per endpoint, count the leading hashes it holds) is the reference's lookup;
the index bisects instead, which is exact because the holder sets along a prompt are nested. These
properties check that the index keeps them nested and that both lookups agree.
"""

from __future__ import annotations

import math

import numpy as np
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import EndpointMatrix, EndpointRow, PickRequest, reference_default_scheduler
from scoring.matrix import LoadCharge
from scoring.prefix import PrefixIndex
from scoring.types import PrefixMatch

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = tuple(f"e{i}" for i in range(6))


def chain(path: tuple[int, ...]) -> tuple[int, ...]:
    """Block hashes of a prompt that walks ``path`` through a small tree of shared prefixes."""
    return tuple(xxhash.xxh64_intdigest(bytes(path[: i + 1])) for i in range(len(path)))


paths = st.lists(st.integers(0, 2), min_size=1, max_size=12).map(tuple)
record = st.tuples(st.just("record"), st.sampled_from(NAMES), paths, st.sampled_from([None, 2, 3, 5, 40]))
forget = st.tuples(st.just("forget"), st.sampled_from(NAMES), st.just(()), st.just(None))
operations = st.lists(st.one_of(record, record, record, forget), min_size=1, max_size=40)


def pool(names: tuple[str, ...] = NAMES) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        EndpointRow(n, f"10.0.0.{i}:8000", waiting=0.0, kv_usage=0.2, scraped_at=0.0)
        for i, n in enumerate(names)
    )


def greedy_walk(index: PrefixIndex, hashes: tuple[int, ...], names: tuple[str, ...]) -> list[float]:
    out = []
    for name in names:
        count = 0
        for h in hashes:
            if name not in index.holders(h):
                break
            count += 1
        out.append(float(count))
    return out


def check_invariants(index: PrefixIndex, universe: set[tuple[int, ...]]) -> None:
    lrus = {name: index._lru[slot] for name, slot in index._slots.items()}
    total = 0
    for name, lru in lrus.items():
        slot = index._slots[name]
        assert len(lru) <= index._capacity[slot]
        total += len(lru)
    assert len(index) == total
    every_hash = {h for lru in lrus.values() for h in lru} | set(index._holders)
    for h in every_hash:
        assert index.holders(h) == {name for name, lru in lrus.items() if h in lru}
    for hashes in universe:
        for lru in lrus.values():
            held = [h in lru for h in hashes]
            # prefix-closed: once a block is missing, no later block of the prompt is held
            assert held == sorted(held, reverse=True)


@SETTINGS
@given(ops=operations, probes=st.lists(paths, min_size=1, max_size=5))
def test_index_invariants_and_bisection_equals_greedy_walk(
    ops: list[tuple[str, str, tuple[int, ...], int | None]], probes: list[tuple[int, ...]]
) -> None:
    index = PrefixIndex(capacity=8)
    universe: set[tuple[int, ...]] = set()
    m = pool()
    for op, name, path, capacity in ops:
        if op == "record":
            hashes = chain(path)
            universe.add(hashes)
            index.record(name, hashes, capacity=capacity)
        else:
            index.forget(name)
        check_invariants(index, universe)
    for path in probes:
        hashes = chain(path)
        result = index.match(hashes, m, 16)
        expected = greedy_walk(index, hashes, NAMES)
        got = [0.0] * len(NAMES) if result.matched is None else result.matched.tolist()
        assert got == expected
        assert result.best == int(max(expected))


@SETTINGS
@given(ops=st.lists(record, min_size=1, max_size=20), probe=paths, perm=st.permutations(range(len(NAMES))))
def test_matching_a_permuted_pool_permutes_the_result(
    ops: list[tuple[str, str, tuple[int, ...], int | None]], probe: tuple[int, ...], perm: list[int]
) -> None:
    index = PrefixIndex(capacity=8)
    for _, name, path, capacity in ops:
        index.record(name, chain(path), capacity=capacity)
    m = pool()
    pm = pool(tuple(NAMES[i] for i in perm))
    direct = index.match(chain(probe), m, 16)
    permuted = index.match(chain(probe), pm, 16)
    if direct.matched is None:
        assert permuted.matched is None
        return
    assert permuted.matched is not None
    assert permuted.matched.tolist() == [direct.matched[i] for i in perm]


load = st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, math.nan, math.inf, -1.0]))


@SETTINGS
@given(
    ops=st.lists(record, min_size=1, max_size=20),
    probe=paths,
    waiting=st.lists(load, min_size=len(NAMES), max_size=len(NAMES)),
    prefill=st.lists(st.integers(0, 50_000), min_size=len(NAMES), max_size=len(NAMES)),
    seed=st.integers(0, 2**32 - 1),
)
def test_prefix_terms_in_unit_interval_and_small_pool_totals_bit_identical(
    ops: list[tuple[str, str, tuple[int, ...], int | None]],
    probe: tuple[int, ...],
    waiting: list[float],
    prefill: list[int],
    seed: int,
) -> None:
    index = PrefixIndex(capacity=8)
    for _, name, path, capacity in ops:
        index.record(name, chain(path), capacity=capacity)
    m = EndpointMatrix.from_rows(
        EndpointRow(
            n, f"10.0.0.{i}:8000", waiting=waiting[i], kv_usage=0.3, scraped_at=0.0, prefill_tokens=prefill[i]
        )
        for i, n in enumerate(NAMES)
    )
    match = index.match(chain(probe), m, 16)
    req = PickRequest(target_model="m", prefix=match, prompt_tokens_estimate=16 * len(probe))
    floats, arrays = reference_default_scheduler(), reference_default_scheduler()
    arrays.small_pool = 0
    prefix_scorer = next(ws.scorer for ws in floats.scorers if ws.scorer.type_name == "prefix-cache-scorer")
    v = floats.candidates_view(m, None)
    prepared = floats.prepared(m, v)
    scores = prefix_scorer.score(v, prefix_scorer.prepare(v), req, m.dispatched)
    assert ((scores >= 0.0) & (scores <= 1.0)).all()
    f = floats.terms.floats(v, prepared, req, m.dispatched)
    a = arrays.terms.arrays(v, arrays.prepared(m, v), req, m.dispatched)
    assert np.array(f, dtype=np.float64).tobytes() == a.tobytes()
    rng1, rng2 = np.random.default_rng(seed), np.random.default_rng(seed)
    pick = floats.schedule(m, req, now=0.0, rng=rng1).indices
    assert pick == arrays.schedule(m, req, now=0.0, rng=rng2).indices
    # the charge never makes a column negative and gives back exactly what it took
    charge = LoadCharge.for_request(req, pick[0])
    assert 0.0 <= charge.prefill <= charge.tokens
    assert isinstance(match, PrefixMatch)
