"""The endpoint feature matrix: one row per endpoint, one numpy column per live signal.

Every scorer, filter and picker reads this and nothing else, so a pick over N endpoints is a handful of
whole-column numpy operations instead of a Python loop over endpoints.

Units and conventions (all columns are ``float64`` of length N unless noted):

* ``waiting`` / ``running`` — requests queued / running on the model server, as last scraped.
* ``kv_usage`` — KV-cache usage, 0..1.
* ``gpu_util`` — GPU utilization, 0..1, ``NaN`` when no exporter reports it.
* ``scraped_at`` — monotonic time (seconds) of the last *successful* scrape; ``-inf`` = never scraped.
  Age is ``now - scraped_at``; it is computed at pick time so the matrix never goes stale itself.
* ``dispatched`` — requests *we* sent to the endpoint since the scrape that produced the gauges above
  started. The scraped gauges cannot reflect them yet; scorers add them to the load (see
  ``scoring/README.md``, "Load estimate"). This is the one column the owner mutates in place between
  snapshots (single writer, one event loop), so it is the only one that is not read-only.
* ``inflight`` — streams currently open through us to the endpoint (released when a stream ends, for any
  reason). Used by the ``least-in-flight`` baseline and for display; mutated in place like ``dispatched``.
* LoRA: ``lora_vocab`` maps adapter name → column of the boolean ``lora_active`` / ``lora_waiting``
  matrices (N x A), so "is adapter X active on each endpoint" is one column gather.
  ``lora_count`` = |active| + |waiting| per endpoint, ``max_lora`` = the server's ``max_lora`` (NaN unknown).
* ``block_size`` / ``num_blocks`` — KV-cache geometry (tokens per block, blocks), NaN unknown.
* ``engine`` — int8 code into ``engine_names``.

Missing gauges are NaN. Scorers impute them neutrally (see each scorer's docstring) so an endpoint with a
missing family is neither rewarded nor punished; the staleness filter and the saturation detector look at
``scraped_at`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

NEVER = float("-inf")

#: Engine codes. Order is part of the matrix contract (``engine`` column holds the index).
ENGINE_NAMES: tuple[str, ...] = ("unknown", "vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm", "tgi")


def engine_code(name: str | None) -> int:
    """Code of an engine name in :data:`ENGINE_NAMES` (0 = unknown)."""
    try:
        return ENGINE_NAMES.index(name) if name else 0
    except ValueError:
        return 0


def split_host_port(address: str) -> tuple[str, str]:
    """``"10.0.0.1:8000"`` → ``("10.0.0.1", "8000")``; ``"[::1]:8000"`` → ``("::1", "8000")``."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


@dataclass(frozen=True, slots=True)
class EndpointRow:
    """One endpoint's signals, for building a matrix row by row (tests, simulator, datastore)."""

    name: str
    address: str
    waiting: float = float("nan")
    running: float = float("nan")
    kv_usage: float = float("nan")
    gpu_util: float = float("nan")
    scraped_at: float = NEVER
    dispatched: float = 0.0
    inflight: float = 0.0
    lora_active: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    max_lora: float = float("nan")
    block_size: float = float("nan")
    num_blocks: float = float("nan")
    engine: str | None = None


def _ro(a: NDArray[Any]) -> NDArray[Any]:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, slots=True, eq=False)
class EndpointMatrix:
    """An immutable snapshot of the pool (except the two load-accounting columns, see module doc)."""

    names: tuple[str, ...]
    addresses: tuple[str, ...]
    ips: tuple[str, ...]
    waiting: F64
    running: F64
    kv_usage: F64
    gpu_util: F64
    scraped_at: F64
    dispatched: F64
    inflight: F64
    lora_vocab: Mapping[str, int]
    lora_active: BoolArray
    lora_waiting: BoolArray
    lora_count: F64
    max_lora: F64
    block_size: F64
    num_blocks: F64
    engine: NDArray[np.int8]
    engine_names: tuple[str, ...] = ENGINE_NAMES
    _address_index: dict[str, int] = field(default_factory=dict, repr=False)
    #: ip → rows with that ip (several with data-parallel ranks); built on first use, see ``rows_of_ip``
    _ip_index: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_rows(cls, rows: Iterable[EndpointRow]) -> EndpointMatrix:
        rows = list(rows)
        n = len(rows)
        vocab: dict[str, int] = {}
        for r in rows:
            for a in (*r.lora_active, *r.lora_waiting):
                vocab.setdefault(a, len(vocab))
        active = np.zeros((n, len(vocab)), dtype=np.bool_)
        waiting_lora = np.zeros((n, len(vocab)), dtype=np.bool_)
        for i, r in enumerate(rows):
            for a in r.lora_active:
                active[i, vocab[a]] = True
            for a in r.lora_waiting:
                waiting_lora[i, vocab[a]] = True

        def col(attr: str) -> F64:
            return _ro(np.fromiter((getattr(r, attr) for r in rows), dtype=np.float64, count=n))

        addresses = tuple(r.address for r in rows)
        return cls(
            names=tuple(r.name for r in rows),
            addresses=addresses,
            ips=tuple(split_host_port(a)[0] for a in addresses),
            waiting=col("waiting"),
            running=col("running"),
            kv_usage=col("kv_usage"),
            gpu_util=col("gpu_util"),
            scraped_at=col("scraped_at"),
            dispatched=np.fromiter((r.dispatched for r in rows), dtype=np.float64, count=n),
            inflight=np.fromiter((r.inflight for r in rows), dtype=np.float64, count=n),
            lora_vocab=MappingProxyType(vocab),
            lora_active=_ro(active),
            lora_waiting=_ro(waiting_lora),
            lora_count=_ro(
                np.fromiter(
                    (len(r.lora_active) + len(r.lora_waiting) for r in rows), dtype=np.float64, count=n
                )
            ),
            max_lora=col("max_lora"),
            block_size=col("block_size"),
            num_blocks=col("num_blocks"),
            engine=_ro(np.fromiter((engine_code(r.engine) for r in rows), dtype=np.int8, count=n)),
            _address_index={a: i for i, a in enumerate(addresses)},
        )

    @classmethod
    def empty(cls) -> EndpointMatrix:
        return cls.from_rows(())

    # ------------------------------------------------------------------------------------ accessors
    def index_of_address(self, address: str) -> int | None:
        """Row of an ``ip:port`` address, or None."""
        if not self._address_index and self.addresses:
            # built lazily when the matrix was constructed field by field rather than by from_rows/take
            self._address_index.update((a, i) for i, a in enumerate(self.addresses))
        return self._address_index.get(address)

    def rows_of_ip(self, ip: str) -> tuple[int, ...]:
        """Rows whose address has this IP (every port/rank of a pod), in row order; ``()`` if none.

        The index is built on the first call and then reused for the life of the snapshot, so the
        subset and conformance filters cost one dict lookup per listed IP instead of a scan.
        """
        if not self._ip_index and self.ips:
            index: dict[str, list[int]] = {}
            for i, ip_ in enumerate(self.ips):
                index.setdefault(ip_, []).append(i)
            self._ip_index.update((k, tuple(v)) for k, v in index.items())
        return self._ip_index.get(ip, ())

    def row(self, i: int) -> EndpointRow:
        """Row ``i`` back as an :class:`EndpointRow` (debug output, tests)."""
        inv = {v: k for k, v in self.lora_vocab.items()}
        return EndpointRow(
            name=self.names[i],
            address=self.addresses[i],
            waiting=float(self.waiting[i]),
            running=float(self.running[i]),
            kv_usage=float(self.kv_usage[i]),
            gpu_util=float(self.gpu_util[i]),
            scraped_at=float(self.scraped_at[i]),
            dispatched=float(self.dispatched[i]),
            inflight=float(self.inflight[i]),
            lora_active=tuple(inv[int(j)] for j in np.flatnonzero(self.lora_active[i])),
            lora_waiting=tuple(inv[int(j)] for j in np.flatnonzero(self.lora_waiting[i])),
            max_lora=float(self.max_lora[i]),
            block_size=float(self.block_size[i]),
            num_blocks=float(self.num_blocks[i]),
            engine=self.engine_names[int(self.engine[i])],
        )

    def rows(self) -> list[EndpointRow]:
        return [self.row(i) for i in range(len(self))]

    def with_load(self, dispatched: F64, inflight: F64 | None = None) -> EndpointMatrix:
        """Same snapshot with other load-accounting arrays (batch picks work on copies)."""
        return _replace(self, dispatched=dispatched, inflight=self.inflight if inflight is None else inflight)

    def take(self, indices: Sequence[int] | NDArray[np.intp]) -> EndpointMatrix:
        """A sub-matrix of the given rows, in the given order (tests: permutation invariance)."""
        idx = np.asarray(indices, dtype=np.intp)
        names = tuple(self.names[i] for i in idx)
        addresses = tuple(self.addresses[i] for i in idx)
        return EndpointMatrix(
            names=names,
            addresses=addresses,
            ips=tuple(self.ips[i] for i in idx),
            waiting=_ro(self.waiting[idx]),
            running=_ro(self.running[idx]),
            kv_usage=_ro(self.kv_usage[idx]),
            gpu_util=_ro(self.gpu_util[idx]),
            scraped_at=_ro(self.scraped_at[idx]),
            dispatched=self.dispatched[idx].copy(),
            inflight=self.inflight[idx].copy(),
            lora_vocab=self.lora_vocab,
            lora_active=_ro(self.lora_active[idx]),
            lora_waiting=_ro(self.lora_waiting[idx]),
            lora_count=_ro(self.lora_count[idx]),
            max_lora=_ro(self.max_lora[idx]),
            block_size=_ro(self.block_size[idx]),
            num_blocks=_ro(self.num_blocks[idx]),
            engine=_ro(self.engine[idx]),
            engine_names=self.engine_names,
            _address_index={a: i for i, a in enumerate(addresses)},
        )


def _replace(m: EndpointMatrix, **changes: Any) -> EndpointMatrix:
    values = {name: getattr(m, name) for name in m.__dataclass_fields__}
    values.update(changes)
    return EndpointMatrix(**values)
