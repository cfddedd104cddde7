"""The process's approximate prefix index: kept across config reloads, replicated across ``--workers``.

The index itself is pure scoring (``scoring/prefix``); this module decides which one is in use and
carries its updates between processes.

* **Which index.** The first ``prefix-cache-scorer`` (weight > 0) of the configuration's profiles carries
  the index parameters (``PrefixConfig``); one index serves every profile (a request is hashed, matched
  and recorded whichever profile the handler chooses for it, so the index sees all the traffic the
  servers' caches see). Another prefix scorer with other index parameters is warned about and uses the
  same index. A reload that keeps the parameters keeps the index and everything it learned; a reload
  that changes them (another block size, another limit) starts an empty one, because hashes made with
  other parameters never match again. A configuration without the scorer turns hashing off (no cost per
  request); the last index is kept in case it comes back.
* **Across ``--workers``.** Every process holds a replica. A worker records its own picks at once and
  queues them (:meth:`PrefixCacheState.take_outbox`); the supervisor applies every worker's records to its
  replica (``/debug/endpoints``, ``inference_extension_prefix_indexer_size``, the scaler's query) and
  forwards them to the other workers, which apply them too. A conversation's next turn therefore finds
  its prefix whichever worker picks, once the record has travelled (tens of milliseconds; turns are
  seconds apart). Records carry the endpoint's name, its capacity (autoTune as the recording process saw
  it) and the hit count, so replicas stay equal. Memory: one replica per process.
"""

from __future__ import annotations

import base64
import logging
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, Final

from scoring import EndpointMatrix, Scheduler
from scoring.prefix import ApproxPrefixCache, EndpointPrefixStats, PrefixConfig
from scoring.profiles import Profiles
from scoring.scorers import PrefixCacheScorer
from scoring.types import PrefixMatch, PromptEnd

__all__ = ["MAX_OUTBOX", "PrefixCacheState", "Record", "decode_records", "encode_records", "prefix_config_of"]

log = logging.getLogger("picker.prefix")

#: one routed prompt: (endpoint name, its capacity, blocks that matched it, the prompt's block hashes, where
#: it ends when continuation credit is on)
Record = tuple[str, int, int, tuple[int, ...], PromptEnd | None]
#: records queued for the supervisor before the oldest are dropped (a stalled channel must not grow
#: memory without bound; a dropped record only makes the replicas less complete)
MAX_OUTBOX: Final = 65536


def prefix_config_of(profiles: Profiles | Scheduler) -> PrefixConfig | None:
    """The index parameters of the first prefix scorer (weight > 0) of the profiles, or None."""
    schedulers = (profiles,) if isinstance(profiles, Scheduler) else profiles.schedulers
    configs = [
        ws.scorer.prefix_config
        for s in schedulers
        for ws in s.scorers
        if isinstance(ws.scorer, PrefixCacheScorer) and ws.weight > 0.0
    ]
    if any(c != configs[0] for c in configs[1:]):
        log.warning(
            "prefix-cache-scorer plugins with different index parameters; the index uses the first one's"
        )
    return configs[0] if configs else None


class PrefixCacheState:
    """The prefix index in use (see the module docstring). ``replicate=True`` in a ``--workers`` worker."""

    def __init__(self, *, replicate: bool = False) -> None:
        self._cache: ApproxPrefixCache | None = None
        self._profiles: Profiles | Scheduler | None = None
        self._active: ApproxPrefixCache | None = None
        self._outbox: list[Record] | None = [] if replicate else None

    # ------------------------------------------------------------------------------- which index
    def for_profiles(self, profiles: Profiles | Scheduler) -> ApproxPrefixCache | None:
        """The index to use with these profiles (a configuration's, or one scheduler), None when none of
        them scores prefixes. Cheap when they are the ones seen last (one identity check)."""
        if profiles is self._profiles:
            return self._active
        self._profiles = profiles
        config = prefix_config_of(profiles)
        if config is None:
            self._active = None
            return None
        cache = self._cache
        if cache is None or cache.config != config:
            if cache is not None:
                log.info("prefix index parameters changed; starting an empty index")
            cache = self._cache = ApproxPrefixCache(config)
        self._active = cache
        return cache

    @property
    def cache(self) -> ApproxPrefixCache | None:
        """The last index built (also while the profile has no prefix scorer), for read-only views."""
        return self._cache

    # ------------------------------------------------------------------------------- updates
    def record(self, m: EndpointMatrix, row: int, match: PrefixMatch) -> None:
        """The request was routed to row ``row`` of ``m``: record the prompt there (and queue it for the
        other processes)."""
        cache = self._active
        if cache is None:
            return
        cache.record(m, row, match)
        outbox = self._outbox
        if outbox is not None:
            hit = 0 if match.matched is None else int(match.matched[row])
            outbox.append((m.names[row], cache.capacity_of(m, row), hit, match.hashes, match.end))
            if len(outbox) > MAX_OUTBOX:
                del outbox[: len(outbox) - MAX_OUTBOX]

    def take_outbox(self) -> list[Record]:
        """The records made here since the last call (a worker sends them to the supervisor)."""
        outbox = self._outbox
        if not outbox:
            return []
        self._outbox = []
        return outbox

    def apply(self, records: Iterable[Record], m: EndpointMatrix | None = None, now: float = 0.0) -> int:
        """Records made by other processes: the same updates, with their capacities and hits. ``m`` (the
        current snapshot) also lets this replica forget endpoints gone from the pool. Returns how many
        were applied (0 when there is no index yet)."""
        cache = self._cache
        if cache is None:
            return 0
        applied = 0
        for name, capacity, hit, hashes, end in records:
            cache.record_remote(name, hashes, capacity=capacity, hit=hit, end=end)
            applied += 1
        if m is not None:
            cache.observe(m, now)
        return applied

    def outgoing(self) -> list[list[Any]] | None:
        """The records made here since the last call, encoded for the supervisor (None: nothing new)."""
        records = self.take_outbox()
        return encode_records(records) if records else None

    def receive(self, payload: object, profiles: Profiles | Scheduler, m: EndpointMatrix, now: float) -> int:
        """Apply an encoded batch of another process's records (see :meth:`apply`), the index parameters
        following ``profiles`` (the receiver's active configuration)."""
        self.for_profiles(profiles)
        return self.apply(decode_records(payload), m, now)

    # ------------------------------------------------------------------------------- read-only views
    def size(self) -> int:
        """Entries over all endpoints (``inference_extension_prefix_indexer_size``)."""
        cache = self._cache
        return 0 if cache is None else len(cache.index)

    def entries(self, name: str) -> int:
        """Blocks the index lists for one endpoint."""
        cache = self._cache
        return 0 if cache is None else cache.index.entries(name)

    def stats(self, name: str) -> EndpointPrefixStats | None:
        """An endpoint's prefix-cache value (entries, exclusive entries, hit blocks, capacity), or None.

        For scale-down decisions: the endpoint whose removal loses the least is the one with the fewest
        exclusive entries and hit blocks. Walks its entries (milliseconds): not for the request path.
        """
        cache = self._cache
        return None if cache is None else cache.stats(name)


# ----------------------------------------------------------------------------------- wire format
def encode_records(records: Sequence[Record]) -> list[list[Any]]:
    """Records as JSON-ready lists: hashes packed as little-endian 64-bit words in base64 (a third of the
    size of decimal integers, and decoded without parsing 256 numbers)."""
    out: list[list[Any]] = []
    for name, capacity, hit, hashes, end in records:
        words = array("Q", hashes)
        if sys.byteorder != "little":
            words.byteswap()
        entry: list[Any] = [name, capacity, hit, base64.b64encode(words.tobytes()).decode("ascii")]
        if end is not None:
            entry.append(list(end))
        out.append(entry)
    return out


def decode_records(payload: object) -> list[Record]:
    """The inverse of :func:`encode_records`; malformed entries are skipped (the peer is our own process,
    but a bug there must not take this one down)."""
    out: list[Record] = []
    if not isinstance(payload, list):
        return out
    for entry in payload:
        try:
            name, capacity, hit, packed, *rest = entry
            raw = base64.b64decode(packed, validate=True)
            words = array("Q")
            words.frombytes(raw)
            end = _decode_end(rest[0]) if rest else None
        except (TypeError, ValueError):
            continue
        if not isinstance(name, str) or not isinstance(capacity, int) or not isinstance(hit, int):
            continue
        if sys.byteorder != "little":
            words.byteswap()
        out.append((name, max(1, capacity), max(0, hit), tuple(words), end))
    return out


def _decode_end(value: object) -> PromptEnd:
    """A prompt's end as :func:`encode_records` sends it: six non-negative integers (ValueError else)."""
    if not isinstance(value, list) or len(value) != len(PromptEnd._fields):
        raise ValueError("a prompt end is a list of six integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64 for v in value):
        raise ValueError("a prompt end is a list of six integers")
    return PromptEnd(*value)
