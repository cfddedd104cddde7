"""The shared-memory segment of ``picker serve --workers N``: its layout and numpy views onto its parts.

Why: one Python process serves ext_proc on one core (the gRPC stack, not our logic, is the cost), so
throughput scales by processes. Every worker needs the same endpoint snapshot to pick from and the same
load accounting, or two workers would pile onto the endpoint each believes idle; scraping, Kubernetes
watches and config reloads stay in one process, the supervisor.

Layout (``multiprocessing.shared_memory``, created by the supervisor, a few MB):

* a header of 64-bit words (layout, sequence counters, the blob descriptor, the supervisor's pid);
* float64 **columns** indexed by accounting slot (the :data:`~picker.state.columns.FLOAT_COLUMNS`, then
  the engine code), written by the supervisor under a sequence lock (:meth:`SharedSegment.begin_write`);
* float64 **counters** ``[row, kind, slot]``: the load accounting's counter rows
  (:mod:`picker.state.accounting`), one row per worker plus the supervisor's (the last);
* float64 **outcomes** ``[row, kind, slot]`` and their per-row report counts ``ticks[row]``: what routed
  requests came to (:mod:`picker.state.outcomes`), written by the worker that routed them;
* two **blob** slots holding the rarely changing part (:mod:`picker.state.codec`). The supervisor writes
  the idle slot, then flips the descriptor (slot, length, CRC-32, generation); a reader checks the CRC and
  the sequence word, so it never decodes a half-written document whatever the CPU's memory ordering.

Memory ordering: the columns are read under the sequence lock; on weakly ordered CPUs a reader may in rare
cases mix two consecutive publishes of metric values, which only makes one pick see a value a few
milliseconds old - harmless for scoring. Counters are aligned 8-byte words, read and written whole.
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Final

import numpy as np

from picker.state.accounting import DEFAULT_CAPACITY, KINDS
from picker.state.columns import FLOAT_COLUMNS, blank_columns
from picker.state.outcomes import OUTCOME_KINDS

__all__ = ["COLUMNS", "ENGINE_COLUMN", "SharedLayout", "SharedSegment"]

_MAGIC: Final = 0x3130726B63697070  # "ppicker01" little-endian-ish tag; guards against attaching garbage
_LAYOUT_VERSION: Final = 5
_HEADER_WORDS: Final = 16

# header word indices
_H_MAGIC, _H_VERSION, _H_CAPACITY, _H_WORKERS, _H_BLOB_BYTES = 0, 1, 2, 3, 4
_H_SEQ, _H_BLOB_SEQ, _H_BLOB_SLOT, _H_BLOB_LEN, _H_BLOB_GEN, _H_BLOB_CRC = 5, 6, 7, 8, 9, 10
_H_SUPERVISOR_PID = 11

#: float columns in slot order; ``engine`` holds the engine code
COLUMNS: Final = (*FLOAT_COLUMNS, "engine")
ENGINE_COLUMN: Final = len(FLOAT_COLUMNS)


@dataclass(frozen=True, slots=True)
class SharedLayout:
    """Sizes of a segment. ``capacity`` bounds the endpoints alive (plus quarantined) at once."""

    capacity: int = DEFAULT_CAPACITY
    workers: int = 2
    #: bytes per blob slot (two slots); the JSON of 10,000 endpoints with a few adapters is ~1 MB.
    #: Pages are backed only once written, so the default costs what the pool needs (the pod's /dev/shm
    #: is 64 MiB by default).
    blob_bytes: int = 4 << 20

    @property
    def rows(self) -> int:
        """Counter rows: one per worker, then the supervisor's."""
        return self.workers + 1

    @property
    def supervisor_row(self) -> int:
        return self.workers

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
    def outcomes_offset(self) -> int:
        return self.counters_offset + self.rows * len(KINDS) * self.capacity * 8

    @property
    def ticks_offset(self) -> int:
        return self.outcomes_offset + self.rows * len(OUTCOME_KINDS) * self.capacity * 8

    @property
    def blob_offset(self) -> int:
        return self.ticks_offset + self.rows * 8

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
            (layout.rows, len(KINDS), layout.capacity),
            dtype=np.float64,
            buffer=buf,
            offset=layout.counters_offset,
        )
        self.outcomes = np.ndarray(
            (layout.rows, len(OUTCOME_KINDS), layout.capacity),
            dtype=np.float64,
            buffer=buf,
            offset=layout.outcomes_offset,
        )
        self.ticks = np.ndarray((layout.rows,), dtype=np.float64, buffer=buf, offset=layout.ticks_offset)
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
        seg.columns[:ENGINE_COLUMN] = blank_columns(layout.capacity)
        seg.columns[ENGINE_COLUMN] = 0.0
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
        del self.header, self.columns, self.counters, self.outcomes, self.ticks, self.blob
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

    def write_columns(self, slots: np.ndarray, floats: np.ndarray, engine: np.ndarray) -> None:
        """Write one value per slot of every column (``floats`` in :data:`FLOAT_COLUMNS` order, one column
        of ``slots`` per endpoint) under the sequence lock."""
        self.begin_write()
        try:
            if len(slots):
                self.columns[:ENGINE_COLUMN, slots] = floats
                self.columns[ENGINE_COLUMN, slots] = engine
        finally:
            self.end_write()
