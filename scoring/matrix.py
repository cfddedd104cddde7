"""The endpoint feature matrix: one row per endpoint, one numpy column per live signal.

Every scorer, filter and picker reads this and nothing else, so a pick over N endpoints is a handful of
whole-column numpy operations instead of a Python loop over endpoints.

Units and conventions (all columns are ``float64`` of length N unless noted):

* ``waiting`` / ``running`` — requests queued / running on the model server, as last scraped.
* ``kv_usage`` — KV-cache usage, 0..1.
* ``gpu_util`` — GPU utilization, 0..1, ``NaN`` when no exporter reports it.
* ``scraped_at`` — monotonic time (seconds) of the last *successful* scrape; ``-inf`` = never scraped.
  Age is ``now - scraped_at``; it is computed at pick time so the matrix never goes stale itself.
* ``scrape_failed`` — 1.0 when the endpoint was never scraped successfully and a scrape attempt of it has
  failed (its metrics are unreachable, not merely not read yet), else 0.0: before the first attempt ends,
  and from the first success on (``scraped_at``'s age then says how long failures have lasted). Why a
  column of its own: ``scraped_at = -inf`` alone cannot tell "just started" from "cannot be scraped", and
  the spill decision treats them differently (``picker/routing/README.md``). Scorers do not read it.
* ``dispatched`` — requests *we* sent to the endpoint since the scrape that produced the gauges above
  started. The scraped gauges cannot reflect them yet; scorers add them to the load (see
  ``scoring/README.md``, "Load estimate"). This is the one column the owner mutates in place between
  snapshots (single writer, one event loop), so it is the only one that is not read-only.
* ``inflight`` — streams currently open through us to the endpoint (released when a stream ends, for any
  reason). Used by the ``least-in-flight`` baseline and for display; mutated in place like ``dispatched``.
* ``prefill_tokens`` — estimated prompt tokens of the streaming requests we routed to the endpoint whose
  first response byte has not come back yet: the prefill work queued or running there, in tokens, as far
  as our own traffic goes. Mutated in place by the owner; see :class:`LoadCharge` for exactly when.
* ``inflight_tokens`` — estimated prompt tokens of the streams open through us to the endpoint (released
  when the stream ends): the prompt part of the KV footprint we put there. Mutated in place like ``inflight``.
* LoRA: ``lora_vocab`` maps adapter name → column of the boolean ``lora_active`` / ``lora_waiting``
  matrices (N x A), so "is adapter X active on each endpoint" is one column gather.
  ``lora_count`` = |active| + |waiting| per endpoint, ``max_lora`` = the server's ``max_lora`` (NaN unknown).
* Served models: ``model_vocab`` maps a model name → column of the boolean ``served_models`` matrix
  (N x M): the names an endpoint's metrics page labels its series with (vLLM and SGLang's ``model_name``),
  i.e. its base model(s). A row with no name set is "not reported" (TGI, Triton, an old page).
* ``block_size`` / ``num_blocks`` — KV-cache geometry (tokens per block, blocks), NaN unknown.
* ``engine`` — int8 code into ``engine_names``.
* Observed latency (the owner's averages of what the response path measured; NaN = unknown or too old,
  ``picker/state/latency.py``): ``ttft_per_1k`` — seconds to the first byte of a streamed response per
  thousand prompt tokens; ``tpot`` — seconds between the chunks of a streamed response; ``ntpot`` — seconds
  per output token of a non-streamed response.
* ``health`` — passive health (``picker/state/health.py``): 0 healthy, 1 ejected, 2 probing (half-open).
  The director reads it (an ejected endpoint is not picked as primary); scorers do not.
* ``price_in`` / ``price_out`` — what serving a token costs at the endpoint, in currency units per million
  input / output tokens (a pod label or annotation, or the config by engine or pool; an external
  endpoint's own price); NaN = unknown. Read by ``cost-scorer``.
* ``signals`` — the operator's own per-endpoint signals, each a column keyed by its source (a PromQL query
  evaluated by the owner, see ``scoring.scorers.signal.signal_key``); NaN = no value (absent or stale
  series). Read by ``prometheus-scorer``. A key the owner does not publish is simply missing.

The four owner-maintained columns (``dispatched``, ``inflight``, ``prefill_tokens``, ``inflight_tokens``)
are never NaN; they default to zeros, so a matrix built without them (an older caller) scores as if we had
routed nothing yet.

Missing gauges are NaN. Scorers impute them neutrally (see each scorer's docstring) so an endpoint with a
missing family is neither rewarded nor punished; the staleness filter and the saturation detector look at
``scraped_at`` instead.

Why one module of this size: it is the column contract every scorer, filter and owner codes against - the
row, the matrix and the one charge that moves its accounting columns - and each constructor and accessor
must list every column; split, a new column would have to be added in several files in step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from scoring.types import PickRequest

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
    scrape_failed: float = 0.0
    dispatched: float = 0.0
    inflight: float = 0.0
    prefill_tokens: float = 0.0
    inflight_tokens: float = 0.0
    lora_active: tuple[str, ...] = ()
    lora_waiting: tuple[str, ...] = ()
    max_lora: float = float("nan")
    block_size: float = float("nan")
    num_blocks: float = float("nan")
    engine: str | None = None
    ttft_per_1k: float = float("nan")
    tpot: float = float("nan")
    ntpot: float = float("nan")
    health: float = 0.0
    #: model names the endpoint serves (its metrics page's ``model_name`` labels); () = not reported
    models: tuple[str, ...] = ()
    price_in: float = float("nan")
    price_out: float = float("nan")
    signals: Mapping[str, float] = field(default_factory=lambda: _NO_SIGNAL_VALUES)


#: the optional owner-published columns: name → value of an endpoint without one (see the module doc)
OPTIONAL_COLUMNS: Mapping[str, float] = MappingProxyType(
    {
        "ttft_per_1k": math.nan,
        "tpot": math.nan,
        "ntpot": math.nan,
        "health": 0.0,
        "price_in": math.nan,
        "price_out": math.nan,
        "scrape_failed": 0.0,
    }
)

_NO_SIGNAL_VALUES: Mapping[str, float] = MappingProxyType({})
_NO_SIGNALS: Mapping[str, NDArray[np.float64]] = MappingProxyType({})

#: Upper clamp of one request's prompt-token estimate: far above any context window, low enough that sums of
#: millions of them stay exact in float64 (integers below 2**53), so adding and later subtracting the same
#: charge always returns a column to exactly where it was.
MAX_CHARGE_TOKENS = 1 << 30


class LoadCharge(NamedTuple):
    """What one routed request adds to the owner-maintained columns of its primary endpoint, and when it
    gives it back. The service (datastore + ext_proc) and the fleet simulator both follow this, so the
    columns a scorer reads mean the same thing in both.

    ``tokens`` is the request's prompt-size estimate (``PickRequest.prompt_tokens_estimate``: the parser's
    ``prompt_chars // 4``) clipped to ``[0, MAX_CHARGE_TOKENS]``, non-finite → 0, rounded down to an
    integer. ``prefill`` is ``tokens`` when the response streams (``PickRequest.stream``) and 0 when it
    does not, less the prompt prefix the endpoint is believed to hold already (``PickRequest.prefix``, see
    :meth:`for_request`): a cache hit is prefill the server skips. Both are computed ONCE at pick time
    and remembered with the request, so that what is subtracted later is bit-for-bit what was added.

    ==========================================  ============  ==========  ================  =================
    event (for the primary endpoint ``i``)      dispatched    inflight    prefill_tokens    inflight_tokens
    ==========================================  ============  ==========  ================  =================
    the request is routed to ``i``              ``+ 1``       ``+ 1``     ``+ prefill``     ``+ tokens``
    a scrape of ``i`` lands                     ``- mark``    —           —                 —
    first response body byte from ``i``         —             —           ``- prefill``     —
    the stream ends (any reason)                —             ``- 1``     ``- prefill`` (1) ``- tokens``
    ==========================================  ============  ==========  ================  =================

    (1) only if the first-byte release has not happened: ``prefill`` is released exactly once, at
    whichever of "first response body byte" and "stream end" comes first. So a request that fails, is
    aborted by the client, is rejected with an error status, or is never answered, releases its tokens at
    stream end; nothing can leak.

    Why the first response *body* byte: for a streaming (SSE) response the engine sends the first chunk
    when the first token is sampled, i.e. when the prompt's prefill is done; response headers are not a
    usable signal because a streaming server may send them before the prefill.

    Why a non-streaming request charges no prefill: its first body byte arrives with the whole answer, so
    the proxy never sees its prefill end. Counting it until completion would make every endpoint serving
    non-streaming requests look busy with prefill work that finished long ago, and with a mix of both
    kinds that error is larger than the signal: in the fleet simulator (Azure trace, 20-80 % of requests
    streaming, loads 0.5-0.9) "count until the end" left our profile's p99 TTFT up to 17 % worse than the
    reference profile's, while "do not count" kept it between 11 % worse and 14 % better, and better than
    "count until the end" at every streaming share and load (``benchmarks/results/quality-tuning.md``).
    The request still counts in ``inflight_tokens`` and, through the scraped gauges, in the queue scorers.

    A NamedTuple for the reason given at :class:`~scoring.types.PickRequest`: one is built per routed
    request.

    ``dispatched`` and its scrape mark are documented in ``scoring/README.md`` ("Load estimate"). A
    request whose primary endpoint leaves the pool is dropped with the endpoint's row.
    """

    tokens: float
    prefill: float

    @classmethod
    def of(cls, prompt_tokens_estimate: float, *, stream: bool = True) -> LoadCharge:
        """The charge of a request with this prompt-size estimate (clipped, integer, see above)."""
        t = float(prompt_tokens_estimate)
        tokens = float(math.floor(min(t, float(MAX_CHARGE_TOKENS)))) if math.isfinite(t) and t > 0.0 else 0.0
        return cls(tokens, tokens if stream else 0.0)

    @classmethod
    def for_request(cls, req: PickRequest, row: int | None = None) -> LoadCharge:
        """The charge of a scheduled request (its estimate and whether it streams), routed to ``row``.

        With a prefix match (``req.prefix``) and the row it was routed to, the prefill part counts only
        the prompt tokens the endpoint is not believed to hold already: ``max(0, tokens - saving)`` with
        the saving the prefix scorer's load guard and ``prefill-queue-scorer`` credit the same hit
        (:meth:`~scoring.types.PrefixMatch.saving`: the matched blocks in tokens, or the whole prompt
        when the whole hashed window matched and the prompt is longer). A cache hit is prefill the server
        does not do, so it must not make the endpoint look busy. Why the same saving: charging a history
        held beyond the hashed window as uncached (as this did before, ``tokens - matched x
        block_tokens``) made a conversation's holder look busy with prefill it never did — on the
        Mooncake trace our column then read about twice the holders' true extra backlog, and turns were
        sent away from the server holding their history (``benchmarks/RESULTS.md``, "Prefix-cache
        affinity"). ``tokens`` (the KV footprint) keeps the whole prompt.
        """
        charge = cls.of(req.prompt_tokens_estimate, stream=req.stream)
        match = req.prefix
        if row is None or match is None or match.matched is None or not charge.prefill:
            return charge
        cached = float(match.saving(match.matched[row : row + 1], charge.tokens)[0])
        return cls(charge.tokens, max(0.0, charge.prefill - cached))

    def add(self, m: EndpointMatrix, i: int) -> None:
        """Routed to row ``i``: the pick-time increments of all four columns (simulator, tests, batch)."""
        m.dispatched[i] += 1.0
        m.inflight[i] += 1.0
        m.prefill_tokens[i] += self.prefill
        m.inflight_tokens[i] += self.tokens


def _ro(a: NDArray[Any]) -> NDArray[Any]:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, slots=True, eq=False)
class EndpointMatrix:
    """An immutable snapshot of the pool (except the four load-accounting columns, see module doc)."""

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
    #: owner-maintained token columns (see module doc); omitted by a caller → zeros of the right length
    prefill_tokens: F64 = field(default_factory=lambda: _UNSET)
    inflight_tokens: F64 = field(default_factory=lambda: _UNSET)
    #: owner-published latency averages and passive health (see module doc); omitted → NaN / healthy
    ttft_per_1k: F64 = field(default_factory=lambda: _UNSET)
    tpot: F64 = field(default_factory=lambda: _UNSET)
    ntpot: F64 = field(default_factory=lambda: _UNSET)
    health: F64 = field(default_factory=lambda: _UNSET)
    #: served model names → column of ``served_models`` (see module doc); omitted → none reported
    model_vocab: Mapping[str, int] = field(default_factory=lambda: _NO_MODELS)
    served_models: BoolArray = field(default_factory=lambda: _UNSET_BOOL)
    #: prices per million tokens (see module doc); omitted → NaN (unknown, an OPTIONAL_COLUMNS entry)
    price_in: F64 = field(default_factory=lambda: _UNSET)
    price_out: F64 = field(default_factory=lambda: _UNSET)
    #: the operator's signals by key (see module doc), read-only columns; omitted → none
    signals: Mapping[str, F64] = field(default_factory=lambda: _NO_SIGNALS)
    #: never scraped successfully, a scrape attempt failed (see module doc); omitted → 0 (not known to fail)
    scrape_failed: F64 = field(default_factory=lambda: _UNSET)
    _address_index: dict[str, int] = field(default_factory=dict, repr=False)
    #: ip → rows with that ip (several with data-parallel ranks); built on first use, see ``rows_of_ip``
    _ip_index: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # callers that predate the token columns build matrices field by field without them
        n = len(self.names)
        for name in ("prefill_tokens", "inflight_tokens"):
            if getattr(self, name) is _UNSET:
                object.__setattr__(self, name, np.zeros(n))
        for name, fill in OPTIONAL_COLUMNS.items():
            if getattr(self, name) is _UNSET:
                object.__setattr__(self, name, _ro(np.full(n, fill)))
        if self.served_models is _UNSET_BOOL:
            object.__setattr__(self, "served_models", _ro(np.zeros((n, 0), dtype=np.bool_)))

    def __len__(self) -> int:
        return len(self.names)

    # ------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_rows(cls, rows: Iterable[EndpointRow]) -> EndpointMatrix:
        rows = list(rows)
        n = len(rows)
        vocab: dict[str, int] = {}
        model_vocab: dict[str, int] = {}
        for r in rows:
            for a in (*r.lora_active, *r.lora_waiting):
                vocab.setdefault(a, len(vocab))
            for name in r.models:
                model_vocab.setdefault(name, len(model_vocab))
        served = np.zeros((n, len(model_vocab)), dtype=np.bool_)
        for i, r in enumerate(rows):
            for name in r.models:
                served[i, model_vocab[name]] = True
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
        keys = sorted({k for r in rows for k in r.signals})
        signals = {
            k: _ro(np.fromiter((r.signals.get(k, math.nan) for r in rows), dtype=np.float64, count=n))
            for k in keys
        }
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
            prefill_tokens=np.fromiter((r.prefill_tokens for r in rows), dtype=np.float64, count=n),
            inflight_tokens=np.fromiter((r.inflight_tokens for r in rows), dtype=np.float64, count=n),
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
            ttft_per_1k=col("ttft_per_1k"),
            tpot=col("tpot"),
            ntpot=col("ntpot"),
            health=col("health"),
            model_vocab=MappingProxyType(model_vocab),
            served_models=_ro(served),
            price_in=col("price_in"),
            price_out=col("price_out"),
            signals=MappingProxyType(signals) if signals else _NO_SIGNALS,
            scrape_failed=col("scrape_failed"),
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
        models = {v: k for k, v in self.model_vocab.items()}
        return EndpointRow(
            name=self.names[i],
            address=self.addresses[i],
            waiting=float(self.waiting[i]),
            running=float(self.running[i]),
            kv_usage=float(self.kv_usage[i]),
            gpu_util=float(self.gpu_util[i]),
            scraped_at=float(self.scraped_at[i]),
            scrape_failed=float(self.scrape_failed[i]),
            dispatched=float(self.dispatched[i]),
            inflight=float(self.inflight[i]),
            prefill_tokens=float(self.prefill_tokens[i]),
            inflight_tokens=float(self.inflight_tokens[i]),
            lora_active=tuple(inv[int(j)] for j in np.flatnonzero(self.lora_active[i])),
            lora_waiting=tuple(inv[int(j)] for j in np.flatnonzero(self.lora_waiting[i])),
            max_lora=float(self.max_lora[i]),
            block_size=float(self.block_size[i]),
            num_blocks=float(self.num_blocks[i]),
            engine=self.engine_names[int(self.engine[i])],
            ttft_per_1k=float(self.ttft_per_1k[i]),
            tpot=float(self.tpot[i]),
            ntpot=float(self.ntpot[i]),
            health=float(self.health[i]),
            models=tuple(models[int(j)] for j in np.flatnonzero(self.served_models[i])),
            price_in=float(self.price_in[i]),
            price_out=float(self.price_out[i]),
            signals=MappingProxyType(
                {k: float(c[i]) for k, c in self.signals.items() if math.isfinite(float(c[i]))}
            ),
        )

    def rows(self) -> list[EndpointRow]:
        return [self.row(i) for i in range(len(self))]

    def with_load(
        self,
        dispatched: F64,
        inflight: F64 | None = None,
        *,
        prefill_tokens: F64 | None = None,
        inflight_tokens: F64 | None = None,
    ) -> EndpointMatrix:
        """Same snapshot with other load-accounting arrays (batch picks work on copies); a column not
        given is shared with this matrix."""
        return _replace(
            self,
            dispatched=dispatched,
            inflight=self.inflight if inflight is None else inflight,
            prefill_tokens=self.prefill_tokens if prefill_tokens is None else prefill_tokens,
            inflight_tokens=self.inflight_tokens if inflight_tokens is None else inflight_tokens,
        )

    def with_load_copies(self) -> EndpointMatrix:
        """Same snapshot with private copies of all four load-accounting columns (what a batch charges)."""
        return self.with_load(
            self.dispatched.copy(),
            self.inflight.copy(),
            prefill_tokens=self.prefill_tokens.copy(),
            inflight_tokens=self.inflight_tokens.copy(),
        )

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
            prefill_tokens=self.prefill_tokens[idx].copy(),
            inflight_tokens=self.inflight_tokens[idx].copy(),
            lora_vocab=self.lora_vocab,
            lora_active=_ro(self.lora_active[idx]),
            lora_waiting=_ro(self.lora_waiting[idx]),
            lora_count=_ro(self.lora_count[idx]),
            max_lora=_ro(self.max_lora[idx]),
            block_size=_ro(self.block_size[idx]),
            num_blocks=_ro(self.num_blocks[idx]),
            engine=_ro(self.engine[idx]),
            engine_names=self.engine_names,
            ttft_per_1k=_ro(self.ttft_per_1k[idx]),
            tpot=_ro(self.tpot[idx]),
            ntpot=_ro(self.ntpot[idx]),
            health=_ro(self.health[idx]),
            model_vocab=self.model_vocab,
            served_models=_ro(self.served_models[idx]),
            price_in=_ro(self.price_in[idx]),
            price_out=_ro(self.price_out[idx]),
            signals=MappingProxyType({k: _ro(c[idx]) for k, c in self.signals.items()}),
            scrape_failed=_ro(self.scrape_failed[idx]),
            _address_index={a: i for i, a in enumerate(addresses)},
        )


#: Sentinel default of the token columns; replaced by zeros in ``__post_init__`` (never seen outside).
_UNSET: F64 = np.zeros(0)
_UNSET.flags.writeable = False
#: Sentinel default of ``served_models`` (replaced by an N x 0 table) and the empty model vocabulary.
_UNSET_BOOL: BoolArray = np.zeros((0, 0), dtype=np.bool_)
_UNSET_BOOL.flags.writeable = False
_NO_MODELS: Mapping[str, int] = MappingProxyType({})


def _replace(m: EndpointMatrix, **changes: Any) -> EndpointMatrix:
    values = {name: getattr(m, name) for name in m.__dataclass_fields__}
    values.update(changes)
    return EndpointMatrix(**values)
