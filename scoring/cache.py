"""What a scheduler reuses between picks: the state it prepared for the last snapshot.

Two levels, both bounded:

* per snapshot and view (:class:`SnapshotCache`): each scorer's prepared state and the sum of the
  snapshot-only terms, for the whole pool and for one subset (a candidate mask or a filter that removed
  endpoints), each entry replaced as a whole when the scraped columns or the view's rows change;
* per request key, inside a prepared state (:class:`Prepared`): the static part of the total (snapshot +
  request terms), so repeated requests for the same model cost nothing until the next scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import View

#: Distinct request keys (e.g. target models) whose static totals are kept per snapshot; bounds memory
#: at this many arrays of N floats when requests name ever new models.
MAX_CACHED_STATICS = 256


@dataclass(frozen=True, slots=True)
class Prepared:
    """Per-view state that does not depend on load: each scorer's prepared state, the sum of the
    snapshot-only terms (None when the profile has none), and the static part of the total (snapshot +
    request terms) per request key seen so far."""

    states: tuple[Any, ...]
    snapshot_sum: F64 | None
    statics: dict[Hashable, F64 | None] = field(default_factory=dict)
    #: the small-pool path's copies as Python floats: the static totals per request key, and under
    #: :data:`scoring.terms.LOAD_STATES` the load scorers' states
    floats: dict[Hashable, Any] = field(default_factory=dict)


def _columns(m: EndpointMatrix) -> tuple[object, ...]:
    """The immutable columns scorers read; a snapshot is "the same" when all of them are the same objects.

    ``with_load`` copies share them, so a batch working on a copy of ``dispatched`` still hits the cache.
    """
    return (
        m.names,
        m.waiting,
        m.running,
        m.kv_usage,
        m.gpu_util,
        m.lora_vocab,
        m.lora_active,
        m.lora_waiting,
        m.lora_count,
        m.max_lora,
        m.ttft_per_1k,
        m.tpot,
        m.ntpot,
        m.model_vocab,
        m.served_models,
        m.price_in,
        m.price_out,
        m.signals,
    )


@dataclass(frozen=True, slots=True)
class _Memo:
    matrix: EndpointMatrix
    columns: tuple[object, ...]
    #: None for the whole pool, else the matrix rows the state was prepared for
    rows: NDArray[np.intp] | None
    prepared: Prepared

    def matches(self, m: EndpointMatrix, rows: NDArray[np.intp] | None) -> bool:
        if rows is None:
            if self.rows is not None:
                return False
        elif self.rows is None or not np.array_equal(rows, self.rows):
            return False
        return self.matrix is m or all(a is b for a, b in zip(_columns(m), self.columns, strict=True))


class SnapshotCache:
    """The last prepared state for the whole pool and for one subset.

    Thread-compatible: each entry is replaced as a whole, so concurrent picks at worst prepare the same
    state twice.
    """

    __slots__ = ("_pool", "_prepare", "_subset")

    def __init__(self, prepare: Callable[[View], Prepared]) -> None:
        self._prepare = prepare
        self._pool: _Memo | None = None
        self._subset: _Memo | None = None

    def get(self, m: EndpointMatrix, v: View) -> Prepared:
        """Prepared state for the view, reused while the snapshot's scraped columns and the view's rows
        are unchanged (the steady state between two scrapes, also when a filter removes the same
        endpoints every time)."""
        memo = self._pool if v.rows is None else self._subset
        if memo is not None and memo.matrix is m and v.rows is None:
            return memo.prepared  # the same snapshot's whole pool (most picks): nothing to compare
        if memo is not None and memo.matches(m, v.rows):
            if memo.matrix is not m:
                memo = _Memo(m, memo.columns, memo.rows, memo.prepared)
                self._remember(memo)
            return memo.prepared
        prepared = self._prepare(v)
        self._remember(_Memo(m, _columns(m), v.rows, prepared))
        return prepared

    def _remember(self, memo: _Memo) -> None:
        if memo.rows is None:
            self._pool = memo
        else:
            self._subset = memo
