"""What a scheduling plugin is: the base classes of filters, scorers, pickers and saturation detectors.

A profile runs ``filters → weighted scorers → one picker`` over a :class:`View` (the candidate rows of one
:class:`~scoring.matrix.EndpointMatrix`). Plugins never loop over endpoints in Python: every method works
on whole columns, which is what makes a pick over 1,000 endpoints cost a few microseconds.

Scorers declare what their output depends on (:class:`Dependence`), because the scheduler exploits it:

* ``SNAPSHOT`` — only the scraped columns. Computed once per snapshot and reused by every pick on it.
* ``REQUEST`` — the snapshot and the request (e.g. LoRA affinity on ``target_model``). Computed per pick;
  a batch computes it once per distinct :meth:`Scorer.request_key`.
* ``LOAD`` — the snapshot and the ``dispatched`` column, which changes after every pick. Computed per
  pick; the batch path updates it incrementally (see ``scoring/README.md``, "Batch").
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from scoring.matrix import F64, BoolArray, EndpointMatrix
from scoring.types import PickRequest

StateT = TypeVar("StateT")
T = TypeVar("T", bound=np.generic)


class Category(enum.StrEnum):
    """What a scorer optimizes (metadata, as in the reference; shown in the decision record)."""

    #: prefers particular endpoints for this request (cached prefix, loaded adapter)
    AFFINITY = "affinity"
    #: spreads load away from busy endpoints
    DISTRIBUTION = "distribution"
    #: trades the two off inside one score
    BALANCE = "balance"


class Dependence(enum.Enum):
    """What a scorer's output depends on; decides how much of it the scheduler may reuse."""

    SNAPSHOT = "snapshot"
    REQUEST = "request"
    LOAD = "load"


class View:
    """The rows of a matrix a profile currently works on: all of them (``rows is None``) or a subset.

    "All rows" is kept as ``None`` rather than ``arange(n)`` so the common case (no candidate mask, no
    filter removing anything) reads the matrix columns directly, without a gather, and can reuse the
    per-snapshot cache of the scheduler.
    """

    __slots__ = ("m", "n", "rows")

    def __init__(self, m: EndpointMatrix, rows: NDArray[np.intp] | None = None) -> None:
        self.m = m
        self.rows = rows
        self.n = len(m) if rows is None else len(rows)

    def take(self, column: NDArray[T]) -> NDArray[T]:
        """The view's slice of a per-endpoint column (the column itself when the view is the whole pool)."""
        return column if self.rows is None else column[self.rows]

    def take_adapter(self, table: BoolArray, adapter: int) -> BoolArray:
        """One adapter's column of an N x A LoRA table, restricted to the view."""
        return table[:, adapter] if self.rows is None else table[self.rows, adapter]

    def subset(self, keep: BoolArray) -> View:
        """The rows of this view where ``keep`` is True (a new view; this one is unchanged)."""
        positions = np.flatnonzero(keep)
        return View(self.m, positions if self.rows is None else self.rows[positions])

    def row(self, position: int) -> int:
        """Matrix row of a position in the view."""
        return position if self.rows is None else int(self.rows[position])

    def names(self) -> tuple[str, ...]:
        """Endpoint names in view order (decision records only; not on the hot path)."""
        if self.rows is None:
            return self.m.names
        return tuple(self.m.names[i] for i in self.rows)


class Plugin:
    """Common to all plugins: the configured name, the reference type string, effective parameters."""

    type_name: ClassVar[str] = ""

    def __init__(self, name: str, parameters: Mapping[str, Any] | None = None) -> None:
        self.name = name
        #: every parameter with the value in use, defaults included (for ``/config``)
        self.parameters: Mapping[str, Any] = dict(parameters or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Scorer(Plugin, Generic[StateT]):
    """Scores every endpoint of a view in [0, 1]; higher is better.

    Subclasses give the formula, inputs and category in their docstring, and keep their output inside
    [0, 1] by construction or by clamping, so that the weighted sum means what the weights say.
    """

    category: ClassVar[Category]
    dependence: ClassVar[Dependence]
    #: the weight when the profile's reference gives none (None: the reference's default, 1); a scorer
    #: with a ``weight`` parameter sets it
    default_weight: float | None = None

    def prepare(self, v: View, /) -> StateT:
        """Everything derived from the scraped columns alone (imputed gauges, static scores).

        Called once per snapshot for the whole pool and cached by the scheduler (kept on later snapshots
        while :meth:`inputs` are unchanged), so expensive steps such as NaN imputation belong here rather
        than in :meth:`score`.
        """
        raise NotImplementedError

    def score(self, v: View, state: StateT, req: PickRequest, dispatched: F64, /) -> F64:
        """Scores in [0, 1] over the view. ``dispatched`` is the view's slice of the in-flight column."""
        raise NotImplementedError

    def inputs(self, m: EndpointMatrix, /) -> tuple[object, ...]:
        """What of the matrix :meth:`prepare` and :meth:`score` read, besides the request and the four
        live accounting columns (``dispatched``, ``inflight``, ``prefill_tokens``, ``inflight_tokens``,
        which no prepared state may hold).

        The scheduler keeps this scorer's prepared state, and the terms cached from it, on a new snapshot
        of the same rows while every input holds the same bits as on the last one (:mod:`scoring.cache`):
        the queue and KV gauges move with every scrape, the LoRA tables, the prices or a GPU exporter's
        column seldom. This default names every read-only column of the matrix, so a scorer that does not
        override it is prepared again whenever anything changed; one that overrides it must name all it
        reads (a scorer that names too little would be scored with stale state).
        """
        return scraped_columns(m)

    def request_key(self, _req: PickRequest, /) -> Hashable:
        """Requests with equal keys get equal scores (lets a batch score each distinct request once)."""
        return None

    def skips(self, _req: PickRequest, /) -> bool:
        """True when this load scorer scores 0 on every endpoint for ``req``: the scheduler then leaves its
        term out of the total (adding 0.0 changes no float), saving the per-pick work. The prefix scorer
        skips requests without a match."""
        return False


def scraped_columns(m: EndpointMatrix) -> tuple[object, ...]:
    """Every read-only column of the matrix (the owner publishes new arrays when they change): the
    default :meth:`Scorer.inputs`. ``with_load`` copies share them."""
    return (
        m.names,
        m.waiting,
        m.running,
        m.kv_usage,
        m.gpu_util,
        m.scraped_at,
        m.scrape_failed,
        m.lora_vocab,
        m.lora_active,
        m.lora_waiting,
        m.lora_count,
        m.max_lora,
        m.block_size,
        m.num_blocks,
        m.engine,
        m.ttft_per_1k,
        m.tpot,
        m.ntpot,
        m.health,
        m.model_vocab,
        m.served_models,
        m.price_in,
        m.price_out,
        m.signals,
    )


class Filter(Plugin):
    """Removes endpoints from a view. Never adds one: the result is a mask over the view it was given."""

    #: True when the outcome depends on the request (its headers or model), not only on the snapshot
    request_dependent: ClassVar[bool] = False
    #: a fail-open filter that would remove every endpoint removes none instead
    fail_open: bool = False

    def keep(self, v: View, req: PickRequest, now: float, /) -> BoolArray:
        """Mask over the view of the endpoints that pass."""
        raise NotImplementedError

    def reason(self) -> str:
        """Why removed endpoints were removed, for the decision record."""
        return self.type_name


class SaturationDetector(Plugin):
    """Estimates how saturated a set of endpoints is: ≥ 1.0 means saturated (sheddable requests shed)."""

    #: the reading rests on scraped gauges, so an endpoint never scraped reads as saturated (the reference's
    #: rule for missing metrics). The spill decision (``picker.routing.external``) leaves such endpoints out:
    #: unknown load right after a start is no reason to pay for external capacity. A detector that reads
    #: only our own accounting (``concurrency-detector``) sets it False: scrapes do not change its reading.
    reads_scrapes: ClassVar[bool] = True

    def saturation(self, v: View, now: float, /) -> float:
        raise NotImplementedError


class Picker(Plugin):
    """Turns total scores into the primary endpoint plus up to ``max_endpoints - 1`` distinct fallbacks."""

    def __init__(self, name: str, parameters: Mapping[str, Any] | None, max_endpoints: int) -> None:
        super().__init__(name, parameters)
        #: reference ``maxNumOfEndpoints`` (≤ 0 configured → 1)
        self.max_endpoints = max(1, max_endpoints)

    def pick(self, totals: F64, rng: np.random.Generator, /) -> list[int]:
        """Positions in ``totals`` (at least one, at most ``max_endpoints``), primary first.

        Must not modify ``totals`` (it may be a cached array) and must draw from ``rng`` only through
        its own calls, so that a batch replaying the same totals draws the same numbers.
        """
        raise NotImplementedError

    def pick_floats(self, totals: list[float], rng: np.random.Generator, /) -> list[int]:
        """:meth:`pick` for a small pool's totals given as Python floats (the scheduler's small-pool path).

        Must return exactly what :meth:`pick` returns for the same values and draw the same random
        numbers; this default simply converts. A picker overrides it when it can do without numpy.
        """
        return self.pick(np.array(totals, dtype=np.float64), rng)
