"""One datastore shared by several processes (``picker serve --workers N``) through shared memory.

Why: one Python process serves ext_proc on one core (the gRPC stack, not our logic, is the cost), so
throughput scales by processes. Each worker process needs the same endpoint snapshot to pick from, and
the load accounting (``dispatched``, ``inflight``) must count the picks of every worker, or two workers
would pile onto the endpoint each believes idle. Scraping, Kubernetes watches and config reloads stay in
one process, the supervisor: N workers must not mean N scrapes per endpoint.

Roles:

* :class:`SharedDatastore` - the supervisor's :class:`~picker.state.datastore.Datastore` (the scraper,
  watchers and config write it as usual) that also **publishes** into a :class:`SharedSegment`;
* :class:`SharedView` - a worker's read side: :class:`~scoring.matrix.EndpointMatrix` snapshots rebuilt
  only when the supervisor published something, plus the worker's half of the accounting.

Segment layout (``multiprocessing.shared_memory``, created by the supervisor, a few MB):

* a header of 64-bit words (layout, sequence counters, the blob descriptor, the supervisor's pid);
* float64 **columns** indexed by *slot* (waiting, running, kv_usage, gpu_util, scraped_at, max_lora,
  block_size, num_blocks, engine code, dispatch baseline), written under a sequence lock;
* float64 **counters** ``[worker, kind, slot]`` with ``kind`` 0 = picks, 1 = releases, 2/3 = prefill
  tokens charged/given back, 4/5 = in-flight tokens charged/given back (``scoring.matrix.LoadCharge``):
  monotonic, and each worker writes only its own row (single writer per word: no cross-process atomics
  are needed);
* two **blob** slots holding the rarely changing part as JSON: endpoints (name, address, slot, LoRA
  adapters), pool, health inputs, objectives, rewrites and the config document. The supervisor writes the
  idle slot, then flips the descriptor (slot, length, CRC-32, generation); a reader checks the CRC and the
  sequence word, so it never parses a half-written document whatever the CPU's memory ordering.

Accounting across processes: with ``P`` = the sum over workers of picks of a slot and ``R`` the sum of
releases, ``inflight = P - R`` (``prefill_tokens`` and ``inflight_tokens`` likewise: charged minus given
back) and ``dispatched = P - baseline``, where ``baseline`` is ``P`` as it was
when the scrape that produced the current gauges *started* (the supervisor notes ``P`` at the start of
each scrape and moves it into ``baseline`` when the scrape lands). That is exactly the single-process
rule ("requests sent since the scrape began"), computed from counters that only grow. A worker that
dies is settled by the supervisor (its releases set equal to its picks, and its token give-backs to its
charges: its streams died with it) before
a replacement reuses its row.

Slots: an endpoint (name and address) keeps its slot while it is in the pool. A removed endpoint's slot
is reused only after ``quarantine_s`` and once its in-flight count is zero, so a stream still open on a
removed endpoint can never release into a newcomer's count.

Memory ordering: the columns are read under a sequence lock; on weakly ordered CPUs a reader may in rare
cases mix two consecutive publishes of metric values, which only makes one pick see a value a few
milliseconds old - harmless for scoring. Counters are aligned 8-byte words, read and written whole.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import orjson

from picker.state.datastore import (
    FLOAT_COLUMNS,
    NO_CHARGE,
    ChargedLease,
    Datastore,
    lora_columns,
    snapshot_matrix,
)
from picker.state.endpoints import Endpoint, PoolInfo
from picker.state.metrics import EndpointMetrics
from picker.state.objectives import (
    ModelRewrite,
    Objective,
    ObjectiveStore,
    RewriteRule,
    RewriteStore,
    RewriteTarget,
)
from scoring.matrix import NEVER, EndpointMatrix, LoadCharge, split_host_port

__all__ = [
    "COLUMNS",
    "HealthInputs",
    "SharedDatastore",
    "SharedLayout",
    "SharedSegment",
    "SharedView",
    "StaticState",
]

_MAGIC: Final = 0x3130726B63697070  # "ppicker01" little-endian-ish tag; guards against attaching garbage
_LAYOUT_VERSION: Final = 2
_HEADER_WORDS: Final = 16

# header word indices
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_WORKERS, _H_BLOB_BYTES = 0, 1, 2, 3, 4
_H_SEQ, _H_BLOB_SEQ, _H_BLOB_SLOT, _H_BLOB_LEN, _H_BLOB_GEN, _H_BLOB_CRC = 5, 6, 7, 8, 9, 10
_H_SUPERVISOR_PID = 11

#: float columns in slot order; ``engine`` holds the engine code, ``baseline`` the dispatch baseline
COLUMNS: Final = (*FLOAT_COLUMNS, "engine", "baseline")
_COL: Final = {name: i for i, name in enumerate(COLUMNS)}
_METRIC_COLUMNS: Final = FLOAT_COLUMNS
_PICKS: Final = 0
_RELEASES: Final = 1
_PREFILL_ADD: Final = 2
_PREFILL_DONE: Final = 3
_TOKENS_ADD: Final = 4
_TOKENS_DONE: Final = 5
_KINDS: Final = 6


@dataclass(frozen=True, slots=True)
class SharedLayout:
    """Sizes of a segment. ``capacity`` bounds the endpoints alive (plus quarantined) at once."""

    capacity: int = 16384
    workers: int = 2
    #: bytes per blob slot (two slots); the JSON of 10,000 endpoints with a few adapters is ~1 MB.
    #: Pages are backed only once written, so the default costs what the pool needs (the pod's /dev/shm
    #: is 64 MiB by default).
    blob_bytes: int = 4 << 20

    @property
    def header_bytes(self) -> int:
        return _HEADER_WORDS * 8

    @property
    def columns_offset(self) -> int:
        return self.header_bytes

    @property
    def counters_offset(self) -> int:
        return self.columns_offset + len(COLUMNS) * self.capacity * 8

    @property
    def blob_offset(self) -> int:
        return self.counters_offset + self.workers * _KINDS * self.capacity * 8

    @property
    def size(self) -> int:
        return self.blob_offset + 2 * self.blob_bytes


class SharedSegment:
    """The shared-memory block and numpy views onto its parts. Create in the supervisor, attach in workers.

    Pages are only backed by memory once written (tmpfs), so the generous default capacity costs little.
    """

    def __init__(self, shm: shared_memory.SharedMemory, layout: SharedLayout, *, owner: bool) -> None:
        self._shm = shm
        self.layout = layout
        self.owner = owner
        buf = shm.buf
        self.header = np.ndarray((_HEADER_WORDS,), dtype=np.uint64, buffer=buf, offset=0)
        self.columns = np.ndarray(
            (len(COLUMNS), layout.capacity), dtype=np.float64, buffer=buf, offset=layout.columns_offset
        )
        self.counters = np.ndarray(
            (layout.workers, _KINDS, layout.capacity),
            dtype=np.float64,
            buffer=buf,
            offset=layout.counters_offset,
        )
        self.blob = np.ndarray((2, layout.blob_bytes), dtype=np.uint8, buffer=buf, offset=layout.blob_offset)

    @property
    def name(self) -> str:
        return self._shm.name

    @classmethod
    def create(cls, layout: SharedLayout) -> SharedSegment:
        """A new zeroed segment with a random name (see :attr:`name`)."""
        shm = shared_memory.SharedMemory(create=True, size=layout.size)
        seg = cls(shm, layout, owner=True)
        h = seg.header
        h[_H_CAPACITY] = layout.capacity
        h[_H_WORKERS] = layout.workers
        h[_H_BLOB_BYTES] = layout.blob_bytes
        h[_H_VERSION] = _LAYOUT_VERSION
        h[_H_SUPERVISOR_PID] = os.getpid()
        seg.columns[:] = math.nan
        seg.columns[_COL["scraped_at"]] = NEVER
        seg.columns[_COL["engine"]] = 0.0
        seg.columns[_COL["baseline"]] = 0.0
        h[_H_MAGIC] = _MAGIC  # last: a reader seeing the magic sees the rest
        return seg

    @classmethod
    def attach(cls, name: str, *, untrack: bool = False) -> SharedSegment:
        """Attach to a segment created by the supervisor. Raises ValueError if it is not one of ours.

        Python before 3.13 registers an attached segment with the process's resource tracker, which
        unlinks it when that tracker's processes are gone. Workers started by the supervisor share its
        tracker (the registration is a no-op there, and the tracker unlinking the segment after a killed
        supervisor is what we want), so they attach as is. An unrelated process (a debugging tool) passes
        ``untrack=True`` so that its exit does not remove the supervisor's segment.
        """
        shm = shared_memory.SharedMemory(name=name)
        if untrack:
            with contextlib.suppress(Exception):
                resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        header = np.ndarray((_HEADER_WORDS,), dtype=np.uint64, buffer=shm.buf, offset=0)
        if int(header[_H_MAGIC]) != _MAGIC or int(header[_H_VERSION]) != _LAYOUT_VERSION:
            shm.close()
            raise ValueError(f"shared segment {name!r} is not a picker segment of layout {_LAYOUT_VERSION}")
        layout = SharedLayout(
            capacity=int(header[_H_CAPACITY]),
            workers=int(header[_H_WORKERS]),
            blob_bytes=int(header[_H_BLOB_BYTES]),
        )
        del header
        return cls(shm, layout, owner=False)

    @property
    def supervisor_pid(self) -> int:
        return int(self.header[_H_SUPERVISOR_PID])

    def close(self) -> None:
        """Drop this process's mapping (views must not be used afterwards)."""
        del self.header, self.columns, self.counters, self.blob
        with contextlib.suppress(BufferError):
            self._shm.close()

    def unlink(self) -> None:
        """Remove the segment's name (creator only); mappings stay valid until closed."""
        if self.owner:
            with contextlib.suppress(FileNotFoundError):
                self._shm.unlink()

    # ------------------------------------------------------------------------------------ blob
    def write_blob(self, data: bytes) -> int:
        """Publish ``data`` as the next blob generation; returns the generation."""
        if len(data) > self.layout.blob_bytes:
            raise ValueError(
                f"shared state of {len(data)} bytes exceeds the segment's {self.layout.blob_bytes} bytes"
            )
        h = self.header
        slot = 1 - int(h[_H_BLOB_SLOT]) if int(h[_H_BLOB_GEN]) else 0
        self.blob[slot, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        gen = int(h[_H_BLOB_GEN]) + 1
        seq = int(h[_H_BLOB_SEQ])
        h[_H_BLOB_SEQ] = seq + 1
        h[_H_BLOB_SLOT] = slot
        h[_H_BLOB_LEN] = len(data)
        h[_H_BLOB_CRC] = zlib.crc32(data)
        h[_H_BLOB_GEN] = gen
        h[_H_BLOB_SEQ] = seq + 2
        return gen

    @property
    def blob_generation(self) -> int:
        return int(self.header[_H_BLOB_GEN])

    def read_blob(self) -> tuple[int, bytes] | None:
        """``(generation, bytes)`` of a consistent published blob, or None if none is published yet or a
        publish kept racing the read."""
        h = self.header
        for _ in range(1000):
            seq = int(h[_H_BLOB_SEQ])
            if seq & 1:
                time.sleep(0)
                continue
            gen = int(h[_H_BLOB_GEN])
            if gen == 0:
                return None
            slot, length, crc = int(h[_H_BLOB_SLOT]), int(h[_H_BLOB_LEN]), int(h[_H_BLOB_CRC])
            if slot > 1 or length > self.layout.blob_bytes:
                continue
            data = self.blob[slot, :length].tobytes()
            if int(h[_H_BLOB_SEQ]) == seq and zlib.crc32(data) == crc:
                return gen, data
        return None

    # ------------------------------------------------------------------------------------ columns
    @property
    def sequence(self) -> int:
        return int(self.header[_H_SEQ])

    def begin_write(self) -> None:
        self.header[_H_SEQ] += np.uint64(1)

    def end_write(self) -> None:
        self.header[_H_SEQ] += np.uint64(1)

    def read_columns(self, slots: np.ndarray) -> tuple[int, np.ndarray]:
        """``(sequence, columns[:, slots])`` copied under the sequence lock."""
        h = self.header
        cols = self.columns
        for _ in range(1000):
            seq = int(h[_H_SEQ])
            if seq & 1:
                time.sleep(0)
                continue
            out = cols[:, slots]
            if int(h[_H_SEQ]) == seq:
                return seq, out
        seq = int(h[_H_SEQ])
        return seq, cols[:, slots]  # a writer that never finishes is dead: take what is there

    def totals(self, slots: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """Picks and releases per slot, summed over workers."""
        c = self.counters[:, :_PREFILL_ADD, slots]
        summed = c.sum(axis=0)
        return summed[_PICKS], summed[_RELEASES]

    def load(self, slots: np.ndarray | slice) -> np.ndarray:
        """Every counter kind per slot, summed over workers: shape ``(kinds, len(slots))``."""
        summed: np.ndarray = self.counters[:, :, slots].sum(axis=0)
        return summed


def _fill_load(
    summed: np.ndarray,
    baseline: np.ndarray,
    *,
    dispatched: np.ndarray,
    inflight: np.ndarray,
    prefill: np.ndarray,
    tokens: np.ndarray,
) -> None:
    """The four load columns from summed counters (see the module doc), written in place."""
    np.subtract(summed[_PICKS], summed[_RELEASES], out=inflight)
    np.subtract(summed[_PICKS], baseline, out=dispatched)
    np.maximum(dispatched, 0.0, out=dispatched)
    np.subtract(summed[_PREFILL_ADD], summed[_PREFILL_DONE], out=prefill)
    np.maximum(prefill, 0.0, out=prefill)
    np.subtract(summed[_TOKENS_ADD], summed[_TOKENS_DONE], out=tokens)
    np.maximum(tokens, 0.0, out=tokens)


# ============================================================================================ static part
@dataclass(frozen=True, slots=True)
class HealthInputs:
    """What a worker's gRPC health answers depend on (see picker.extproc.health.HealthState)."""

    synced: bool = False
    leader: bool = True
    protocol_ok: bool = True
    leader_election: bool = False


@dataclass(frozen=True, slots=True)
class StaticState:
    """The rarely changing part of the shared state, as decoded by a worker."""

    generation: int
    pool: PoolInfo | None
    health: HealthInputs
    #: rows of the matrix: (name, address, slot, lora_active, lora_waiting)
    endpoints: tuple[tuple[str, str, int, tuple[str, ...], tuple[str, ...]], ...]
    objectives: tuple[Objective, ...]
    rewrites: tuple[ModelRewrite, ...]
    config_text: str
    config_source: str
    config_digest: str


def encode_static(
    *,
    pool: PoolInfo | None,
    health: HealthInputs,
    endpoints: Iterable[tuple[str, str, int, tuple[str, ...], tuple[str, ...]]],
    objectives: Iterable[Objective],
    rewrites: Iterable[ModelRewrite],
    config_text: str,
    config_source: str,
    config_digest: str,
) -> bytes:
    """The JSON blob a :class:`SharedView` decodes with :func:`decode_static`."""
    return orjson.dumps(
        {
            "pool": pool.to_doc() if pool is not None else None,
            "health": [health.synced, health.leader, health.protocol_ok, health.leader_election],
            "endpoints": [[n, a, s, list(la), list(lw)] for n, a, s, la, lw in endpoints],
            "objectives": [[o.name, o.priority] for o in objectives],
            "rewrites": [
                {
                    "name": r.name,
                    "created": r.created,
                    "rules": [
                        [list(rule.matches), [[t.model, t.weight] for t in rule.targets]] for rule in r.rules
                    ],
                }
                for r in rewrites
            ],
            "config": [config_text, config_source, config_digest],
        }
    )


def decode_static(generation: int, data: bytes) -> StaticState:
    doc = orjson.loads(data)
    p = doc["pool"]
    pool = (
        None
        if p is None
        else PoolInfo(
            name=p["name"],
            namespace=p["namespace"],
            selector=MappingProxyType(dict(p["selector"])),
            target_ports=tuple(p["target_ports"]),
            app_protocol=p["app_protocol"],
            group=p["group"],
        )
    )
    synced, leader, protocol_ok, leader_election = doc["health"]
    text, source, digest = doc["config"]
    return StaticState(
        generation=generation,
        pool=pool,
        health=HealthInputs(bool(synced), bool(leader), bool(protocol_ok), bool(leader_election)),
        endpoints=tuple((n, a, int(s), tuple(la), tuple(lw)) for n, a, s, la, lw in doc["endpoints"]),
        objectives=tuple(Objective(n, int(p)) for n, p in doc["objectives"]),
        rewrites=tuple(
            ModelRewrite(
                r["name"],
                tuple(
                    RewriteRule(tuple(m), tuple(RewriteTarget(model, int(w)) for model, w in targets))
                    for m, targets in r["rules"]
                ),
                created=float(r["created"]),
            )
            for r in doc["rewrites"]
        ),
        config_text=text,
        config_source=source,
        config_digest=digest,
    )


# ============================================================================================ supervisor
class SharedDatastore(Datastore):
    """The supervisor's datastore: the usual single writer, publishing into a :class:`SharedSegment`.

    Call :meth:`publish` periodically (the supervisor does every ``min_publish_interval_s``). Routing
    never happens here (workers route), so :meth:`acquire` raises; :meth:`snapshot` shows the load
    accounting of all workers (for ``/debug/endpoints`` and the per-endpoint gauges).
    """

    def __init__(
        self,
        segment: SharedSegment,
        *,
        clock: Callable[[], float] = time.monotonic,
        min_publish_interval_s: float = 0.0,
        quarantine_s: float = 10.0,
        health: Callable[[], HealthInputs] = HealthInputs,
        config: Callable[[], tuple[str, str, str]] = lambda: ("", "default", ""),
    ) -> None:
        self.segment = segment
        self._quarantine_s = quarantine_s
        self._health = health
        self._config = config
        cap = segment.layout.capacity
        self._slot_of: dict[tuple[str, str], int] = {}
        self._slots = np.zeros(0, dtype=np.intp)
        self._free: list[int] = []
        self._next_slot = 0
        self._quarantined: dict[int, float] = {}
        self._marks: dict[int, float] = {}
        self._slot_baseline = np.zeros(cap)
        self._columns_dirty = True
        self._static_key: tuple[Any, ...] | None = None
        self._lora_version = 0
        super().__init__(clock=clock, min_publish_interval_s=min_publish_interval_s)

    # ------------------------------------------------------------------------------- slots
    def _alloc_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._next_slot < self.segment.layout.capacity:
            slot = self._next_slot
            self._next_slot += 1
            return slot
        self._reclaim(force=True)
        if self._free:
            return self._free.pop()
        raise RuntimeError(
            f"more than {self.segment.layout.capacity} endpoints (live plus recently removed ones with "
            "open streams): the shared segment is full"
        )

    def _reclaim(self, *, force: bool = False) -> None:
        """Free quarantined slots whose streams are all closed (after ``quarantine_s``, or at once when
        the segment is full)."""
        if not self._quarantined:
            return
        now = self._clock()
        slots = np.fromiter(self._quarantined, dtype=np.intp)
        picks, releases = self.segment.totals(slots)
        for slot, p, r in zip(slots.tolist(), picks.tolist(), releases.tolist(), strict=True):
            if p - r <= 0 and (force or now - self._quarantined[slot] >= self._quarantine_s):
                del self._quarantined[slot]
                self._free.append(slot)
        self._free.sort(reverse=True)  # pop() hands out the lowest slot: touched pages stay few

    def _apply(self, change: Callable[[dict[str, Endpoint]], dict[str, Endpoint]]) -> None:
        super()._apply(change)
        keys = [(name, self._status[name].endpoint.address) for name in self._order]
        wanted = set(keys)
        now = self._clock()
        for key, slot in list(self._slot_of.items()):
            if key not in wanted:
                del self._slot_of[key]
                self._quarantined[slot] = now
                self._marks.pop(slot, None)
        seg = self.segment
        for key in keys:
            if key not in self._slot_of:
                slot = self._alloc_slot()
                self._slot_of[key] = slot
                # a fresh row: no metrics, no dispatches (baseline = the slot's picks so far)
                picks, _ = seg.totals(np.array([slot], dtype=np.intp))
                self._slot_baseline[slot] = float(picks[0])
        self._slots = np.fromiter((self._slot_of[k] for k in keys), dtype=np.intp, count=len(keys))
        self._columns_dirty = True

    def _changed(self) -> None:
        self._columns_dirty = True
        super()._changed()

    def slot_of(self, name: str) -> int | None:
        st = self._status.get(name)
        if st is None:
            return None
        return self._slot_of.get((name, st.endpoint.address))

    # ------------------------------------------------------------------------------- scrapes
    def begin_scrape(self, name: str) -> None:
        super().begin_scrape(name)
        slot = self.slot_of(name)
        if slot is not None:
            picks, _ = self.segment.totals(np.array([slot], dtype=np.intp))
            self._marks[slot] = float(picks[0])

    def record_scrape(
        self, name: str, metrics: EndpointMetrics, *, at: float | None = None, engine: str | None = None
    ) -> None:
        st = self._status.get(name)
        lora_before = (st.lora_active, st.lora_waiting) if st is not None else None
        super().record_scrape(name, metrics, at=at, engine=engine)
        if st is None:
            return
        if (st.lora_active, st.lora_waiting) != lora_before:
            self._lora_version += 1
        slot = self.slot_of(name)
        if slot is not None and slot in self._marks:
            self._slot_baseline[slot] = self._marks.pop(slot)
        self._columns_dirty = True

    def record_scrape_failure(self, name: str, error: str) -> None:
        super().record_scrape_failure(name, error)
        slot = self.slot_of(name)
        if slot is not None:
            self._marks.pop(slot, None)

    def set_gpu_utilization(self, by_pod: Mapping[str, float] | None) -> None:
        super().set_gpu_utilization(by_pod)
        self._columns_dirty = True

    def _apply_landed_scrapes(self) -> None:
        """Baselines live per slot here (see :meth:`record_scrape`) and reach the workers together with the
        gauges in :meth:`publish`; the single-process bookkeeping is unused."""

    # ------------------------------------------------------------------------------- reads
    def _refresh_load(self) -> None:
        if not len(self._slots):
            return
        _fill_load(
            self.segment.load(self._slots),
            self._slot_baseline[self._slots],
            dispatched=self._dispatched,
            inflight=self._inflight,
            prefill=self._prefill,
            tokens=self._inflight_tokens,
        )

    def snapshot(self) -> EndpointMatrix:
        self._refresh_load()
        return super().snapshot()

    def inflight_total(self) -> float:
        self._refresh_load()
        return float(self._inflight.sum())

    def acquire(self, name: str, charge: LoadCharge = NO_CHARGE) -> Any:  # noqa: ARG002 - the signature
        raise RuntimeError("the supervisor does not route: workers acquire through SharedView")

    def worker_stats(self) -> list[dict[str, float]]:
        """Per worker: picks and in-flight streams over every slot (live and quarantined)."""
        used = slice(0, max(self._next_slot, 1))
        c = self.segment.counters[:, :, used]
        return [
            {"picks": float(c[w, _PICKS].sum()), "inflight": float((c[w, _PICKS] - c[w, _RELEASES]).sum())}
            for w in range(self.segment.layout.workers)
        ]

    def settle_worker(self, worker: int) -> float:
        """A worker process died: its open streams died with it. Returns how many were released."""
        row = self.segment.counters[worker]
        open_streams = float((row[_PICKS] - row[_RELEASES]).sum())
        row[_RELEASES] = row[_PICKS]
        row[_PREFILL_DONE] = row[_PREFILL_ADD]
        row[_TOKENS_DONE] = row[_TOKENS_ADD]
        return open_streams

    # ------------------------------------------------------------------------------- publishing
    def publish(self) -> bool:
        """Write what changed since the last call into the segment; True if anything was written."""
        wrote = False
        self._reclaim()
        cfg_text, cfg_source, cfg_digest = self._config()
        health = self._health()
        key = (
            self.membership_version,
            self._lora_version,
            self.objectives.version,
            self.rewrites.version,
            cfg_digest,
            self._pool,
            health,
        )
        if key != self._static_key:
            blob = encode_static(
                pool=self._pool,
                health=health,
                endpoints=(
                    (
                        n,
                        st.endpoint.address,
                        self._slot_of[(n, st.endpoint.address)],
                        st.lora_active,
                        st.lora_waiting,
                    )
                    for n in self._order
                    for st in (self._status[n],)
                ),
                objectives=self.objectives.all().values(),
                rewrites=self.rewrites.all(),
                config_text=cfg_text,
                config_source=cfg_source,
                config_digest=cfg_digest,
            )
            self._write_columns()  # the rows a new membership names must be there first
            self.segment.write_blob(blob)
            self._static_key = key
            wrote = True
        elif self._columns_dirty:
            self._write_columns()
            wrote = True
        return wrote

    def _write_columns(self) -> None:
        self._columns_dirty = False
        slots = self._slots
        seg = self.segment
        cols = seg.columns
        seg.begin_write()
        try:
            if len(slots):
                for name in _METRIC_COLUMNS:
                    cols[_COL[name], slots] = self._cols[name]
                cols[_COL["engine"], slots] = self._engine
                cols[_COL["baseline"], slots] = self._slot_baseline[slots]
        finally:
            seg.end_write()


# ============================================================================================ worker
class SharedLease(ChargedLease):
    """A :class:`~picker.state.datastore.ChargedLease` on one slot of this worker's counter rows (only
    this worker writes them)."""

    __slots__ = ("_rows", "_slot")

    def __init__(self, rows: np.ndarray, slot: int, charge: LoadCharge) -> None:
        super().__init__(charge)
        self._rows = rows
        self._slot = slot

    def _give_back_prefill(self, prefill: float) -> None:
        self._rows[_PREFILL_DONE, self._slot] += prefill

    def _give_back_rest(self, tokens: float) -> None:
        rows, slot = self._rows, self._slot
        rows[_TOKENS_DONE, slot] += tokens
        rows[_RELEASES, slot] += 1.0  # last: a slot is reclaimed on picks == releases


class SharedView:
    """A worker's datastore: snapshots from the segment, and this worker's row of the accounting.

    Offers what the director needs (``snapshot``, ``acquire``, ``objectives``, ``rewrites``) plus the
    pool, health inputs and config document for the worker's other parts. A snapshot is rebuilt only
    when the supervisor published; between publishes the same matrix object is returned with its load
    columns refreshed from every worker's counters, so the scheduler's per-snapshot caches stay warm.
    """

    def __init__(self, segment: SharedSegment, worker: int) -> None:
        if not 0 <= worker < segment.layout.workers:
            raise ValueError(f"worker index {worker} out of range for {segment.layout.workers} workers")
        self.segment = segment
        self.worker = worker
        self._rows = segment.counters[worker]
        self.objectives = ObjectiveStore()
        self.rewrites = RewriteStore()
        self.static: StaticState | None = None
        self._slots = np.zeros(0, dtype=np.intp)
        self._slot_index: np.ndarray | slice = self._slots
        self._slot_by_name: dict[str, int] = {}
        self._names: tuple[str, ...] = ()
        self._addresses: tuple[str, ...] = ()
        self._ips: tuple[str, ...] = ()
        self._lora: tuple[Mapping[str, int], np.ndarray, np.ndarray, np.ndarray] = lora_columns([])
        self._seq = -1
        self._matrix: EndpointMatrix | None = None
        self._dispatched = np.zeros(0)
        self._inflight = np.zeros(0)
        self._prefill = np.zeros(0)
        self._inflight_tokens = np.zeros(0)
        self._baseline = np.zeros(0)

    # ------------------------------------------------------------------------------- static part
    def refresh(self) -> bool:
        """Load a newer published blob if there is one; True if the static state changed."""
        if self.static is not None and self.segment.blob_generation == self.static.generation:
            return False
        got = self.segment.read_blob()
        if got is None or (self.static is not None and got[0] == self.static.generation):
            return False
        state = decode_static(*got)
        old = self.static
        self.static = state
        if old is None or old.objectives != state.objectives:
            self.objectives.replace_all(state.objectives)
        if old is None or old.rewrites != state.rewrites:
            self.rewrites.replace_all(state.rewrites)
        if old is None or old.endpoints != state.endpoints:
            rows = state.endpoints
            self._names = tuple(r[0] for r in rows)
            self._addresses = tuple(r[1] for r in rows)
            self._ips = tuple(split_host_port(a)[0] for a in self._addresses)
            self._slots = np.fromiter((r[2] for r in rows), dtype=np.intp, count=len(rows))
            # a pool without churn has slots 0..n-1 in order: a slice reads the counters without a copy
            n = len(rows)
            contiguous = n > 0 and bool((self._slots == np.arange(n)).all())
            self._slot_index = slice(0, n) if contiguous else self._slots
            self._slot_by_name = {r[0]: r[2] for r in rows}
            self._lora = lora_columns([(r[3], r[4]) for r in rows])
            self._dispatched = np.zeros(len(rows))
            self._inflight = np.zeros(len(rows))
            self._prefill = np.zeros(len(rows))
            self._inflight_tokens = np.zeros(len(rows))
            self._seq = -1  # rebuild the matrix for the new rows
        return True

    @property
    def pool(self) -> PoolInfo | None:
        return self.static.pool if self.static is not None else None

    @property
    def synced(self) -> bool:
        return self.static is not None and self.static.health.synced

    @property
    def health(self) -> HealthInputs:
        return self.static.health if self.static is not None else HealthInputs()

    def __len__(self) -> int:
        return len(self._names)

    # ------------------------------------------------------------------------------- snapshots
    def snapshot(self) -> EndpointMatrix:
        """The pool as a matrix with the load accounting of all workers as of now."""
        seg = self.segment
        if self.static is None or seg.blob_generation != self.static.generation:
            self.refresh()
        matrix = self._matrix
        if matrix is None or seg.sequence != self._seq:
            matrix = self._matrix = self._build()
        if len(self._slots):
            _fill_load(
                seg.load(self._slot_index),
                self._baseline,
                dispatched=self._dispatched,
                inflight=self._inflight,
                prefill=self._prefill,
                tokens=self._inflight_tokens,
            )
        return matrix

    def _build(self) -> EndpointMatrix:
        seq, cols = self.segment.read_columns(self._slots)
        self._seq = seq
        cols.flags.writeable = False
        self._baseline = cols[_COL["baseline"]]
        engine = cols[_COL["engine"]].astype(np.int8)
        engine.flags.writeable = False
        addresses = self._addresses
        return snapshot_matrix(
            names=self._names,
            addresses=addresses,
            ips=self._ips,
            cols=cols,  # COLUMNS begins with FLOAT_COLUMNS
            load=(self._dispatched, self._inflight, self._prefill, self._inflight_tokens),
            lora=self._lora,
            engine=engine,
            address_index={a: i for i, a in enumerate(addresses)},
        )

    # ------------------------------------------------------------------------------- accounting
    def acquire(self, name: str, charge: LoadCharge = NO_CHARGE) -> SharedLease:
        """Count one stream dispatched to ``name`` (primary) by this worker, with its token charge."""
        slot = self._slot_by_name.get(name)
        if slot is None and self.refresh():
            slot = self._slot_by_name.get(name)
        if slot is None:
            raise KeyError(f"endpoint {name!r} is not in this worker's view")
        rows = self._rows
        rows[_PREFILL_ADD, slot] += charge.prefill
        rows[_TOKENS_ADD, slot] += charge.tokens
        rows[_PICKS, slot] += 1.0
        return SharedLease(rows, slot, charge)

    def inflight_total(self) -> float:
        picks, releases = self.segment.totals(slice(None))
        return float((picks - releases).sum())
