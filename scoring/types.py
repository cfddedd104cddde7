"""Request and result types shared by every scoring plugin, the service and the simulator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

_EMPTY: Mapping[str, str] = MappingProxyType({})


class PromptEnd(NamedTuple):
    """Where a routed prompt ends, for continuation credit (``scoring/prefix/continuations.py``): hashes and
    sizes only, no prompt text."""

    #: chain hash of the last full index entry before the end (the seed when the end is in entry 0)
    key: int
    #: bytes from that entry boundary to the end
    length: int
    #: hash of those bytes seeded with ``key`` (``key`` itself when ``length`` is 0)
    token: int
    #: the prompt's end, in bytes
    end: int
    #: the prompt's last index hash (its server must still list it for the credit)
    last: int
    #: the answer's expected size in bytes (0: unknown)
    answer_bytes: int


class PrefixMatch(NamedTuple):
    """A prompt's chained block hashes and how many leading blocks each endpoint is believed to hold.

    ``hashes`` are the index entries; each covers one block, or ``blocksPerEntry`` blocks (the last one
    possibly fewer), in which case ``blocks`` gives the prompt's block count.

    Built by the prefix index (``scoring.prefix``) against one matrix before the pick, read by
    ``prefix-cache-scorer``, and handed back to the index after the pick so the chosen endpoint records
    the prompt. ``matched`` is aligned with the rows of the matrix it was computed for (read-only) and is
    None when no endpoint holds even the first block; ``best`` is its maximum. No prompt text: hashes only.
    """

    hashes: tuple[int, ...]
    #: leading blocks held, per matrix row (float64, read-only); None = no endpoint holds block 0
    matched: NDArray[np.float64] | None
    #: the largest entry of ``matched`` (0 when None)
    best: int
    #: tokens per block of the hasher that built ``hashes`` (the scorer's load guard converts with it)
    block_tokens: int
    #: blocks of the prompt when a hash covers several (``blocksPerEntry`` > 1); 0: one block per hash
    blocks: int = 0
    #: where the prompt ends (continuation credit on and the end known), recorded with the pick
    end: PromptEnd | None = None

    @property
    def total(self) -> int:
        """Blocks of the prompt (the score's denominator). ``matched`` and ``best`` count blocks too,
        whatever the number of blocks per hash."""
        return self.blocks or len(self.hashes)

    def saving(self, matched: NDArray[np.float64], prompt_tokens: float) -> NDArray[np.float64]:
        """Prompt tokens of prefill a hit would save, per entry of ``matched`` (a slice of ``matched``):
        the matched blocks in tokens, or the whole prompt (``prompt_tokens``, the parser's estimate) where
        the whole hashed window matched and the prompt is longer than it (the index sees only the first
        ``maxPrefixBlocksToMatch`` blocks; a full match there is, in a conversation, the history the
        server holds). A new array. One rule for everything that weighs a hit: the prefix scorer's load
        guard, ``prefill-queue-scorer``, and the prefill a routed request is charged
        (``scoring.matrix.LoadCharge.for_request``)."""
        total = self.total
        out = matched * float(self.block_tokens)
        if prompt_tokens > total * self.block_tokens:
            out[matched >= total] = prompt_tokens
        return out


class PickRequest(NamedTuple):
    """What the scheduler needs to know about one request. No prompt text: only derived values.

    ``target_model`` is the model name after rewrites (what the model server will see; LoRA affinity
    uses it). ``headers`` carries only the few headers plugins read (e.g. ``test-epp-endpoint-selection``
    for the conformance filter); the service passes lowercase keys. ``prefix`` is the prompt's prefix
    match against the snapshot being scheduled (None when prefix scoring is off or the prompt is shorter
    than one block), built by the owner of the prefix index before the pick.
    ``prompt_tokens_estimate`` is the prompt's size in tokens as far as the parser can tell (characters / 4)
    and ``stream`` whether the client asked for a streamed response; together they decide the request's
    load charge (``scoring.matrix.LoadCharge``).

    A NamedTuple rather than a frozen dataclass: as immutable, and one is built per routed request, where
    a frozen dataclass's field-by-field ``object.__setattr__`` cost about 5 µs inside the server (cold
    caches) against about 1 µs for a tuple.
    """

    target_model: str = ""
    incoming_model: str = ""
    priority: int = 0
    request_id: str = ""
    headers: Mapping[str, str] = _EMPTY
    prefix: PrefixMatch | None = None
    prompt_tokens_estimate: int = 0
    #: the response streams (SSE), so its first body byte marks the end of prefill; default True
    stream: bool = True
    #: output tokens the request may generate (its ``max_tokens`` or equivalent); 0 = not given. Read by
    #: ``cost-scorer`` (with the prompt estimate, it weighs input against output prices)
    output_tokens_estimate: int = 0


@dataclass(frozen=True, slots=True)
class FilterRecord:
    """One filter's effect: which endpoints it removed and why."""

    filter_name: str
    filter_type: str
    removed: tuple[str, ...]
    reason: str
    #: True when the filter would have removed everything and returned its input unchanged (fail-open).
    failed_open: bool = False


@dataclass(frozen=True, slots=True)
class ScorerRecord:
    """One scorer's raw scores (in [0, 1]) and weight, per candidate endpoint name."""

    scorer_name: str
    scorer_type: str
    weight: float
    scores: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class PrefixRecord:
    """The prefix match behind a decision: leading blocks each candidate holds, out of the prompt's."""

    total_blocks: int
    block_tokens: int
    #: candidate name -> leading blocks of the prompt it is believed to hold (0 for none)
    matched_blocks: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class Decision:
    """Why a pick came out as it did. Built only when asked (``explain=True``); costs nothing otherwise."""

    profile: str
    candidates: tuple[str, ...]
    filters: tuple[FilterRecord, ...]
    scorers: tuple[ScorerRecord, ...]
    totals: Mapping[str, float]
    picker: str
    chosen: tuple[str, ...]
    saturation: float | None = None
    #: the request's prefix match (None without one: prefix scoring off, or a prompt under one block)
    prefix: PrefixRecord | None = None


class PluginTiming(NamedTuple):
    """How long one plugin took in one pick (``Scheduler.schedule(timings=...)``, asked for a traced
    request only). ``point`` is the extension point: ``filter``, ``scorer``, ``picker`` (the service adds
    ``prepare`` for the prefix index's match)."""

    point: str
    #: the plugin's configured name (from the configuration document, never from a request)
    name: str
    duration_ns: int


class PickResult(NamedTuple):
    """Chosen endpoints (row indices into the matrix), primary first, then distinct fallbacks.

    A NamedTuple for the reason given at :class:`PickRequest`: one per pick.
    """

    indices: tuple[int, ...]
    decision: Decision | None = None

    @property
    def primary(self) -> int:
        return self.indices[0]
