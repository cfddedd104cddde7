"""``approx-prefix-cache-producer``: the hasher, the index and the rules that keep the index honest.

The owner of a pool snapshot (the service's director, the fleet simulator) holds one producer and calls,
per request: :meth:`ApproxPrefixCache.match` before scheduling (hash the prompt, look it up against the
snapshot: the result goes into ``PickRequest.prefix``), then :meth:`ApproxPrefixCache.record` with the
chosen primary endpoint (the reference updates the index for the primary after the pick). The scorer only
reads the match; nothing in the scheduler writes the index.

Two rules live here rather than in the index:

* **autoTune** (reference parameter, default on): an endpoint's capacity in index blocks is its KV cache
  size in tokens, ``num_blocks x block_size`` from its metrics page (vLLM ``cache_config_info``
  ``num_gpu_blocks`` x ``block_size``; SGLang ``num_pages`` x ``page_size``; TensorRT-LLM
  ``kv_cache_max_blocks`` x ``kv_cache_tokens_per_block``: the scraper maps each engine to the matrix's
  ``num_blocks`` / ``block_size`` columns), divided by ``blockSizeTokens``. Unknown →
  ``lruCapacityPerServer``.
  The reference also takes the *hashing* block size from the first candidate's metrics; we keep the
  configured ``blockSizeTokens`` for hashing, because a block size that changes with the candidate list
  makes the same prompt hash differently from one request to the next.
* **Purge**: an endpoint missing from the snapshot for ``purge_after`` seconds (120 s, the reference's purge
  period; checked every quarter of it, so forgotten after 120-150 s) is forgotten; one that comes back
  sooner (a readiness blip) keeps its entries, as its server keeps its cache.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring._params import Params
from scoring.errors import ConfigurationError
from scoring.matrix import EndpointMatrix
from scoring.prefix.continuations import Continuation, Continuations, prompt_end
from scoring.prefix.hashing import PrefixHasher
from scoring.prefix.index import DEFAULT_CAPACITY, MAX_CAPACITY, EndpointPrefixStats, PrefixIndex
from scoring.types import PrefixMatch, PromptEnd

#: The reference parameters shared by ``prefix-cache-scorer`` and ``approx-prefix-cache-producer``.
PREFIX_PARAMETERS = (
    "autoTune",
    "blockSizeTokens",
    "maxPrefixBlocksToMatch",
    "maxPrefixTokensToMatch",
    "lruCapacityPerServer",
    "blockSize",
)
#: Our parameters beside the reference's (``blocksPerEntry``: see :class:`PrefixConfig`).
OUR_PREFIX_PARAMETERS = ("blocksPerEntry", "continuationCredit")
#: Seconds an endpoint may be missing from the pool before its entries are forgotten (reference: purge
#: every 2 minutes).
PURGE_AFTER_S = 120.0


@dataclass(frozen=True, slots=True)
class PrefixConfig:
    """The reference parameters of the approximate prefix index, validated (``gie-epp.md`` §3.6)."""

    #: tokens per hashed block (reference ``blockSizeTokens``, 16); a block is 4 x this many bytes
    block_size_tokens: int = 16
    #: leading blocks hashed and matched (``maxPrefixBlocksToMatch`` 256, or ``maxPrefixTokensToMatch`` /
    #: ``blockSizeTokens`` when that is set)
    max_blocks: int = 256
    #: entries per endpoint when autoTune has no cache size for it (``lruCapacityPerServer`` 31,250)
    capacity: int = DEFAULT_CAPACITY
    #: capacity per endpoint from its scraped KV-cache size (``autoTune``, default true)
    auto_tune: bool = True
    #: blocks one index entry (one hash) covers (ours, ``blocksPerEntry``; 1 = the reference). The block
    #: stays the unit of the window, of capacities and of matches; entries of *s* blocks divide hashing,
    #: recording and memory by about *s* and coarsen the match to *s* blocks (``README.md``, "Coarser
    #: entries")
    blocks_per_entry: int = 1
    #: credit the endpoint that served a prompt a new one extends with that prompt's answer too (ours,
    #: ``continuationCredit``, default false; ``continuations.py``)
    continuation_credit: bool = False

    def entries(self, blocks: int) -> int:
        """Index entries that hold ``blocks`` blocks of capacity (at least 1)."""
        return max(1, -(-blocks // self.blocks_per_entry))

    @classmethod
    def from_params(
        cls,
        plugin_name: str,
        plugin_type: str,
        parameters: Mapping[str, Any] | None,
        extra: tuple[str, ...] = (),
    ) -> tuple[PrefixConfig, Params]:
        """Validate the reference parameters (plus ``extra`` keys the caller reads itself from the returned
        :class:`~scoring._params.Params`). ``blockSize`` (characters, deprecated) is accepted only together
        with ``blockSizeTokens``, which wins, as in the reference."""
        params = Params(
            plugin_name, plugin_type, parameters, PREFIX_PARAMETERS + OUR_PREFIX_PARAMETERS + extra
        )
        auto_tune = params.boolean("autoTune", True)
        block_tokens = params.integer("blockSizeTokens", 16, minimum=1)
        max_blocks = params.integer("maxPrefixBlocksToMatch", 256, minimum=1)
        max_tokens = params.integer("maxPrefixTokensToMatch", 0, minimum=0)
        capacity = params.integer("lruCapacityPerServer", DEFAULT_CAPACITY, minimum=1)
        if block_tokens > 4096:
            raise ConfigurationError(
                f"plugin {plugin_name!r} (type {plugin_type!r}): parameter 'blockSizeTokens' must be "
                f"<= 4096, got {block_tokens}"
            )
        if capacity > MAX_CAPACITY:
            raise ConfigurationError(
                f"plugin {plugin_name!r} (type {plugin_type!r}): parameter 'lruCapacityPerServer' must be <= "
                f"{MAX_CAPACITY} (memory per endpoint), got {capacity}"
            )
        if parameters and "blockSize" in parameters:
            if "blockSizeTokens" not in parameters:
                raise ConfigurationError(
                    f"plugin {plugin_name!r} (type {plugin_type!r}): parameter 'blockSize' (characters) is "
                    "deprecated; set 'blockSizeTokens' instead"
                )
            params.integer("blockSize", 64, minimum=1)
        if max_tokens > 0:
            max_blocks = max(1, max_tokens // block_tokens)
        if max_blocks > 8192:
            raise ConfigurationError(
                f"plugin {plugin_name!r} (type {plugin_type!r}): at most 8192 prefix blocks can be matched, "
                f"got {max_blocks}"
            )
        per_entry = params.integer("blocksPerEntry", 1, minimum=1)
        if per_entry > max_blocks:
            raise ConfigurationError(
                f"plugin {plugin_name!r} (type {plugin_type!r}): parameter 'blocksPerEntry' must be <= the "
                f"blocks matched (maxPrefixBlocksToMatch, {max_blocks}), got {per_entry}"
            )
        continuation = params.boolean("continuationCredit", False)
        return cls(block_tokens, max_blocks, capacity, auto_tune, per_entry, continuation), params


class ApproxPrefixCache:
    """Hashes prompts, matches them against a snapshot, and records where they were sent.

    One per process (per ``--workers`` worker: each keeps a replica fed with every worker's records).
    Not thread-safe: one event loop owns it.
    """

    def __init__(self, config: PrefixConfig | None = None, *, purge_after: float = PURGE_AFTER_S) -> None:
        self.config = config if config is not None else PrefixConfig()
        cfg = self.config
        self.hasher = PrefixHasher(cfg.block_size_tokens, cfg.max_blocks, cfg.blocks_per_entry)
        self.index = PrefixIndex(cfg.entries(cfg.capacity))
        #: where routed prompts ended (continuation credit on), else None
        self.continuations = Continuations() if cfg.continuation_credit else None
        self.purge_after = purge_after
        self._names: tuple[str, ...] | None = None
        self._missing_since: dict[str, float] = {}
        self._next_check = -math.inf

    @property
    def window(self) -> int:
        """Leading prompt bytes that can matter (what a parser needs to extract)."""
        return self.hasher.window

    def hashes(self, model: str, salt: str, data: bytes | bytearray | memoryview) -> tuple[int, ...]:
        """The prompt's chained block hashes (seeded with the target model and the cache salt), one per
        ``blocksPerEntry`` blocks."""
        return self.hasher.hashes(model, salt, data)

    def blocks(self, size: int) -> int:
        """Blocks of a prompt of ``size`` bytes (within the window, a partial block counting as one)."""
        return self.hasher.blocks(size)

    def match(
        self,
        hashes: tuple[int, ...],
        m: EndpointMatrix,
        *,
        now: float,
        blocks: int = 0,
        data: bytes | bytearray | memoryview | None = None,
        seed: int = 0,
        answer_tokens: int = 0,
    ) -> PrefixMatch | None:
        """The match of a hashed prompt against the snapshot ``m`` (None for a prompt without blocks), in
        blocks. ``blocks`` is the prompt's block count (:meth:`blocks` of its byte length); it matters only
        with ``blocksPerEntry`` > 1, where the last hash may cover fewer blocks than the others (0: assume
        it covers them all).

        With continuation credit on, ``data`` (the bytes hashed), ``seed`` (:meth:`seed` of the model and
        salt they were hashed with) and ``answer_tokens`` (the request's ``max_tokens``, 0 if not given)
        let the match credit the server of an earlier prompt this one extends, and remember where this
        one ends for the record (``continuations.py``); without ``data`` the match is the index's alone.

        Also the moment the producer notices endpoints leaving the pool (see the module docstring).
        """
        self.observe(m, now)
        if not hashes:
            return None
        cfg = self.config
        match = self.index.match(
            hashes, m, cfg.block_size_tokens, blocks_per_entry=cfg.blocks_per_entry, blocks=blocks
        )
        conts = self.continuations
        if conts is None or data is None:
            return match
        hasher = self.hasher
        hit = conts.find(seed, hashes, data, hasher.entry_bytes)
        credited = None if hit is None else self._credit(match, hit, m, len(data))
        end = prompt_end(seed, hashes, data, hasher.entry_bytes, hasher.window, answer_tokens)
        if credited is not None:  # one new tuple for both changes
            matched, best = credited
            return PrefixMatch(match.hashes, matched, best, match.block_tokens, match.blocks, end)
        return match if end is None else match._replace(end=end)

    def match_prompt(
        self, model: str, salt: str, data: bytes, m: EndpointMatrix, *, now: float, answer_tokens: int = 0
    ) -> PrefixMatch | None:
        """:meth:`match` of a prompt's hashed bytes (the parser's window) as the service makes it: hashed
        with the model and salt, with what continuation credit reads (``answer_tokens``: ``max_tokens``)."""
        hashes = self.hasher.hashes(model, salt, data)
        seed = self.hasher.seed(model, salt)
        blocks = self.hasher.blocks(len(data))
        return self.match(
            hashes, m, now=now, blocks=blocks, data=data, seed=seed, answer_tokens=answer_tokens
        )

    def seed(self, model: str, salt: str = "") -> int:
        """The hash chain's seed for a model and cache salt (what :meth:`match` takes as ``seed``)."""
        return self.hasher.seed(model, salt)

    def _credit(
        self, match: PrefixMatch, hit: Continuation, m: EndpointMatrix, size: int
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], int] | None:
        """The matched blocks and best of ``match`` with the server of the earlier prompt ``hit`` credited
        with it and its answer, while the index still lists that prompt for it (``continuations.py``);
        None when nothing changes."""
        index = self.index
        row = index.row_of(hit.name, m)
        if row is None or not index.holds(hit.name, hit.last):
            return None
        reach = size if hit.answer_bytes <= 0 else min(size, hit.end + hit.answer_bytes)
        credit = min(self.hasher.blocks(reach), match.total)
        matched = match.matched
        if credit <= 0 or (matched is not None and matched[row] >= credit):
            return None
        out = np.zeros(len(m)) if matched is None else matched.copy()
        out[row] = credit
        out.flags.writeable = False
        return out, max(match.best, credit)

    def record(self, m: EndpointMatrix, row: int, match: PrefixMatch) -> None:
        """The request was routed to row ``row`` of ``m``: that endpoint now holds the prompt."""
        hit = 0 if match.matched is None else int(match.matched[row])
        name = m.names[row]
        self.index.record(name, match.hashes, capacity=self.capacity_of(m, row), hit=hit)
        if match.end is not None and self.continuations is not None:
            self.continuations.add(name, match.end)

    def record_remote(
        self,
        name: str,
        hashes: tuple[int, ...],
        *,
        capacity: int | None = None,
        hit: int = 0,
        end: PromptEnd | None = None,
    ) -> None:
        """Another process routed a prompt to ``name`` (``--workers`` replicas): the same update, with the
        capacity and hit count the recording process saw (None: the endpoint's last known capacity)."""
        self.index.record(name, hashes, capacity=capacity, hit=hit)
        if end is not None and self.continuations is not None:
            self.continuations.add(name, end)

    def capacity_of(self, m: EndpointMatrix, row: int) -> int:
        """Index entries for one endpoint: its KV cache in blocks of ``blockSizeTokens`` (autoTune) or the
        configured ``lruCapacityPerServer`` (blocks), in entries of ``blocksPerEntry`` blocks."""
        cfg = self.config
        if cfg.auto_tune:
            blocks = float(m.num_blocks[row])
            size = float(m.block_size[row])
            if math.isfinite(blocks) and math.isfinite(size) and blocks > 0 and size > 0:
                tokens = blocks * size
                return cfg.entries(max(1, min(int(tokens // cfg.block_size_tokens), MAX_CAPACITY)))
        return cfg.entries(cfg.capacity)

    def observe(self, m: EndpointMatrix, now: float) -> None:
        """Forget endpoints absent from the pool for ``purge_after`` seconds (checked when the membership
        changes, and every quarter of that period while some endpoint is missing)."""
        names = m.names
        if names is self._names and now < self._next_check:
            return
        if names is not self._names and names != self._names:
            self._names = names
            present = set(names)
            for name in tuple(self._missing_since):
                if name in present:
                    del self._missing_since[name]
            for name in self.index.endpoints():
                if name not in present:
                    self._missing_since.setdefault(name, now)
        self._names = names
        for name, since in tuple(self._missing_since.items()):
            if now - since >= self.purge_after:
                self.index.forget(name)
                if self.continuations is not None:
                    self.continuations.forget(name)
                del self._missing_since[name]
        self._next_check = now + self.purge_after / 4 if self._missing_since else math.inf

    def stats(self, name: str) -> EndpointPrefixStats | None:
        """Read-only per-endpoint cache value (entries, exclusive entries, hit blocks, capacity)."""
        return self.index.stats(name)
