"""What a scheduler reuses between picks: the state it prepared for the last snapshot.

Two levels, both bounded:

* per snapshot and view (:class:`SnapshotCache`): each scorer's prepared state and the sum of the
  snapshot-only terms, for the whole pool and for one subset (a candidate mask or a filter that removed
  endpoints). A new snapshot of the same rows keeps each scorer's state while that scorer's inputs
  (:meth:`~scoring.plugin.Scorer.inputs`) hold the same bits, and the sum and the static totals while
  no snapshot or request scorer changed; other rows prepare everything anew;
* per request key, inside a prepared state (:class:`Prepared`): the static part of the total (snapshot +
  request terms), so repeated requests for the same model cost nothing until the next scrape.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from scoring.matrix import F64, EndpointMatrix
from scoring.plugin import Scorer, View

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


def _same(a: object, b: object) -> bool:
    """Whether an input of a new snapshot holds what it held on the last one: the same object, an array
    with the same shape, dtype and bits (NaN included; -0.0 and 0.0 differ, which only costs a
    preparation), a mapping with the same keys and such values, or an equal plain value (names)."""
    if a is b:
        return True
    if type(a) is np.ndarray:
        return (
            type(b) is np.ndarray and a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
        )
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping)
            and a.keys() == b.keys()
            and all(_same(value, b[key]) for key, value in a.items())
        )
    return type(a) is type(b) and a == b


def _kept(new: tuple[object, ...], old: tuple[object, ...]) -> bool:
    """Whether one scorer's inputs (:meth:`~scoring.plugin.Scorer.inputs`, as many each time) are
    unchanged."""
    for a, b in zip(new, old, strict=False):  # noqa: SIM110 - a loop: no call for an identical input
        if a is not b and not _same(a, b):
            return False
    return True


@dataclass(frozen=True, slots=True)
class _Memo:
    matrix: EndpointMatrix
    #: each scorer's inputs on ``matrix``
    inputs: tuple[tuple[object, ...], ...]
    #: None for the whole pool, else the matrix rows the state was prepared for
    rows: NDArray[np.intp] | None
    #: the view's size (a state of no inputs, e.g. zeros, still has one per row)
    n: int
    prepared: Prepared

    def same_rows(self, v: View) -> bool:
        if v.n != self.n:
            return False
        if v.rows is None:
            return self.rows is None
        return self.rows is not None and np.array_equal(v.rows, self.rows)


class SnapshotCache:
    """The last prepared state for the whole pool and for one subset.

    Thread-compatible: each entry is replaced as a whole, so concurrent picks at worst prepare the same
    state twice.
    """

    __slots__ = ("_pool", "_prepare", "_scorers", "_subset")

    def __init__(
        self,
        scorers: Sequence[Scorer[Any]],
        prepare: Callable[[View, Prepared | None, tuple[bool, ...]], Prepared],
    ) -> None:
        self._scorers = tuple(scorers)
        #: ``prepare(view, previous, kept)``: the state for ``view``, reusing ``previous``'s per scorer
        #: where ``kept`` says its inputs are unchanged (``previous`` None: nothing to reuse)
        self._prepare = prepare
        self._pool: _Memo | None = None
        self._subset: _Memo | None = None

    def get(self, m: EndpointMatrix, v: View) -> Prepared:
        """Prepared state for the view: reused whole while the view's rows and every scorer's inputs
        are unchanged (between two scrapes, also when a filter removes the same endpoints every time, or
        when new scrapes brought the same values), and per scorer while that scorer's inputs are (a
        scrape moved the queue and KV gauges: the LoRA, price, latency and GPU states are kept)."""
        rows = v.rows
        memo = self._pool if rows is None else self._subset
        if memo is not None and memo.matrix is m and (rows is None or memo.same_rows(v)):
            return memo.prepared  # the same snapshot (most picks): nothing to compare
        inputs = tuple([s.inputs(m) for s in self._scorers])
        if memo is None or not memo.same_rows(v):
            prepared = self._prepare(v, None, ())
        else:
            kept = tuple(map(_kept, inputs, memo.inputs))
            prepared = memo.prepared if all(kept) else self._prepare(v, memo.prepared, kept)
        memo = _Memo(m, inputs, rows, v.n, prepared)
        if rows is None:
            self._pool = memo
        else:
            self._subset = memo
        return prepared
