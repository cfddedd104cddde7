"""Properties of the approximate prefix index under any sequence of records, capacity changes and removals.

The index (per-endpoint ``OrderedDict`` LRUs, a reverse map of holder sets and a bisecting lookup, see
``scoring/prefix/index.py``) must answer exactly like the plain model below: per endpoint an LRU of
hashes (a prompt added tail first, so its head is the most recent; least recent evicted beyond the
endpoint's capacity), and the reference's greedy walk (per endpoint, count the leading hashes it holds)
for a lookup. Entries, exclusive entries, hit blocks, capacities and every hash's holders are compared
after every operation.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict

import numpy as np
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import EndpointMatrix, EndpointRow, PickRequest, reference_default_scheduler
from scoring.matrix import LoadCharge
from scoring.prefix import MAX_CAPACITY, PrefixIndex
from scoring.types import PrefixMatch

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = tuple(f"e{i}" for i in range(6))


class Model:
    """The reference's per-endpoint LRU, written the obvious way."""

    def __init__(self, capacity: int) -> None:
        self.default = capacity
        self.lru: dict[str, OrderedDict[int, None]] = {}
        self.capacity: dict[str, int] = {}
        self.hits: dict[str, int] = {}

    def record(self, name: str, hashes: tuple[int, ...], capacity: int | None, hit: int) -> None:
        if not hashes:
            return
        lru = self.lru.setdefault(name, OrderedDict())
        self.capacity.setdefault(name, self.default)
        self.hits.setdefault(name, 0)
        if capacity is not None:
            self.capacity[name] = max(1, min(capacity, MAX_CAPACITY))
        self.hits[name] += max(0, hit)
        for h in reversed(hashes):
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > self.capacity[name]:
            lru.popitem(last=False)

    def forget(self, name: str) -> None:
        for d in (self.lru, self.capacity, self.hits):
            d.pop(name, None)

    def holders(self, h: int) -> frozenset[str]:
        return frozenset(n for n, lru in self.lru.items() if h in lru)

    def walk(self, hashes: tuple[int, ...], names: tuple[str, ...]) -> list[float]:
        out = []
        for name in names:
            lru = self.lru.get(name, {})
            count = 0
            for h in hashes:
                if h not in lru:
                    break
                count += 1
            out.append(float(count))
        return out


def check_same(index: PrefixIndex, model: Model, universe: set[int], probes: list[tuple[int, ...]]) -> None:
    assert set(index.endpoints()) == set(model.lru)
    assert len(index) == sum(len(lru) for lru in model.lru.values())
    for name, lru in model.lru.items():
        assert index.entries(name) == len(lru)
        stats = index.stats(name)
        assert stats is not None
        exclusive = sum(1 for h in lru if model.holders(h) == {name})
        assert stats == (len(lru), exclusive, model.hits[name], model.capacity[name])
    for h in universe:
        assert index.holders(h) == model.holders(h)
    m = pool()
    for hashes in probes:
        result = index.match(hashes, m, 16)
        expected = model.walk(hashes, NAMES)
        got = [0.0] * len(NAMES) if result.matched is None else result.matched.tolist()
        assert got == expected
        assert result.best == int(max(expected))


def chain(path: tuple[int, ...]) -> tuple[int, ...]:
    """Block hashes of a prompt that walks ``path`` through a small tree of shared prefixes."""
    return tuple(xxhash.xxh64_intdigest(bytes(path[: i + 1])) for i in range(len(path)))


paths = st.lists(st.integers(0, 2), min_size=1, max_size=12).map(tuple)
capacities = st.sampled_from([None, 1, 2, 3, 5, 40])
record = st.tuples(st.just("record"), st.sampled_from(NAMES), paths, capacities)
forget = st.tuples(st.just("forget"), st.sampled_from(NAMES), st.just(()), st.just(None))
operations = st.lists(st.one_of(record, record, record, forget), min_size=1, max_size=40)


def pool(names: tuple[str, ...] = NAMES) -> EndpointMatrix:
    return EndpointMatrix.from_rows(
        EndpointRow(n, f"10.0.0.{i}:8000", waiting=0.0, kv_usage=0.2, scraped_at=0.0)
        for i, n in enumerate(names)
    )


@SETTINGS
@given(ops=operations, probes=st.lists(paths, min_size=1, max_size=5), hit=st.integers(0, 3))
def test_index_answers_like_the_reference_model(
    ops: list[tuple[str, str, tuple[int, ...], int | None]], probes: list[tuple[int, ...]], hit: int
) -> None:
    index = PrefixIndex(capacity=8)
    model = Model(8)
    universe: set[int] = set()
    chains = [chain(p) for p in probes]
    for op, name, path, capacity in ops:
        if op == "record":
            hashes = chain(path)
            universe.update(hashes)
            index.record(name, hashes, capacity=capacity, hit=hit)
            model.record(name, hashes, capacity, hit)
        else:
            index.forget(name)
            model.forget(name)
        check_same(index, model, universe, chains)


def test_long_random_sequences_answer_like_the_model() -> None:
    """Seeded, longer than the examples above: endpoints fill and evict, shared hashes go back to one
    holder, capacities shrink and grow, endpoints leave and their slots are reused."""
    for seed in range(4):
        rng = random.Random(seed)
        index = PrefixIndex(capacity=50)
        model = Model(50)
        universe: set[int] = set()
        roots = [rng.getrandbits(63) for _ in range(5)]
        for step in range(600):
            name = rng.choice(NAMES)
            r = rng.random()
            if r < 0.03:
                index.forget(name)
                model.forget(name)
                continue
            # a shared head (system prompt), a conversation or a fresh tail
            root = rng.choice(roots)
            head = [root + i for i in range(rng.randrange(0, 20))]
            tail = [rng.getrandbits(64) for _ in range(rng.randrange(1, 90))]
            hashes = tuple(head + tail)
            capacity = rng.choice([None, None, None, 10, 50, 120])
            universe.update(hashes)
            index.record(name, hashes, capacity=capacity, hit=step % 3)
            model.record(name, hashes, capacity, step % 3)
            if step % 50 == 0:
                check_same(index, model, universe, [hashes, hashes[:5], tuple(head)])
        check_same(index, model, universe, [])


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


# ------------------------------------------------------------------------------------ entries of s blocks
def segment_hashes(seed: int, data: bytes, s: int, window: int) -> tuple[int, ...]:
    """The chain over segments of ``s`` 64-byte blocks, written the obvious way (the last one partial)."""
    data = data[:window]
    if len(data) < 64:
        return ()
    out, h = [], seed
    for start in range(0, len(data), 64 * s):
        h = xxhash.xxh64_intdigest(data[start : start + 64 * s], h)
        out.append(h)
    return tuple(out)


def prompt_bytes(path: tuple[int, ...], cut: int) -> bytes:
    """A prompt of one 64-byte block per element of ``path`` (blocks drawn from a tree of shared
    prefixes), its last block cut short by ``cut`` bytes."""
    blocks = [xxhash.xxh64_digest(bytes(path[: i + 1])) * 8 for i in range(len(path))]
    data = b"".join(blocks)
    return data[: len(data) - cut] if len(path) > 1 else data


segmented = st.tuples(st.sampled_from(NAMES), paths, st.integers(0, 63), st.sampled_from([None, 1, 2, 6, 40]))


@SETTINGS
@given(
    s=st.sampled_from([1, 2, 3, 4]),
    max_blocks=st.sampled_from([5, 8, 12]),
    ops=st.lists(segmented, min_size=1, max_size=30),
    probes=st.lists(st.tuples(paths, st.integers(0, 63)), min_size=1, max_size=4),
)
def test_entries_of_s_blocks_answer_like_the_walk_over_segment_hashes(
    s: int,
    max_blocks: int,
    ops: list[tuple[str, tuple[int, ...], int, int | None]],
    probes: list[tuple[tuple[int, ...], int]],
) -> None:
    """The producer with ``blocksPerEntry`` s against the oracle: segment hashes written the obvious
    way, the plain LRU model over them, the block-by-block greedy walk, and the entry count turned into
    blocks (``min(entries x s, blocks of the prompt)``)."""
    from scoring.prefix import ApproxPrefixCache, PrefixConfig

    cache = ApproxPrefixCache(PrefixConfig(max_blocks=max_blocks, capacity=8 * s, blocks_per_entry=s))
    model = Model(8)
    seed = cache.hasher.seed("m")
    window = 64 * max_blocks
    m = pool()
    for name, path, cut, capacity in ops:
        data = prompt_bytes(path, cut)
        hashes = cache.hashes("m", "", data)
        assert hashes == segment_hashes(seed, data, s, window)
        cache.index.record(name, hashes, capacity=capacity)
        model.record(name, hashes, capacity, 0)
    for path, cut in probes:
        data = prompt_bytes(path, cut)
        hashes = cache.hashes("m", "", data)
        blocks = -(-min(len(data), window) // 64)
        match = cache.match(hashes, m, now=0.0, blocks=cache.blocks(len(data)))
        assert match is not None
        assert match.total == blocks
        expected = [min(count * s, blocks) for count in model.walk(hashes, NAMES)]
        got = [0.0] * len(NAMES) if match.matched is None else match.matched.tolist()
        assert got == expected
        assert match.best == max(expected)
    for name, lru in model.lru.items():
        assert cache.index.entries(name) == len(lru)
