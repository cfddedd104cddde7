"""The approximate prefix index: which endpoints probably hold which prompt blocks in their prefix cache.

It remembers, per endpoint, the chained block hashes (:mod:`scoring.prefix.hashing`) of the prompts we
sent there, in a least-recently-used list of at most ``capacity`` entries (the reference's per-server LRU,
``gie-epp.md`` §3.6), plus the reverse map hash → endpoints that serves the lookup. Nothing here reads a
model server: it is our own routing history, so it is approximate (a server may have evicted a block we
still list, or computed one another router sent it).

Structures (one event loop, no locks):

* ``_lru[slot]`` — an ``OrderedDict`` used as an ordered set of the endpoint's hashes, least recent first.
  A prompt is added tail-first so that its *first* block is the most recent: the LRU then evicts a prompt
  from its end, as a model server's prefix cache does, and never drops a block while a later block of the
  same prompt stays. An ``OrderedDict`` rather than a dict for its C-level ``move_to_end``: touching the
  256 blocks of a prompt held already costs about 11 µs against 36 µs for a dict's pop and re-insert
  (about 50 bytes more per entry).
* ``_holders`` — hash → the endpoints holding it: ``~slot`` (a negative int) when one endpoint does, a
  bitmask of slots (a positive int) when several do. One canonical encoding per set, so equal sets compare
  equal.

**Why the lookup can bisect.** Because every prompt is added whole with its head most recent, an endpoint
that holds block *k* of a chain also holds blocks 0..k-1 (they were touched at the same time or later,
so an LRU evicts them later). The holder sets along a prompt's hashes are therefore nested:
``holders(h0) ⊇ holders(h1) ⊇ ...``, and the reference's greedy walk (count, per endpoint, the leading
hashes it holds) equals counting the runs of equal holder sets, which a bisection finds with a few
lookups per run instead of one per block. ``tests/property/scoring/test_prefix_index.py`` checks it against
the block-by-block walk. With entries of several blocks (``blocksPerEntry``) a "block" above is an entry:
the index sees opaque hashes, a prompt's entries are still recorded whole and head first, so the argument
is unchanged; :meth:`PrefixIndex.match` turns entry counts into blocks.

**Memory bound.** Per endpoint at most ``capacity`` entries, each costing at most :data:`BYTES_PER_ENTRY`
bytes when no other endpoint shares it (the endpoint's dict slot, the reverse-map slot, the hash's int
object); a hash shared by several endpoints costs one reverse-map entry whose bitmask grows by one bit
per endpoint slot. ``tests/unit/scoring/test_prefix_index.py`` measures it with ``tracemalloc``.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from itertools import islice, repeat
from typing import Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from scoring.matrix import EndpointMatrix
from scoring.types import PrefixMatch

#: Reference default ``lruCapacityPerServer``: entries per endpoint (500k tokens of KV cache / 16-token
#: blocks, the reference's sizing example of an H100 serving a 16 GB model).
DEFAULT_CAPACITY: Final = 31_250
#: Upper bound of any endpoint's capacity, whatever a metrics page claims (autoTune): 2**20 blocks of 16
#: tokens = 16M tokens, above any single server's KV cache today; bounds memory per endpoint.
MAX_CAPACITY: Final = 1 << 20
#: Upper bound of the bytes one unshared entry costs: its int key (40), a slot in the endpoint's
#: OrderedDict (its dict entry and index, 2-4x over-allocated after growth, plus the linked-list node:
#: about 100-170) and one in the reverse map (60-120), a slot int (up to 32). Measured 176-356 at capacities
#: from 1,000 to 60,000, about 270 at the default (8.4 MB per full endpoint; bound 12.5 MB). An entry covers
#: ``blocksPerEntry`` blocks, so per block of capacity the bound is this / ``blocksPerEntry`` (our default
#: profile's 8: 1.6 MB per endpoint of 31,250 blocks, 0.99 MB measured).
BYTES_PER_ENTRY: Final = 400


class EndpointPrefixStats(NamedTuple):
    """What the index knows about one endpoint's cache (read-only; for operators and the scaler).

    ``entries``: blocks listed for the endpoint. ``exclusive``: of those, blocks no other endpoint holds —
    what the pool loses if this endpoint goes. ``hit_blocks``: blocks of routed prompts that matched this
    endpoint's entries when it was chosen (cumulative since it joined the index), i.e. prefill the cache
    is believed to have saved. ``capacity``: its current entry limit.
    """

    entries: int
    exclusive: int
    hit_blocks: int
    capacity: int


def _drain(iterator: Iterable[object]) -> None:
    deque(iterator, maxlen=0)


class PrefixIndex:
    """Per-endpoint LRU lists of block hashes and the reverse map that answers "who holds this prefix".

    Endpoints are named by their stable name (the matrix's ``names``); each gets a small integer slot
    (freed slots are reused, lowest first, so bitmasks stay short).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.default_capacity = min(capacity, MAX_CAPACITY)
        self._slots: dict[str, int] = {}
        self._names: list[str | None] = []
        self._free: list[int] = []
        #: per slot: the endpoint's hashes, least recent first
        self._lru: list[OrderedDict[int, None]] = []
        self._capacity: list[int] = []
        self._hits: list[int] = []
        self._holders: dict[int, int] = {}
        self._size = 0
        # row → slot map of the last matrix seen: (names, slot epoch) → rows
        self._epoch = 0
        self._row_key: tuple[tuple[str, ...], int] | None = None
        self._row_slots: NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._slot_rows: dict[int, int] | None = None  # slot -> row of that matrix, built on first use

    # ------------------------------------------------------------------------------------ reading
    def __len__(self) -> int:
        """Entries over all endpoints (the reference's ``prefix_indexer_size``)."""
        return self._size

    def endpoints(self) -> tuple[str, ...]:
        """Names of the endpoints with a slot (recorded at least once and not forgotten since)."""
        return tuple(self._slots)

    def entries(self, name: str) -> int:
        """Blocks listed for ``name`` (0 for an unknown endpoint)."""
        slot = self._slots.get(name)
        return 0 if slot is None else len(self._lru[slot])

    def stats(self, name: str) -> EndpointPrefixStats | None:
        """Entries, exclusive entries, hit blocks and capacity of one endpoint; None if unknown.

        Costs one pass over the endpoint's entries (milliseconds at the default capacity): for operators
        and scale-down decisions, not for the request path.
        """
        slot = self._slots.get(name)
        if slot is None:
            return None
        lru = self._lru[slot]
        holders = self._holders
        exclusive = sum(1 for h in lru if holders[h] < 0)
        return EndpointPrefixStats(len(lru), exclusive, self._hits[slot], self._capacity[slot])

    def holders(self, h: int) -> frozenset[str]:
        """Endpoints listing one hash (tests and debugging)."""
        value = self._holders.get(h)
        if value is None:
            return frozenset()
        return frozenset(self._names[s] or "" for s in _slots_of(value))

    def holds(self, name: str, h: int) -> bool:
        """Whether ``name`` lists the hash ``h`` (one lookup in each map)."""
        slot = self._slots.get(name)
        value = self._holders.get(h)
        if slot is None or value is None:
            return False
        return value == ~slot if value < 0 else bool(value >> slot & 1)

    def row_of(self, name: str, m: EndpointMatrix) -> int | None:
        """Row of ``m`` of an endpoint the index knows, or None (a dict lookup; ``m.names.index``: 24 µs)."""
        slot = self._slots.get(name)
        rows = self._rows(m)
        if self._slot_rows is None:
            self._slot_rows = {s: r for r, s in enumerate(rows.tolist())}
        return None if slot is None else self._slot_rows.get(slot)

    def match(
        self,
        hashes: Sequence[int],
        m: EndpointMatrix,
        block_tokens: int,
        *,
        blocks_per_entry: int = 1,
        blocks: int = 0,
    ) -> PrefixMatch:
        """Matched leading blocks of ``hashes`` per row of ``m`` (greedy consecutive match, reference).

        ``block_tokens`` is the hasher's block size in tokens (carried in the result for the scorer).
        Each hash covers ``blocks_per_entry`` blocks, the last one possibly fewer: ``blocks`` is the
        prompt's block count (0: every hash whole). The walk counts leading entries; the result is in
        blocks (``min(entries x blocks_per_entry, blocks)``). Endpoints of ``m`` the index does not know
        match 0; endpoints the index knows but ``m`` lacks are ignored.
        """
        holders = self._holders
        first = holders.get(hashes[0]) if hashes else None
        total = 0
        if blocks_per_entry != 1:
            total = blocks or len(hashes) * blocks_per_entry
        if first is None:
            return PrefixMatch(tuple(hashes), None, 0, block_tokens, total)
        runs = self._runs(hashes, first)
        nslots = len(self._names)
        counts = np.zeros(nslots + 1)
        nbytes = (nslots + 7) // 8
        for value, length in runs:
            if value < 0:
                counts[~value] += length
            else:
                bits = np.unpackbits(
                    np.frombuffer(value.to_bytes(nbytes, "little"), dtype=np.uint8),
                    count=nslots,
                    bitorder="little",
                )
                counts[:nslots] += bits * float(length)
        matched = counts[self._rows(m)]
        if total:
            matched *= blocks_per_entry
            np.minimum(matched, total, out=matched)
        best = int(matched.max()) if len(matched) else 0
        if best == 0:
            return PrefixMatch(tuple(hashes), None, 0, block_tokens, total)
        matched.flags.writeable = False
        return PrefixMatch(tuple(hashes), matched, best, block_tokens, total)

    def _runs(self, hashes: Sequence[int], first: int) -> list[tuple[int, int]]:
        """Runs ``(holder value, length)`` of equal holder sets along ``hashes``, in order, up to the first
        hash nobody holds. Bisects between known ends (the sets are nested, see the module docstring)."""
        get = self._holders.get
        n = len(hashes)
        last = get(hashes[n - 1])
        if last == first:
            return [(first, n)]
        runs: list[tuple[int, int]] = []
        # half-open intervals [lo, hi) with the holder values at lo and at hi (None: nobody, or past the end)
        stack: list[tuple[int, int | None, int, int | None]] = (
            [(0, first, n, None)] if last is None else [(n - 1, last, n, None), (0, first, n - 1, last)]
        )
        while stack:
            lo, vlo, hi, vhi = stack.pop()
            if vlo is None:
                continue  # nobody holds block lo, so nobody holds a later one
            if vlo == vhi or hi - lo == 1:
                if runs and runs[-1][0] == vlo:
                    runs[-1] = (vlo, runs[-1][1] + hi - lo)
                else:
                    runs.append((vlo, hi - lo))
                continue
            mid = (lo + hi) // 2
            vmid = get(hashes[mid])
            stack.append((mid, vmid, hi, vhi))
            stack.append((lo, vlo, mid, vmid))
        return runs

    def _rows(self, m: EndpointMatrix) -> NDArray[np.intp]:
        """Slot of every row of ``m`` (the zero count past the last slot for unknown endpoints), cached
        while the matrix's names and the slot assignment are unchanged."""
        key = self._row_key
        names = m.names
        if key is not None and key[1] == self._epoch and (key[0] is names or key[0] == names):
            return self._row_slots
        missing = len(self._names)
        slots = self._slots
        rows = np.fromiter((slots.get(n, missing) for n in names), dtype=np.intp, count=len(names))
        self._row_key = (names, self._epoch)
        self._row_slots = rows
        self._slot_rows = None
        return rows

    # ------------------------------------------------------------------------------------ writing
    def record(self, name: str, hashes: Sequence[int], *, capacity: int | None = None, hit: int = 0) -> None:
        """``name`` now holds the prompt ``hashes`` (the reference's update after the pick).

        Every hash becomes the most recent entry of the endpoint, the first one most recent of all;
        entries beyond its capacity are evicted least recent first. ``capacity`` (autoTune) replaces the
        endpoint's limit when given; ``hit`` adds to its hit-block count (blocks that matched when it was
        chosen).
        """
        if not hashes:
            return
        slot = self._slots.get(name)
        if slot is None:
            slot = self._assign(name)
        if capacity is not None:
            self._capacity[slot] = max(1, min(capacity, MAX_CAPACITY))
        if hit > 0:
            self._hits[slot] += hit
        lru = self._lru[slot]
        before = len(lru)
        held = _held_prefix(lru, hashes)
        # every hash to the recent end, the prompt's tail first so that its head is the most recent: the
        # new tail is inserted (reversed), then the held head moved after it (one C-level move per hash:
        # OrderedDict, where a plain dict needs a pop and an insertion)
        if held < len(hashes):
            new = hashes[held:] if held else hashes
            self._add_holder(slot, new)
            lru.update(dict.fromkeys(reversed(new)))
        if held:
            _drain(map(lru.move_to_end, reversed(hashes[:held])))
        excess = len(lru) - self._capacity[slot]
        if excess > 0:
            self._evict(slot, excess)
        self._size += len(lru) - before

    def _add_holder(self, slot: int, hashes: Sequence[int]) -> None:
        """Add ``slot`` to the holders of ``hashes`` (none of which it holds yet). One C-level pass of
        ``setdefault`` stores the usual case, hashes new to the whole index (a new prompt's tail), and
        returns what the others held; the few already held elsewhere (a shared prefix) are then merged
        one by one. One probe of the reverse map per hash: on a full index each probe is a cache miss, so
        their number is the cost (a membership pass and then an update made two)."""
        holders = self._holders
        enc = ~slot
        old = list(map(holders.setdefault, hashes, repeat(enc)))
        if old.count(enc) == len(old):
            return
        bit = 1 << slot
        for h, v in zip(hashes, old, strict=True):
            if v != enc:
                holders[h] = (1 << ~v) | bit if v < 0 else v | bit

    def _evict(self, slot: int, count: int) -> None:
        lru = self._lru[slot]
        victims = list(islice(lru, count))
        _drain(map(lru.__delitem__, victims))
        self._drop_holder(slot, victims)

    def _drop_holder(self, slot: int, hashes: Sequence[int]) -> None:
        """Remove ``slot`` from the holders of ``hashes`` (all of which it holds). Every hash is popped in
        one C-level pass (one probe each); those other endpoints hold too (rare for an evicted tail) are
        put back without this slot."""
        holders = self._holders
        enc = ~slot
        values = list(map(holders.pop, hashes))
        if values.count(enc) == len(values):
            return
        keep = ~(1 << slot)
        for h, v in zip(hashes, values, strict=True):
            if v >= 0:
                rest = v & keep
                holders[h] = ~(rest.bit_length() - 1) if rest & (rest - 1) == 0 else rest

    def forget(self, name: str) -> None:
        """Remove an endpoint and all its entries (it left the pool)."""
        slot = self._slots.pop(name, None)
        if slot is None:
            return
        lru = self._lru[slot]
        self._drop_holder(slot, list(lru))
        self._size -= len(lru)
        self._lru[slot] = OrderedDict()
        self._names[slot] = None
        self._hits[slot] = 0
        heapq.heappush(self._free, slot)
        self._epoch += 1

    def retain(self, names: Iterable[str]) -> tuple[str, ...]:
        """Forget every endpoint not in ``names``; returns the names forgotten."""
        keep = set(names)
        gone = tuple(n for n in self._slots if n not in keep)
        for name in gone:
            self.forget(name)
        return gone

    def clear(self) -> None:
        """Forget everything (e.g. the block size changed, so every stored hash is meaningless)."""
        for name in tuple(self._slots):
            self.forget(name)

    def _assign(self, name: str) -> int:
        if self._free:
            slot = heapq.heappop(self._free)
            self._names[slot] = name
            self._capacity[slot] = self.default_capacity
        else:
            slot = len(self._names)
            self._names.append(name)
            self._lru.append(OrderedDict())
            self._capacity.append(self.default_capacity)
            self._hits.append(0)
        self._slots[name] = slot
        self._epoch += 1
        return slot


def _held_prefix(lru: OrderedDict[int, None], hashes: Sequence[int]) -> int:
    """How many leading ``hashes`` the endpoint lists (binary search; its lists are prefix-closed)."""
    if hashes[0] not in lru:
        return 0
    lo, hi = 1, len(hashes)  # hashes[:lo] held; answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if hashes[mid - 1] in lru:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _slots_of(value: int) -> list[int]:
    if value < 0:
        return [~value]
    out = []
    while value:
        low = value & -value
        out.append(low.bit_length() - 1)
        value ^= low
    return out


__all__ = [
    "BYTES_PER_ENTRY",
    "DEFAULT_CAPACITY",
    "MAX_CAPACITY",
    "EndpointPrefixStats",
    "PrefixIndex",
]
