"""Endpoints that must not be primary: one rule for "not picked while a better candidate exists, a
last-resort fallback otherwise".

An endpoint is *avoided* when the snapshot says it should not take traffic first:

* ``ejected`` — passive health ejected it (``health`` column 1, ``picker/state/health.py``);
* ``probing`` — its ejection time is over and one probe request is already in flight on it (``health``
  column 2 and ``inflight`` > 0): a second request waits for the probe's outcome. A probing endpoint with
  nothing in flight is not avoided: the next pick may send it the probe.
* ``draining`` — the scaler is about to remove its pod (``health`` column 3, ``picker/scaler``): no new
  request while another candidate remains, so its streams can end before Kubernetes deletes it.

How the director applies it (:meth:`Avoidance.split`): when some candidates are avoided and some are not,
the pick runs over the others; the avoided ones fill the fallback places the pick left empty (a gateway
that retries on the EPP's list still has somewhere to go); when every candidate is avoided the pick runs
over all of them (refusing every request helps nobody). The per-pick cost when nothing is avoided is one
identity comparison with the last snapshot.

Other "not primary" marks (stale metrics, an external endpoint over its limits) belong here as further
reasons, so there is one rule and one place that explains it.
"""

from __future__ import annotations

import enum

import numpy as np
from numpy.typing import NDArray

from scoring import EndpointMatrix

BoolArray = NDArray[np.bool_]

#: ``health`` column values (``picker.state.health.Health``; ``picker.routing`` reads the snapshot only)
_EJECTED = 1.0
_PROBING = 2.0
_DRAINING = 3.0


class FailoverReason(enum.StrEnum):
    """Why a request went elsewhere than the scorer's choice: the ``reason`` label of
    ``ai_failover_total``. A bounded set; add a member for a new reason (saturated, over limits, out of
    budget), never a free-form string."""

    #: the scorer's choice was ejected by passive health (or is waiting for its probe's outcome)
    EJECTED = "ejected"
    #: the scorer's choice is being drained by the scaler
    DRAINING = "draining"


class Avoidance:
    """Which rows of a snapshot are avoided right now, and why (see the module docstring)."""

    __slots__ = ("_last", "_watch")

    def __init__(self) -> None:
        self._last: EndpointMatrix | None = None
        #: rows of the last snapshot whose health is not "healthy"; None when there are none
        self._watch: NDArray[np.intp] | None = None

    def avoided(self, m: EndpointMatrix) -> BoolArray | None:
        """The avoided rows of ``m`` as a mask, or None when none is (the common case)."""
        if m is not self._last:
            self._last = m
            rows = np.flatnonzero(m.health != 0.0)
            self._watch = rows if rows.size else None
        watch = self._watch
        if watch is None:
            return None
        health = m.health[watch]
        # read the live in-flight column each time: a probe may have started or ended since the snapshot
        out = (
            (health == _EJECTED) | (health == _DRAINING) | ((health == _PROBING) & (m.inflight[watch] > 0.0))
        )
        if not out.any():
            return None
        mask = np.zeros(len(m), dtype=np.bool_)
        mask[watch[out]] = True
        return mask

    @staticmethod
    def reason(m: EndpointMatrix, row: int) -> str:
        """How ``/debug/explain`` describes an avoided row."""
        state = float(m.health[row])
        return "ejected" if state == _EJECTED else "draining" if state == _DRAINING else "probing"

    @staticmethod
    def split(candidates: BoolArray | None, avoided: BoolArray) -> tuple[BoolArray, BoolArray] | None:
        """``(preferred, avoided candidates)`` when the pick must leave some candidates out; None when no
        candidate is avoided or every one is (then pick over all of them)."""
        if candidates is None:
            kept = ~avoided
            out = avoided
        else:
            kept = candidates & ~avoided
            out = candidates & avoided
        if not kept.any() or not out.any():
            return None
        return kept, out

    @staticmethod
    def last_resort(
        m: EndpointMatrix, out: BoolArray, chosen: tuple[int, ...], places: int
    ) -> tuple[int, ...]:
        """``chosen`` followed by avoided candidates up to ``places`` endpoints: probing ones first (their
        wait is nearly over), then ejected ones, then draining ones (about to go), each in row order."""
        if len(chosen) >= places:
            return chosen
        rows = np.flatnonzero(out)
        rank = {_PROBING: 0, _EJECTED: 1, _DRAINING: 2}
        order = sorted(rows.tolist(), key=lambda r: (rank.get(float(m.health[r]), 1), r))
        return chosen + tuple(order[: places - len(chosen)])
